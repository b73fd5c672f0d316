"""A synthetic MovieLens-like data set with planted structure: the embedded default data.

Synopsis::

    ratings, movies = generate(n_users=600, n_movies=900, n_ratings=60_000, seed=0)
    ratings.columns  # userId, movieId, rating, timestamp  (the ml-latest ratings.csv layout)
    movies.columns   # movieId, title ("Silent Harbor (1987)"), genres ("Drama|Sci-Fi")

How genres drive tastes (what a model should recover, and what the tests check):

- Each movie has 0..6 of the 19 MovieLens genres (frequencies and genre counts shaped like MovieLens, tuned so the
  seed-scale size 20,510 x 25,448 x 2M has about 1,357 distinct genre strings); about 2% have none.
- Each user has a taste per genre: small noise, plus one or two *favourite* genres (+``FAVOURITE_BOOST``) and often
  one *disliked* genre (-``DISLIKE_PENALTY``). A movie's affinity for a user is the sum of the user's tastes for
  its k genres divided by sqrt(k).
- Tastes move both *which* movies a user rates (``FAVOURITE_SHARE`` of a user's candidates are drawn, by
  popularity, from the movies of one of their favourite genres, the rest from the whole catalogue; a candidate with
  a favourite genre is kept with probability ``ACCEPT_FAVOURITE``, others with ``ACCEPT_BASE``, times
  ``ACCEPT_DISLIKE_FACTOR`` with the disliked genre; so a Sci-Fi lover's ratings are mostly Sci-Fi)
  and *how* they rate them (``AFFINITY_WEIGHT`` stars per unit of affinity). So a Sci-Fi lover rates Sci-Fi about
  ``FAVOURITE_BOOST * AFFINITY_WEIGHT`` (1.8) stars above their average when it is Sci-Fi only, a share of that
  when it has other genres too, and is predictably recommended Sci-Fi.
- Rating = a constant + user bias + movie bias (slightly higher for popular movies) + affinity + noise, rounded
  to half stars (about a third of users use whole stars only) and clipped to 0.5..5.0; the constant is set so the
  mean is about 3.5.
- Popularity and activity are heavy-tailed (Zipf-like movies, log-normal users, capped so nobody rates more than
  half the catalogue). Each (user, movie) pair appears once; rows are ordered by user then movie, like ml-latest.
- Timestamps: each user is active over a period between 1996 and 2023; no rating predates its movie's release year.

Everything is vectorised numpy drawn from one ``numpy.random.Generator(seed)`` in fixed-size chunks, so the same
seed gives the same data and 27M ratings generate in seconds with bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"
# genre frequencies among ml-latest movies (thousands), sharpened by GENRE_CONCENTRATION; together with N_GENRES_P
# this sets how many distinct genre strings appear (about 1,357 for 25,448 movies, as in the original's data)
GENRE_FREQ = np.array(
    [9.6, 5.4, 4.6, 4.5, 22.0, 6.9, 7.0, 33.0, 3.8, 0.4, 8.6, 0.25, 1.1, 3.9, 10.0, 4.9, 11.0, 2.3, 1.6]
)
GENRE_CONCENTRATION = 1.4
GENRE_WEIGHTS = GENRE_FREQ**GENRE_CONCENTRATION
# probability of a movie having 0, 1, 2, ... 6 genres
N_GENRES_P = np.array([0.02, 0.41, 0.32, 0.165, 0.063, 0.017, 0.005])

DEFAULT_USERS, DEFAULT_MOVIES, DEFAULT_RATINGS = 600, 900, 60_000
# the largest sizes accepted: 50x MovieLens-32M's users and movies, 30x its ratings (beyond them the generator's
# per-user and per-movie tables, not the data, would exhaust memory; a 10^20 is a typo)
MAX_USERS, MAX_MOVIES, MAX_RATINGS = 10_000_000, 5_000_000, 1_000_000_000
SEED_SCALE = {"n_users": 20_510, "n_movies": 25_448, "n_ratings": 2_000_000}
FULL_SCALE = {"n_users": 280_000, "n_movies": 86_000, "n_ratings": 27_000_000}

TARGET_MEAN = 3.55
FAVOURITE_BOOST = 1.2
DISLIKE_PENALTY = 1.2
AFFINITY_WEIGHT = 1.5
TASTE_NOISE = 0.25
ACCEPT_BASE, ACCEPT_FAVOURITE, ACCEPT_DISLIKE_FACTOR = 0.4, 0.95, 0.2  # selection: who watches what
FAVOURITE_SHARE = 0.6  # share of a user's candidate draws taken from their favourite genres' movies
NOISE_SD = 0.65
CHUNK = 1 << 21
POP_SHIFT, POP_EXP = 8.0, 0.95  # movie of popularity rank r is drawn with probability ~ (r + 8) ** -0.95
GENRE_POP_EXP = 1.5  # the same within a genre's list, for taste-driven draws

_YEAR_MIN, _YEAR_MAX = 1920, 2023
_T0 = 820_454_400  # 1996-01-01
_T1 = 1_704_067_199  # 2023-12-31


@dataclass(frozen=True)
class World:
    """The hidden parameters behind a generated data set (for tests and demos that check recovered structure)."""

    genre_matrix: np.ndarray  # (n_movies, 19) float32, 1/sqrt(k) for each of a movie's k genres
    taste: np.ndarray  # (n_users, 19) float32
    favourites: np.ndarray  # (n_users, 19) bool
    user_bias: np.ndarray
    movie_bias: np.ndarray


# ------------------------------------------------------------------------------------------------------------ movies
def _movie_genres(rng: np.random.Generator, n_movies: int) -> np.ndarray:
    """(n_movies, 19) bool: weighted sampling without replacement (Gumbel top-k) of a drawn number of genres."""
    k = rng.choice(len(N_GENRES_P), size=n_movies, p=N_GENRES_P)
    keys = np.log(GENRE_WEIGHTS)[None, :] + rng.gumbel(size=(n_movies, len(GENRES)))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rank < k[:, None]


_ADJ = (
    "Silent Broken Golden Crimson Hidden Last Lost Midnight Dark Bright Wild Cold Burning Quiet Distant Final Secret "
    "Electric Savage Gentle Hollow Iron Lonely Restless Scarlet Shattered Velvet Frozen Endless Forgotten Wicked Blue "
    "Little Strange Sweet Bitter Eternal Fallen Rising Twisted"
).split()
_NOUN = (
    "Harbor River Empire Garden Mirror Storm Shadow Kingdom Station Horizon Letter Promise Island Dream Road Frontier "
    "Signal Orchard Machine Winter Summer Voyage Witness Heart Canyon Circus Hotel Planet Sword Ghost Tide Crown "
    "Lantern Desert Engine Forest Window Bridge Wolf Sky"
).split()
_NAME = "Anna Max Rosa Jack Leo Nora Felix Iris Sam Vera Otto Mia Hugo Clara Ezra Luna Abel June Ivan Stella".split()
_PLACE = "Paris Tokyo Mars Avalon Berlin Cairo Memphis Venice Lisbon Rio Oslo Kyoto Texas Brooklyn Vienna".split()


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    form = rng.integers(0, 6, size=n)
    a = rng.integers(0, len(_ADJ), size=n)
    b = rng.integers(0, len(_NOUN), size=n)
    c = rng.integers(0, len(_NOUN), size=n)
    d = rng.integers(0, len(_NAME), size=n)
    e = rng.integers(0, len(_PLACE), size=n)
    seq = rng.integers(2, 5, size=n)
    out = []
    for i in range(n):
        f = form[i]
        if f == 0:
            t = f"The {_ADJ[a[i]]} {_NOUN[b[i]]}"
        elif f == 1:
            t = f"{_NOUN[b[i]]} of {_PLACE[e[i]]}"
        elif f == 2:
            t = f"{_NAME[d[i]]}'s {_NOUN[b[i]]}"
        elif f == 3:
            t = f"{_ADJ[a[i]]} {_NOUN[b[i]]} {seq[i]}"
        elif f == 4:
            t = f"The {_NOUN[b[i]]} and the {_NOUN[c[i]]}"
        else:
            t = f"{_ADJ[a[i]]} {_NOUN[b[i]]}, {_PLACE[e[i]]}"
        out.append(t)
    return out


def _years(rng: np.random.Generator, n: int) -> np.ndarray:
    age = np.floor(rng.exponential(18.0, size=n)).astype(np.int64)
    return np.clip(_YEAR_MAX - age, _YEAR_MIN, _YEAR_MAX)


def _year_start_ts(year: np.ndarray) -> np.ndarray:
    return (year - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)


# ----------------------------------------------------------------------------------------------------------- ratings
def _capped_weights(raw: np.ndarray, n: int, cap: float) -> np.ndarray:
    """Normalised weights whose expected count ``n * w`` stays at or below ``cap``."""
    w = raw / raw.sum()
    for _ in range(50):
        over = w * n > cap
        if not over.any():
            break
        excess = (w[over] - cap / n).sum()
        w[over] = cap / n
        w[~over] += excess * w[~over] / w[~over].sum()
    return w / w.sum()


@dataclass(frozen=True)
class _GenreStrings:
    """Movies grouped by their genre combination: ``smat[movie_str[m]]`` is movie m's row of the genre matrix."""

    smat: np.ndarray  # (n_strings, 19) float32
    movie_str: np.ndarray  # (n_movies,) int32


