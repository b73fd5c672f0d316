"""A user's history as an input (``ModelConfig.user_history``): each user's training movies, and the mean of their
learned history embeddings. numpy only, so serving and fold-in use it without JAX.

Synopsis::

    from embedrec.history import UserHistories
    histories = UserHistories.of_pairs(train_user_idx, train_movie_idx, n_users=n_users)
    vectors = histories.means(history_table)        # (n_users, d): added to each user's own embedding

The served user vector is ``user_embedding[u] + mean(history_embedding[m] for m in u's training movies)`` (SVD++'s
implicit-feedback term, normalised by 1/n instead of 1/sqrt(n) so that a long history does not outweigh the user's
own row). Training cannot gather a whole history per rating with static shapes, so the step samples a fixed number of
the user's movies (all of them when there are that few; :func:`embedrec.step.history_slots`) and leaves the rated
movie out (the served history never holds the movie being ranked or predicted: it is unseen). Serving uses the exact
mean over every training movie, stored per user in the model folder as ``user_history_vector`` and computed once
here; a new user's (fold-in) is the mean over the movies they rated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embedrec.data.store import PreparedData

_CHUNK = 1 << 20  # training pairs gathered per step of :meth:`UserHistories.means` (64 MB of float32 at d = 16)


@dataclass(frozen=True)
class UserHistories:
    """Each user's training movies as a CSR: ``movies[ptr[u]:ptr[u + 1]]`` (in the split's order)."""

    ptr: np.ndarray  # (n_users + 1,) int64
    movies: np.ndarray  # (n_pairs,) int32

    @classmethod
    def of_pairs(cls, user_idx: np.ndarray, movie_idx: np.ndarray, *, n_users: int) -> UserHistories:
        user_idx = np.asarray(user_idx, dtype=np.int64)
        order = np.argsort(user_idx, kind="stable")
        counts = np.bincount(user_idx, minlength=n_users)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(ptr=ptr, movies=np.asarray(movie_idx, dtype=np.int32)[order])

    @classmethod
    def of_prepared(cls, prepared: PreparedData) -> UserHistories:
        """The train split's histories (the movies the model may use as a user's input)."""
        from embedrec.data.split import TRAIN

        mask = prepared.split == TRAIN
        return cls.of_pairs(prepared.user_idx[mask], prepared.movie_idx[mask], n_users=prepared.n_users)

    @property
    def n_users(self) -> int:
        return len(self.ptr) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def means(self, table: np.ndarray) -> np.ndarray:
        """(n_users, d) float32: each user's mean history row; a user without training movies gets the mean over
        the users with some (served as the average user, as :func:`embedrec.train.untrained_users_as_average`
        serves their own rows)."""
        table = np.asarray(table, dtype=np.float32)
        n_users, d = self.n_users, table.shape[1]
        sums = np.zeros((n_users, d), np.float64)
        users = np.repeat(np.arange(n_users, dtype=np.int64), self.counts)
        for s in range(0, len(self.movies), _CHUNK):
            u = users[s : s + _CHUNK]
            starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
            sums[u[starts]] += np.add.reduceat(table[self.movies[s : s + _CHUNK]], starts, axis=0)
        counts = self.counts
        has = counts > 0
        out = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        if has.any() and not has.all():
            out[~has] = out[has].mean(axis=0)
        return out


def history_mean(table: np.ndarray, movie_idx: np.ndarray) -> np.ndarray:
    """(d,) the mean history row of one (new) user's rated movies; zeros without any."""
    table = np.asarray(table, dtype=np.float32)
    if len(movie_idx) == 0:
        return np.zeros(table.shape[1], np.float32)
    return table[np.asarray(movie_idx, dtype=np.int64)].mean(axis=0).astype(np.float32)
