"""The images, built and run for real (`make test-images`; docs/containers.md).

The three images are built once per session by deploy/docker/build.sh (what `make images` runs:
podman here, docker where a daemon answers; minutes on a fresh machine, seconds once cached). Then,
as docker-compose.yml wires them: the training image trains small runs into a volume and archives
one into a model-store volume; a serving image serves that store, read-only. Each serving image
takes the same tests (`flavour`): the torch image a TorchScript archive, the slim image (no torch)
an ONNX one. The tests check its answers, what a security review would look at, the operator's
commands run from the training image in the server's network namespace (Compose's `ops` service),
restart and stop. Last, the Compose chain itself (train -> archive -> torchserve) under
podman-compose (or `docker compose`).

Where no engine can run a container (none installed, or inside an unprivileged container) the tier
is skipped with the reason; with CI=true it fails instead.

Everything created is named cifar10-test-<pid>-* and removed at the end. Measured times (build,
start to first prediction, stop) are printed: `make test-images` shows them (pytest -rP).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from helpers import PORT_BASE, REPO, require_container_engine

from container.keys import write_secret
from harness.engine import engine_env
from model import CLASSES
from serve.archive import kserve_layout
from serve.client import Client
from serve.errors import ServiceError

PREFIX = f"cifar10-test-{os.getpid()}"
CONTAINER_PORTS = PORT_BASE + 100  # the serving container's inference port; management, metrics follow
COMPOSE_PORTS = PORT_BASE + 200
TRAIN_ARGS = ["--train-subset", "2000", "--test-subset", "500", "--epochs", "1"]
STOP_TIMEOUT = 30  # seconds the engine waits after SIGTERM before SIGKILL
HEALTH_TIMEOUT = 240


@dataclass
class Engine:
    """The container engine build.sh chose, run as a command line."""

    name: str  # podman or docker
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and result.returncode != 0:
            pytest.fail(f"`{self.name} {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def healthy(self, container: str) -> bool:
        """The image's own HEALTHCHECK: podman runs it on demand (no systemd here to run it on a
        timer); docker runs it on its interval and reports the state."""
        if self.name == "podman":
            return self("healthcheck", "run", container, check=False).returncode == 0
        state = self("inspect", "--format", "{{.State.Health.Status}}", container, check=False).stdout.strip()
        return state == "healthy"

    def wait_healthy(self, container: str, timeout: float = HEALTH_TIMEOUT) -> float:
        started = time.monotonic()
        while not self.healthy(container):
            running = self("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
            if running != "true" or time.monotonic() - started > timeout:
                logs = self("logs", "--tail", "40", container, check=False)
                pytest.fail(
                    f"{container} not healthy (running: {running}):\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
                )
            time.sleep(2)
        return time.monotonic() - started


@dataclass
class Images:
    engine: Engine
    serve: str
    serve_slim: str
    train: str
    build_seconds: dict[str, int]


# flavour -> (the Images field of its serving image, the archive format it serves)
SERVING = {"torch": ("serve", "torchscript"), "slim": ("serve_slim", "onnx")}
SLIM_IMAGE_LIMIT = 500_000_000  # bytes, uncompressed


def build(env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    """deploy/docker/build.sh: both images; its decisions and the build output go to `log`."""
    with log.open("w") as stderr:
        result = subprocess.run(
            ["deploy/docker/build.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    if result.returncode != 0:
        pytest.fail(
            f"deploy/docker/build.sh exited {result.returncode}; its log {log} ends:\n{log.read_text()[-4000:]}"
        )
    return result


def require_layered_storage(env: dict[str, str]) -> None:
    """podman must share image layers (overlay), as deploy/docker/storage-rootless.conf sets for a
    normal user: with vfs every layer is a full copy, and the tier would take many times as long."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return  # build.sh builds with docker
    info = ["podman", "info", "--format", "{{.Store.GraphDriverName}}"]
    driver = subprocess.run(info, env=env, capture_output=True, text=True).stdout.strip()
    assert driver == "overlay", (
        f"podman stores images with {driver!r}, not overlay (deploy/docker/storage-rootless.conf)"
    )


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Images:
    """The three images, built once per session; the tier is skipped (CI=true: fails) where no
    container can run."""
    env = engine_env()
    require_container_engine(env)
    require_layered_storage(env)
    log = tmp_path_factory.mktemp("build") / "build.log"
    started = time.monotonic()
    built = build(env, log)
    engine_name = re.search(r"^build\.sh: engine: (\w+)$", log.read_text(), re.M).group(1)
    tags = dict(re.findall(r"^(\S+?):(\S+) built in", built.stdout, re.M))
    seconds = {name: int(s) for name, s in re.findall(r"^(\S+?):\S+ built in (\d+) s$", built.stdout, re.M)}
    print(f"images built in {time.monotonic() - started:.0f} s with {engine_name}: {built.stdout}")
    return Images(
        Engine(engine_name, env),
        f"cifar10-serve:{tags['cifar10-serve']}",
        f"cifar10-serve-slim:{tags['cifar10-serve-slim']}",
        f"cifar10-train:{tags['cifar10-train']}",
        seconds,
    )


