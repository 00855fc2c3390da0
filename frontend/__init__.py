"""What we change in TorchServe's Java frontend: the drain-the-queue batching policy and a
scale-down that answers the removed worker's batch first, a Java agent (src/, built by build.sh
into build/frontend-agent.jar) that config.properties' `vmargs` loads.

`agent_jar()` builds the jar when it is missing or older than its sources; every way of starting
TorchServe from this repository (`make serve`, the tests, the benchmarks) runs it first, and
`serve.server.start` refuses a stale jar, so the agent that runs is the source beside it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
JAR = HERE / "build" / "frontend-agent.jar"


class AgentBuildError(RuntimeError):
    """The agent could not be built (no JDK, no ASM, or a compile error)."""


def agent_is_current() -> bool:
    """Whether the jar exists and no source is newer than it."""
    newest = max(path.stat().st_mtime for path in [BUILD_SCRIPT, *(HERE / "src").rglob("*.java")])
    return JAR.exists() and JAR.stat().st_mtime >= newest


def agent_jar() -> Path:
    """The built agent, (re)built first if a source is newer than it."""
    if agent_is_current():
        return JAR
    import ts  # TorchServe's frontend jar, which the agent compiles against (not in the training image)

    torchserve_jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(JAR)],
        capture_output=True,
        text=True,
        env={**os.environ, "TORCHSERVE_JAR": str(torchserve_jar)},
    )
    if result.returncode != 0:
        raise AgentBuildError(
            f"building the frontend agent failed ({BUILD_SCRIPT}):\n{result.stdout}{result.stderr}"
            "setup/system-packages.sh serve installs what it needs (a JDK 17, libasm-java); "
            "or remove -javaagent from vmargs in config.properties to run TorchServe unchanged."
        )
    return JAR


def without_agent(vmargs: str) -> str:
    """`vmargs` with the -javaagent option taken out (TorchServe's own batching and scale-down);
    the other JVM options, the heap among them, kept."""
    return " ".join(option for option in vmargs.split() if not option.startswith("-javaagent:"))
