"""Real MovieLens-100K for tests and benchmarks, taken from the RecBole wheel on PyPI (never installed).

Synopsis::

    folder = fetch_ml100k()          # ~/.cache/embedrec/recbole/ml-100k  (or $EMBEDREC_TEST_CACHE/ml-100k)
    prepare(folder, out=..., config=PrepareConfig())   # detected as format "recbole"

The ``recbole`` 1.2.1 wheel ships ``recbole/dataset_example/ml-100k/ml-100k.inter`` (100,000 ratings, 943 users,
1,682 movies) and ``ml-100k.item`` (titles, release years, genres). ``pip download`` fetches the wheel through the
ordinary package registry, which works where GroupLens cannot be reached; only those two files are extracted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from embedrec.errors import DownloadError

RECBOLE_VERSION = "1.2.1"
WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
MEMBERS = ("recbole/dataset_example/ml-100k/ml-100k.inter", "recbole/dataset_example/ml-100k/ml-100k.item")
CACHE_ENV = "EMBEDREC_TEST_CACHE"


def default_cache() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "embedrec" / "recbole"


def fetch_ml100k(cache_dir: Path | None = None, *, timeout: float = 180.0) -> Path:
    """Return a folder holding ``ml-100k.inter`` and ``ml-100k.item``, downloading the wheel once if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    folder = cache / "ml-100k"
    if all((folder / Path(m).name).is_file() for m in MEMBERS):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    from embedrec.locks import folder_lock

    with folder_lock(cache, exclusive=True):  # two processes (test workers, two commands) fetch it once
        if all((folder / Path(m).name).is_file() for m in MEMBERS):
            return folder
        wheel = cache / WHEEL
        if not wheel.is_file():
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--timeout",
                "20",
                "--retries",
                "1",
                f"recbole=={RECBOLE_VERSION}",
                "-d",
                str(cache),
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DownloadError(
                    f"pip download of recbole=={RECBOLE_VERSION} failed ({exc}): is PyPI reachable?"
                ) from None
            if proc.returncode != 0 or not wheel.is_file():
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DownloadError(
                    f"pip download of recbole=={RECBOLE_VERSION} failed ({last[0][:200]}): is PyPI reachable?"
                )
        tmp = cache / f".ml-100k.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in MEMBERS:
                    with zf.open(member) as src, open(tmp / Path(member).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except (zipfile.BadZipFile, KeyError) as exc:
            wheel.unlink(missing_ok=True)
            raise DownloadError(
                f"{wheel} is not the expected recbole wheel ({exc}); it was deleted: try again"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
