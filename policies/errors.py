"""The errors a user can cause when training or loading a policy (each message is one line that
names the file or the key, what was wrong and what to do). The commands print them without a
traceback; anything else that goes wrong is a bug and keeps its traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value outside what is allowed (names the key, the value and the range)."""


class CheckpointError(ValueError):
    """A checkpoint file or run folder that cannot be used as it is (names the file and why)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose loading would unpickle, refused unless ``allow_pickle`` is given."""


class RunMismatchError(ValueError):
    """A run folder recorded with other settings than the ones given (lists the differences)."""
