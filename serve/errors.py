"""Every error of the operator's commands (`python -m serve`), in one place. Each derives from
ServeError, which the command line turns into one `error: ...` line; anything else is a bug and
keeps its traceback."""

from __future__ import annotations

import requests


class ServeError(Exception):
    """A command could not do what it was asked; the message says why and what to do."""


class ServiceError(ServeError):
    """TorchServe answered a management or inference call with a status >= 300."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class ServiceUnreachable(ServeError, requests.ConnectionError):
    """No TorchServe answers at the address (not started, or stopped)."""


class TooManyWorkers(ServeError, ValueError):
    """More workers than this machine's memory holds."""


class WorkersNotReady(ServeError, TimeoutError):
    """The workers asked for were not all READY within the timeout."""


class QueueNotEmpty(ServeError, TimeoutError):
    """A version kept requests queued for longer than its retirement waits."""


class NotServing(ServeError, TimeoutError):
    """The model did not answer a prediction in time, or a worker died while loading it."""


class FrontendExited(NotServing):
    """TorchServe's frontend (the JVM) exited before the model answered: it never will."""


class JavaMissingError(ServeError):
    """TorchServe's frontend needs a Java runtime this machine lacks."""


class ArchiveError(ServeError):
    """The run cannot be archived (no metadata.json: not a finished training run; or no file of the
    format asked for)."""


class NoGpu(ServeError):
    """--device gpu on a machine where torch sees no CUDA device."""


class KeyFileError(ServeError):
    """The key file lacks the key a command needs (token auth off, or TorchServe not running)."""


class UnwritableSetting(ServeError, ValueError):
    """A config.properties setting that the plain `key=value` line cannot hold."""


class AgentError(ServeError):
    """The frontend agent could not be built, or the jar is older than its sources."""


class GrpcError(ServeError):
    """TorchServe answered a gRPC call with an error status (or nothing answered)."""

    def __init__(self, code: str, details: str):
        super().__init__(f"gRPC {code}: {details[:300]}")
        self.code = code
        self.details = details
