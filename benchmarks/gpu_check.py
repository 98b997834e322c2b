"""The CUDA path, measured: one script to run when a GPU machine is lent (about 8 minutes).

    python benchmarks/gpu_check.py                      # on the GPU: writes results/gpu.json + gpu.log
    python benchmarks/gpu_check.py --device cpu --tiny  # the same checks at tiny sizes (the test suite)

1. torch.cuda facts (device, memory, torch / CUDA / cuDNN versions).
2. The matching step on the device for the loop, lean and vmap paths at the paper's CIFAR-10
   size (ConvNet-3 width 128, 32 px, ipc 10, factor 2, 10 classes; benchmarks/matching.py's
   measure): class-steps per second, the peak memory a step adds, and the float32 difference of
   the stored data after one step on each path against the loop's.
3. A short condensation through the Ray job (idc_ray.backends.condense_job) on the
   embedded MNIST at the paper's MNIST settings (ConvNet-3 width 128, ipc 10, factor 2, l1,
   lr_img 1e-4): 1 matcher actor with the job's default GPU split (0.75 matcher, 0.25 expert),
   2 and 4 matchers sharing the matchers' part, the same on the per-class loop path, 1 matcher
   with 2 expert actors (0.25 each; two re-initialisation cycles, one per expert actor), and the
   earlier default (matcher 1 GPU, expert on the CPU). Seconds per inner iteration, where each
   actor ran, and the stored data compared across layouts against a repeat of the 1-actor run
   (CUDA is not bit-reproducible run to run; see layouts_to_run).
   Then benchmarks/expert_share.py's parts at every preset's shapes on the device: matching of
   all classes, the expert's update, a state's transfer (how much more expert actors can gain).
4. A short evaluation of the 1-actor result as a Ray task with one GPU (ConvNet-3).
5. Where the time of one inner iteration goes on the device, in this process with the device
   synchronised around each part: matching (all classes), the expert's real-data update, and
   moving an expert state as the job does (to CPU for the object store, into the matcher's model).
6. Every test network of the CIFAR-10, ImageNet-10 and speech presets trains 4 epochs on the
   device with its preset's evaluation augmentation (ImageNet's is loader-side).

Every section records its error instead of stopping the script, so one failure on CUDA still
leaves the other measurements. Exit code 1 when a section failed or a check did not hold
(actors without the GPU, stored data that differ beyond float32 tolerance).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expert_share  # noqa: E402
import matching  # noqa: E402
from common import results_dir, timed_job, write  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402
from idc_ray.distributed.planner import PartTimes, predict  # noqa: E402
from idc_ray.distributed.planner import EXPERT_SHARE  # noqa: E402
from idc_ray.distributed.resources import plan_layout  # noqa: E402
from idc_ray.engine.expert import ExpertTrainer, init_expert, new_model  # noqa: E402
from idc_ray.engine.matcher import Matcher, resolve_path  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

# The paper's MNIST condensation settings (settings sheet, "Per-dataset settings") on the embedded
# MNIST subset; --tiny shrinks the network and the set so the CPU runs it in seconds.
MNIST_PAPER = {"synset.ipc": 10, "synset.factor": 2, "match.metric": "l1", "match.lr_img": 1e-4,
               "match.batch_real": 64, "expert.model": "convnet3", "expert.width": 128, "expert.n_data": 500}
TINY = {"synset.ipc": 1, "expert.width": 8, "expert.n_data": 64, "match.batch_real": 16}
FLOAT32_TOLERANCE = 1e-4  # stored data in [0, 1] after a few l1 steps at lr_img 1e-4


class Log:
    """Print and keep every line, for results/gpu.log."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_facts() -> dict:
    facts = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(device=p.name, total_memory_gib=p.total_memory / 2**30, multiprocessors=p.multi_processor_count,
                     capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return facts


def matching_paths(device: torch.device, tiny: bool, steps: int) -> dict:
    """Section 2: benchmarks/matching.py's measurement at CIFAR-10's shape on ``device``."""
    data = matching.cifar_shaped(per_class=50 if tiny else 500)
    r = matching.measure(data, steps, device, width=8 if tiny else 128)
    return {"setting": f"ConvNet-3 width {8 if tiny else 128}, 32x32x3, ipc 10, factor 2, 10 classes, batch_real 64",
            **r}


def job_config(tiny: bool, inner: int, outer: int = 1):
    cfg = apply_overrides(load_preset("mnist5k-demo"), {**MNIST_PAPER, "schedule.outer_iters": outer,
                                                         "schedule.inner_iters": inner})
    return apply_overrides(cfg, TINY) if tiny else cfg


def layouts_to_run(gpu: bool, tiny: bool) -> dict[str, tuple[RunOptions, dict]]:
    """The Ray runs of section 3: (options, config overrides) by label. ``1_actor`` takes the
    job's default GPU split; ``1_actor_repeat`` measures the device's own run-to-run differences
    (CUDA's atomic-add kernels, e.g. bilinear upsampling's backward, sum in varying order), which
    the differences across actor counts are judged against; ``*_loop`` use the per-class path,
    whose arithmetic does not depend on the shard (vmap batches the shard's classes)."""
    never = 10**6
    cpus = 0.25 if tiny else None  # tiny: every actor fits a 2-CPU cluster
    shared = EXPERT_SHARE if gpu else 0.0

    def matchers(n: int) -> RunOptions:
        return RunOptions(num_actors=n, gpus_per_actor=(1 - shared) / n if gpu else 0.0, expert_gpus=shared,
                          cpus_per_actor=cpus, checkpoint_every=never)

    two_experts = RunOptions(num_actors=1, expert_actors=2, gpus_per_actor=1 - 2 * shared if gpu else 0.0,
                             expert_gpus=shared, cpus_per_actor=cpus, checkpoint_every=never)
    runs = {"1_actor": (RunOptions(num_actors=1, cpus_per_actor=cpus, checkpoint_every=never), {}),
            "1_actor_repeat": (RunOptions(num_actors=1, cpus_per_actor=cpus, checkpoint_every=never), {}),
            "2_actors": (matchers(2), {}), "4_actors": (matchers(4), {}),
            "1_actor_loop": (matchers(1), {"match.path": "loop"}), "2_actors_loop": (matchers(2), {"match.path": "loop"}),
            "2_expert_actors": (two_experts, {})}
    if gpu:  # the layout the job chose before the expert shared the GPU
        runs["1_actor_expert_on_cpu"] = (RunOptions(num_actors=1, gpus_per_actor=1.0, expert_gpus=0.0,
                                                    checkpoint_every=never), {})
    return runs


def ray_runs(device: torch.device, tiny: bool, inner: int, log: Log) -> tuple[dict, dict]:
    """Section 3: the Ray job in several layouts on the device; returns the per-layout results
    and the 1-actor run's stored data (for the evaluation)."""
    # two re-initialisation cycles, so a second expert actor computes one (inner iterations split between them)
    cfg = job_config(tiny, max(1, inner // 2), outer=2)
    runs, stored = {}, {}
    for label, (options, overrides) in layouts_to_run(device.type == "cuda", tiny).items():
        run_cfg = apply_overrides(cfg, overrides)
        planned = plan_layout(10, options)
        job, timing = timed_job(run_cfg, options)
        stored[label] = job.stored
        runs[label] = {
            "gpus_per_actor": planned.gpus, "expert_gpus": planned.expert_gpus, "overrides": overrides,
            **{k: v for k, v in timing.items() if k != "gaps_s"},
            "actors": [{k: p.get(k) for k in ("name", "device", "threads")} for p in job.placement],
        }
        log(f"[ray] {label} ({planned.gpus:g} GPU per matcher, expert {planned.expert_gpus:g}): "
            f"{timing['seconds_per_inner_iteration']:.3f} s per inner iteration, "
            f"{timing['wall_s_with_startup']:.1f} s with start-up; "
            f"devices {sorted({p['device'] for p in job.placement})}")
    base = stored["1_actor"]

    def diff(a: str, b: str) -> dict:
        return {"bit_equal": bool(torch.equal(stored[a], stored[b])),
                "max_abs_diff": float((stored[a] - stored[b]).abs().max())}

    comparison = {f"{label}_vs_1_actor": diff(label, "1_actor") for label in stored
                  if label != "1_actor" and not label.endswith("_loop")}
    comparison["2_actors_loop_vs_1_actor_loop"] = diff("2_actors_loop", "1_actor_loop")
    run_to_run = comparison["1_actor_repeat_vs_1_actor"]["max_abs_diff"]
    across = max(comparison[k]["max_abs_diff"] for k in ("2_actors_vs_1_actor", "4_actors_vs_1_actor",
                                                          "2_actors_loop_vs_1_actor_loop", "2_expert_actors_vs_1_actor"))
    on_gpu = all(a["device"].startswith("cuda") for r in runs.values() for a in r["actors"])
    result = {"setting": f"mnist5k, ConvNet-3 width {cfg.expert.width}, ipc {cfg.synset.ipc}, factor 2, l1, "
                         f"lr_img 1e-4, 2 outer x {cfg.schedule.inner_iters} inner",
              "layouts": runs, "stored_compared": comparison,
              "actors_on_device": on_gpu if device.type == "cuda" else None,
              "run_to_run_max_abs_diff": run_to_run, "across_actor_counts_max_abs_diff": across,
              # Sharding must add nothing beyond the device's own run-to-run noise.
              "tolerance": max(FLOAT32_TOLERANCE, 3 * run_to_run),
              "stored_equal_within_float32": across <= max(FLOAT32_TOLERANCE, 3 * run_to_run)}
    log(f"[ray] stored data across actor counts moved by at most {across:.3g}, the tolerance "
        f"{result['tolerance']:.3g} (3x the run-to-run {run_to_run:.3g}, at least {FLOAT32_TOLERANCE:g})")
    return result, {"stored": base, "labels": job.labels, "cfg": cfg, "spec": job.spec}


def evaluate_on_ray(one_actor: dict, device: torch.device, tiny: bool, log: Log) -> dict:
    """Section 4: the 1-actor set written as an artifact and evaluated by Ray tasks (one GPU each
    when the cluster has one)."""
    from idc_ray.artifacts import save_condensed
    from idc_ray.distributed.evaluation import RayExecutor
    from idc_ray.evaluation.run import evaluate_artifact

    cfg = one_actor["cfg"]
    epochs = 2 if tiny else 50
    with tempfile.TemporaryDirectory() as out:
        uri = save_condensed(out, one_actor["stored"], one_actor["labels"], config_yaml=cfg.to_yaml(),
                             meta={"dataset": cfg.data.dataset}, spec=one_actor["spec"])
        started = time.perf_counter()
        doc = evaluate_artifact(uri, models=["convnet3"], repeat=1, epochs=epochs, executor=RayExecutor(log=log),
                                log=log)
        wall = time.perf_counter() - started
    m = doc["models"]["convnet3"]
    devices = sorted({t["device"] for t in doc.get("tasks", [])}) or [m.get("device")]
    return {"model": "convnet3", "epochs": epochs, "accuracy_last": m["mean"], "wall_s": wall, "devices": devices,
            "task_on_device": any(str(d).startswith("cuda") for d in devices) if device.type == "cuda" else None}


def time_breakdown(device: torch.device, tiny: bool, steps: int) -> dict:
    """Section 5: one inner iteration's parts on ``device``, each timed with the device synchronised."""
    cfg = job_config(tiny, steps + 1)
    data = load_dataset(cfg.data.dataset)
    plan = build_plan(cfg, data.spec)
    match, expert_spec = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    path = resolve_path("auto", device)
    matcher = Matcher(match, store, initial_synset(match, store, store.classes), device)
    trainer = ExpertTrainer(expert_spec, init_expert(expert_spec, 0).to(device), device)
    replica = new_model(expert_spec, 0, 0).to(device)
    parts: dict[str, list[float]] = {"matching": [], "expert": [], "transfer": []}

    def timed(name: str, fn) -> None:
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        parts[name].append(time.perf_counter() - started)

    matcher.begin_outer()
    for inner in range(steps + 1):  # the first is a warm-up (kernel selection), dropped below
        timed("transfer", lambda: replica.load_state_dict(
            {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}))
        timed("matching", lambda: matcher.step(replica, 0, inner))
        timed("expert", lambda: trainer.train_inner(store, 0, inner))
    medians = {name: statistics.median(v[1:] or v) for name, v in parts.items()}
    total = sum(medians.values())
    return {"path": path, "seconds": medians, "share": {k: v / total for k, v in medians.items()},
            "classes": len(store.classes)}


# Section 6: every test network of these presets, with the preset's evaluation recipe
# (per-batch DSA, or ImageNet's loader-side augmentation) on the device. --tiny: one per preset.
PRESET_NETWORKS = {"cifar10": ("convnet3", "resnet10", "densenet121"),
                   "imagenet10": ("resnetap10", "resnet18", "efficientnet-b0"), "speech": ("convnet4",)}


def test_networks(device: torch.device, tiny: bool, log: Log) -> dict:
    """Section 6: a 4-epoch run of each preset's test networks on random data of the dataset's
    shape (one image per class to train on), through the protocol's own ``run_task``."""
    from idc_ray.data import get_spec
    from idc_ray.evaluation.protocol import plan_tasks, run_task

    results = {}
    g = torch.Generator().manual_seed(0)
    for preset, models in PRESET_NETWORKS.items():
        cfg = load_preset(preset)
        spec = get_spec(cfg.data.dataset)
        shape = (spec.num_classes, spec.channels, spec.size, spec.size)
        train_x, train_y = torch.rand(shape, generator=g), torch.arange(spec.num_classes)
        test_x = torch.randint(0, 256, (2 * spec.num_classes, *shape[1:]), generator=g, dtype=torch.uint8)
        test_y = torch.arange(spec.num_classes).repeat(2)
        for task in plan_tasks(cfg, spec, "random", models=models[:1] if tiny else models, repeat=1, epochs=4):
            started = time.perf_counter()
            record = run_task(task, train_x, train_y, test_x, test_y, device=device)
            results[f"{preset}/{task.model}"] = {"wall_s": time.perf_counter() - started, "device": record.device,
                                                 "last": record.last, "tests": len(record.history)}
            log(f"[networks] {preset}/{task.model}: 4 epochs in {time.perf_counter() - started:.1f} s on {record.device}")
    return results


def model_vs_runs(ray_job: dict, breakdown: dict, gpu: bool, log: Log) -> dict:
    """The scaling model's prediction (idc_ray/distributed/planner.py) for each layout section 3
    ran, from the parts the time breakdown measured on this device, beside the measured seconds
    (docs/scaling.md): on a GPU every actor shares the one device; on the CPU (--tiny) the
    2-CPU cluster's cores."""
    seconds = breakdown["seconds"]
    times = PartTimes(seconds["matching"], seconds["expert"], seconds["transfer"])
    rows = {}
    for label, run in ray_job["layouts"].items():
        if label.endswith(("_loop", "_expert_on_cpu")):  # another path / the expert off the device
            continue
        names = [a["name"] for a in run["actors"]]
        n, k = sum(x.startswith("matcher-") for x in names), sum(x.startswith("expert-") for x in names)
        predicted = predict(n, k, classes=breakdown["classes"], devices=1 if gpu else 2, gpus=gpu, times=times,
                            max_experts=k, beside=gpu)
        measured = run["seconds_per_inner_iteration"]
        rows[label] = {"matchers": n, "experts": k, "predicted_s": predicted, "measured_s": measured,
                       "error": predicted / measured - 1}
        log(f"[model] {label}: predicted {predicted:.4f} s, measured {measured:.4f} s ({100 * rows[label]['error']:+.0f}%)")
    return rows


def section(name: str, log: Log, fn, errors: dict):
    log(f"== {name}")
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded, so the remaining sections still run
        errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log(traceback.format_exc())
        return None


SECTIONS = ("cuda", "matching", "ray_job", "expert_share", "evaluation", "breakdown", "networks", "scaling_model")


def failed_checks(result: dict, device_type: str) -> list[str]:
    """What makes the check fail. A section or key that is missing is a failure, never a pass: a
    check that did not run has not shown anything."""
    failed = [f"section {name} failed: {err}" for name, err in result.get("errors", {}).items()]
    failed += [f"section {name} has no result" for name in SECTIONS
               if not result.get(name) and name not in result.get("errors", {})]
    cuda = device_type == "cuda"
    ray_result = result.get("ray_job") or {}
    if ray_result:
        if cuda and ray_result.get("actors_on_device") is not True:
            failed.append("a matcher actor did not get the GPU (or it was not recorded)")
        if ray_result.get("stored_equal_within_float32") is not True:
            failed.append("stored data differ across actor counts by more than the device's run-to-run differences "
                          f"(moved {ray_result.get('across_actor_counts_max_abs_diff')}, tolerance "
                          f"{ray_result.get('tolerance')}; or it was not recorded)")
    networks = result.get("networks") or {}
    if cuda and any(not str(r.get("device", "")).startswith("cuda") for r in networks.values()):
        failed.append("a test network did not train on the GPU (or it was not recorded)")
    if cuda and result.get("evaluation") and (result["evaluation"] or {}).get("task_on_device") is not True:
        failed.append("the evaluation task did not run on the GPU (or it was not recorded)")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (width 8, ipc 1): checks the script on a CPU")
    parser.add_argument("--steps", type=int, help="timed matching steps per path (default 10, tiny 1)")
    parser.add_argument("--inner", type=int, help="inner iterations of each Ray run (default 12, tiny 3)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu --tiny", file=sys.stderr)
        return 2
    steps = args.steps or (1 if args.tiny else 10)
    inner = args.inner or (3 if args.tiny else 12)
    log, errors = Log(), {}
    result: dict = {"tiny": args.tiny, "errors": errors}
    from idc_ray.distributed.session import ray_session

    result["cuda"] = section("cuda facts", log, cuda_facts, errors)
    log(str(result["cuda"]))
    result["matching"] = section("matching paths", log, lambda: matching_paths(device, args.tiny, steps), errors)
    if result["matching"]:
        m = result["matching"]
        log(f"class-steps/s {m['class_steps_per_s']}; max |path - loop| {m['max_abs_diff_vs_loop']}; "
            f"peak step bytes {({p: r['peak_step_bytes'] for p, r in m['paths'].items()})}; auto: {m['chosen_path']}")
    with ray_session("local", num_cpus=2 if args.tiny else None, num_gpus=1 if device.type == "cuda" else 0,
                     dashboard=False):
        one_actor: dict = {}

        def job():
            r, one_actor_run = ray_runs(device, args.tiny, inner, log)
            one_actor.update(one_actor_run)
            return r

        result["ray_job"] = section("ray job", log, job, errors)
        # one inner iteration's parts at every preset's shapes (benchmarks/expert_share.py), on this device
        presets, classes = (("mnist",), 1) if args.tiny else (expert_share.PRESETS, 10)
        result["expert_share"] = section("expert share", log, lambda: [
            expert_share.measure(p, device, classes, 1 if args.tiny else 3) for p in presets], errors)
        if one_actor:
            result["evaluation"] = section("evaluation", log, lambda: evaluate_on_ray(one_actor, device, args.tiny, log),
                                           errors)
    result["breakdown"] = section("time breakdown", log, lambda: time_breakdown(device, args.tiny, steps), errors)
    log(f"breakdown: {result['breakdown']}")
    if result.get("ray_job") and result.get("breakdown"):
        result["scaling_model"] = section("scaling model", log, lambda: model_vs_runs(
            result["ray_job"], result["breakdown"], device.type == "cuda", log), errors)
    result["networks"] = section("test networks", log, lambda: test_networks(device, args.tiny, log), errors)
    result["failed_checks"] = failed_checks(result, device.type)
    name = "gpu_tiny" if args.tiny else "gpu"
    path = write(name, result, device)
    (results_dir() / f"{name}.log").write_text("\n".join(log.lines) + "\n")
    print(path)
    for line in result["failed_checks"]:
        print(f"check failed: {line}", file=sys.stderr)
    return 1 if result["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
