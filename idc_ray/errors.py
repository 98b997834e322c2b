"""One-line descriptions of exceptions, for the one-line ``error:`` exits and log lines."""

from __future__ import annotations

import re

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


def first_line(error: BaseException, limit: int = 300, *, typed: bool = False) -> str:
    """One line saying what went wrong, at most ``limit`` characters.

    An error wrapped by a Ray task or actor (its ``cause``) is described by its cause. Terminal
    colours are removed. A message that holds a printed traceback (Ray's task errors) gives the
    last ``SomeError: ...`` line, the one raised; otherwise its first non-blank line, or the
    type's name when it is empty. ``typed``: prefixed by the type's name (``ValueError: ...``).
    """
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        return first_line(cause, limit, typed=typed)
    lines = [ln.strip() for ln in _COLOUR.sub("", str(error)).splitlines() if ln.strip()]
    raised = [ln for ln in lines if _RAISED.match(ln)]
    if raised:
        return raised[-1][:limit]
    if not lines:
        return type(error).__name__
    return (f"{type(error).__name__}: {lines[0]}" if typed else lines[0])[:limit]


class JobError(RuntimeError):
    """The job cannot go on; the message says why and what is left in place."""
