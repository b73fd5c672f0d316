"""Reading zip archives without trusting them: declared sizes checked first, output bounded while extracting.

Synopsis::

    with open_archive(path) as zf:
        members = checked_members(zf, path, wanted=lambda name: name.endswith(".csv"))
        for info in members:
            extract_member(zf, info, dest_folder, path)

A MovieLens archive is rating and movie tables: CSV compresses about 5:1 (ml-32m's ``ratings.csv``: 877 MB in a
239 MB archive, 3.7:1), and its largest member is under 1 GB. So before anything is written, every selected member's
declared size must stay under :data:`MAX_MEMBER_BYTES`, their sum under :data:`MAX_TOTAL_BYTES`, and a member over
1 MiB must not claim a compression ratio beyond :data:`MAX_RATIO` (a zip bomb does; 1 MB holding 1 GiB is 1000:1).
While extracting, the declared size is not trusted: writing stops with an error as soon as a member yields more bytes
than it declared. Every way a damaged archive fails (bad header, bad CRC, a corrupt deflate stream raising
``zlib.error``, a truncated stream, an encrypted member, an unknown compression method) becomes one
:class:`~embedrec.errors.DataError` naming the archive and the member.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from embedrec.errors import DataError

MAX_MEMBER_BYTES = 4 * 1024**3  # 4 GiB: over four times MovieLens' largest file (ml-32m ratings.csv, 877 MB)
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_RATIO = 50  # uncompressed / compressed; rating CSVs reach about 5
RATIO_MIN_BYTES = 1024**2  # tiny members (an empty file, a README) may compress arbitrarily well
CHUNK = 1 << 20

# what each failure of a damaged archive raises inside zipfile / zlib
DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


@contextmanager
def open_archive(path: Path) -> Iterator[zipfile.ZipFile]:
    """Open a zip archive; a file that is not one is a DataError (OSError for an unreadable file passes through)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise DataError(f"{path} is not a valid zip archive ({exc})") from None
    with zf:
        yield zf


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """The member's path as parts inside the destination, or None for an absolute or escaping one."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not pure.parts or pure.is_absolute() or ".." in pure.parts or ":" in pure.parts[0]:
        return None
    return tuple(p for p in pure.parts if p not in ("", "."))


def checked_members(zf: zipfile.ZipFile, path: Path, *, wanted: Callable[[str], bool]) -> list[zipfile.ZipInfo]:
    """The members to extract (files only, ``wanted`` by name), after checking what the archive declares."""
    members = [
        info
        for info in zf.infolist()
        if not info.is_dir() and wanted(info.filename) and "__MACOSX" not in info.filename
    ]
    total = 0
    for info in members:
        if _safe_parts(info.filename) is None:
            raise DataError(f"{path}: member {info.filename!r} points outside the archive folder; refusing the archive")
        if info.file_size > MAX_MEMBER_BYTES:
            raise DataError(
                f"{path}: member {info.filename} declares {info.file_size / 1e9:.1f} GB, more than the "
                f"{MAX_MEMBER_BYTES / 1e9:.1f} GB embedrec extracts (MovieLens' largest file is under "
                "1 GB): unpack it yourself and pass the folder"
            )
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DataError(
                f"{path}: member {info.filename} claims a {ratio:,.0f}:1 compression ratio (rating files "
                f"reach about 5:1; over {MAX_RATIO}:1 is a zip bomb); refusing the archive"
            )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise DataError(
            f"{path}: the selected members declare {total / 1e9:.1f} GB in all, more than the "
            f"{MAX_TOTAL_BYTES / 1e9:.1f} GB embedrec extracts: unpack it yourself and pass the folder"
        )
    return members


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, path: Path) -> Path:
    """Stream one member to ``dest/<its path>``, stopping at its declared size; DataError when it is damaged."""
    parts = _safe_parts(info.filename)
    if parts is None or not parts:
        raise DataError(f"{path}: member {info.filename!r} points outside the archive folder; refusing the archive")
    target = dest.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise DataError(
                        f"{path}: member {info.filename} holds more than the {info.file_size:,} bytes "
                        "it declares; the archive is damaged or hostile"
                    )
                dst.write(chunk)
    except DAMAGED as exc:
        raise DataError(
            f"{path}: member {info.filename} is damaged ({type(exc).__name__}: {exc}): the archive is "
            "corrupt; fetch it again"
        ) from None
    if written != info.file_size:
        raise DataError(
            f"{path}: member {info.filename} ended after {written:,} of {info.file_size:,} bytes: the "
            "archive is truncated; fetch it again"
        )
    return target
