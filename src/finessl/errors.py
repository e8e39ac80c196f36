"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class FinesslError(Exception):
    """Something the user can fix (bad name, missing file, offline download)."""


class ConfigError(FinesslError):
    """A configuration value or key is wrong."""


class DataError(FinesslError):
    """A dataset is missing, empty or malformed."""


class WeightsUnavailableError(FinesslError):
    """Pretrained weights could not be found or downloaded."""


class TrainingInterrupted(FinesslError):
    """SIGINT / SIGTERM arrived; the run was checkpointed and can be resumed."""