def remove(engine: Engine, kind: str, *names: str) -> None:
    """Removes containers (running ones too), volumes or images; those already gone are skipped."""
    force = ["-f"] if kind == "container" else []
    for name in names:
        engine(kind, "rm", *force, name, check=False)


@pytest.fixture(scope="module")
def runs(images, data_source):
    """Compose's data and models volumes with two small runs trained as Compose's `train` does:
    `first` (served) and `second` (rolled out beside it)."""
    names = {key: f"{PREFIX}-{key}" for key in ("data", "models")}
    for name in names.values():
        images.engine("volume", "create", name)
    try:
        for run_name in ("first", "second"):
            train_into(images, names, data_source, run_name)
        yield names
    finally:
        remove(images.engine, "container", f"{PREFIX}-train")
        remove(images.engine, "volume", *names.values())


@dataclass
class Flavour:
    name: str  # a key of SERVING
    image: str
    model_format: str  # python -m serve archive --format
    volumes: dict[str, str]  # data, models, model-store, run


@pytest.fixture(scope="module", params=sorted(SERVING))
def flavour(request, images, runs):
    """A serving image with volumes of its own: a model store holding `first` archived as Compose's
    `archive` does, in the format that image serves, and a run folder for its keys."""
    engine = images.engine
    field, model_format = SERVING[request.param]
    names = {**runs, **{key: f"{PREFIX}-{request.param}-{key}" for key in ("model-store", "run")}}
    for key in ("model-store", "run"):
        engine("volume", "create", names[key])
    try:
        engine(
            "run", "--rm", "--name", f"{PREFIX}-archive",
            "-v", f"{names['models']}:/app/models:ro", "-v", f"{names['model-store']}:/app/model-store",
            images.train, "python", "-m", "serve", "archive", "--run", "models/first", "--format", model_format,
        )  # fmt: skip
        yield Flavour(request.param, getattr(images, field), model_format, names)
    finally:
        remove(engine, "container", *(f"{PREFIX}-{role}" for role in ("serve", "ops", "archive")))
        remove(engine, "volume", names["model-store"], names["run"])


def train_into(images: Images, names: dict[str, str], data_source: Path, run_name: str) -> None:
    """Compose's `train` with deploy/compose/local-data.yml: the local CIFAR-10 copy, read-only."""
    started = time.monotonic()
    images.engine(
        "run", "--rm", "--name", f"{PREFIX}-train",
        "-v", f"{names['data']}:/app/data", "-v", f"{names['models']}:/app/models",
        "-v", f"{data_source.resolve()}:/source/cifar10:ro", "-e", "CIFAR10_DATA=/source/cifar10",
        images.train, "python", "-m", "train", *TRAIN_ARGS, "--run-name", run_name,
    )  # fmt: skip
    print(f"training run {run_name} in the training image: {time.monotonic() - started:.0f} s")


