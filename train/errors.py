"""Every error of the training job's commands (`python -m train`, `train.aot`, `train.report`,
`train.evaluate`, `train.compare`), in one place. Each derives from TrainError, which the command
lines turn into one `error: ...` line; anything else is a bug and keeps its traceback."""


class TrainError(Exception):
    """A command could not do what it was asked; the message says why and what to do."""


class ConfigError(TrainError, ValueError):
    """A training option has a value the job cannot use."""


class DataSourceError(TrainError):
    """A data source is missing or not laid out as expected; the message says what was expected."""


class DeviceError(TrainError, ValueError):
    """A --device value that names no device this machine has; the message says what would do."""


class ExportMismatch(TrainError):
    """An exported model does not give the eager model's outputs."""


class RunNotFound(TrainError, FileNotFoundError):
    """The folder holds no metadata.json: not a finished training run."""


class RunFormatError(TrainError, ValueError):
    """metadata.json holds a key this type does not know, or lacks one it needs (another version's run)."""
