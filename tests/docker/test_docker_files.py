"""docker/: the images and the KubeRay RayJob, checked as data (Docker and Kubernetes do not run here).

The Dockerfiles must install the package from the one lock file (constraints.txt) on Python 3.11,
copy what that install needs, and run as a non-root user; the RayJob must parse, run
jobs/condense.py with arguments its own parser accepts, use the image docker/README.md builds,
ask for the GPUs the entrypoint needs, take S3 credentials from a Secret and expose the dashboard.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
RAYJOB = DOCKER / "rayjob.yaml"
DOCKER_README = DOCKER / "README.md"
SCRIPT = "jobs/condense.py"


# ---------------------------------------------------------------------------------------------
# Helpers


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments): continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: a continuation line ends the file"
    return out


def with_args(path: Path) -> list[tuple[str, str]]:
    """instructions() with ${ARG} / $ARG replaced by the ARG defaults declared before them."""
    args: dict[str, str] = {}
    out = []
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')
        for name, value in args.items():
            rest = rest.replace("${" + name + "}", value)
            rest = re.sub(r"\$" + name + r"\b", value, rest)
        out.append((word, rest))
    return out


def pip_installs(path: Path) -> list[str]:
    """Every `pip install ...` command in the Dockerfile's RUN instructions (up to && or ;)."""
    found = []
    for word, rest in instructions(path):
        if word == "RUN":
            for part in re.split(r"&&|;|\|\|", rest):
                if re.search(r"\bpip3?(\.\d+)?\s+install\b|-m\s+pip\s+install\b", part):
                    found.append(" ".join(part.split()))
    return found


def copy_sources(path: Path) -> list[str]:
    """The sources of every COPY/ADD (not from another stage), normalised without ./ and /."""
    sources = []
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            if any(p.startswith("--from") for p in shlex.split(rest)):
                continue
            sources += [p.removeprefix("./").rstrip("/") for p in parts[:-1]]
    return sources


def last(path: Path, word: str) -> str:
    values = [rest for w, rest in with_args(path) if w == word]
    assert values, f"{path.name} has no {word}"
    return values[-1]


@functools.lru_cache(maxsize=None)
def rayjob() -> dict:
    doc = yaml.safe_load(RAYJOB.read_text())
    assert isinstance(doc, dict), "docker/rayjob.yaml must hold one YAML mapping"
    return doc


def head_spec() -> dict:
    return rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]


def worker_specs() -> list[dict]:
    groups = rayjob()["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []
    assert groups, "the RayJob has no worker group"
    return groups


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def ray_containers() -> list[tuple[str, dict]]:
    """(where, container) for the head's and every worker group's Ray container (the first one)."""
    out = [("head", containers(head_spec())[0])]
    out += [(f"worker group {g.get('groupName')}", containers(g)[0]) for g in worker_specs()]
    return out


def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity ("2", 2, "500m") as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@functools.lru_cache(maxsize=None)
def condense_parse_args():
    """jobs/condense.py's own parse_args, without importing torch and Ray (seconds on a busy CPU).

    Only parse_args and the imports it names are executed (argparse and idc_ray.cli's flag
    builder); if that ever stops working, the whole script is imported instead.
    """
    path = ROOT / SCRIPT
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_args")
    used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}

    def needed(node: ast.stmt) -> bool:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return any((alias.asname or alias.name).split(".")[0] in used for alias in node.names)
        return False

    module = ast.Module(body=[n for n in tree.body if needed(n)] + [fn], type_ignores=[])
    namespace = {"__name__": "condense_parse_args", "__doc__": ast.get_docstring(tree, clean=False)}
    try:
        exec(compile(module, str(path), "exec"), namespace)
        namespace["parse_args"](["--output", "probe"])
        return namespace["parse_args"]
    except (NameError, ImportError):
        spec = importlib.util.spec_from_file_location("condense_job_for_docker_tests", path)
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        return job.parse_args


@functools.lru_cache(maxsize=None)
def condense_flags() -> frozenset[str]:
    """The option strings in the usage lines of jobs/condense.py --help."""
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        condense_parse_args()(["--help"])
    usage = help_text.getvalue().split("\n\n")[0]
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage))


def condense_args(command: list[str], where: str):
    """Parse a `python .../jobs/condense.py ARGS` command with the script's own parser."""
    assert Path(command[0]).name.startswith("python"), f"{where}: runs {command[0]!r}, not python"
    assert command[1].endswith(SCRIPT), f"{where}: runs {command[1]!r}, not {SCRIPT}"
    # Whole flag names only: argparse would also take an abbreviation such as --num-actor.
    unknown = [w for w in command[2:] if w.startswith("--") and w.split("=")[0] not in condense_flags()]
    assert not unknown, f"{where}: {unknown} are not flags of jobs/condense.py --help"
    try:
        return condense_parse_args()(command[2:])
    except SystemExit as e:  # argparse prints the offending flag on stderr
        pytest.fail(f"{where}: jobs/condense.py rejects its arguments (exit {e.code}): {shlex.join(command[2:])}")


