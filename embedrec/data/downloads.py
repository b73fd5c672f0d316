"""Fetch official MovieLens releases from GroupLens into a cache folder.

Synopsis::

    result = download("ml-latest-small", cache_dir=Path(".embedrec/downloads"))
    result.folder      # .embedrec/downloads/ml-latest-small  (extracted; `embedrec prepare ml-latest-small` finds it)

The archive is streamed into ``<name>.zip.part`` and resumed with an HTTP ``Range`` request when a previous attempt
was interrupted. GroupLens publishes ``<name>.zip.md5`` next to most archives; when it exists the archive is checked
against it, and a mismatch deletes the archive. When the checksum cannot be fetched or read, verification is not
silently skipped: the result carries a ``warning`` for the caller to show, and ``strict=True`` refuses the archive.
An archive that fails to extract (see :mod:`embedrec.data.archives`) is deleted from the cache.

The extracted folder holds a manifest, ``.embedrec-download.json``, of every file embedrec wrote there (with its size
and modification time). embedrec replaces ``<name>/`` (``--force``, or an archive fetched again) only when it holds
exactly those files, unchanged: a folder without the manifest, or with a file the user added or edited, is refused
with one line saying what to move, so a download never deletes the user's own files. A folder without the manifest
that holds exactly what the cached archive extracts to (byte for byte: an embedrec before the manifest extracted it)
is embedrec's too: it gets its manifest and is replaced like any other. The base URL can be
overridden (``$EMBEDREC_DOWNLOAD_URL`` or ``base_url=``), which is how the tests serve a small archive from a local
HTTP server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedrec.errors import ConfigError, DataError, DownloadError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
URL_ENV = "EMBEDREC_DOWNLOAD_URL"
DATASETS: dict[str, str] = {
    "ml-100k": "100,000 ratings, 943 users, 1,682 movies (1998)",
    "ml-1m": "1 million ratings, 6,040 users, 3,706 movies (2003)",
    "ml-10m": "10 million ratings, 69,878 users, 10,677 movies (2009)",
    "ml-20m": "20 million ratings, 138,493 users, 26,744 movies (2016)",
    "ml-25m": "25 million ratings, 162,541 users, 59,047 movies (2019)",
    "ml-32m": "32 million ratings, 200,948 users, 87,585 movies (2024)",
    "ml-latest-small": "100,836 ratings, 610 users, 9,742 movies (changes over time)",
    "ml-latest": "the full latest release, about 33 million ratings (changes over time)",
}
CHUNK = 1 << 20
ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class DownloadResult:
    name: str
    zip_path: Path
    folder: Path
    downloaded: bool  # False when the cache already had it
    verified: bool  # True when a published checksum matched
    url: str
    warning: str | None = None  # why the archive could not be verified, for the caller to show loudly


def base_url(override: str | None = None) -> str:
    return (override or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")


def cached_folder(name: str, cache_dir: Path) -> Path | None:
    """The extracted folder of a downloaded release, if present."""
    folder = cache_dir / name
    return folder if folder.is_dir() else None


def _offline(url: str, reason: object, name: str) -> DownloadError:
    return DownloadError(
        f"cannot reach {url} ({reason}): check the network connection, or fetch the archive by hand and run "
        f"`embedrec prepare path/to/{name}.zip`"
    )


def _fetch(url: str, part: Path, *, name: str, timeout: float, on_progress: ProgressFn | None) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with a Range request."""
    import http.client
    import urllib.error
    import urllib.request

    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "embedrec"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to fetch: the part file is complete
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(url, getattr(exc, "reason", exc), name) from None
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        if status == 206:
            mode, done = "ab", start
            total = start + int(length) if length else None
        else:
            mode, done = "wb", 0
            total = int(length) if length else None
        if on_progress:
            on_progress(done, total)
        try:
            with open(part, mode) as fh:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"download of {url} interrupted after {done / 1e6:.1f} MB ({exc}): run the same command again to resume"
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"download of {url} stopped at {done / 1e6:.1f} of {total / 1e6:.1f} MB: "
            "run the same command again to resume"
        )


@dataclass(frozen=True)
class PublishedChecksum:
    """What ``<zip>.md5`` gave: the checksum, or why there is none (``problem`` is then a one-line reason)."""

    md5: str | None
    problem: str | None = None


def _published_md5(url: str, *, timeout: float) -> PublishedChecksum:
    """The checksum GroupLens publishes as ``<zip>.md5``; when it cannot be had, the reason (never silently)."""
    import urllib.error
    import urllib.request

    md5_url = url + ".md5"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(md5_url, headers={"User-Agent": "embedrec"}), timeout=timeout
        ) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except urllib.error.HTTPError as exc:
        return PublishedChecksum(None, f"{md5_url} gave HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return PublishedChecksum(None, f"{md5_url} is unreachable ({getattr(exc, 'reason', exc)})")
    m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if m is None:
        return PublishedChecksum(None, f"{md5_url} holds no md5 checksum ({text.strip()[:60]!r})")
    return PublishedChecksum(m.group(1).lower())


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


MANIFEST = ".embedrec-download.json"
MANIFEST_SCHEMA = 1


def _walk(root: Path) -> dict[str, os.stat_result]:
    """Every path under ``root`` (relative, POSIX) with its lstat; links are not followed."""
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath, entry)
            found[path.relative_to(root).as_posix()] = path.lstat()
    return found


