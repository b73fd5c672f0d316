"""Resolve ``embedrec prepare SOURCE``: a folder, a ``.zip`` of one, a rating file, or a downloaded release name.

Synopsis::

    with open_source("ml-latest-small.zip", config=cfg, cache_dir=Path(".embedrec/downloads")) as (layout, name):
        raw = read_layout(layout, config=cfg)

From an archive only the rating and movie files are extracted (into a temporary folder removed afterwards), so the
large tag and genome files of the big releases cost nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from embedrec.data.archives import checked_members, extract_member, open_archive
from embedrec.data.config import PrepareConfig
from embedrec.data.downloads import DATASETS, cached_folder
from embedrec.data.layouts import Layout, detect_layout
from embedrec.errors import DataError

_WANTED = {"u.data", "u.item", "ratings.dat", "movies.dat", "users.dat", "ratings.csv", "movies.csv"}


def _wanted(member: str, config: PrepareConfig) -> bool:
    base = PurePosixPath(member).name
    extra = {Path(f).name for f in (config.ratings_file, config.movies_file) if f}
    return base in _WANTED or base in extra or base.endswith((".inter", ".item"))


SRC_PREFIX = "embedrec-src-"


@contextmanager
def _unzipped(path: Path, config: PrepareConfig, *, cached: bool = False) -> Iterator[Path]:
    """The wanted members of archive ``path`` in a temporary folder (removed afterwards, also on SIGTERM).

    ``cached``: the archive is embedrec's own download; a damaged one is deleted so the next run fetches it again.
    """
    sweep_stale_sources()
    tmp = Path(tempfile.mkdtemp(prefix=f"{SRC_PREFIX}{os.getpid()}-"))
    try:
        try:
            with open_archive(path) as zf:
                for info in checked_members(zf, path, wanted=lambda m: _wanted(m, config)):
                    extract_member(zf, info, tmp, path)
        except DataError as exc:
            if cached:
                path.unlink(missing_ok=True)
                raise DataError(
                    f"{exc}; the cached archive was deleted: run `embedrec download "
                    f"{path.name.removesuffix('.zip')}` again"
                ) from None
            raise
        try:
            yield tmp
        except DataError as exc:  # name the archive, not the temporary folder it was unpacked into
            if str(tmp) not in str(exc):
                raise
            raise DataError(str(exc).replace(str(tmp), str(path))) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale_sources() -> None:
    """Remove ``embedrec-src-<pid>-*`` folders in the system temp folder whose process is gone (a kill -9)."""
    import re

    from embedrec.tempfiles import process_gone, remove_path

    try:
        entries = list(Path(tempfile.gettempdir()).glob(f"{SRC_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        m = re.match(rf"^{SRC_PREFIX}(\d+)-", entry.name)
        if m and entry.is_dir() and process_gone(int(m.group(1))):
            remove_path(entry)


@contextmanager
def open_source(
    source: str | os.PathLike[str], *, config: PrepareConfig, cache_dir: Path | None
) -> Iterator[tuple[Layout, str]]:
    """Yield the detected layout of ``source`` and a display name for it (e.g. ``ml-latest-small``)."""
    path = Path(source)
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".zip":
            with _unzipped(path, config) as folder:
                yield detect_layout(folder, config=config), path.stem
            return
        if path.is_file():
            if config.format not in ("auto", "csv"):
                yield detect_layout(path.parent, config=config), path.parent.resolve().name
                return
            if config.format == "auto" and (path.name in _WANTED or path.suffix == ".inter"):
                # a file of a MovieLens layout (e.g. ml-latest-small/ratings.csv): read its whole folder
                found: Layout | None
                try:
                    found = detect_layout(path.parent, config=config)
                except DataError:
                    found = None
                if found is not None:
                    yield found, path.parent.resolve().name
                    return
            yield detect_layout(path, config=replace(config, format="csv")), path.name
            return
        yield detect_layout(path, config=config), path.resolve().name
        return
    name = str(source)
    if name in DATASETS:
        cached = cached_folder(name, cache_dir) if cache_dir is not None else None
        if cached is not None:
            yield detect_layout(cached, config=config), name
            return
        archive = cache_dir / f"{name}.zip" if cache_dir is not None else None
        if archive is not None and archive.is_file():
            with _unzipped(archive, config, cached=True) as unpacked:
                yield detect_layout(unpacked, config=config), name
            return
        where = f" (looked in {cache_dir})" if cache_dir is not None else ""
        raise DataError(f"{name} is not downloaded{where}: run `embedrec download {name}` first")
    raise DataError(
        f"source {name!r} not found: pass a folder, a .zip, a rating file, or a release name "
        f"({', '.join(DATASETS)}) fetched with `embedrec download`"
    )