@dataclass
class Served:
    name: str
    client: Client
    key_dir: Path
    engine: Engine

    def refresh_keys(self) -> None:
        """key_file.json from the container (TorchServe writes new keys at each start)."""
        keys = self.engine("exec", self.name, "cat", "/home/model-server/run/key_file.json").stdout
        write_secret(self.key_dir / "key_file.json", keys)
        self.client.refresh_keys()


def client_on(port_base: int, key_dir: Path) -> Client:
    return Client(
        f"http://127.0.0.1:{port_base}",
        f"http://127.0.0.1:{port_base + 1}",
        f"http://127.0.0.1:{port_base + 2}",
        key_file=key_dir / "key_file.json",
    )


@pytest.fixture(scope="module")
def served(images, flavour, tmp_path_factory, cifar_test_jpegs):
    """The flavour's serving image on its volumes, as Compose's `torchserve` service (init, published
    ports, read-only model store); ready once its own health check passes and a prediction answers."""
    engine, name, volumes = images.engine, f"{PREFIX}-serve", flavour.volumes
    started = time.monotonic()
    engine(
        "run", "-d", "--name", name, "--init",
        "-p", f"{CONTAINER_PORTS}:8080",
        "-p", f"127.0.0.1:{CONTAINER_PORTS + 1}:8081",
        "-p", f"127.0.0.1:{CONTAINER_PORTS + 2}:8082",
        "-v", f"{volumes['model-store']}:/home/model-server/model-store:ro",
        "-v", f"{volumes['run']}:/home/model-server/run",
        flavour.image,
    )  # fmt: skip
    healthy_after = engine.wait_healthy(name)
    key_dir = tmp_path_factory.mktemp("container-keys")
    serving = Served(name, client_on(CONTAINER_PORTS, key_dir), key_dir, engine)
    serving.refresh_keys()
    serving.client.predict(cifar_test_jpegs["cat"][0])
    print(
        f"{flavour.image}: healthy {healthy_after:.1f} s after `{engine.name} run`, "
        f"first prediction {time.monotonic() - started:.1f} s after it"
    )
    yield serving
    remove(engine, "container", name)


