"""The serving facade: a trained model with its vocabularies and the users' seen movies, in raw MovieLens ids.

Synopsis::

    from embedrec.recommender import Recommender
    rec = Recommender.load("runs/latest", data="work/data")      # numpy only: never imports JAX
    rec.recommend(42, k=10)                        # DataFrame: movie_id, title, year, genres, score, rating
    rec.recommend(42, k=10, genre="Comedy", filter_seen=False)
    rec.predict([42, 42], [1, 318])                               # predicted ratings (float32)
    rec.recommend_many(rec.user_ids, k=10)                        # long DataFrame: user_id, rank, movie_id, ...
    rec.similar(1, k=10)                                          # cosine of movie embeddings
    user = rec.fold_in([(260, 5.0), (1196, 4.5)])                 # a new user from a few ratings
    rec.recommend_for(user, k=10)
    42 in rec.user_vocab, rec.movie_vocab.index(318)              # raw id <-> index (embedrec.vocab)

The maths lives elsewhere: :mod:`embedrec.scoring` (the numpy forward pass and the ranking score),
:mod:`embedrec.fold_in` (new users), :func:`embedrec.evaluation.evaluate_model` (metrics). This module turns raw ids
into indices, applies the filters (seen, genre, ``min_ratings``) and returns tables.

``k`` larger than the catalogue is clamped to it: a list never has more movies than the model knows, and a batch
never allocates more than (users x movies) results, whatever ``-k`` asks for.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.config import rating_loss_weight, whole_number
from embedrec.data.encode import exact_int
from embedrec.errors import ConfigError, DataError, UnknownIdError
from embedrec.fold_in import FOLD_OPTIONS, FoldedUser, fold_in
from embedrec.metrics import ItemSets, top_k
from embedrec.scoring import DEFAULT_CANDIDATES, MoviePool, Ranked, Ranking, Scorer
from embedrec.serving import DEFAULT_MIN_RATINGS
from embedrec.vocab import Vocabulary

if TYPE_CHECKING:
    import pandas as pd

    from embedrec.artifacts import ModelArtifact
    from embedrec.data.store import PreparedData
    from embedrec.data.user_index import UserIndex

USER_BLOCK = 256  # users per block of batch top-K: (256, n_movies) float32 retrieval scores at a time

ProgressFn = Callable[[int, int], None]

__all__ = ["DEFAULT_MIN_RATINGS", "FoldedUser", "Ranking", "Recommender"]


MOVIE_FIELDS: tuple[tuple[str, type], ...] = (("movie_id", int), ("title", str), ("year", int), ("genres", str))
FEW_ROWS = 1000  # movie_records reads up to this many rows from the Arrow table one by one; more: every row at once


def _plain(value: Any, kind: type) -> Any:
    """A value of a movie column as ``kind`` (a year read as 1995.0 is 1995), None when missing or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return kind(value)


def _movie_row(table: Any, movie_idx: int) -> tuple[Any, ...]:
    """One movie's :data:`MOVIE_FIELDS` from the Arrow movie table, as plain Python values."""
    return tuple(
        _plain(table.column(name)[movie_idx].as_py(), kind) if name in table.column_names else None
        for name, kind in MOVIE_FIELDS
    )


def _whole_number(value: Any, option: str) -> int:
    """``value`` as an int when it is a whole number (an int, a numpy integer, a whole float), else ConfigError naming
    ``option``: a string, None, NaN, 2.5 or True is a caller's mistake, not a count to truncate."""
    number = whole_number(value)
    if number is None:
        raise ConfigError(f"{option} must be a whole number, got {value!r}")
    return number


def genre_filter(genre: Any) -> str | None:
    """``genre`` checked: None (no filter) or a non-empty string; ConfigError otherwise (an empty --genre matched
    nothing and used to be read as no filter at all)."""
    if genre is None:
        return None
    if not isinstance(genre, str):
        raise ConfigError(f"--genre must be a genre name such as 'Comedy', got {genre!r}")
    if not genre.strip():
        raise ConfigError("--genre is empty: pass a genre such as Comedy, or drop --genre")
    return genre