def entrypoint() -> list[str]:
    return shlex.split(rayjob()["spec"]["entrypoint"])


def entrypoint_args():
    return condense_args(entrypoint(), "docker/rayjob.yaml entrypoint")


def readme_commands() -> list[str]:
    """The shell commands in docker/README.md's ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOCKER_README.read_text(), flags=re.S):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            if (pending + line).strip():
                commands.append(" ".join((pending + line).split()))
            pending = ""
    return commands


def built_images(dockerfile: str) -> set[str]:
    """The tags docker/README.md builds from docker/<dockerfile> (`docker build -f ... -t TAG`)."""
    tags = set()
    for cmd in readme_commands():
        words = shlex.split(cmd)
        if words[:2] == ["docker", "build"] and "-f" in words and words[words.index("-f") + 1] == f"docker/{dockerfile}":
            tags.add(words[words.index("-t") + 1])
    return tags


def constraint(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M | re.I)
    assert match, f"constraints.txt pins no {name}"
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# The images


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_installs_the_package_from_the_one_lock_file(kind):
    path = DOCKERFILES[kind]
    installs = pip_installs(path)
    assert installs, f"{path.name} never runs pip install"
    for cmd in installs:
        words = shlex.split(cmd)
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", \
            f"{path.name}: `{cmd}` is not constrained by constraints.txt"
        assert not {"-r", "--requirement", "-U", "--upgrade", "--pre"} & set(words), f"{path.name}: `{cmd}`"
    assert any(shlex.split(cmd)[-1] == "." for cmd in installs), f"{path.name} never installs the project (.)"
    # The lock file is in the image before the first install.
    order = [(w, r) for w, r in instructions(path) if w in ("COPY", "RUN")]
    first_install = next(i for i, (w, r) in enumerate(order) if w == "RUN" and "pip install" in " ".join(r.split()))
    assert any(w == "COPY" and "constraints.txt" in r for w, r in order[:first_install]), \
        f"{path.name} installs before copying constraints.txt"


def test_both_images_use_the_same_lock_file_and_pin_python_3_11():
    locks = set()
    for path in DOCKERFILES.values():
        for cmd in pip_installs(path):
            words = shlex.split(cmd)
            locks |= {words[i + 1] for i, w in enumerate(words) if w in ("-c", "--constraint", "-r", "--requirement")}
    assert locks == {"constraints.txt"}, f"the images install from {sorted(locks)}, not one lock file"
    assert "Python 3.11" in (ROOT / "constraints.txt").read_text().splitlines()[0], \
        "constraints.txt's header no longer says it is the Python 3.11 set"
    for kind, path in DOCKERFILES.items():
        resolved = with_args(path)
        base = next(rest for word, rest in resolved if word == "FROM").split()[0]
        runs = " ".join(rest for word, rest in resolved if word == "RUN")
        if kind == "cpu":
            assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), f"CPU base image is {base}"
        else:
            assert re.search(r"\bpython3\.11\b", runs), "the GPU image does not install python3.11"
            assert re.search(r"python3\.11 -m venv", runs), "the GPU image's venv is not made with python3.11"
        assert "sys.version_info[:2] == (3, 11)" in runs, f"{path.name} does not assert Python 3.11 at build time"


def test_gpu_image_is_a_cuda_runtime_base_matching_the_locked_cuda_wheels():
    base = next(rest for word, rest in with_args(DOCKERFILES["gpu"]) if word == "FROM").split()[0]
    match = re.fullmatch(r"(?:nvcr\.io/)?nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-(?:cudnn\d*-)?runtime-ubuntu\d\d\.\d\d", base)
    assert match, f"the GPU image is not on an nvidia/cuda runtime image: {base}"
    locked = constraint("nvidia-cuda-runtime").split(".")
    assert match.groups() == tuple(locked[:2]), \
        f"base CUDA {'.'.join(match.groups())} differs from the locked CUDA runtime wheels {'.'.join(locked[:2])}"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_copies_what_the_install_needs(kind):
    path = DOCKERFILES[kind]
    sources = copy_sources(path)
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    needed = {"pyproject.toml", "constraints.txt", readme, "idc_ray", "jobs"}
    assert needed <= set(sources), f"{path.name} does not copy {sorted(needed - set(sources))}"
    for source in sources:
        assert (ROOT / source).exists(), f"{path.name} copies {source}, which is not in the repository"
    # A Dockerfile-specific ignore file must not drop them from the build context.
    ignore = path.with_name(path.name + ".dockerignore")
    if ignore.exists():
        lines = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if "*" in lines:
            kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
            assert needed <= kept, f"{ignore.name} leaves out {sorted(needed - kept)}"
        else:
            assert not needed & {ln.rstrip("/") for ln in lines}, f"{ignore.name} excludes a needed file"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_runs_as_non_root_and_shows_the_job_help(kind):
    path = DOCKERFILES[kind]
    user = last(path, "USER").split(":")[0]
    assert user not in ("root", "0"), f"{path.name} runs as root"
    assert re.search(rf"--uid {re.escape(user)}\b|useradd .*\b{re.escape(user)}$", " ".join(
        rest for word, rest in with_args(path) if word == "RUN")), f"{path.name}: USER {user} is never created"
    cmd = yaml.safe_load(last(path, "CMD"))  # exec form is a JSON (so YAML) list
    assert isinstance(cmd, list) and cmd[-2:] == [SCRIPT, "--help"] and cmd[0].startswith("python"), \
        f"{path.name}: CMD {cmd} does not show {SCRIPT} --help"
    assert last(path, "WORKDIR") == "/home/ray/app"


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), RAYJOB, DOCKER_README], ids=lambda p: p.name)
def test_no_credentials_are_written_into_the_files(path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path.name} holds an AWS access key id"
    assert not re.search(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", text, flags=re.I), \
        f"{path.name} holds an AWS secret key"
    if path.name.startswith("Dockerfile"):
        for word, rest in instructions(path):
            if word in ("ENV", "ARG"):
                assert not re.search(r"AWS_|SECRET|PASSWORD|TOKEN|ACCESS_KEY", rest, flags=re.I), \
                    f"{path.name}: {word} {rest} bakes a credential into the image"


# ---------------------------------------------------------------------------------------------
# The RayJob


def test_rayjob_parses_and_runs_condense_with_flags_the_job_accepts():
    doc = rayjob()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert {"entrypoint", "rayClusterSpec"} <= set(spec)
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    assert spec["rayClusterSpec"]["rayVersion"] == constraint("ray"), "rayVersion differs from the ray in the image"

    args = entrypoint_args()
    assert args.preset == "cifar10"
    assert args.data_uri.startswith("s3://") and args.output.startswith("s3://")
    assert args.backend == "ray" and args.address is None  # the job joins the RayJob's cluster
    assert args.num_actors >= 1 and args.gpus_per_actor >= 1
    assert args.checkpoint_every >= 1 and args.resume, "a retried RayJob must continue from its checkpoint"
    assert not args.inject_fault

    from idc_ray.cli import config_from_args

    cfg = config_from_args(args)  # the preset exists and the flags make a valid config (no torch import)
    assert cfg.data.data_uri == args.data_uri
    assert args.num_actors <= 10, "more matcher actors than CIFAR-10 classes"


def test_rayjob_entrypoint_runs_the_script_baked_into_the_image():
    script = entrypoint()[1]
    if script.startswith("/"):
        for path in DOCKERFILES.values():
            workdir = last(path, "WORKDIR")
            assert script == f"{workdir}/{SCRIPT}", f"{script} is not where {path.name} puts {SCRIPT}"
    else:
        assert "working_dir" in (rayjob()["spec"].get("runtimeEnvYAML") or ""), \
            "a relative script path needs a working_dir in runtimeEnvYAML"


def test_rayjob_image_is_the_one_the_readme_builds_and_pushes():
    images = {where: c["image"] for where, c in ray_containers()}
    assert len(set(images.values())) == 1, f"head and workers use different images: {images}"
    image = next(iter(images.values()))
    assert image in built_images("Dockerfile"), \
        f"docker/README.md does not build {image} from docker/Dockerfile (it builds {built_images('Dockerfile')})"
    assert f"docker push {image}" in readme_commands()
    assert built_images("Dockerfile.cpu"), "docker/README.md does not build docker/Dockerfile.cpu"
    submitter = rayjob()["spec"].get("submitterPodTemplate")
    if submitter:
        assert containers(submitter)[0]["image"] == image


def test_rayjob_worker_gpus_cover_the_actors_the_entrypoint_asks_for():
    args = entrypoint_args()
    per_actor = args.gpus_per_actor
    expert = args.expert_gpus or 0
    nodes = []  # (cpus, gpus) that Ray sees on each pod
    total = 0.0
    for group in worker_specs():
        replicas = group.get("replicas", 1)
        assert group.get("minReplicas", 0) <= replicas <= group.get("maxReplicas", replicas)
        limits = containers(group)[0]["resources"]["limits"]
        gpus = quantity(limits.get("nvidia.com/gpu", 0))
        assert gpus >= per_actor, f"worker group {group.get('groupName')}: {gpus:g} GPUs < --gpus-per-actor {per_actor:g}"
        requests = containers(group)[0]["resources"].get("requests", {})
        if "nvidia.com/gpu" in requests:
            assert quantity(requests["nvidia.com/gpu"]) == gpus, "GPU requests and limits must be equal"
        cpus = quantity(group.get("rayStartParams", {}).get("num-cpus", limits["cpu"]))
        nodes += [[cpus, gpus]] * replicas
        total += replicas * gpus
    assert total >= args.num_actors * per_actor, \
        f"{total:g} worker GPUs < --num-actors {args.num_actors} x --gpus-per-actor {per_actor:g}"
    assert total >= args.num_actors * per_actor + expert, "no GPU left for --expert-gpus"
    head_limits = containers(head_spec())[0]["resources"]["limits"]
    head_cpus = quantity(head_spec().get("rayStartParams", {}).get("num-cpus", head_limits.get("cpu", 0)))

    # The job's placement group (one bundle per matcher, one for the expert) must fit on the pods.
    if args.cpus_per_actor is not None:
        free = [list(n) for n in nodes] + [[head_cpus, 0.0]]
        bundles = [(args.cpus_per_actor, per_actor)] * args.num_actors + [(args.cpus_per_actor, expert)]
        for cpus, gpus in sorted(bundles, key=lambda b: (-b[1], -b[0])):
            node = next((n for n in free if n[0] >= cpus and n[1] >= gpus), None)
            assert node is not None, f"bundle {{CPU: {cpus:g}, GPU: {gpus:g}}} fits on no pod (left: {free})"
            node[0] -= cpus
            node[1] -= gpus


def test_rayjob_takes_s3_credentials_from_a_secret():
    secret_names = set()
    for where, container in ray_containers():
        env = {e["name"]: e for e in container.get("env", [])}
        from_secret = {ref["secretRef"]["name"] for ref in container.get("envFrom", []) if "secretRef" in ref}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if name in env:
                ref = env[name].get("valueFrom", {}).get("secretKeyRef")
                assert ref and "value" not in env[name], f"{where}: {name} is not read from a Secret"
                assert not ref.get("optional", False), f"{where}: {name} must not be optional"
                secret_names.add(ref["name"])
            else:
                assert from_secret, f"{where}: {name} comes from no Secret"
        for name, entry in env.items():
            if re.search(r"AWS_|SECRET|PASSWORD|TOKEN", name):
                assert "value" not in entry, f"{where}: {name} is inlined"
        if "AWS_ENDPOINT_URL" in env:
            assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"].get("optional") is True
        secret_names |= from_secret
    assert len(secret_names) == 1, f"pods read credentials from several Secrets: {secret_names}"
    (secret,) = secret_names
    assert re.search(rf"kubectl create secret generic {secret}\b", DOCKER_README.read_text()), \
        f"docker/README.md does not show how to create the Secret {secret}"


def test_rayjob_exposes_the_dashboard_and_metrics():
    head = head_spec()
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    ports = {p["containerPort"]: p.get("name") for p in containers(head)[0]["ports"]}
    assert ports.get(8265) == "dashboard", "the head does not expose the dashboard on 8265"
    metrics = int(head["rayStartParams"].get("metrics-export-port", 8080))
    assert metrics in ports, f"the head does not expose the metrics port {metrics}"
    assert head.get("serviceType", "ClusterIP") in ("ClusterIP", "NodePort", "LoadBalancer")


def test_readme_shows_apply_watch_port_forward_and_the_same_job_with_ray_job_submit():
    commands = readme_commands()
    text = DOCKER_README.read_text()
    assert "kubectl apply -f docker/rayjob.yaml" in commands
    name = rayjob()["metadata"]["name"]
    assert any(c.startswith(f"kubectl get rayjob {name}") for c in commands), "no command watches the RayJob"
    assert re.search(r"kubectl port-forward \S+ 8265:8265", text), "no port-forward of the dashboard"

    submits = [c for c in commands if c.startswith("ray job submit")]
    assert submits, "docker/README.md has no `ray job submit`"
    words = shlex.split(submits[0])
    assert "--address" in words
    job = condense_args(words[words.index("--") + 1:], "docker/README.md ray job submit")
    manifest = entrypoint_args()
    for flag in ("preset", "ipc", "factor", "data_uri", "output", "num_actors", "gpus_per_actor", "expert_gpus",
                 "cpus_per_actor", "checkpoint_every", "resume"):
        assert getattr(job, flag) == getattr(manifest, flag), f"`ray job submit` and the RayJob differ in --{flag}"
