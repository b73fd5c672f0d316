"""Advisory locks that keep two embedrec commands on one work folder from seeing each other's half-done work.

A prepared data folder is replaced by renaming a finished sibling over it; a reader that opens its five files one by
one could still straddle that rename and mix two versions. So the rename happens under an exclusive ``flock`` on the
*parent* folder and every complete read under a shared one: readers never wait for a ``prepare`` to finish writing
(only for the two renames), and nothing is created on disk for the lock. Where ``fcntl`` is missing (Windows) the
lock is a no-op and the atomic renames alone protect writers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def folder_lock(folder: Path, *, exclusive: bool, wait: bool = True) -> Iterator[None]:
    """Hold a shared or exclusive advisory lock on ``folder`` (which must exist) for the ``with`` block; with
    ``wait`` False, :class:`BlockingIOError` at once when another process holds a conflicting one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on a run folder while a process trains into it; a second trainer (``train
    --resume`` or ``--out`` of a run still training) is refused at once instead of writing checkpoints beside it."""
    from embedrec.errors import ConfigError

    with ExitStack() as held:
        try:
            held.enter_context(folder_lock(folder, exclusive=True, wait=False))
        except BlockingIOError:
            raise ConfigError(
                f"{folder} is being trained by another embedrec process: wait for it to finish (or stop it with "
                "Ctrl-C, then resume), or choose another --out"
            ) from None
        yield
