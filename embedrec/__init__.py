"""embedrec: a command-line recommender for MovieLens-style ratings.

Synopsis (the Python API; the CLI is a thin layer over it)::

    from embedrec import data
    summary = data.prepare_synthetic(out="work/data", n_users=500, n_movies=400, n_ratings=20_000, seed=0)
    prepared = data.load_prepared("work/data")

Heavy modules (jax, flax, pandas) are imported lazily by the submodules that need them, so importing the package
is instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

from embedrec.errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    DataError,
    DownloadError,
    EmbedrecError,
    TrainingDiverged,
    UnknownIdError,
)

__all__ = [
    "__version__",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "EmbedrecError",
    "TrainingDiverged",
    "UnknownIdError",
]
