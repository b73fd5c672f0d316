"""Temporary names for atomic writes, their removal on failure, and the sweep of ones a dead process left behind.

Synopsis::

    tmp = temp_sibling(out)                 # out.parent / ".data.tmp-<pid>-<8 hex>"
    with removed_on_failure(tmp):
        write_everything_into(tmp)
        os.replace(tmp, out)
    sweep_stale(out.parent, out.name)       # on the next run: temp names whose writing process is gone

Every writer of embedrec names its temporary files and folders ``.<name>.tmp-<pid>-<hex>`` next to the target, so a
kill -9 or a power cut leaves only names that say who wrote them. :func:`sweep_stale` removes exactly those names, and
only when process ``<pid>`` no longer runs: a concurrent writer's work in progress is never touched, and neither is
anything embedrec did not name. A ``.<name>.old-<pid>-<hex>`` folder is the previous data set moved aside during a
replace: when the replace never finished (the target is missing), the sweep puts it back instead of deleting it.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[0-9a-f]{8})?(?:\.[a-z]+)?$")


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` that :func:`sweep_stale` recognises: ``.<name>.<kind>-<pid>-<hex>``."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (a pid we may not signal belongs to a live process)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if it exists; errors are ignored (this runs while another error unwinds)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def name_target(exc: BaseException, tmp: Path, target: Path) -> None:
    """Make an OSError about temp name ``tmp`` (or about no file at all) name ``target``, the path the user knows."""
    if isinstance(exc, OSError) and (exc.filename is None or str(exc.filename).startswith(str(tmp))):
        exc.filename = str(target)


@contextmanager
def removed_on_failure(path: Path, *, target: Path | None = None) -> Iterator[Path]:
    """Yield ``path``; if the block fails (any exception, Ctrl-C or SIGTERM), remove whatever was written there.

    With ``target`` (the final path ``path`` stands in for), an OSError is made to name ``target`` instead.
    """
    try:
        yield path
    except BaseException as exc:
        remove_path(path)
        if target is not None:
            name_target(exc, path, target)
        raise


def sweep_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary names of dead embedrec writers in ``folder`` (only those of target ``name`` if given).

    Returns what was removed or restored. A missing or unreadable folder is not an error: there is nothing to sweep.
    """
    done: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return done
    for entry in entries:
        m = _STALE.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if not process_gone(int(m.group("pid"))):
            continue
        if m.group("kind") == "old":
            original = entry.with_name(m.group("name"))
            if not original.exists():  # the replace was cut short: the user's previous data comes back
                try:
                    os.replace(entry, original)
                    done.append(original)
                except OSError:
                    pass
                continue
        remove_path(entry)
        done.append(entry)
    return done
