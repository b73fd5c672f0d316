"""Data: readers per MovieLens layout, validation, splits, the Parquet store, synthetic data, downloads.

Synopsis::

    from embedrec import data
    summary = data.prepare(None, out=Path("work/data"), config=data.PrepareConfig())   # synthetic default
    prepared = data.load_prepared("work/data")
    prepared.user_idx, prepared.movie_idx, prepared.rating, prepared.split_mask("train")

Importing this package is instant: pandas and pyarrow load only when a function that needs them runs. Never imports
JAX.

Modules: ``config`` (PrepareConfig), ``sources`` (what SOURCE names), ``layouts`` (detection and readers per
MovieLens layout), ``readers`` (fast CSV reading with one-line errors), ``validate`` (bad rows, encoding, filters),
``encode`` (id -> index; :mod:`embedrec.vocab` wraps it), ``split``, ``store`` (the prepared folder: write and load),
``pipeline`` (prepare), ``user_files`` (the small CSVs users hand to predict and recommend),
``synthetic`` (the embedded default data), ``downloads`` (GroupLens releases), ``recbole`` (MovieLens-100K from the
RecBole wheel, for tests and benchmarks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedrec.data.config import PrepareConfig

if TYPE_CHECKING:
    from embedrec.data.downloads import DownloadResult, download
    from embedrec.data.pipeline import prepare, prepare_synthetic
    from embedrec.data.store import PreparedData, load_prepared

_LAZY = {
    "prepare": "embedrec.data.pipeline",
    "prepare_synthetic": "embedrec.data.pipeline",
    "load_prepared": "embedrec.data.store",
    "PreparedData": "embedrec.data.store",
    "download": "embedrec.data.downloads",
    "DownloadResult": "embedrec.data.downloads",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedrec.data' has no attribute {name!r}")


__all__ = [
    "PrepareConfig",
    "prepare",
    "prepare_synthetic",
    "load_prepared",
    "PreparedData",
    "download",
    "DownloadResult",
]