def _write_manifest(root: Path, archive: Path) -> None:
    """Record what extraction wrote under ``root``, so a later replace can tell it from the user's files."""
    import stat

    files, dirs = {}, []
    for rel, st in sorted(_walk(root).items()):
        if stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        else:
            files[rel] = [st.st_size, st.st_mtime_ns]
    from embedrec.workdir import atomic_write_text

    doc = {"schema_version": MANIFEST_SCHEMA, "archive": archive.name, "files": files, "dirs": dirs}
    atomic_write_text(root / MANIFEST, json.dumps(doc, indent=1) + "\n")  # a cut-short one would refuse the folder


def not_written_by_embedrec(folder: Path) -> str | None:
    """Why ``folder`` may not be replaced (it is not what embedrec extracted, or holds more), or None when it holds
    only files embedrec's manifest lists, unchanged."""
    import stat

    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} is not a folder embedrec extracted"
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files, dirs = dict(doc["files"]), set(doc["dirs"])
    except FileNotFoundError:
        return f"{folder} was not extracted by embedrec (it has no {MANIFEST})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder}/{MANIFEST} is not a manifest embedrec wrote"
    foreign = []
    for rel, st in sorted(_walk(folder).items()):
        if rel == MANIFEST:
            continue
        if stat.S_ISDIR(st.st_mode):
            if rel not in dirs:
                foreign.append(f"{rel}/")
        elif not stat.S_ISREG(st.st_mode) or rel not in files:
            foreign.append(rel)
        elif files[rel] != [st.st_size, st.st_mtime_ns]:  # JSON lists; anything else in a damaged manifest differs
            foreign.append(f"{rel} (changed)")
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return f"{folder} holds files embedrec did not write ({shown})"


def _unwrapped(tops: dict[str, bool]) -> str | None:
    """The top-level entry :func:`extract` unwraps, given each top-level name and whether it is a folder: the one
    visible entry when it is a folder (dot files and ``__MACOSX`` beside it do not count), else None."""
    visible = [name for name in tops if not name.startswith((".", "__MACOSX"))]
    return visible[0] if len(visible) == 1 and tops[visible[0]] else None


def _extracted_files(zip_path: Path) -> dict[str, Any]:
    """What :func:`extract` puts in the folder from ``zip_path``: each file's path in it (relative, POSIX) and its
    member, after the single top-level folder is unwrapped as extract unwraps it."""
    from embedrec.data.archives import _safe_parts, checked_members, open_archive

    with open_archive(zip_path) as zf:
        members = checked_members(zf, zip_path, wanted=lambda _name: True)
    parts = {info.filename: (info, _safe_parts(info.filename) or ()) for info in members}
    tops: dict[str, bool] = {}
    for info, p in parts.values():
        if p:
            tops[p[0]] = tops.get(p[0], False) or len(p) > 1 or info.is_dir()
    unwrap = _unwrapped(tops)
    files: dict[str, Any] = {}
    for info, p in parts.values():
        if unwrap is not None:
            if p[:1] != (unwrap,):
                continue  # beside the unwrapped folder (a dot file): not in the extracted folder
            p = p[1:]
        if p:
            files["/".join(p)] = info
    return files


