"""Start and stop a TorchServe instance and wait until the model answers a prediction.

One instance is described by a `ServerPaths`: where its config, model store and logs are, and the
working directory it runs in (TorchServe writes `key_file.json` there). `make serve`, the tests
and the benchmarks all go through here, with different paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from frontend import JAR as AGENT_JAR
from frontend import agent_is_current
from repo import REPO
from serve.client import Client, sample_jpeg
from serve.config import properties, properties_text
from serve.errors import AgentError, FrontendExited, JavaMissingError, NotServing, ServiceError

LOG_CONFIG = REPO / "deploy" / "torchserve" / "log4j2.xml"


@dataclass
class ServerPaths:
    config: Path  # config.properties
    workdir: Path  # TorchServe's working directory: key_file.json, logs/
    model_store: Path | None = None  # default: model_store in the config

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def runtime(self) -> Path:
        """This instance's temp dir: TorchServe's pid file, worker sockets and unpacked archives
        live there, so two instances on one machine do not collide."""
        return self.workdir / ".torchserve"

    def frontend_pid(self) -> int | None:
        """The frontend's (Java) process id, from the launcher's pid file; None before it started."""
        try:
            return int((self.runtime / ".model_server.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def java_major_version() -> int | None:
    """17 for 'openjdk version "17.0.15"'; None when there is no java."""
    try:
        banner = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', banner)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major  # "1.8" is Java 8


def require_java(minimum: int = 17) -> None:
    found = java_major_version()
    if found is None or found < minimum:
        have = "no java on PATH" if found is None else f"Java {found}"
        raise JavaMissingError(
            f"TorchServe needs a Java {minimum}+ runtime and this machine has {have}. "
            f"Install it (`make serve` does, or `sudo apt-get install -y openjdk-17-jre-headless`), then retry."
        )


def _env(paths: ServerPaths) -> dict[str, str]:
    paths.runtime.mkdir(parents=True, exist_ok=True)
    runtime = str(paths.runtime)  # TMPDIR: the launcher's pid file; TEMP: the JVM's java.io.tmpdir
    return {
        **os.environ,
        "TMPDIR": runtime,
        "TEMP": runtime,
        "LOG_LOCATION": str(paths.logs),
        "METRICS_LOCATION": str(paths.logs),
    }


def _launch_config(paths: ServerPaths) -> Path:
    """paths.config, with a relative metrics_config and -javaagent jar made absolute (relative to
    the repository): TorchServe and its JVM would resolve them against the working directory,
    which tests move elsewhere."""
    settings = properties(paths.config)
    metrics_config = settings.get("metrics_config")
    if metrics_config and not Path(metrics_config).is_absolute():
        settings["metrics_config"] = str(REPO / metrics_config)
    if settings.get("vmargs"):
        settings["vmargs"] = " ".join(_absolute_agent(arg) for arg in settings["vmargs"].split())
    paths.runtime.mkdir(parents=True, exist_ok=True)
    launch = paths.runtime / "config.properties"
    launch.write_text(properties_text(settings))
    return launch


def _absolute_agent(jvm_arg: str) -> str:
    """`-javaagent:JAR[=options]` with a relative JAR made absolute. The repository's agent must be
    built from its current sources (`frontend.agent_jar()`, which the callers run before starting):
    a stale jar would patch TorchServe with code other than the source beside it."""
    if not jvm_arg.startswith("-javaagent:"):
        return jvm_arg
    jar, separator, options = jvm_arg.removeprefix("-javaagent:").partition("=")
    path = Path(jar) if Path(jar).is_absolute() else REPO / jar
    if path.resolve() == AGENT_JAR and not agent_is_current():
        raise AgentError(f"the frontend agent {AGENT_JAR} is missing or older than its sources: build it first")
    return f"-javaagent:{path}{separator}{options}"


def _torchserve() -> str:
    return str(Path(sys.executable).with_name("torchserve"))


def start(
    paths: ServerPaths, token_auth: bool = True, extra_args: tuple[str, ...] = (), log_config: Path | None = LOG_CONFIG
) -> None:
    """Launches TorchServe in the background (returns at once; see `wait_until_serving`); its frontend
    outlives the launcher (`paths.frontend_pid()` names it).

    log_config=None keeps TorchServe's built-in logging (an access-log line per request).
    """
    require_java()
    paths.workdir.mkdir(parents=True, exist_ok=True)
    (paths.workdir / "key_file.json").unlink(missing_ok=True)  # never let a client read the last run's keys
    command = [_torchserve(), "--start", "--ncs", "--ts-config", str(_launch_config(paths))]
    if log_config is not None:
        command += ["--log-config", str(log_config)]
    if paths.model_store is not None:
        command += ["--model-store", str(paths.model_store.resolve())]
    if not token_auth:
        command.append("--disable-token-auth")
    command += list(extra_args)
    paths.logs.mkdir(parents=True, exist_ok=True)
    # The Java frontend inherits these: it must not hold the caller's terminal or pipe open.
    with open(paths.logs / "torchserve.out", "ab") as output:
        subprocess.run(
            command,
            cwd=paths.workdir,
            env=_env(paths),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )


def stop(paths: ServerPaths) -> None:
    if paths.runtime.exists():
        subprocess.run([_torchserve(), "--stop"], cwd=paths.workdir, env=_env(paths), check=False)
        shutil.rmtree(paths.runtime, ignore_errors=True)


def wait_until_serving(client: Client, model: str, paths: ServerPaths, timeout: float = 120.0) -> float:
    """Seconds until `model` answered a real prediction (not merely /ping).

    Raises NotServing after `timeout`, or as soon as TorchServe logs that a worker died while
    loading the model (it would otherwise retry with back-off for minutes). Only the log written
    after this call is read: the same log holds earlier runs, whose workers may have died.
    """
    started = time.monotonic()
    image = sample_jpeg()
    last_error = "no answer yet"
    log = paths.logs / "ts_log.log"
    offset = log.stat().st_size if log.exists() else 0
    while time.monotonic() - started < timeout:
        if log.exists() and "Backend worker process died" in _read_from(log, offset):
            raise NotServing(f"a {model} worker died while loading the model")
        _check_frontend_alive(paths)
        try:
            client.refresh_keys()
            client.predict(image, model=model, timeout=10)
            return time.monotonic() - started
        except (ServiceError, OSError) as error:
            last_error = str(error)
        time.sleep(0.25)
    raise NotServing(f"{model} did not answer a prediction within {timeout:.0f}s (last: {last_error})")


def _check_frontend_alive(paths: ServerPaths) -> None:
    """Raises FrontendExited, with the end of the frontend's own output, once its process is gone."""
    pid = paths.frontend_pid()
    if pid is None:
        return  # not started yet, or started elsewhere (make serve's pid file)
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        alive = False
    if not alive:
        output = paths.logs / "torchserve.out"
        tail = output.read_text(errors="replace").splitlines()[-8:] if output.exists() else []
        raise FrontendExited("TorchServe's frontend exited before serving:\n" + "\n".join(tail))


def _read_from(log: Path, offset: int) -> str:
    with open(log, "rb") as handle:
        if handle.seek(0, os.SEEK_END) < offset:  # rotated since: read the new file whole
            offset = 0
        handle.seek(offset)
        return handle.read().decode(errors="replace")
