"""A small client for TorchServe's inference, management and metrics APIs, with its token keys.

TorchServe (0.12) writes its keys to `key_file.json` in its working directory at start; the client
reads them from there, so neither the Makefile nor a user copies keys around by hand.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import psutil
import requests
from PIL import Image

from container.keys import read_keys
from serve.config import api_address, properties
from serve.errors import QueueNotEmpty, ServiceError, ServiceUnreachable, WorkersNotReady


def sample_jpeg(color=(200, 120, 40)) -> bytes:
    """A 32 x 32 JPEG made on the spot, for readiness checks that need no data set."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="JPEG")
    return buffer.getvalue()


class Client:
    def __init__(self, inference: str, management: str, metrics: str, key_file: Path | None = None):
        self.inference = inference.rstrip("/")
        self.management = management.rstrip("/")
        self.metrics_url = metrics.rstrip("/")
        self.key_file = key_file
        self.keys: dict[str, str] = {}
        self.session = requests.Session()
        self.refresh_keys()

    @classmethod
    def from_config(cls, config: Path, workdir: Path) -> Client:
        props = properties(config)
        return cls(
            api_address(props, "inference_address"),
            api_address(props, "management_address"),
            api_address(props, "metrics_address"),
            key_file=workdir / "key_file.json",
        )

    def copy(self) -> Client:
        """The same client with a connection pool of its own, for another thread (a requests
        Session is not thread-safe)."""
        return Client(self.inference, self.management, self.metrics_url, key_file=self.key_file)

    def refresh_keys(self) -> None:
        """Reads key_file.json; without the file, requests go without keys (token auth off)."""
        self.keys = read_keys(self.key_file) if self.key_file is not None else {}

    def auth_headers(self, api: str) -> dict[str, str]:
        """The Authorization header for `api` (inference, management or API); {} without keys."""
        return {"Authorization": f"Bearer {self.keys[api]}"} if api in self.keys else {}

    def request(self, method: str, url: str, api: str, **kwargs) -> requests.Response:
        """Any call to one of TorchServe's APIs with `api`'s key; raises ServiceError on a status >= 300."""
        try:
            response = self.session.request(method, url, headers=self.auth_headers(api), **kwargs)
        except requests.ConnectionError as error:
            raise ServiceUnreachable(
                f"nothing answers at {url} (is TorchServe running? `make serve`): {error}"
            ) from None
        if response.status_code >= 300:
            raise ServiceError(response.status_code, response.text)
        return response

    def predict(
        self,
        image: bytes,
        model: str = "cifar10",
        version: str | None = None,
        field: str | None = None,
        timeout: float = 30,
    ) -> dict:
        """POSTs `image` as the raw body, or as a multipart file `field` (the Flask service's `-F image=@...`)."""
        url = f"{self.inference}/predictions/{model}" + (f"/{version}" if version else "")
        if field:
            response = self.request("POST", url, "inference", files={field: ("image", image)}, timeout=timeout)
        else:
            response = self.request("POST", url, "inference", data=image, timeout=timeout)
        return response.json()

    def describe(self, model: str = "cifar10", version: str | None = None) -> list[dict]:
        url = f"{self.management}/models/{model}" + (f"/{version}" if version else "")
        return self.request("GET", url, "management", timeout=30).json()

    def scale(
        self,
        workers: int,
        model: str = "cifar10",
        max_workers: int | None = None,
        version: str | None = None,
        timeout: float = 120,
    ) -> dict:
        """Sets the worker count (of the default version, or `version`) and returns once exactly
        `workers` workers are READY: TorchServe's `synchronous=true` answers when it has started the
        workers, not when they have loaded the model, which takes longer on a busy machine. Raises
        WorkersNotReady, with each worker's state, after `timeout` seconds."""
        started = time.monotonic()
        params = {"min_worker": workers, "max_worker": max_workers or workers, "synchronous": "true"}
        url = f"{self.management}/models/{model}" + (f"/{version}" if version else "")
        answer = self.request("PUT", url, "management", params=params, timeout=timeout).json()
        while True:
            states = [worker["status"] for worker in self.describe(model, version)[0]["workers"]]
            if states.count("READY") == len(states) == workers:
                return answer
            if time.monotonic() - started > timeout:
                raise WorkersNotReady(
                    f"{model}: asked for {workers} READY workers, after {timeout:.0f}s the workers are {states}"
                )
            time.sleep(0.2)

    def worker_bound(self, model: str = "cifar10", version: str | None = None, share: float = 0.8) -> int:
        """The workers running now, plus as many as `share` of the available memory holds at the
        size of the largest one (TorchServe's describe reports each worker's memory). TorchServe's
        API itself takes any count, and starts workers until the machine runs out of memory."""
        workers = self.describe(model, version)[0]["workers"]
        size = max((int(worker.get("memoryUsage") or 0) for worker in workers), default=0) or 2**30
        return len(workers) + int(psutil.virtual_memory().available * share // size)

    def set_default(self, version: str, model: str = "cifar10") -> dict:
        return self.request(
            "PUT", f"{self.management}/models/{model}/{version}/set-default", "management", timeout=30
        ).json()

    def register(self, archive: str, workers: int = 1, timeout: float = 180, **batching: int) -> dict:
        """Registers `archive`, a file name in the server's model store, and waits for its workers.
        An archive of a model already served becomes another version of it (not the default).
        `batching`: batch_size and/or max_batch_delay, overriding the archive's model config (this
        is the only way to set max_batch_delay 0: a model config's 0 means "unset", 100 ms)."""
        params = {"url": archive, "initial_workers": workers, "synchronous": "true", **batching}
        return self.request("POST", f"{self.management}/models", "management", params=params, timeout=timeout).json()

    def unregister(self, version: str, model: str = "cifar10", timeout: float = 120) -> dict:
        return self.request(
            "DELETE", f"{self.management}/models/{model}/{version}", "management", timeout=timeout
        ).json()

    def pending_requests(self, version: str, model: str = "cifar10") -> int:
        """Requests waiting in `version`'s job queue (not yet taken by a worker)."""
        return int(self.describe(model, version)[0]["jobQueueStatus"]["pendingRequests"])

    def retire(self, version: str, model: str = "cifar10", quiet: float = 2.0, timeout: float = 300) -> dict:
        """Unregisters a version that is not the default once every request it took is answered.

        Requests reach a version that is not the default only when a client names it; those
        queued before it stopped being the default (or still named) are served first: the version
        is unregistered once its job queue has stayed empty for `quiet` seconds, longer than a
        worker takes to answer the batch it holds (TorchServe would drop queued requests unanswered
        and fail the batches in flight). Raises ServiceError for the default version and
        QueueNotEmpty when the queue never stays empty."""
        if self.describe(model)[0]["modelVersion"] == version:
            raise ServiceError(409, f"{version} is the default version of {model}: set another default first")
        started = time.monotonic()
        empty_since = None
        while empty_since is None or time.monotonic() - empty_since < quiet:
            if time.monotonic() - started > timeout:
                raise QueueNotEmpty(f"{model} {version}: requests still queued after {timeout:.0f}s")
            empty = self.pending_requests(version, model) == 0
            empty_since = (empty_since or time.monotonic()) if empty else None
            time.sleep(0.1)
        return self.unregister(version, model)

    def renew_key(self, api: str) -> None:
        """Has TorchServe replace the `api` key (inference or management; "api": the API key and both
        others, through the frontend agent) with the API key; the old key stops working at once, and
        key_file.json holds the new one."""
        self.request("POST", f"{self.management}/token", "API", params={"type": api}, timeout=30)
        self.refresh_keys()

    def metrics(self) -> str:
        return self.request("GET", f"{self.metrics_url}/metrics", "metrics", timeout=30).text
