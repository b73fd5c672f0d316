"""What the serving commands (and the HTTP service) share: which model and data to load, and how results are written.

Synopsis::

    from embedrec.serving import open_recommender, recommend_to_file, predict_file
    loaded = open_recommender(workdir=None)          # the work folder's latest model + its prepared data
    for level, text in loaded.notes: ...             # ("note" | "warning", message) for the caller to show
    recommend_to_file(loaded.recommender, None, Path("recs.parquet"), k=10)   # every known user, atomically
    predict_file(loaded.recommender, Path("pairs.csv"), Path("preds.csv"))

The lookup policy: ``--model`` else the work folder's latest run; ``--data`` else the work folder's data, else the
folder the model was trained on. Serving (``recommend``, ``predict``) accepts other data with a warning and matches
ids by raw id; evaluation (``strict``) refuses it, because test ratings could have been training ratings.

Importing this module is instant (no numpy, pandas or JAX at top level): the CLI reads :data:`DEFAULT_MIN_RATINGS`
from it for ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrec.errors import ArtifactError, ConfigError
from embedrec.tempfiles import name_target

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from embedrec.artifacts import ModelArtifact
    from embedrec.data.store import PreparedData
    from embedrec.recommender import Recommender

DEFAULT_MIN_RATINGS = 5
"""``recommend`` skips movies with fewer ratings than this in the prepared data. Measured on MovieLens-100K (random
80/20, train counts, full ranking): NDCG@10 is the same at thresholds 0, 3, 5, 10 and 20 for the default model
(0.183) and the seed model (0.051), so the filter costs no measured accuracy; 5 is the smallest threshold that drops
the movies a single enthusiastic rating can lift (a quarter of ML-100K's catalogue) while keeping three quarters of
it open to discovery."""

DEFAULT_CANDIDATES = 500
"""Movies per user that the watch output (a dot product) retrieves for the full network to re-rank. Measured with
``benchmarks/two_stage.py`` (README "Two-stage ranking"): with the default preset trained on ML-100K and on the
synthetic set, the two-stage top 10 holds 100% of the exhaustive top 10 at N = 500 for every blend training may
choose (99.70% at N = 100 with beta 2, the hardest), and NDCG@10 is unchanged. Re-ranking 500 movies costs under 1%
of running the network over 86,000; retrieval is one (users x d) x (d x movies) product plus a top-N selection."""

TABLE_SUFFIXES = (".csv", ".parquet")

Note = tuple[str, str]  # ("note" | "warning", message)


@dataclass(frozen=True)
class Loaded:
    """A model, its prepared data when found, and what the caller should tell the user about the choice."""

    artifact: ModelArtifact
    prepared: PreparedData | None
    notes: tuple[Note, ...] = ()
    recommender: Recommender | None = field(default=None, compare=False)


def model_dir(workdir: Path | None, model: Path | None) -> Path:
    """``model``, else the work folder's latest run (ArtifactError saying how to train one when there is none)."""
    from embedrec.workdir import latest_run, resolve_workdir

    return model if model is not None else latest_run(resolve_workdir(workdir))


def find_data_dir(workdir: Path | None, data: Path | None, artifact: ModelArtifact) -> Path | None:
    """``data``, else the work folder's data, else the folder the model was trained on; None when none exists."""
    from embedrec.workdir import data_dir, resolve_workdir

    if data is not None:
        return data
    local = data_dir(resolve_workdir(workdir))
    if (local / "summary.json").is_file():
        return local
    recorded = artifact.meta.get("data", {}).get("path")
    if recorded and (Path(recorded) / "summary.json").is_file():
        return Path(recorded)
    return None


def load_model_and_data(
    *, workdir: Path | None = None, model: Path | None = None, data: Path | None = None, strict: bool = False
) -> Loaded:
    """The model and its prepared data. ``strict``: data is required and must be the data the model was trained on.

    Not strict (serving), the ratings are read only if something needs them all (``--all-users``, data the model was
    not trained on, a folder without the per-user index): one user's request reads that index alone."""
    from embedrec.artifacts import load_model
    from embedrec.data.store import load_prepared

    artifact = load_model(model_dir(workdir, model))
    folder = find_data_dir(workdir, data, artifact)
    if folder is None:
        if strict:
            raise ArtifactError("no prepared data found: run `embedrec prepare`, or pass --data DIR")
        return Loaded(
            artifact, None, (("note", "no prepared data found: seen movies are not filtered (pass --data DIR)"),)
        )
    prepared = load_prepared(folder, lazy=not strict)
    if prepared.fingerprint == artifact.fingerprint:
        notes: tuple[Note, ...] = ()
        if prepared.user_index is None and not strict:
            notes = (
                (
                    "note",
                    f"{folder} was prepared by an older embedrec, without the per-user index: every request reads "
                    "all its ratings (run `embedrec prepare` again to make one user's request fast)",
                ),
            )
        return Loaded(artifact, prepared, notes)
    message = (
        f"the model {artifact.path} was trained on data {artifact.fingerprint or '?'}, but {folder} is "
        f"{prepared.fingerprint}"
    )
    if strict:
        raise ArtifactError(
            f"{message}: evaluating on other data would leak test ratings into training; "
            "pass the --data the model was trained on, or retrain"
        )
    return Loaded(artifact, prepared, (("warning", f"{message}; ids are matched by raw id"),))


def open_recommender(*, workdir: Path | None = None, model: Path | None = None, data: Path | None = None) -> Loaded:
    """:func:`load_model_and_data` (not strict) with the :class:`~embedrec.recommender.Recommender` built."""
    from embedrec.recommender import Recommender

    loaded = load_model_and_data(workdir=workdir, model=model, data=data)
    return Loaded(loaded.artifact, loaded.prepared, loaded.notes, Recommender(loaded.artifact, loaded.prepared))


# ---------------------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------------------
def check_table_path(
    output: Path, *, option: str = "--output", suffixes: tuple[str, ...] | None = TABLE_SUFFIXES
) -> None:
    """Refuse, before any work, an output path that is a folder, lies under a file (where its folder should be) or
    (given ``suffixes``) has another suffix. A missing folder is fine: the writer creates it."""
    if output.is_dir():
        raise ConfigError(f"{option} {output} is a folder: name a file, e.g. {output / 'out.csv'}")
    for parent in output.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"{option} {output}: {parent} is a file, not a folder: choose a path in a folder")
            break
    if suffixes is not None and output.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} must end in {' or '.join(suffixes)}, got {output.name}")