def _crc32(path: Path) -> int:
    import zlib

    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _adopt_earlier_extraction(folder: Path, zip_path: Path) -> None:
    """Give a folder a new manifest when it holds only what the cached ``zip_path`` extracts to, byte for byte, but
    its manifest does not say so: it has none (an embedrec before the manifest extracted it; a file of it may have
    been deleted), or its files' times moved (the cache copied with ``cp -r``, a file touched). It is embedrec's, and
    ``--force`` or a fetched archive may replace it. Anything else is left as it is (and refused)."""
    import stat

    if folder.is_symlink() or not folder.is_dir() or not zip_path.is_file():
        return
    if os.path.lexists(folder / MANIFEST) and not_written_by_embedrec(folder) is None:
        return  # the manifest vouches for every file: nothing to compare
    try:
        files = _extracted_files(zip_path)
        dirs = {"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}
        for rel, st in _walk(folder).items():
            if rel == MANIFEST:
                continue  # what it says is being replaced
            if stat.S_ISDIR(st.st_mode):
                if rel not in dirs:
                    return
            elif not stat.S_ISREG(st.st_mode) or rel not in files or st.st_size != files[rel].file_size:
                return
            elif _crc32(folder / rel) != files[rel].CRC:
                return
        _write_manifest(folder, zip_path)
    except (DataError, OSError):  # an unreadable archive or folder proves nothing: refused as it is
        return


class _NotOurs(DownloadError):
    """The extracted folder holds files embedrec did not write: it is kept, and the archive is not to blame."""


def _refuse_foreign(folder: Path, name: str, *, looked_at: Path | None = None) -> None:
    """Stop before replacing ``folder`` when it holds anything embedrec did not write there (``looked_at``: where the
    folder is now, when it has been moved aside)."""
    where = looked_at if looked_at is not None else folder
    if not os.path.lexists(where):
        return
    problem = not_written_by_embedrec(where)
    if problem is not None:
        raise _NotOurs(
            f"{problem.replace(str(where), str(folder))}: embedrec replaces only what it extracted; move them (or the "
            f"folder) elsewhere, then run `embedrec download {name}` again (--force does not delete them either)"
        )


def extract(zip_path: Path, folder: Path) -> Path:
    """Unpack ``zip_path`` into ``folder`` atomically; a single top-level folder in the archive is unwrapped.

    The archive's declared sizes are checked before anything is written and enforced while extracting (see
    :mod:`embedrec.data.archives`); a damaged archive is a DownloadError and leaves nothing behind. The caller
    checks that an existing ``folder`` holds only what embedrec wrote (:func:`not_written_by_embedrec`); it is
    moved aside while the new one is renamed in, so an interruption never leaves the cache without either. Once moved
    aside, where nothing is saved into it any more, it is checked again: a file the user saved there while the archive
    extracted (seconds, for the large releases) puts it back and refuses, instead of being deleted with it.
    """
    from embedrec.data.archives import checked_members, extract_member, open_archive
    from embedrec.tempfiles import remove_path, sweep_stale, temp_sibling

    sweep_stale(folder.parent, folder.name)
    tmp = temp_sibling(folder)
    aside = temp_sibling(folder, "old")
    try:
        tmp.mkdir()
        with open_archive(zip_path) as zf:
            for info in checked_members(zf, zip_path, wanted=lambda _name: True):
                extract_member(zf, info, tmp, zip_path)
        top = _unwrapped({p.name: p.is_dir() for p in tmp.iterdir()})
        root = tmp / top if top is not None else tmp
        _write_manifest(root, zip_path)
        if os.path.lexists(folder):
            os.replace(folder, aside)
            try:
                _refuse_foreign(folder, folder.name, looked_at=aside)
            except _NotOurs:
                os.replace(aside, folder)
                raise
        os.replace(root, folder)
    except DataError as exc:
        raise DownloadError(f"{exc}") from None
    finally:
        remove_path(tmp)
        if os.path.lexists(aside) and os.path.lexists(folder):
            remove_path(aside)
    return folder


def download(
    name: str,
    *,
    cache_dir: Path,
    force: bool = False,
    strict: bool = False,
    url: str | None = None,
    timeout: float = 30.0,
    on_progress: ProgressFn | None = None,
) -> DownloadResult:
    """Download (or reuse) release ``name`` into ``cache_dir`` and extract it to ``cache_dir/name``."""
    check_name(name)
    cache_dir = Path(cache_dir)
    if os.path.lexists(cache_dir) and not cache_dir.is_dir():
        raise ConfigError(f"--cache {cache_dir} is a file, not a folder: pass a folder (it is created when missing)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_url = f"{base_url(url)}/{name}.zip"
    zip_path = cache_dir / f"{name}.zip"
    part = cache_dir / f"{name}.zip.part"
    folder = cache_dir / name
    if not force and zip_path.is_file() and folder.is_dir():
        return DownloadResult(name, zip_path, folder, downloaded=False, verified=False, url=zip_url)
    _adopt_earlier_extraction(folder, zip_path)  # embedrec's bytes, with no manifest or one whose times moved
    _refuse_foreign(folder, name)  # before fetching: the folder would be replaced
    if force:  # a fresh fetch, not a resume; the cached archive and folder stay until the new one is verified
        part.unlink(missing_ok=True)
    verified = False
    downloaded = False
    warning = None
    if force or not zip_path.is_file():
        _fetch(zip_url, part, name=name, timeout=timeout, on_progress=on_progress)
        published = _published_md5(zip_url, timeout=timeout)
        expected = published.md5
        if expected is None:
            if strict:
                raise DownloadError(
                    f"cannot verify {zip_url}: {published.problem}; --strict refuses an unverified "
                    f"archive (kept as {part}: run again when the checksum is reachable, or drop "
                    "--strict)"
                )
            warning = f"NOT VERIFIED: {published.problem}; the archive is used without a checksum check"
        else:
            actual = _md5(part)
            if actual != expected:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"{zip_url}: checksum mismatch (md5 {actual}, published {expected}); the partial file was "
                    "deleted: run the command again"
                )
            verified = True
        os.replace(part, zip_path)
        downloaded = True
    _refuse_foreign(folder, name)  # again: the user may have put files there while the archive downloaded
    try:
        extract(zip_path, folder)
    except _NotOurs:  # the user's files in the folder: the archive is fine and stays
        raise
    except DownloadError as exc:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"{exc}; the damaged archive was deleted from the cache: run the command again") from None
    return DownloadResult(
        name, zip_path, folder, downloaded=downloaded, verified=verified, url=zip_url, warning=warning
    )
