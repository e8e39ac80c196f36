"""User-facing errors: the CLI prints these as one line, without a traceback."""

from __future__ import annotations


class FinesslError(Exception):
    """Something the user can fix (bad name, missing file, offline download)."""


class ConfigError(FinesslError):
    """A configuration value or key is wrong."""


class DataError(FinesslError):
    """A dataset is missing, empty or malformed."""


class AdapterMismatch(FinesslError):
    """Trained weights do not fit the model they are loaded into (the message says why)."""


class WeightsUnavailableError(FinesslError):
    """Pretrained weights could not be found or downloaded."""


class TrainingInterrupted(FinesslError):
    """SIGINT / SIGTERM arrived; the run was checkpointed and can be resumed."""


class TrainingDiverged(FinesslError):
    """The loss or the weights became non-finite; the last good checkpoint is kept."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so no message echoes a huge value."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"