def _affinity(taste: np.ndarray, gs: _GenreStrings, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """Affinity of each (user, movie) pair: the user's tastes over the movie's genres, summed / sqrt(k).

    ``users`` must be sorted.

    For a block of users, one small matmul gives their affinity to every genre combination; each pair is then a
    single lookup, much cheaper than gathering two 19-wide rows per pair.
    """
    out = np.empty(len(users), dtype=np.float32)
    if len(users) == 0:
        return out
    block = max(1, (1 << 23) // max(len(gs.smat), 1))
    first, last = int(users[0]) // block, int(users[-1]) // block
    bounds = np.searchsorted(users, np.arange(first, last + 2) * block)
    buf = np.empty((block, len(gs.smat)), dtype=np.float32)
    for i, b in enumerate(range(first, last + 1)):
        s, e = bounds[i], bounds[i + 1]
        if s == e:
            continue
        rows = taste[b * block : (b + 1) * block]
        table = np.matmul(rows, gs.smat.T, out=buf[: len(rows)])
        out[s:e] = table[users[s:e] - b * block, gs.movie_str[movies[s:e]]]
    return out


def _sample_movies(rng: np.random.Generator, size: int, rank_to_movie: np.ndarray) -> np.ndarray:
    """Movies drawn by popularity rank from the continuous power law (inverse CDF: O(1) per draw)."""
    a = 1.0 - POP_EXP
    lo, hi = POP_SHIFT**a, (len(rank_to_movie) + POP_SHIFT) ** a
    rank = (lo + rng.random(size) * (hi - lo)) ** (1.0 / a) - POP_SHIFT
    return rank_to_movie[np.clip(rank.astype(np.int64), 0, len(rank_to_movie) - 1)]


@dataclass(frozen=True)
class _GenreLists:
    """Each genre's movies in popularity order, flattened: genre g's list is ``flat[start[g]:start[g] + size[g]]``."""

    flat: np.ndarray
    start: np.ndarray
    size: np.ndarray


def _genre_lists(has: np.ndarray, pop_rank: np.ndarray) -> _GenreLists:
    order = np.argsort(pop_rank)  # movies, most popular first
    lists = [order[has[order, g]] for g in range(has.shape[1])]
    size = np.array([len(x) for x in lists], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    flat = np.concatenate(lists).astype(np.int32) if size.sum() else np.zeros(0, np.int32)
    return _GenreLists(flat=flat, start=start, size=size)


def _sample_in_genre(rng: np.random.Generator, genres: np.ndarray, gl: _GenreLists) -> np.ndarray:
    """For each genre, one of its movies drawn by popularity (a steeper power law within the genre's shorter list, so
    the catalogue-wide popularity stays as heavy-tailed as without taste-driven draws)."""
    a = 1.0 - GENRE_POP_EXP
    n = gl.size[genres].astype(np.float64)
    lo, hi = POP_SHIFT**a, (n + POP_SHIFT) ** a
    rank = (lo + rng.random(len(genres)) * (hi - lo)) ** (1.0 / a) - POP_SHIFT
    rank = np.clip(rank.astype(np.int64), 0, np.maximum(gl.size[genres] - 1, 0))
    return gl.flat[np.minimum(gl.start[genres] + rank, max(len(gl.flat) - 1, 0))]  # empty genres: caller redraws


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    a.sort()
    keep = np.empty(len(a), dtype=bool)
    keep[:1] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _draw_pairs(
    rng: np.random.Generator,
    n_ratings: int,
    user_w: np.ndarray,
    rank_to_movie: np.ndarray,
    accept_p: Callable[[np.ndarray, np.ndarray], np.ndarray],
    favourite_draw: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Unique keys ``user * n_movies + movie`` (sorted), exactly ``n_ratings`` of them.

    Candidates come from user activity x movie popularity and are kept with probability ``accept_p(users, movies)``.
    """
    n_movies = len(rank_to_movie)
    n_users = len(user_w)
    if n_ratings >= n_users:  # every user gets at least one rating, so the data has exactly n_users users
        first = _sample_movies(rng, n_users, rank_to_movie)
        protected = np.arange(n_users, dtype=np.int64) * n_movies + first
    else:
        protected = np.zeros(0, dtype=np.int64)
    keys = protected.copy()
    yield_rate = 0.5  # distinct accepted pairs per candidate, re-estimated each round
    for _ in range(200):
        short = n_ratings - len(keys)
        if short <= 0:
            break
        want = int(short / max(yield_rate, 0.02) * 1.05) + 64
        counts = rng.multinomial(want, user_w)
        users = np.repeat(np.arange(len(user_w), dtype=np.int32), counts)
        parts = []
        for s in range(0, want, CHUNK):
            u = users[s : s + CHUNK]
            m = _sample_movies(rng, len(u), rank_to_movie)
            if favourite_draw is not None:
                fav = np.flatnonzero(rng.random(len(u)) < FAVOURITE_SHARE)
                m[fav] = favourite_draw(u[fav])
            accept = rng.random(len(u)) < accept_p(u, m)
            parts.append(u[accept].astype(np.int64) * n_movies + m[accept])
        del users
        before = len(keys)
        keys = _sorted_unique(np.concatenate([keys, *parts]))
        yield_rate = max((len(keys) - before) / want, 1e-3)
    else:
        raise ValueError("could not draw enough distinct (user, movie) pairs; lower n_ratings")
    excess = len(keys) - n_ratings
    if excess > 0:
        pos = np.searchsorted(keys, protected)
        droppable = np.ones(len(keys), dtype=bool)
        droppable[pos] = False
        candidates = np.flatnonzero(droppable)
        drop = candidates[rng.choice(len(candidates), size=excess, replace=False)]
        keys = np.delete(keys, drop)
    return keys


def generate_world(
    *, n_users: int, n_movies: int, n_ratings: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, World]:
    """Like :func:`generate`, and also return the hidden :class:`World` behind the data."""
    import pandas as pd

    from embedrec.errors import ConfigError

    for name, v, limit in (
        ("--users", n_users, MAX_USERS),
        ("--movies", n_movies, MAX_MOVIES),
        ("--ratings", n_ratings, MAX_RATINGS),
    ):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= limit:
            raise ConfigError(f"{name} must be a whole number in 1..{limit:,}, got {v!r}")
    if n_ratings > 0.3 * n_users * n_movies:
        raise ConfigError(
            f"--ratings {n_ratings} is too dense for {n_users} users x {n_movies} movies (at most 30% of all pairs): "
            "lower --ratings or raise --users/--movies"
        )
    rng = np.random.default_rng(seed)
    n_g = len(GENRES)

    has = _movie_genres(rng, n_movies)
    k = has.sum(axis=1)
    gmat = (has / np.sqrt(np.maximum(k, 1))[:, None]).astype(np.float32)
    combos, movie_str = np.unique(has, axis=0, return_inverse=True)
    gs = _GenreStrings(
        smat=(combos / np.sqrt(np.maximum(combos.sum(axis=1), 1))[:, None]).astype(np.float32),
        movie_str=movie_str.reshape(-1).astype(np.int32),
    )
    years = _years(rng, n_movies)
    pop_rank = rng.permutation(n_movies)
    popularity = 1.0 / (pop_rank + POP_SHIFT) ** POP_EXP
    rank_to_movie = np.argsort(pop_rank).astype(np.int32)
    log_pop = np.log(popularity)
    spread = log_pop.std()  # 0 for a single movie: it then gets no popularity term (instead of 0 / 0 = NaN)
    pop_term = 0.25 * (log_pop - log_pop.mean()) / spread if spread > 0 else np.zeros_like(log_pop)
    movie_bias = (rng.normal(0.0, 0.4, size=n_movies) + pop_term).astype(np.float32)

    taste = rng.normal(0.0, TASTE_NOISE, size=(n_users, n_g)).astype(np.float32)
    fav_p = GENRE_FREQ**0.5 / (GENRE_FREQ**0.5).sum()
    n_fav = 1 + (rng.random(n_users) < 0.5)
    fav_keys = np.log(fav_p)[None, :] + rng.gumbel(size=(n_users, n_g))
    fav_rank = np.argsort(np.argsort(-fav_keys, axis=1), axis=1)
    favourites = fav_rank < n_fav[:, None]
    taste += FAVOURITE_BOOST * favourites
    dislike = (fav_rank == n_g - 1) & (rng.random(n_users) < 0.6)[:, None]
    taste -= DISLIKE_PENALTY * dislike
    user_bias = rng.normal(0.0, 0.35, size=n_users).astype(np.float32)
    whole_stars = rng.random(n_users) < 0.35

    activity = rng.lognormal(0.0, 1.3, size=n_users)
    user_w = _capped_weights(activity, n_ratings, cap=0.5 * n_movies)
    bits = (1 << np.arange(n_g, dtype=np.uint32)).astype(np.uint32)
    movie_mask = (has.astype(np.uint32) * bits).sum(axis=1).astype(np.uint32)
    fav_mask = (favourites.astype(np.uint32) * bits).sum(axis=1).astype(np.uint32)
    dislike_mask = (dislike.astype(np.uint32) * bits).sum(axis=1).astype(np.uint32)

    def accept_p(u: np.ndarray, m: np.ndarray) -> np.ndarray:
        mm = movie_mask[m]
        p = np.where((fav_mask[u] & mm) != 0, ACCEPT_FAVOURITE, ACCEPT_BASE)
        return np.where((dislike_mask[u] & mm) != 0, p * ACCEPT_DISLIKE_FACTOR, p)

    lists = _genre_lists(has, pop_rank)
    fav_genres = np.argsort(fav_rank, axis=1)[:, :2].astype(np.int16)  # each user's favourites, in rank order

    def favourite_draw(u: np.ndarray) -> np.ndarray:
        pick = (rng.random(len(u)) * n_fav[u]).astype(np.int64)  # one of the user's 1 or 2 favourites
        genre = fav_genres[u, pick].astype(np.int64)
        movie = _sample_in_genre(rng, genre, lists)
        empty = lists.size[genre] == 0
        if empty.any():
            movie[empty] = _sample_movies(rng, int(empty.sum()), rank_to_movie)
        return movie

    keys = _draw_pairs(rng, n_ratings, user_w, rank_to_movie, accept_p, favourite_draw)
    users = (keys // n_movies).astype(np.int32)
    movies = (keys % n_movies).astype(np.int32)
    del keys

    rating = np.empty(n_ratings, dtype=np.float32)
    timestamp = np.empty(n_ratings, dtype=np.int64)
    start = rng.integers(_T0, _T1 - 86_400, size=n_users)
    span = np.minimum(rng.exponential(400 * 86_400.0, size=n_users), _T1 - start).astype(np.int64)
    release = _year_start_ts(years)
    for s in range(0, n_ratings, CHUNK):
        u, m = users[s : s + CHUNK], movies[s : s + CHUNK]
        aff = _affinity(taste, gs, u, m)
        rating[s : s + CHUNK] = user_bias[u] + movie_bias[m] + AFFINITY_WEIGHT * aff + rng.normal(0, NOISE_SD, len(u))
    # centre the latent scores so the mean rating is about TARGET_MEAN whatever the size and selection bias
    offset = np.float32(TARGET_MEAN - float(rating.mean(dtype=np.float64)))
    for s in range(0, n_ratings, CHUNK):
        u, m = users[s : s + CHUNK], movies[s : s + CHUNK]
        step = np.where(whole_stars[u], 1.0, 2.0)
        r = np.round((rating[s : s + CHUNK] + offset) * step) / step
        rating[s : s + CHUNK] = np.clip(r, np.where(whole_stars[u], 1.0, 0.5), 5.0)
        t = start[u] + (rng.random(len(u)) * span[u]).astype(np.int64)
        timestamp[s : s + CHUNK] = np.minimum(np.maximum(t, release[m] + rng.integers(0, 200 * 86_400, len(u))), _T1)

    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    movie_ids = np.sort(rng.choice(np.arange(1, 3 * n_movies + 1), size=n_movies, replace=False)).astype(np.int64)
    titles = _titles(rng, n_movies)
    genre_names = np.array(GENRES)
    genre_strings = ["|".join(genre_names[row]) or NO_GENRES for row in has]
    movies_df = pd.DataFrame(
        {"movieId": movie_ids, "title": [f"{t} ({y})" for t, y in zip(titles, years)], "genres": genre_strings}
    )
    ratings_df = pd.DataFrame(
        {"userId": user_ids[users], "movieId": movie_ids[movies], "rating": rating, "timestamp": timestamp},
        copy=False,
    )
    world = World(genre_matrix=gmat, taste=taste, favourites=favourites, user_bias=user_bias, movie_bias=movie_bias)
    return ratings_df, movies_df, world


def generate(
    *, n_users: int = DEFAULT_USERS, n_movies: int = DEFAULT_MOVIES, n_ratings: int = DEFAULT_RATINGS, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings (userId, movieId, rating, timestamp) and movies (movieId, title, genres) in the ml-latest layout."""
    ratings, movies, _ = generate_world(n_users=n_users, n_movies=n_movies, n_ratings=n_ratings, seed=seed)
    return ratings, movies


def write_ml_latest(folder: Path, ratings: pd.DataFrame, movies: pd.DataFrame) -> Path:
    """Write ``ratings.csv`` and ``movies.csv`` exactly as GroupLens lays them out (quoted titles with commas)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # half stars written as GroupLens does ("4.0", "3.5"): a dictionary of the ten strings, no float formatting
    half = np.rint(ratings["rating"].to_numpy(np.float64) * 2).astype(np.int8)
    stars = pa.DictionaryArray.from_arrays(pa.array(half), pa.array([f"{i / 2:.1f}" for i in range(11)]))
    table = pa.table(
        {
            "userId": pa.array(ratings["userId"].to_numpy()),
            "movieId": pa.array(ratings["movieId"].to_numpy()),
            "rating": stars,
            "timestamp": pa.array(ratings["timestamp"].to_numpy()),
        }
    )
    with open(folder / "ratings.csv", "wb") as fh:
        fh.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    movies.to_csv(folder / "movies.csv", index=False)
    return folder
