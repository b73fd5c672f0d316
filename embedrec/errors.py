"""One small hierarchy of user-facing errors.

Library code raises these; the CLI turns each into one red line and its exit code. OSError (a path that cannot be
used, a full disk) and SIGTERM (:class:`Terminated`) get one line too, through :func:`os_error_message`; anything else
that escapes is a bug and is allowed to show a traceback.

Exit codes: 2 user error, 3 training diverged, 74 machine fault (disk full, I/O, a lost process of a distributed
run), 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

from collections.abc import Callable


class EmbedrecError(Exception):
    """A problem the user can fix. ``exit_code`` is what the CLI exits with; ``hard_exit``: the CLI ends the process
    right after the error line, running nothing more (see :class:`LostPeer`)."""

    exit_code: int = 2
    hard_exit: bool = False


class DataError(EmbedrecError):
    """Input data is missing, unreadable or malformed (names the file, and the row when known)."""


class ConfigError(EmbedrecError):
    """An option or config file value is out of range or inconsistent."""


class SettingError(ConfigError):
    """One setting (a field of the model or train config) has a bad value; the message names it by its key.

    The key is what a config file or the Python API calls it; a command that took the value from a flag or a file
    names that instead (:meth:`named`), so the user reads the spelling they typed.
    """

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail

    def named(self, label: str) -> ConfigError:
        """The same error under the name the user gave the setting (``--dropout``, ``--config: c.toml: dropout``)."""
        return ConfigError(f"{label}: {self.detail}")


class ResumeChangesSettings(ConfigError):
    """``--resume`` was given settings other than those the run started with (only ``epochs`` may change).

    Like :class:`SettingError` the message names the settings by key; a command names them as the user gave them
    (:meth:`named`), so that a setting from a config file is not told to the user as a flag it has not got.
    """

    def __init__(self, settings: list[str], run_json: str) -> None:
        self.settings = list(settings)
        self.run_json = run_json
        super().__init__(self._text(lambda setting: setting))

    def _text(self, label: Callable[[str], str]) -> str:
        return (
            f"--resume continues with the settings in {self.run_json}; drop "
            f"{', '.join(label(s) for s in self.settings)} (only {label('epochs')} may change)"
        )

    def named(self, label: Callable[[str], str]) -> ConfigError:
        """The same error with each setting under the name ``label`` gives it (``--lr``, ``--config: c.toml: lr``)."""
        return ConfigError(self._text(label))


class ArtifactError(EmbedrecError):
    """A prepared data set, model folder or checkpoint is missing, corrupt, or does not match."""


class UnknownIdError(EmbedrecError):
    """A raw user or movie id that the model has never seen."""


class DownloadError(EmbedrecError):
    """A download failed: offline, HTTP error, or checksum mismatch."""


class LostPeer(EmbedrecError):
    """Another process of a distributed run is gone mid-run; the last checkpoint is kept for ``--resume``.

    ``hard_exit``: the CLI ends the process at once after its line, because JAX's shutdown at exit would wait for
    the lost process at a barrier and then abort (SIGABRT) with a native stack dump."""

    exit_code = 74
    hard_exit = True


class TrainingDiverged(EmbedrecError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM arrived: raised from the signal handler so that every ``finally`` and cleanup block runs.

    A BaseException (like KeyboardInterrupt), so ``except Exception`` handlers do not swallow it.
    """

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process killed by it


IO_FAULT_EXIT_CODE = 74  # sysexits' EX_IOERR: the disk is full, or the device failed; not the user's input

_USER_PATH_HINTS: dict[str, str] = {
    "EACCES": "permission denied: fix its permissions or choose another path",
    "EPERM": "operation not permitted: fix its permissions or choose another path",
    "EROFS": "the file system is read-only: choose a folder on a writable disk",
    "EISDIR": "is a folder where a file is needed: pass a file path",
    "ENOTDIR": "a part of this path is a file where a folder is needed: choose a folder path",
    "ENOENT": "does not exist: check the path",
    "EEXIST": "already exists: choose a new path",
    "ENAMETOOLONG": "the path is too long: choose a shorter one",
    "ELOOP": "has too many symbolic links: pass the real path",
    "ENOTEMPTY": "is a folder that is not empty: choose an empty or new folder",
    "EBUSY": "is in use by another process (or a mount point): choose another path",
}
_FAULT_HINTS: dict[str, str] = {
    "ENOSPC": "no space left on the disk: free some space or choose a folder on another disk",
    "EDQUOT": "disk quota exceeded: free some space or choose a folder on another disk",
    "EFBIG": "the file grew beyond the size this process may write (ulimit -f): raise the limit",
    "EIO": "input/output error from the device: check the disk",
}


def os_error_message(exc: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError that reached the command line.

    A problem with a path the user gave (permission, read-only disk, a folder where a file belongs, ...) exits 2 like
    any bad input; a fault of the machine (disk full, file size limit, I/O error) exits :data:`IO_FAULT_EXIT_CODE`.
    The message names the path when the error carries one.
    """
    import errno as errno_mod

    name = errno_mod.errorcode.get(exc.errno or -1, "")
    where = str(exc.filename) if exc.filename is not None else None
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if name in _USER_PATH_HINTS:
        text = f"{where}: {_USER_PATH_HINTS[name]}" if where else f"{reason}: {_USER_PATH_HINTS[name]}"
        return text, 2
    hint = _FAULT_HINTS.get(name, f"{reason}; check the disk and the path, then run the command again")
    return (f"{where}: {hint}" if where else hint) + " (partial output was removed)", IO_FAULT_EXIT_CODE