def refuse_overwriting_input(output: Path, input_path: Path, input_option: str, *, option: str = "--output") -> None:
    """Refuse an output that is the input file itself (writing it would replace the user's file with the result)."""
    target, source = Path(os.path.realpath(output)), Path(os.path.realpath(input_path))
    same = target == source
    if not same and target.exists() and source.exists():
        same = os.path.samefile(target, source)  # a hard link to the input
    if same:
        raise ConfigError(
            f"{option} {output} is the same file as {input_option} {input_path}: writing it would replace your "
            "input; name another file"
        )


def write_table(table: pd.DataFrame, output: Path, *, float_format: str | None = None) -> None:
    """Write ``table`` as Parquet (suffix .parquet) or CSV through a temp file + rename: never half a file."""
    check_table_path(output, suffixes=None)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        if output.suffix.lower() == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, float_format=float_format)
        os.replace(tmp, output)
    except OSError as exc:
        name_target(exc, tmp, output)  # the user's path, not embedrec's temp file beside it
        raise
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class BatchSummary:
    """What :func:`recommend_to_file` did: users served, rows written, the list length used, unknown ids skipped."""

    n_users: int
    n_rows: int
    k: int
    n_unknown: int
    first_unknown: int | None
    output: Path


def recommend_to_file(
    rec: Recommender,
    user_ids: np.ndarray | None,
    output: Path,
    *,
    k: int = 10,
    on_progress: Callable[[int, int], None] | None = None,
    **filters: Any,
) -> BatchSummary:
    """Top ``k`` for many users (None: every user the model knows) into ``output`` (.csv or .parquet).

    Columns: userId, rank, movieId, title, score, rating. Unknown ids are skipped and counted; ``k`` is clamped to
    the catalogue size (:meth:`~embedrec.recommender.Recommender.recommend_many`). ``filters``: ``filter_seen``,
    ``genre``, ``min_ratings``.
    """
    import numpy as np

    check_table_path(output)
    user_ids = rec.user_ids if user_ids is None else np.asarray(user_ids, dtype=np.int64)
    known = rec.user_vocab.indices(user_ids) >= 0
    unknown = user_ids[~known]
    user_ids = user_ids[known]
    table = rec.recommend_many(user_ids, k=k, on_progress=on_progress, **filters)
    table = table.rename(columns={"user_id": "userId", "movie_id": "movieId"})
    titles = rec.movies.set_index("movie_id")["title"]
    table.insert(3, "title", titles.reindex(table["movieId"]).to_numpy())
    write_table(table, output, float_format="%.5g")
    return BatchSummary(
        n_users=len(user_ids),
        n_rows=len(table),
        k=min(k, len(rec.movie_ids)),
        n_unknown=len(unknown),
        first_unknown=int(unknown[0]) if len(unknown) else None,
        output=output,
    )


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_file` did; ``table`` holds userId, movieId (as written), prediction, reason."""

    table: pd.DataFrame
    n_pairs: int
    n_unknown: int


def predict_file(rec: Recommender, input_path: Path, output: Path | None = None) -> PredictSummary:
    """Predicted ratings of every (userId, movieId) row of ``input_path``; rows naming an unknown (or non-integer)
    id get an empty prediction and a reason. Written to ``output`` (CSV) when given."""
    from embedrec.data.user_files import read_pairs

    if output is not None:
        check_table_path(output, suffixes=None)
        refuse_overwriting_input(output, input_path, "--input")
    pairs = read_pairs(input_path)
    ratings, reasons = rec.predict_known(pairs["userId"].to_numpy(object), pairs["movieId"].to_numpy(object))
    pairs["prediction"] = [None if r != r else round(float(r), 4) for r in ratings]
    pairs["reason"] = reasons
    if output is not None:
        write_table(pairs, output)
    return PredictSummary(table=pairs, n_pairs=len(pairs), n_unknown=int((reasons != "").sum()))
