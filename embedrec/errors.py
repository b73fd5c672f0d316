"""One small hierarchy of user-facing errors.

Library code raises these; the CLI turns each into one red line and its exit code. Anything else that escapes is a bug
and is allowed to show a traceback.
"""

from __future__ import annotations


class EmbedrecError(Exception):
    """A problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class DataError(EmbedrecError):
    """Input data is missing, unreadable or malformed (names the file, and the row when known)."""


class ConfigError(EmbedrecError):
    """An option or config file value is out of range or inconsistent."""


class ArtifactError(EmbedrecError):
    """A prepared data set, model folder or checkpoint is missing, corrupt, or does not match."""


class UnknownIdError(EmbedrecError):
    """A raw user or movie id that the model has never seen."""


class DownloadError(EmbedrecError):
    """A download failed: offline, HTTP error, or checksum mismatch."""


class TrainingDiverged(EmbedrecError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""

    exit_code = 3
