"""gankit's own exception types: every error a user can cause derives from `GankitError`."""

from __future__ import annotations


class GankitError(Exception):
    """Base class of every error gankit raises on purpose; its message says what to do."""


class ConfigError(GankitError, ValueError):
    """A configuration key, value or option is unknown, of the wrong type or out of range."""


class DataError(GankitError):
    """A data set could not be found, read or validated."""


class CheckpointError(GankitError):
    """A checkpoint or run folder is missing, corrupt or incompatible."""


class StorageError(GankitError):
    """A file could not be written (a full disk, a read-only mount, a permission); ``path``
    and ``errno`` say which file and why. The file's previous version is intact."""

    path = None
    errno: int | None = None
