"""The model a server answers with, and the swap that replaces it without dropping a request.

Synopsis::

    from embedrec.serve.state import ModelHolder, ModelSource
    holder = ModelHolder(ModelSource(workdir=Path(".embedrec")))   # loads + validates, or raises EmbedrecError
    served = holder.current                                          # a LoadedModel; read it once per request
    outcome = holder.reload()                                        # load beside, validate, swap; never raises

A request reads :attr:`ModelHolder.current` once and uses that :class:`LoadedModel` to the end, so a reload that swaps
the reference mid-request changes nothing for it; the old model is freed when its last request finishes. Reloads are
serialised by a lock and a failed one leaves the served model untouched. Everything here is numpy + pandas (the
:class:`~embedrec.recommender.Recommender` fast path): the server process never imports JAX.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.errors import ArtifactError, ConfigError, EmbedrecError

if TYPE_CHECKING:
    from embedrec.data.store import PreparedData
    from embedrec.recommender import Recommender

log = logging.getLogger("embedrec.serve")

# a folder may hold single spaces between words ("/srv/secret place/w/"): the slash after it tells it from prose
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"`,;()]+(?: [^\s/:'\"`,;()]+)*/)*([^\s/:'\"`,;()]+)/?")


def redact_paths(message: str) -> str:
    """``message`` with every absolute path cut to its last part: clients learn the run name, not the disk layout."""
    return _ABS_PATH.sub(r"\1", message)


@dataclass(frozen=True)
class ModelSource:
    """Where the server finds its model and data; re-resolved on every reload, so a new ``latest`` is picked up.

    ``model``: a fixed run folder (reload re-reads that folder); None: the work folder's latest run.
    ``data``: a fixed prepared-data folder; None: the work folder's data, else the folder the model was trained on
    (the same rule as ``embedrec recommend``).
    ``ann``: rank with the approximate first stage (``embedrec serve --ann``, :mod:`embedrec.ann`); its index is
    built, or read from the model folder, when the model loads, before it serves.
    """

    workdir: Path | None = None
    model: Path | None = None
    data: Path | None = None
    ann: bool = False

    def model_dir(self) -> Path:
        from embedrec.workdir import latest_run, resolve_workdir

        return self.model if self.model is not None else latest_run(resolve_workdir(self.workdir))

    def data_dir(self, recorded: str | None) -> Path | None:
        from embedrec.workdir import data_dir, resolve_workdir

        if self.data is not None:
            return self.data
        local = data_dir(resolve_workdir(self.workdir))
        if (local / "summary.json").is_file():
            return local
        if recorded and (Path(recorded) / "summary.json").is_file():
            return Path(recorded)
        return None


@dataclass(eq=False)
class LoadedModel:
    """One validated model with its data, and what the endpoints need precomputed from them."""

    rec: Recommender
    run: str
    generation: int
    loaded_at: str
    data_dir: Path | None
    genres: tuple[str, ...] = field(default=())

    @property
    def prepared(self) -> PreparedData | None:
        return self.rec.prepared

    def canonical_genre(self, genre: str | None) -> str | None:
        """The catalogue's spelling of ``genre`` (case-insensitive); ConfigError listing the genres when unknown."""
        if genre is None or not genre.strip():
            return None
        wanted = genre.strip().lower()
        for known in self.genres:
            if known.lower() == wanted:
                return known
        if not self.genres:
            raise ConfigError(f"genre: the model's movies have no genres, so none is {genre!r}; leave genre out")
        raise ConfigError(f"genre: unknown genre {genre!r}; known: {', '.join(self.genres)}")

    @cached_property
    def _ratings_by_user(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(indptr, movie_idx, rating) of every user's ratings, grouped by user: built on the page's first use, for
        a folder whose per-user index lacks the rating values (prepared by an earlier embedrec)."""
        prepared = self.prepared
        if prepared is None:
            return None
        order = np.argsort(prepared.user_idx, kind="stable")
        counts = np.bincount(prepared.user_idx, minlength=prepared.n_users)
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, prepared.movie_idx[order], prepared.rating[order]

    def user_ratings(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(movie_idx, rating) of a known user's ratings in the prepared data, highest first; empty without data.

        The data and the model share their indices: a model is only served with the data it was trained on.
        """
        if self.prepared is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        u = self.rec.user_vocab.index(user_id)
        index = self.prepared.user_index
        indexed = index.ratings_of(u) if index is not None else None
        if indexed is not None:
            movies, ratings = indexed
        else:
            grouped = self._ratings_by_user
            assert grouped is not None
            indptr, movie_idx, rating = grouped
            movies, ratings = movie_idx[indptr[u] : indptr[u + 1]], rating[indptr[u] : indptr[u + 1]]
        order = np.lexsort((movies, -ratings))
        return movies[order].astype(np.int64), ratings[order]

    @property
    def movie_fields(self) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """:attr:`Recommender.movie_fields <embedrec.recommender.Recommender.movie_fields>`: every movie's
        movieId, title, year, genres as Python values, built at load (:meth:`warm`)."""
        return self.rec.movie_fields

    def movie_records(self, movie_idx: np.ndarray, **extra: np.ndarray) -> list[dict[str, Any]]:
        """:meth:`Recommender.movie_records <embedrec.recommender.Recommender.movie_records>`."""
        return self.rec.movie_records(movie_idx, **extra)

    def warm(self) -> None:
        """Build now what requests would otherwise build on first use: every user's seen-movie index, the movie
        fields of responses, the cold-start popularity and the unfiltered movie pool; and, for a folder whose
        per-user index lacks the rating values (an earlier prepare), the page's ratings grouped by user (reading
        every rating: seconds at 27M, which a fresh ``prepare`` saves)."""
        self.rec.index_seen()
        _ = self.movie_fields
        if self.rec.scorer.ann and self.rec.scorer.ranking.score == "blend":  # the HNSW index of its watch side
            self.rec.scorer.every_movie.watch_index(self.rec.scorer.ranking)
        if self.prepared is not None:
            self.rec.popular(k=1)
            index = self.prepared.user_index
            if index is None or index.rating is None:
                _ = self._ratings_by_user

    def info(self) -> dict[str, Any]:
        """The ``GET /model`` answer (no file paths)."""
        meta = self.rec.artifact.meta
        metrics = {
            k: (float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None)
            for k, v in (meta.get("metrics") or {}).items()
        }
        return {
            "run": self.run,
            "preset": meta.get("preset"),
            "created": meta.get("created"),
            "fingerprint": self.rec.artifact.fingerprint,
            "data_loaded": self.prepared is not None,
            "n_users": len(self.rec.user_ids),
            "n_movies": len(self.rec.movie_ids),
            "n_params": meta.get("n_params"),
            "ranking": self.rec.ranking.describe(),
            "best_epoch": meta.get("best_epoch"),
            "metrics": metrics,
            "loaded_at": self.loaded_at,
            "generation": self.generation,
        }


def load_served_model(source: ModelSource, *, generation: int = 1, previous: LoadedModel | None = None) -> LoadedModel:
    """Load the model (and its data) that ``source`` names now, and check it can answer; EmbedrecError if not.

    The prepared data of ``previous`` is reused when the data folder still holds the same fingerprint, so a reload
    after ``embedrec train`` reads only the new model. A model trained on other data than the data found is
    refused: its seen-movie filter and the page's "rated highly" list would belong to other users.
    """
    from embedrec.artifacts import load_model, read_json
    from embedrec.data.store import load_prepared
    from embedrec.recommender import Recommender

    model_dir = source.model_dir()
    artifact = load_model(model_dir)
    folder = source.data_dir(artifact.meta.get("data", {}).get("path"))
    prepared = None
    if folder is not None:
        fingerprint = read_json(folder / "summary.json").get("fingerprint")
        old = previous.prepared if previous is not None else None
        same = old is not None and previous is not None and previous.data_dir == folder.resolve()
        if same and old is not None and old.fingerprint == fingerprint:
            prepared = old
        else:  # the ratings are read only if something needs them all: a folder without the per-user index
            prepared = load_prepared(folder, lazy=True)
        if prepared.fingerprint != artifact.fingerprint:
            raise ArtifactError(
                f"model {model_dir.name} was trained on data {artifact.fingerprint or '?'}, but the "
                f"data at {folder} is {prepared.fingerprint}: serve it with the data it was "
                "trained on (--data DIR), or retrain"
            )
    rec = Recommender(artifact, prepared)
    rec.scorer.ann = source.ann
    _check_answers(rec, model_dir.name)
    genres = sorted({g for gl in rec.genre_lists for g in gl})
    served = LoadedModel(
        rec=rec,
        run=model_dir.name,
        generation=generation,
        loaded_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        data_dir=folder.resolve() if folder is not None else None,
        genres=tuple(genres),
    )
    served.warm()
    return served


def _check_answers(rec: Recommender, run: str) -> None:
    """Ask the model a few real questions before it may serve; a model that answers NaN is refused."""
    n_users = len(rec.user_ids)
    if n_users == 0 or len(rec.movie_ids) == 0:
        raise ArtifactError(f"model {run} knows no users or no movies")
    sample = rec.user_ids[np.unique(np.linspace(0, n_users - 1, num=min(3, n_users)).astype(int))]
    damaged = f"model {run} gives non-finite scores: its weights are damaged; retrain"
    try:
        # seen movies kept: a user who rated the whole catalogue (a tiny data set) has an empty list, not bad weights
        table = rec.recommend_many(sample, k=min(10, len(rec.movie_ids)), filter_seen=False, min_ratings=0, workers=1)
        similar = rec.similar(int(rec.movie_ids[0]), k=min(5, max(1, len(rec.movie_ids) - 1)))
    except ValueError:  # top-k refuses NaN scores
        raise ArtifactError(damaged) from None
    if table.empty or not np.isfinite(table["score"].to_numpy(float)).all():
        raise ArtifactError(damaged)
    if not np.isfinite(similar["similarity"].to_numpy(float)).all():
        raise ArtifactError(f"model {run} gives non-finite movie similarities: its weights are damaged; retrain")


@dataclass(frozen=True)
class ReloadOutcome:
    reloaded: bool
    served: LoadedModel
    message: str


class ModelHolder:
    """The served model behind one reference: loaded at start, replaced whole by :meth:`reload`."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._current = load_served_model(source)

    @property
    def current(self) -> LoadedModel:
        return self._current

    def reload(self) -> ReloadOutcome:
        """Load what the source names now beside the served model, validate it, swap. Never raises.

        A model that fails to load or to answer is refused with the reason (paths cut to their last part) and the
        old one keeps serving. Concurrent reloads wait for each other.
        """
        with self._lock:
            old = self._current
            started = time.perf_counter()
            try:
                new = load_served_model(self.source, generation=old.generation + 1, previous=old)
            except EmbedrecError as exc:
                log.warning("reload refused, still serving %s: %s", old.run, exc)
                return ReloadOutcome(
                    False, old, f"new model refused, still serving {old.run}: {redact_paths(str(exc))}"
                )
            except Exception:  # a bug or MemoryError while loading must not take the serving model down
                log.exception("reload failed, still serving %s", old.run)
                return ReloadOutcome(
                    False, old, f"new model could not be loaded (see the server log), still serving {old.run}"
                )
            self._current = new
            seconds = time.perf_counter() - started
            log.info("reloaded: now serving %s (generation %d, loaded in %.2f s)", new.run, new.generation, seconds)
            return ReloadOutcome(True, new, f"now serving {new.run} (loaded in {seconds:.2f} s)")
