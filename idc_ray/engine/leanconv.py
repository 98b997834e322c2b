"""Convolutions whose double backward skips a weight gradient nobody asked for.

Gradient matching differentiates the synthetic batch's weight gradients with respect to the
synthetic images (a double backward). PyTorch's ``_convolution_double_backward`` computes the
second-order gradient of the conv *weight* (``conv(ggI^T, gO^T)``) whenever the first backward
produced an input gradient, even when nobody needs it (its output mask is not consulted for that
term), and matching never does: it asks for the images' gradient only. For ConvNet-3 on 28x28
that unused convolution is about 8% of a CPU matching step, and one of its slowest kernels.

``lean_conv_double_backward()`` routes stride-1, ungrouped ``conv2d`` calls made inside it
through an autograd Function whose backward is written with differentiable library ops that
have no such term: the input gradient as ``conv_transpose2d(gO, W)`` and the weight gradient as
``torch.nn.grad.conv2d_weight`` (a weight-only ``convolution_backward``). First-order gradients
are the same values (the input gradient may differ in float rounding: another oneDNN
primitive computes it); the second-order ones are the same terms minus the unused one.
Hand-written because PyTorch offers no switch for that term; every op used is PyTorch's own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class _LeanConv2d(torch.autograd.Function):
    """conv2d (stride 1, dilation 1, groups 1, numeric padding) with a differentiable backward."""

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad_out, weight, padding=ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, padding=ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def _lean_args(args: tuple, kwargs: dict):
    """(x, weight, bias, padding) when this conv2d call is one _LeanConv2d reproduces, else None."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args)) | kwargs
    x, weight = bound.get("input"), bound.get("weight")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(weight, torch.Tensor):
        return None
    padding = bound.get("padding", 0)
    if isinstance(padding, str):
        return None
    if _pair(bound.get("stride", 1)) != (1, 1) or _pair(bound.get("dilation", 1)) != (1, 1) or bound.get("groups", 1) != 1:
        return None
    return x, weight, bound.get("bias"), _pair(padding)


class _LeanConvMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            lean = _lean_args(args, kwargs)
            if lean is not None:
                return _LeanConv2d.apply(*lean)
        return func(*args, **kwargs)


@contextmanager
def lean_conv_double_backward() -> Iterator[None]:
    """Inside: eligible ``conv2d`` calls record the lean backward (see the module docstring)."""
    with _LeanConvMode():
        yield
