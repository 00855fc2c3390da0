"""The pod's gateway (deploy/k8s/base/gateway/nginx.conf) run by Debian's nginx on other ports.

The file is the one the Kubernetes ConfigMap carries; only its three port numbers change here
(the gateway's, TorchServe's inference port behind it, and the drain's status port), and it
listens on loopback: this machine sends traffic to loopback addresses only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serve.archive import REPO

CONFIG = REPO / "deploy" / "k8s" / "base" / "gateway" / "nginx.conf"
# The pod's ports, as nginx.conf has them (tests/integration/test_kubernetes.py checks them against the manifests).
POD_PORTS = {"listen": 8000, "upstream": 8080, "status": 8090}
_PORT_LINES = {
    "listen": r"^(\s*listen )(8000)(;)$",
    "upstream": r"^(\s*server 127\.0\.0\.1:)(8080)(;)$",
    "status": r"^(\s*listen 127\.0\.0\.1:)(8090)(;)$",
}


class GatewayError(Exception):
    """nginx did not start, or the config no longer has the lines this module moves."""


def gateway_config(listen: int, upstream: int, status: int, config: Path = CONFIG) -> str:
    """nginx.conf with the gateway on 127.0.0.1:listen, TorchServe at 127.0.0.1:upstream and the
    status page on 127.0.0.1:status."""
    text = config.read_text()
    for key, port in (("listen", f"127.0.0.1:{listen}"), ("upstream", str(upstream)), ("status", str(status))):
        text, count = re.subn(_PORT_LINES[key], rf"\g<1>{port}\g<3>", text, flags=re.MULTILINE)
        if count != 1:
            raise GatewayError(f"{config}: expected one '{key}' line on port {POD_PORTS[key]}, found {count}")
    return text


@dataclass
class Gateway:
    prefix: Path  # nginx's prefix: its config, tokens.map, pid file and temp folders
    listen: int
    upstream: int
    status: int
    tokens: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status}/stub_status"

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "nginx.conf").write_text(gateway_config(self.listen, self.upstream, self.status))
        # The Secret's tokens.map: one `"Bearer <token>" <client name>;` line per client.
        (self.prefix / "tokens.map").write_text("".join(f'"Bearer {t}" {name};\n' for name, t in self.tokens.items()))
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is None:
            raise GatewayError("nginx not found: sudo apt-get install -y nginx")
        command = [nginx, "-e", "stderr", "-p", f"{self.prefix}/", "-c", str(self.prefix / "nginx.conf")]
        # As in the pod, master and workers run as one user: started by root, nginx would hand its
        # workers to `nobody`, who may not reach the prefix (large bodies are buffered there).
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        test = subprocess.run([*command, "-g", directives, "-t"], capture_output=True, text=True)
        if test.returncode != 0:
            raise GatewayError(f"nginx -t: {test.stderr.strip()}")
        with open(self.prefix / "nginx.out", "ab") as output:
            self.process = subprocess.Popen(
                [*command, "-g", directives], stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: nginx answers what it has, then exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