def _min_ratings(value: Any) -> int:
    count = _whole_number(value, "--min-ratings")
    if count < 0:
        raise ConfigError(f"--min-ratings must be at least 0, got {count}")
    return count


def _is_number(value: Any) -> bool:
    try:
        np.float32(value)
    except (TypeError, ValueError):
        return False
    return True


def _pool_key(genre: str | None, min_ratings: int) -> tuple[str | None, int]:
    genre = genre_filter(genre)
    return (genre.strip().lower() if genre else None, _min_ratings(min_ratings))


class Recommender:
    """A loaded model + vocabularies (+ the prepared data for seen movies and popularity), in raw ids.

    Without ``prepared`` nothing is filtered as seen, ``min_ratings`` does not apply and there is no popularity
    fallback for unknown users (they raise :class:`UnknownIdError`).
    """

    def __init__(
        self,
        artifact: ModelArtifact,
        prepared: PreparedData | None = None,
        *,
        ranking: Ranking | None = None,
        candidates: int | None = DEFAULT_CANDIDATES,
    ) -> None:
        self.artifact = artifact
        self.candidates = candidates  # movies the full network re-ranks per user; None: every movie (exhaustive)
        self._pools: dict[tuple[str | None, int], MoviePool] = {}
        self._pools_lock = threading.Lock()
        self.scorer = Scorer.from_artifact(artifact)
        if ranking is not None:
            self.scorer.ranking = ranking
        self.user_vocab = Vocabulary(artifact.user_ids, kind="user", owner="the model")
        self.movie_vocab = Vocabulary(artifact.movie_ids, kind="movie", owner="the model")
        self.prepared = prepared
        self._seen: ItemSets | None = None
        self._rated: tuple[np.ndarray, np.ndarray] | None = None
        self._index: UserIndex | None = None  # the prepared folder's per-user CSR, when it has one and matches
        self._counts: np.ndarray | None = None
        self._popularity: np.ndarray | None = None
        if prepared is not None:
            self._index_prepared(prepared)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None) -> Recommender:
        from embedrec.artifacts import load_model

        artifact = load_model(Path(model_dir))
        prepared = None
        if data is not None:
            from embedrec.data.store import load_prepared

            prepared = load_prepared(data)
        return cls(artifact, prepared)

    @property
    def user_ids(self) -> np.ndarray:
        """Raw user ids the model knows, sorted (int64); a user's index is its position."""
        return self.user_vocab.ids

    @property
    def movie_ids(self) -> np.ndarray:
        """Raw movie ids the model knows, sorted (int64), in the row order of :attr:`movies`."""
        return self.movie_vocab.ids

    @property
    def movies(self) -> pd.DataFrame:
        """The model's movie table (movie_idx, movie_id, title, year, genres, ...), row i for movie index i."""
        return self.artifact.movies

    @property
    def ranking(self) -> Ranking:
        return self.scorer.ranking

    @property
    def fingerprint_matches(self) -> bool:
        return self.prepared is not None and self.prepared.fingerprint == self.artifact.fingerprint

    def _index_prepared(self, prepared: PreparedData) -> None:
        if self.fingerprint_matches and prepared.user_index is not None:
            # the per-user index written by prepare: no rating is read until a batch needs every user's seen set
            self._index = prepared.user_index
            self._counts = np.asarray(self._index.movie_counts)
            return
        if self.fingerprint_matches:
            u, m, r = prepared.user_idx, prepared.movie_idx, prepared.rating
        else:  # re-prepared data: map through raw ids, dropping what the model does not know
            u = self.user_vocab.indices(prepared.user_ids)[prepared.user_idx]
            m = self.movie_vocab.indices(prepared.movie_ids)[prepared.movie_idx]
            keep = (u >= 0) & (m >= 0)
            u, m, r = u[keep], m[keep], prepared.rating[keep]
        n_movies = len(self.movie_vocab)
        self._rated = (np.asarray(u, dtype=np.int32), np.asarray(m, dtype=np.int32))
        self._rated_values = np.asarray(r)
        self._counts = np.bincount(m, minlength=n_movies)

    def _popularity_scores(self) -> np.ndarray | None:
        """Bayesian-average ratings per movie, computed on first use: a known user's request never needs them,
        and at 27M ratings they cost a few hundred milliseconds of every ``recommend --user`` process."""
        from embedrec.baselines import TopRated

        if self._popularity is None and self._index is not None:
            self._popularity = (
                TopRated()
                .fit_totals(np.asarray(self._index.movie_counts), np.asarray(self._index.movie_rating_sums))
                .scores_
            )
        if self._popularity is None and self._rated is not None:
            u, m = self._rated
            n_users, n_movies = len(self.user_vocab), len(self.movie_vocab)
            self._popularity = (
                TopRated().fit(u, m, self._rated_values, n_users=n_users, n_movies=n_movies).scores_
                if len(u)
                else np.zeros(n_movies, np.float32)
            )
        return self._popularity

    def _seen_sets(self) -> ItemSets | None:
        """Every user's rated movies (all splits) as CSR: the prepared index, or built on first use by a counting
        sort (no 2M-key sort)."""
        if self._seen is None and self._index is not None:
            self._seen = ItemSets(
                indptr=np.asarray(self._index.indptr),
                indices=np.asarray(self._index.movie_idx),
                n_items=len(self.movie_vocab),
            )
        if self._seen is None and self._rated is not None:
            u, m = self._rated
            counts = np.bincount(u, minlength=len(self.user_vocab))
            indptr = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            self._seen = ItemSets(indptr=indptr, indices=m[np.argsort(u, kind="stable")], n_items=len(self.movie_vocab))
        return self._seen

    def seen_mask(self, user_idx: int) -> np.ndarray:
        """(n_movies,) True where the user rated the movie in the prepared data; all False without it."""
        out = np.zeros(len(self.movie_vocab), dtype=bool)
        if self._index is not None:
            out[self._index.movies_of(user_idx)] = True
        elif self._seen is not None:
            out[self._seen.indices[self._seen.indptr[user_idx] : self._seen.indptr[user_idx + 1]]] = True
        elif self._rated is not None:
            u, m = self._rated
            out[m[u == user_idx]] = True
        return out

    def rating_counts(self) -> np.ndarray | None:
        """Ratings per movie in the prepared data (all splits), or None without it."""
        return self._counts

    # -- predict ----------------------------------------------------------------------------------------------
    def predict(self, user_ids: Sequence[int] | np.ndarray, movie_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Predicted ratings of (user_ids[i], movie_ids[i]); UnknownIdError names the first unknown id."""
        ratings, reasons = self.predict_known(user_ids, movie_ids)
        bad = np.flatnonzero(reasons != "")
        if bad.size:
            i = int(bad[0])
            raise UnknownIdError(
                f"cannot predict user {np.asarray(user_ids)[i]}, movie {np.asarray(movie_ids)[i]}: "
                f"{reasons[i]} (the model knows {len(self.user_vocab):,} users and "
                f"{len(self.movie_vocab):,} movies)"
            )
        return ratings

    def predict_known(
        self, user_ids: Sequence[Any] | np.ndarray, movie_ids: Sequence[Any] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ratings with NaN where unknown, reason per row: "" or "unknown user", "unknown movie",
        "unknown user and movie").

        Ids may be integers or integer strings (read exactly: 9007199254740993 is not 9007199254740992); a value
        that is not an integer id at all gets the reason "user id 'abc' is not an integer" (or movie).
        """
        u = self.user_vocab.indices(user_ids)
        m = self.movie_vocab.indices(movie_ids)
        if u.shape != m.shape:
            raise ConfigError(f"{u.size} user ids but {m.size} movie ids")
        ok = (u >= 0) & (m >= 0)
        out = np.full(u.shape, np.nan, dtype=np.float32)
        out[ok] = self.scorer.predict_pairs(u[ok], m[ok])
        reasons = np.full(u.shape, "", dtype=object)
        reasons[(u < 0) & (m >= 0)] = "unknown user"
        reasons[(u >= 0) & (m < 0)] = "unknown movie"
        reasons[(u < 0) & (m < 0)] = "unknown user and movie"
        raw_users, raw_movies = np.asarray(user_ids, dtype=object).ravel(), np.asarray(movie_ids, dtype=object).ravel()
        flat = reasons.reshape(-1)
        for row in np.flatnonzero(~ok.ravel()):  # an id that is no integer at all is a typo, not an unknown id
            sides = [
                (what, raw[row], exact_int(raw[row]) is None)
                for what, raw, idx in (("user", raw_users, u), ("movie", raw_movies, m))
                if idx.ravel()[row] < 0
            ]
            if any(typo for _, _, typo in sides):
                flat[row] = " and ".join(
                    f"{what} id {value!r} is not an integer" if typo else f"unknown {what}"
                    for what, value, typo in sides
                )
        return out, reasons

    # -- filters ----------------------------------------------------------------------------------------------
    def genre_mask(self, genre: str) -> np.ndarray:
        """Movies having ``genre`` (case-insensitive); ConfigError listing the genres when there is no such genre."""
        genre = genre_filter(genre) or ""
        lists = self.genre_lists
        known = sorted({g for gl in lists for g in gl})
        match = [g for g in known if g.lower() == genre.strip().lower()]
        if not match:
            if not known:
                raise ConfigError(f"--genre: the model's movies have no genres, so none is {genre!r}; drop --genre")
            raise ConfigError(f"--genre: unknown genre {genre!r}; known: {', '.join(known)}")
        target = match[0]
        return np.fromiter((target in gl for gl in lists), dtype=bool, count=len(lists))

    @cached_property
    def genre_lists(self) -> list[list[str]]:
        """Each movie's single genres, by movie index (from the Arrow movie table: no pandas)."""
        table = self.artifact.movie_table
        if "genre_list" in table.column_names:
            return [list(g or ()) for g in table.column("genre_list").to_pylist()]
        if "genres" in table.column_names:
            return [str(g).split("|") for g in table.column("genres").to_pylist()]
        return [[] for _ in range(table.num_rows)]

    def _allowed_movies(self, *, genre: str | None, min_ratings: int) -> np.ndarray:
        """Movies eligible for anyone under the filters (True = may be recommended)."""
        genre, min_ratings = genre_filter(genre), _min_ratings(min_ratings)
        ok = np.ones(len(self.movie_vocab), dtype=bool)
        if genre:
            ok &= self.genre_mask(genre)
        if min_ratings > 0 and self._counts is not None:
            ok &= self._counts >= min_ratings
        return ok

    def _pool(self, genre: str | None, min_ratings: int) -> MoviePool:
        """The movies the filters allow, with the scorer's per-movie arrays cut to them: built once per filter
        (cutting copies the movie side of the network, tens of milliseconds at 86,000 movies) and kept for the
        next request; a handful of filters are kept at most."""
        key = _pool_key(genre, min_ratings)
        with self._pools_lock:  # the HTTP service calls from several threads
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= 8:
                    self._pools.pop(next(iter(self._pools)))
                pool = self._pools[key] = MoviePool(
                    self.scorer, self._allowed_movies(genre=genre, min_ratings=min_ratings)
                )
            return pool

    def _list_length(self, k: int) -> int:
        """``k`` checked (a whole number, at least 1) and clamped to the catalogue size."""
        k = _whole_number(k, "-k")
        if k < 1:
            raise ConfigError(f"-k must be at least 1, got {k}")
        return min(k, len(self.movie_vocab))

    # -- recommend --------------------------------------------------------------------------------------------
    def recommend(
        self,
        user_id: int,
        *,
        k: int = 10,
        filter_seen: bool = True,
        genre: str | None = None,
        min_ratings: int = DEFAULT_MIN_RATINGS,
    ) -> pd.DataFrame:
        """Top ``k`` movies for a known user: movie_id, title, year, genres, score (ranking score), rating.

        Unknown users raise :class:`UnknownIdError`; see :meth:`popular` for the cold-start list.
        """
        return self._table(self.rank_user(user_id, k=k, filter_seen=filter_seen, genre=genre, min_ratings=min_ratings))

    def rank_user(
        self,
        user_id: int,
        *,
        k: int = 10,
        filter_seen: bool = True,
        genre: str | None = None,
        min_ratings: int = DEFAULT_MIN_RATINGS,
    ) -> Ranked:
        """:meth:`recommend` as arrays (one row of :class:`~embedrec.scoring.Ranked`, -1 pads a short list), without
        building a table: what a caller answering many single requests (the HTTP service) renders itself."""
        k = self._list_length(k)
        u = self.user_vocab.index(user_id)
        emb, bias = self.scorer.user_rows(np.array([u]))
        seen = self.seen_of(u) if filter_seen else None
        return self._rank_one(emb, bias, k, seen, genre=genre, min_ratings=min_ratings)

    def seen_of(self, user_idx: int) -> ItemSets:
        """One user's rated movies as a one-row :class:`ItemSets`: a slice of the every-user index when it is built
        (:meth:`index_seen`; a server builds it at load), else a scan of the ratings, so that a one-shot
        ``recommend --user`` process does not pay for indexing every user."""
        if self._seen is not None:
            movies = np.sort(self._seen.indices[self._seen.indptr[user_idx] : self._seen.indptr[user_idx + 1]])
            return ItemSets(indptr=np.array([0, len(movies)], np.int64), indices=movies, n_items=len(self.movie_vocab))
        return ItemSets.from_lists([np.flatnonzero(self.seen_mask(user_idx)).tolist()], n_items=len(self.movie_vocab))

    def index_seen(self) -> None:
        """Index every user's rated movies now (a CSR over all users) rather than on first use: for long-running
        processes, so that no request pays for it and single-user lookups become slices."""
        self._seen_sets()

    def recommend_for(
        self,
        user: FoldedUser,
        *,
        k: int = 10,
        filter_seen: bool = True,
        genre: str | None = None,
        min_ratings: int = DEFAULT_MIN_RATINGS,
    ) -> pd.DataFrame:
        """Top ``k`` for a folded-in user (see :meth:`fold_in`); their rated movies count as seen."""
        return self._table(self.rank_folded(user, k=k, filter_seen=filter_seen, genre=genre, min_ratings=min_ratings))

    def rank_folded(
        self,
        user: FoldedUser,
        *,
        k: int = 10,
        filter_seen: bool = True,
        genre: str | None = None,
        min_ratings: int = DEFAULT_MIN_RATINGS,
    ) -> Ranked:
        """:meth:`recommend_for` as arrays, like :meth:`rank_user`."""
        if not isinstance(user, FoldedUser):
            raise ConfigError(
                f"recommend_for takes a FoldedUser from fold_in(), got {type(user).__name__}; a known user's "
                "list is recommend(user_id)"
            )
        k = self._list_length(k)
        seen = None
        if filter_seen:
            rated = np.asarray(user.movie_idx, np.int32)  # sorted and unique (FoldedUser)
            seen = ItemSets(indptr=np.array([0, len(rated)], np.int64), indices=rated, n_items=len(self.movie_vocab))
        emb = np.asarray(user.embedding, np.float32)[None]
        return self._rank_one(emb, np.array([user.bias], np.float32), k, seen, genre=genre, min_ratings=min_ratings)

    def _rank_one(
        self, emb: np.ndarray, bias: np.ndarray, k: int, seen: ItemSets | None, *, genre: str | None, min_ratings: int
    ) -> Ranked:
        return self.scorer.rank(
            emb, bias, k, seen=seen, allowed=self._pool(genre, min_ratings), candidates=self.candidates, workers=1
        )

    def _table(self, ranked: Ranked) -> pd.DataFrame:
        keep = ranked.movie_idx[0] >= 0
        out = self.movie_rows(ranked.movie_idx[0][keep])
        out["score"] = ranked.score[0][keep].astype(float)
        out["rating"] = ranked.rating[0][keep].astype(float)
        return out

    def popular(self, *, k: int = 10, genre: str | None = None, min_ratings: int = DEFAULT_MIN_RATINGS) -> pd.DataFrame:
        """The cold-start list: Bayesian-average top rated movies (score = that average; rating column empty)."""
        top, score = self.rank_popular(k=k, genre=genre, min_ratings=min_ratings)
        out = self.movie_rows(top)
        out["score"] = score.astype(float)
        out["rating"] = np.nan
        return out

    def rank_popular(
        self, *, k: int = 10, genre: str | None = None, min_ratings: int = DEFAULT_MIN_RATINGS
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`popular` as arrays: (movie indices, Bayesian averages), best first. The filters' movies come from
        their cached pool when a ranking built one (a server), else from the filters alone: a one-shot cold-start
        ``recommend`` does not pay for cutting the network's per-movie arrays."""
        k = self._list_length(k)
        popularity = self._popularity_scores()
        if popularity is None:
            raise UnknownIdError("no popularity fallback without the prepared data: pass --data DIR")
        pool = self._pools.get(_pool_key(genre, min_ratings))
        if pool is not None:
            movies = pool.movies
        else:
            movies = np.flatnonzero(self._allowed_movies(genre=genre, min_ratings=min_ratings))
        top = top_k(popularity[movies][None], k)[0]
        top = movies[top[top >= 0]]
        return top, popularity[top]

    def records(self, ranked: Ranked) -> list[dict[str, Any]]:
        """The first row of ``ranked`` (:meth:`rank_user`, :meth:`rank_folded`) as :meth:`movie_records` with its
        score and predicted rating: what ``recommend --format json`` prints, without building a DataFrame."""
        return self.movie_records(ranked.movie_idx[0], score=ranked.score[0], rating=ranked.rating[0])

    def movie_records(self, movie_idx: Sequence[int] | np.ndarray, **extra: np.ndarray) -> list[dict[str, Any]]:
        """``{"movieId", "title", "year", "genres", **extra}`` of the movies at ``movie_idx`` as plain Python values
        (-1 entries, a short list's padding, dropped); each ``extra`` array is aligned with ``movie_idx``, NaN and
        infinities become None. No pandas: a few list lookups once :attr:`movie_fields` is built (a server builds
        it at load), else a few rows of the Arrow table, so a one-shot ``recommend --user`` converts ten movies, not
        the catalogue."""
        keep = np.asarray(movie_idx) >= 0
        rows = np.asarray(movie_idx)[keep].tolist()
        extra_values = {
            name: [v if math.isfinite(v) else None for v in np.asarray(a, np.float64)[keep].tolist()]
            for name, a in extra.items()
        }
        if "movie_fields" in self.__dict__ or len(rows) > FEW_ROWS:
            ids, titles, years, genres = self.movie_fields
            fields = [(ids[m], titles[m], years[m], genres[m]) for m in rows]
        else:
            fields = [_movie_row(self.artifact.movie_table, m) for m in rows]
        out = []
        for i, (movie_id, title, year, genres) in enumerate(fields):
            row = {"movieId": movie_id, "title": title, "year": year, "genres": genres}
            for name, values in extra_values.items():
                row[name] = values[i]
            out.append(row)
        return out

    @cached_property
    def movie_fields(self) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """movieId, title, year, genres of every movie as Python values (None where missing), by movie index:
        converted once, so that a list of movies costs a few list lookups instead of a pandas take (which cost more
        than the ranking itself in the HTTP service)."""
        table = self.artifact.movie_table
        return tuple(  # type: ignore[return-value]
            [_plain(v, kind) for v in table.column(name).to_pylist()]
            if name in table.column_names
            else [None] * table.num_rows
            for name, kind in MOVIE_FIELDS
        )

    def movie_rows(self, movie_idx: np.ndarray) -> pd.DataFrame:
        """movie_id, title, year, genres of the movies at ``movie_idx``, in that order."""
        return self._movie_columns.iloc[np.asarray(movie_idx)].reset_index(drop=True)

    @cached_property
    def _movie_columns(self) -> pd.DataFrame:
        """The four columns every result shows, as one narrow frame: taking rows of it is ~8x cheaper than of the
        full movie table (which matters per HTTP request)."""
        cols = [c for c in ("movie_id", "title", "year", "genres") if c in self.movies]
        return self.movies[cols].reset_index(drop=True)

    @cached_property
    def _movie_norms(self) -> np.ndarray:
        return np.linalg.norm(self.scorer.movie_embedding, axis=1)

    def recommend_many(
        self,
        user_ids: Sequence[int] | np.ndarray,
        *,
        k: int = 10,
        filter_seen: bool = True,
        genre: str | None = None,
        min_ratings: int = DEFAULT_MIN_RATINGS,
        with_ratings: bool = True,
        on_progress: ProgressFn | None = None,
        workers: int | None = None,
    ) -> pd.DataFrame:
        """Top ``k`` for many known users: a long table user_id, rank (1..k), movie_id, score[, rating].

        Ranks one block of users at a time ((block, n_movies) retrieval scores), so memory stays bounded for any
        number of users; each block goes through :meth:`Scorer.rank` (two-stage unless ``candidates`` is None).
        ``k`` is clamped to the catalogue size. Unknown ids raise :class:`UnknownIdError` before any work.
        """
        import pandas as pd

        k = self._list_length(k)
        if np.ndim(user_ids) != 1:
            raise ConfigError(f"user_ids must be a list or 1-d array of user ids, got {type(user_ids).__name__}")
        # looked up as given (read exactly): 1.5 or NaN is no user id, not user 1 or an error from numpy
        idx = self.user_vocab.require_all(user_ids)
        raw_users = self.user_ids[idx]
        allowed = self._pool(genre, min_ratings)
        seen = self._seen_sets() if filter_seen else None
        top = np.empty((len(idx), k), dtype=np.int32)
        score = np.empty((len(idx), k), dtype=np.float32)
        rating = np.empty((len(idx), k), dtype=np.float32)
        if on_progress is not None:
            on_progress(0, len(idx))
        for s in range(0, len(idx), USER_BLOCK):
            batch = idx[s : s + USER_BLOCK]
            emb, bias = self.scorer.user_rows(batch)
            ranked = self.scorer.rank(
                emb,
                bias,
                k,
                seen=seen.take(batch) if seen is not None else None,
                allowed=allowed,
                candidates=self.candidates,
                workers=workers,
            )
            top[s : s + len(batch)], score[s : s + len(batch)], rating[s : s + len(batch)] = (
                ranked.movie_idx,
                ranked.score,
                ranked.rating,
            )
            if on_progress is not None:
                on_progress(s + len(batch), len(idx))
        keep = top.ravel() >= 0
        rows = np.repeat(np.arange(len(idx)), k)[keep]
        flat = top.ravel()[keep]
        score, rating = score.ravel()[keep], rating.ravel()[keep]
        out = pd.DataFrame(
            {
                "user_id": raw_users[rows],
                "rank": (np.arange(len(idx) * k) % k + 1)[keep],
                "movie_id": self.movie_ids[flat],
                "score": score,
            }
        )
        if with_ratings:
            out["rating"] = rating
        return out

    # -- fold-in ----------------------------------------------------------------------------------------------
    def fold_in(self, ratings: Sequence[tuple[int, float]] | pd.DataFrame, **options: Any) -> FoldedUser:
        """A new user from their own (movie_id, rating) pairs; unknown movies raise :class:`UnknownIdError`.

        ``options`` go to :func:`embedrec.fold_in.fold_in`; the defaults are the model's training settings.
        """
        import pandas as pd

        if isinstance(ratings, pd.DataFrame):
            id_col = next((c for c in ("movieId", "movie_id") if c in ratings), None)
            if id_col is None or "rating" not in ratings:
                raise DataError(
                    f"fold-in ratings need a movieId (or movie_id) and a rating column, got {list(ratings.columns)}"
                )
            movie_ids = ratings[id_col].to_numpy()
            raw_values: Any = ratings["rating"].to_numpy()
        else:
            pairs = list(ratings)
            if not all(np.ndim(p) == 1 and len(p) == 2 for p in pairs):
                raise DataError("fold-in ratings must be (movie_id, rating) pairs, e.g. [(260, 5.0), (1196, 4.5)]")
            # as given (the lookup reads ids exactly): an id beyond 64 bits is an unknown movie, not an OverflowError
            movie_ids = np.array([p[0] for p in pairs], dtype=object)
            raw_values = [p[1] for p in pairs]
        try:
            values = np.asarray(raw_values, dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(v for v in np.asarray(raw_values, dtype=object).ravel() if not _is_number(v))
            raise DataError(f"fold-in ratings must be numbers, got {bad!r}") from None
        idx = self.movie_vocab.indices(movie_ids)
        if (idx < 0).any():
            raise UnknownIdError(f"movie {np.asarray(movie_ids)[idx < 0][0]} in the ratings is not known to the model")
        unique, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            twice = int(self.movie_vocab.ids[unique[counts > 1][0]])
            raise DataError(f"movie {twice} is rated twice in the ratings: pass each movie once")
        lo, hi = self.scorer.shape.rating_min, self.scorer.shape.rating_max
        if not np.all(np.isfinite(values)) or values.min(initial=lo) < lo or values.max(initial=hi) > hi:
            raise DataError(f"ratings must lie in the model's range {lo:g}..{hi:g}")
        unknown = sorted(set(options) - set(FOLD_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown fold-in option {unknown[0]!r}; the options are {', '.join(FOLD_OPTIONS)}")
        train = self.artifact.train
        options.setdefault("weight_decay", max(train.weight_decay, 0.05))
        options.setdefault("watch_weight", train.watch_weight)
        options.setdefault("watch_loss", getattr(train, "watch_loss", "bce"))
        options.setdefault("negatives", max(int(train.negatives), 1))
        options.setdefault("rating_loss_weight", rating_loss_weight(train, lo, hi))
        return fold_in(self.scorer, idx, values, **options)

    # -- similar ----------------------------------------------------------------------------------------------
    def find_movies(self, query: str) -> pd.DataFrame:
        """Movies whose title holds every word of ``query`` (case-insensitive); only the exact title matches if any."""
        if not isinstance(query, str):
            raise ConfigError(f"a title search takes words of a title, got {query!r}")
        words = query.lower().split()
        titles = self.movies["title"].astype(str).str.lower()
        hit = np.ones(len(titles), dtype=bool)
        for w in words:
            hit &= titles.str.contains(w, regex=False).to_numpy()
        exact = hit & (titles == query.strip().lower()).to_numpy()
        chosen = exact if exact.any() else hit
        return self.movie_rows(np.flatnonzero(chosen))

    def similar(self, movie_id: int, *, k: int = 10) -> pd.DataFrame:
        """The ``k`` movies whose learned embeddings are closest by cosine similarity (the movie itself excluded)."""
        top, sims = self.rank_similar(movie_id, k=k)
        out = self.movie_rows(top)
        out["similarity"] = sims.astype(float)
        return out

    def rank_similar(self, movie_id: int, *, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`similar` as arrays: (movie indices, cosine similarities), most similar first."""
        k = self._list_length(k)
        m = self.movie_vocab.index(movie_id)
        counts = self.artifact.weights.get("movie_train_count")  # absent from folders written before it existed
        untrained = counts.ravel() == 0 if counts is not None else None
        if untrained is not None and untrained[m]:
            raise UnknownIdError(
                f"movie {movie_id} has no rating in the training split, so its embedding was never trained and no "
                "movie is similar to it by the model: ask about a movie that has training ratings"
            )
        emb = self.scorer.movie_embedding
        norms = self._movie_norms
        sims = (emb @ emb[m]) / np.maximum(norms * norms[m], 1e-12)
        sims[m] = -np.inf  # never the movie itself
        if untrained is not None:
            sims[untrained] = -np.inf  # an untrained embedding is its random start: its similarity means nothing
        top = top_k(sims[None], k)[0]
        top = top[top >= 0]
        top = top[np.isfinite(sims[top])]
        return top, sims[top]