def test_images_are_tagged_with_the_version_and_the_commit(images):
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    for image in (images.serve, images.serve_slim, images.train):
        assert image.split(":")[1].startswith(f"{version}-{commit}"), image
        labels = json.loads(images.engine("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)
        assert labels["org.opencontainers.image.version"] == version
        size = int(images.engine("image", "inspect", "--format", "{{.Size}}", image).stdout)
        print(f"{image}: {size / 1e9:.2f} GB, built in {images.build_seconds[image.split(':')[0]]} s")


@pytest.mark.parametrize("role", ["serve", "serve_slim"])
def test_serve_image_keeps_its_health_check(images, role):
    check = json.loads(
        images.engine("image", "inspect", "--format", "{{json .Config.Healthcheck}}", getattr(images, role)).stdout
    )
    assert check and "container.healthcheck" in " ".join(check["Test"]), check


def test_slim_image_has_no_torch_and_stays_under_500_mb(images):
    size = int(images.engine("image", "inspect", "--format", "{{.Size}}", images.serve_slim).stdout)
    assert size <= SLIM_IMAGE_LIMIT, f"{images.serve_slim} is {size / 1e6:.0f} MB"
    imports = images.engine(
        "run", "--rm", images.serve_slim, "python3", "-c", "import torch", check=False
    )  # fmt: skip
    assert imports.returncode != 0 and "No module named 'torch'" in imports.stderr, imports


def local_ca_lines() -> list[str]:
    """A line of each CA certificate this machine added to its trust store (a TLS-intercepting
    proxy's, here): pip in the build trusted them through a mount, so they must not be in an image."""
    lines = []
    for cert in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        body = [line for line in cert.read_text().splitlines() if line and not line.startswith("-----")]
        lines.append(max(body[1:-1] or body, key=len))
    return lines


@pytest.mark.parametrize("role", ["serve", "serve_slim", "train"])
def test_image_holds_no_key_model_data_or_secret_of_this_machine(images, role):
    image = getattr(images, role)
    engine = images.engine
    env = json.loads(engine("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout)
    leaked = [
        item for item in env if re.search(r"PROXY|CERT|CA_BUNDLE|TOKEN|PASSWORD|SECRET", item.split("=")[0], re.I)
    ]
    assert not leaked, f"{image} keeps the build machine's settings: {leaked}"
    history = engine("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "host-ca-bundle" not in history and "pip.conf" not in history
    empty_folders = "/app/data /app/models /app/model-store /home/model-server/model-store"
    find = (
        "find / -xdev \\( -name key_file.json -o -name '*.mar' -o -name model.pt -o -name pip.conf"
        " -o -name host-ca-bundle.crt -o -name .env -o -iname 'cifar-10*' -o -name 'cifar10-jpeg*'"
        f" -o -name 'data_batch_*' \\) -print; for d in {empty_folders}; do [ ! -d $d ] || find $d -mindepth 1; done"
    )
    found = engine("run", "--rm", "--entrypoint", "sh", image, "-c", find, check=False).stdout.split()
    assert not found, f"{image} holds: {found}"
    secrets = engine(
        "run", "--rm", "--entrypoint", "sh", image, "-c",
        "grep -rlI -e 'PRIVATE KEY-----' /etc /home /app /root 2>/dev/null; true",
    ).stdout.split()  # fmt: skip
    assert not secrets, f"{image} holds private keys: {secrets}"
    ca_lines = local_ca_lines()
    if ca_lines:
        patterns = " ".join(f"-e '{line}'" for line in ca_lines)
        grep = f"grep -rlIF {patterns} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; true"
        holding = engine("run", "--rm", "--entrypoint", "sh", image, "-c", grep, timeout=600).stdout.split()
        assert not holding, f"{image} holds this machine's own CA certificate(s) in {holding}"
    print(f"{image}: no key, model, data, pip.conf or CA of this machine ({len(ca_lines)} local CA(s) looked for)")


def test_serving_container_answers_raw_and_multipart_and_rejects_a_bad_body(served, cifar_test_jpegs):
    image = cifar_test_jpegs["ship"][0]
    raw = served.client.predict(image)
    multipart = served.client.predict(image, field="image")
    assert raw == multipart and raw["prediction"] in CLASSES and 0 < raw["confidence"] <= 1, raw
    with pytest.raises(ServiceError) as bad:
        served.client.predict(b"not an image")
    assert bad.value.status == 400 and json.loads(bad.value.body), bad.value


def test_server_runs_as_non_root_with_management_and_metrics_on_loopback_only(served):
    engine = served.engine
    processes = engine("exec", served.name, "ps", "-eo", "uid=,comm=").stdout.split("\n")
    uids = {line.split()[0] for line in processes if line.strip()}
    assert uids == {"1000"}, processes  # TorchServe's Java frontend, its workers, the init process
    ports = engine("port", served.name).stdout
    published = dict(re.findall(r"^(\d+)/tcp -> ([\d.]+):\d+$", ports, re.M))
    assert published == {"8080": "0.0.0.0", "8081": "127.0.0.1", "8082": "127.0.0.1"}, ports


def test_model_store_is_mounted_read_only(served):
    mounts = json.loads(served.engine("inspect", "--format", "{{json .Mounts}}", served.name).stdout)
    store = next(mount for mount in mounts if mount["Destination"] == "/home/model-server/model-store")
    assert store["RW"] is False, store
    write = served.engine("exec", served.name, "touch", "/home/model-server/model-store/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def ops(images: Images, flavour: Flavour, served: Served, *args: str) -> str:
    """Compose's `ops` service: the training image, in TorchServe's network namespace, with the keys."""
    volumes = flavour.volumes
    result = images.engine(
        "run", "--rm", "--name", f"{PREFIX}-ops", "--network", f"container:{served.name}",
        "-v", f"{volumes['models']}:/app/models:ro", "-v", f"{volumes['model-store']}:/app/model-store",
        "-v", f"{volumes['run']}:/keys:ro",
        "--entrypoint", "python", images.train, "-m", "serve", "--workdir", "/keys", *args,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def ready_workers(served: Served, version: str | None = None) -> int:
    return sum(worker["status"] == "READY" for worker in served.client.describe(version=version)[0]["workers"])


def test_scale_up_and_down_inside_the_container(images, flavour, served):
    ops(images, flavour, served, "scale", "3")
    assert ready_workers(served) == 3
    ops(images, flavour, served, "scale", "2")  # TorchServe runs `kill -9`: procps in the image
    assert ready_workers(served) == 2


def test_roll_out_a_second_version_and_roll_back(images, flavour, served, cifar_test_jpegs):
    first = served.client.describe()[0]["modelVersion"]
    rollout = ops(images, flavour, served, "rollout", "--run", "models/second", "--format", flavour.model_format)
    assert "registered" in rollout.lower()
    versions = ops(images, flavour, served, "versions")
    second = next(line.split(":")[0] for line in versions.splitlines() if not line.startswith(first))
    for version in (second, first):  # roll out, then roll back
        ops(images, flavour, served, "set-default", version)
        assert served.client.describe()[0]["modelVersion"] == version
        served.client.predict(cifar_test_jpegs["dog"][0])
    ops(images, flavour, served, "retire", second)
    print(f"rolled out {second} beside {first} and back:\n{versions}")


def test_restart_serves_the_same_version(served, cifar_test_jpegs):
    before = served.client.describe()[0]["modelVersion"]
    started = time.monotonic()
    served.engine("restart", "-t", str(STOP_TIMEOUT), served.name)
    served.engine.wait_healthy(served.name)
    served.refresh_keys()  # new keys at each start
    assert served.client.describe()[0]["modelVersion"] == before
    served.client.predict(cifar_test_jpegs["frog"][0])
    print(f"restarted: version {before} answered again {time.monotonic() - started:.1f} s after `restart`")


def test_stop_exits_cleanly_within_the_stop_timeout(served):
    started = time.monotonic()
    served.engine("stop", "-t", str(STOP_TIMEOUT), served.name)
    seconds = time.monotonic() - started
    exit_code = int(served.engine("inspect", "--format", "{{.State.ExitCode}}", served.name).stdout)
    print(f"stop: TorchServe exited with code {exit_code} after {seconds:.1f} s (stop timeout {STOP_TIMEOUT} s)")
    # 0: container/entrypoint.py had TorchServe stop (143: the launcher died of SIGTERM; 137: killed)
    assert seconds < STOP_TIMEOUT and exit_code == 0, (exit_code, seconds)


def test_rebuild_after_a_handler_change_rebuilds_only_the_last_layers(images, tmp_path):
    """A copy of the build context (the working tree, mtimes kept) with the handler touched."""
    context = tmp_path / "context"
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout
    context.mkdir()
    subprocess.run(
        f"tar -c --null -T - | tar -x -C {context}", shell=True, cwd=REPO, input=files, check=True
    )  # tar keeps the mtimes
    handler = context / "handler" / "cifar10_handler.py"
    handler.write_text(handler.read_text() + "\n# touched by tests/e2e/test_containers.py\n")
    env = {**images.engine.env, "IMAGE_PREFIX": f"{PREFIX}-rebuild-"}
    log = tmp_path / "rebuild.log"
    started = time.monotonic()
    built = subprocess.run(
        [str(context / "deploy/docker/build.sh")], env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )
    seconds = time.monotonic() - started
    assert built.returncode == 0, log.read_text()[-4000:]
    try:
        # "[1/3] STEP 10/12: COPY handler/ handler/" then "--> Using cache ..." when the layer is reused
        steps = re.findall(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*?)\n(?:--> (Using cache))?", log.read_text(), re.M)
        # The steps that make a layer (metadata steps such as CMD or LABEL only rewrite the config).
        rebuilt = [step for step, cached in steps if not cached and step.startswith(("RUN", "COPY"))]
        print(f"rebuild after touching the handler: {seconds:.0f} s; steps run again: {rebuilt}")
        assert rebuilt, "the changed handler was not copied again"
        assert rebuilt[0] == "COPY handler/ handler/", rebuilt
        assert not any("pip install" in step or "apt-get" in step for step in rebuilt), rebuilt
    finally:
        for image in re.findall(r"^(\S+) built in", built.stdout, re.M):
            remove(images.engine, "image", image, image.split(":")[0] + ":local")


@pytest.fixture
def compose(images):
    """podman-compose (requirements.txt) with podman; `docker compose` with docker."""
    if images.engine.name == "docker":
        return ["docker", "compose"]
    found = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which("podman-compose")
    if not found:
        pytest.fail("podman-compose not found: `.venv/bin/pip install podman-compose==1.6.0` (requirements.txt)")
    return [found]


def compose_run(base: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*base, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def test_compose_chain_trains_archives_and_serves(images, compose, data_source, tmp_path, cifar_test_jpegs):
    """`up train archive torchserve` (prometheus and grafana need images pulled from a registry:
    their configuration is checked statically in test_operations.py and test_monitoring.py)."""
    project = f"{PREFIX}-compose"
    override = tmp_path / "test-override.yml"
    # Compose's own train command (train only when the volume has no model yet), on a small subset.
    train = f"[ -e models/latest/model.pt ] || exec python -m train {' '.join(TRAIN_ARGS)}"
    override.write_text(yaml.safe_dump({"services": {"train": {"command": ["sh", "-c", train]}}}))
    env = {
        **images.engine.env,
        "CIFAR10_DATA": str(data_source.resolve()),
        "GRAFANA_ADMIN_PASSWORD": "unused-by-this-test",
        "INFERENCE_PORT": str(COMPOSE_PORTS),
        "MANAGEMENT_PORT": str(COMPOSE_PORTS + 1),
        "METRICS_PORT": str(COMPOSE_PORTS + 2),
    }
    files = ["-f", "docker-compose.yml", "-f", "deploy/compose/local-data.yml", "-f", str(override)]
    base = [*compose, "-p", project, *files]
    # Compose names the containers <project>_<service>_1 (podman-compose, Compose 1) or
    # <project>-<service>-1 (Compose 2): ask for the names instead of guessing.
    try:
        started = time.monotonic()
        # podman-compose 1.6.0 creates each container with podman's `--requires` on those it depends
        # on: starting archive then starts train again, and when that run ends at once (a model is
        # there) podman refuses to start archive ("container state improper"). Created first
        # without it (`--no-deps`), the containers are kept as they are by `up`, which then
        # starts them in order, each once its dependencies have stopped (docs/containers.md).
        compose_run(base, env, "up", "--no-start", "--no-deps", "--no-build", "train", "archive", "torchserve")
        compose_run(base, env, "up", "-d", "--no-build", "train", "archive", "torchserve")
        names = images.engine(
            "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}"
        )
        containers = {re.split(r"[-_]", name[len(project) + 1 :])[0]: name for name in names.stdout.split()}
        assert set(containers) == {"train", "archive", "torchserve"}, names.stdout
        # podman-compose 1.6.0 waits for a job to stop, whatever its exit code: check both, and the order.
        for job in ("train", "archive"):
            exit_code = images.engine("wait", containers[job]).stdout.strip()
            assert exit_code == "0", (job, exit_code, images.engine("logs", containers[job]).stderr[-2000:])
        times = {
            service: [int(t) for t in images.engine("inspect", "--format", when, name).stdout.split()]
            for service, name in containers.items()
            for when in ["{{.State.StartedAt.UnixNano}} {{.State.FinishedAt.UnixNano}}"]
        }
        assert times["train"][1] <= times["archive"][0] and times["archive"][1] <= times["torchserve"][0], times
        images.engine.wait_healthy(containers["torchserve"])
        key_dir = tmp_path / "keys"
        key_dir.mkdir()
        serving = Served(containers["torchserve"], client_on(COMPOSE_PORTS, key_dir), key_dir, images.engine)
        serving.refresh_keys()
        image = cifar_test_jpegs["truck"][0]
        assert serving.client.predict(image) == serving.client.predict(image, field="image")
        with pytest.raises(ServiceError) as bad:
            serving.client.predict(b"not an image")
        assert bad.value.status == 400
        print(f"compose up train archive torchserve: first prediction {time.monotonic() - started:.0f} s after `up`")
        versions = compose_run(base, env, "--profile", "ops", "run", "--rm", "--no-deps", "ops", "versions")
        assert "(default)" in versions.stdout, versions.stdout
    finally:
        subprocess.run([*base, "down", "-v"], cwd=REPO, env=env, capture_output=True, timeout=300)


def test_the_kserve_layout_serves_v2_as_our_serving_runtime_starts_it(images, trained_run, tmp_path, cifar_test_jpegs):
    """`make kserve-layout`'s folder mounted read-only at /mnt/models, as KServe's storage
    initializer leaves it, and the slim image started with deploy/kserve's ServingRuntime command
    and arguments (`--model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`,
    KServe's own TorchServe runtime's): ready on /v2/health/ready, and a v2 request (no key: token
    authorization is off there) gets /predictions' class for each image; a bad image gets 400."""
    layout = tmp_path / "kserve"
    kserve_layout(trained_run, layout)
    runtime = yaml.safe_load((REPO / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    [container] = runtime["spec"]["containers"]
    engine, name, port = images.engine, f"{PREFIX}-kserve", CONTAINER_PORTS + 10
    engine(
        "run", "-d", "--name", name, "--init", "-p", f"{port}:{container['ports'][0]['containerPort']}",
        "-v", f"{layout}:/mnt/models:ro", images.serve_slim, *container["command"], *container["args"],
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while not _answers(f"{url}{container['readinessProbe']['httpGet']['path']}"):
            if time.monotonic() > deadline:
                logs = engine("logs", "--tail", "40", name, check=False)
                pytest.fail(f"{name} never ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(1)
        images_sent = [jpegs[0] for jpegs in cifar_test_jpegs.values()]
        inputs = [{"name": "images", "datatype": "BYTES", "shape": [len(images_sent)]}]
        inputs[0]["data"] = [base64.b64encode(image).decode() for image in images_sent]
        answer = requests.post(f"{url}/v2/models/cifar10/infer", json={"inputs": inputs}, timeout=60)
        assert answer.status_code == 200, answer.text
        labels = next(output["data"] for output in answer.json()["outputs"] if output["name"] == "label")
        assert labels == [
            requests.post(f"{url}/predictions/cifar10", data=i, timeout=30).json()["prediction"] for i in images_sent
        ]
        inputs[0] |= {"shape": [1], "data": [base64.b64encode(b"not an image").decode()]}
        bad = requests.post(f"{url}/v2/models/cifar10/infer", json={"inputs": inputs}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"].startswith("element 0 of input 'images'")
    finally:
        remove(engine, "container", name)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False
