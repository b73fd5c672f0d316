"""Shared fixtures: real MovieLens-100K (from the RecBole wheel), prepared data sets, and MovieLens file writers.

Fixtures other test modules rely on (keep the names):

- ``ml100k_dir``: folder with ``ml-100k.inter`` + ``ml-100k.item`` (skips when PyPI is unreachable).
- ``ml100k_prepared``: that data prepared once per session (random split, test 0.2, val 0.1, seed 42).
- ``synthetic_prepared``: a small synthetic data set (300 users, 400 movies, 20,000 ratings) prepared with defaults.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache for the whole run: the pytest workers and every `embedrec` subprocess they
# start (which inherit this environment) compile the same small training steps again and again, and compiling is most
# of a small run's time (a 2-epoch synthetic `embedrec train`: 26 s of CPU cold, 10 s from the cache). Results are
# the same bits: the cache keys on the program, the XLA flags and the devices. JAX writes an entry in place, so an
# entry a killed test process left half-written (or one read while another process writes it) fails to decompress:
# JAX warns and compiles afresh. Those warnings are silenced (they would add a line to the stderr that tests read);
# without a size limit JAX keeps no access-time files, whose loss to a kill would stop all later writes.
# EMBEDREC_TEST_JAX_CACHE=off runs without the cache.
if os.environ.get("EMBEDREC_TEST_JAX_CACHE", "") != "off":
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"embedrec-tests-jax-cache-{os.getuid()}")
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ["PYTHONWARNINGS"] = ",".join(
        [
            *filter(None, [os.environ.get("PYTHONWARNINGS")]),
            "ignore:Error reading persistent compilation cache entry:UserWarning",
            "ignore:Error writing persistent compilation cache entry:UserWarning",
        ]
    )


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    from embedrec.data.recbole import fetch_ml100k
    from embedrec.errors import DownloadError

    try:
        return fetch_ml100k()
    except DownloadError as exc:
        pytest.skip(f"MovieLens-100K unavailable (needs the recbole wheel from PyPI): {exc}")


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrec.data import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("ml100k") / "data"
    prepare(ml100k_dir, out=out, config=PrepareConfig(split="random", test_frac=0.2, val_frac=0.1, seed=42))
    return out


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrec.data import PrepareConfig, prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare_synthetic(out=out, n_users=300, n_movies=400, n_ratings=20_000, seed=0, config=PrepareConfig())
    return out


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's work folder, download cache or download URL by accident."""
    for var in ("EMBEDREC_WORKDIR", "EMBEDREC_CACHE", "EMBEDREC_DOWNLOAD_URL"):
        monkeypatch.delenv(var, raising=False)
