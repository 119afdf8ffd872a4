"""Exceptions raised by the ROS-free core; every message says what was wrong and what to do."""


class LatentReplayError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(LatentReplayError, ValueError):
    """Frames, labels or arguments that cannot be used (shape, dtype, size, NaN, empty)."""


class EmptyEpisodeError(LatentReplayError):
    """``learn()`` was called with no frames collected."""


class BusyError(LatentReplayError):
    """A learning step is already running; the call was not queued."""


class ClassLimitError(LatentReplayError):
    """Teaching one more class would exceed the configured maximum."""


class NonFiniteError(LatentReplayError):
    """A loss or output became NaN/inf; the model was left as it was before the call."""


class NotTrainedError(LatentReplayError):
    """``predict()`` before anything was learned."""


class CheckpointError(LatentReplayError):
    """A state file is missing, truncated, tampered with or from another model."""


class ConfigError(LatentReplayError, ValueError):
    """A configuration value is out of range or unknown."""
