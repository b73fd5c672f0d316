"""Frozen, validated settings for the model and its training, with presets and a JSON/TOML round trip.

Synopsis::

    from embedrec.config import preset, load_config_file
    model_cfg, train_cfg = preset("seed")
    train_cfg = train_cfg.replace(epochs=3, batch_size=8192)

``ModelConfig`` holds the architecture only (sizes that do not depend on the data); the data-dependent sizes
(users, movies, genres, rating range) live in :class:`DataShape`, filled in from a prepared data set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from embedrec.errors import ConfigError, SettingError

GenreMode = Literal["string", "bag"]
OptimizerName = Literal["adam", "lazy_adam", "rowwise_adam"]
Sampling = Literal["uniform", "popularity"]
PRESETS = ("seed", "default")


def _check(cond: bool, setting: str, message: str) -> None:
    if not cond:
        raise SettingError(setting, message)


def whole_number(value: object) -> int | None:
    """``value`` as an int when it is a whole number (an int, a numpy integer, a finite whole float such as 2.0 or
    numpy's), else None (True, 2.5, NaN, "2", None). The one rule of every count and size the Python API, the
    config files and fold-in take; text (a CLI option, a query string) is parsed before it gets here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    whole = float(value)
    return int(whole) if math.isfinite(whole) and whole.is_integer() else None


def as_setting_type(value: Any, like: Any) -> Any:
    """``value`` as the type of the setting value ``like`` when it is one (10.0 as an int setting is 10, 1 as a
    float setting 1.0), else ``value`` unchanged: for comparing a given setting with a stored one."""
    coerced = _coerce(value, tuple(like) if isinstance(like, list) else like)  # a JSON list is a tuple setting
    return value if coerced is None else coerced


def _coerce(value: Any, default: Any) -> Any:
    """``value`` as the type of the field's default (ints accepted for floats), or None when it is not one."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if isinstance(default, int):
        return whole_number(value)
    if isinstance(default, float):
        return float(value) if isinstance(value, (int, float)) else None
    if isinstance(default, str):
        return value if isinstance(value, str) else None
    if isinstance(default, tuple):
        sizes = [whole_number(v) for v in value] if isinstance(value, (list, tuple)) else [None]
        return tuple(sizes) if None not in sizes else None
    return value


_KINDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a string",
    tuple: "a list of whole numbers",
}


INT_LIMIT = 2**31 - 1  # sizes and counts are int32 on the accelerator; a larger one is a typo, not a setting
SEED_LIMIT = 2**32 - 1  # seeds are folded into uint32 keys


def _check_types(cfg: Any) -> None:
    """Types first, then the domain every number shares: floats finite, whole numbers within int32."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        coerced = _coerce(value, f.default)
        option = f.name
        if coerced is None:
            kind = _KINDS.get(type(f.default), type(f.default).__name__)
            raise SettingError(option, f"expected {kind}, got {value!r}")
        if isinstance(coerced, float) and not math.isfinite(coerced):
            raise SettingError(option, f"must be a finite number, got {value!r}")
        if isinstance(coerced, int) and not isinstance(coerced, bool) and f.name != "seed" and abs(coerced) > INT_LIMIT:
            raise SettingError(option, f"{value} is out of range (at most {INT_LIMIT:,})")
        if isinstance(coerced, tuple) and any(abs(v) > INT_LIMIT for v in coerced):
            raise SettingError(option, f"{list(value)} holds a size out of range (at most {INT_LIMIT:,})")
        object.__setattr__(cfg, f.name, coerced)


@dataclass(frozen=True)
class ModelConfig:
    """The network's architecture.

    ``genre_mode="string"`` is the original's input (one category per whole pipe-joined genre string);
    ``"bag"`` averages the embeddings of the movie's single genres. ``biases`` adds user and movie bias terms to
    the rating logit. ``watch_head`` adds the second output, the logit of "this user watches this movie", scored as a
    dot product of the shared user embedding with the movie (+ genre) embedding plus a movie bias.

    ``user_history`` (SVD++ / the YouTube network's watch history as an input): a user is represented by their own
    embedding plus the mean of learned *history* embeddings of the movies they rated in the train split, in both
    outputs. Training samples ``TrainConfig.history_samples`` of them per rating; serving uses the exact mean
    (:mod:`embedrec.history`), and a folded-in user gets the history part from their ratings alone.

    ``movie_clusters`` (0: off): the genre input is replaced by that many clusters of the movies learned from who
    rated what in the train split (:mod:`embedrec.movie_clusters`), for catalogues that have no genres; the
    assignment is part of the model (its ``genre_idx`` / ``genre_w`` weights).
    """

    embedding_dim: int = 50
    hidden: tuple[int, ...] = (64, 10)
    dropout: float = 0.2
    genre_mode: GenreMode = "string"
    biases: bool = False
    watch_head: bool = False
    init: Literal["keras", "scaled"] = "keras"
    user_history: bool = False
    movie_clusters: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.movie_clusters >= 0, "movie_clusters", f"must be >= 0 (0: off), got {self.movie_clusters}")
        _check(self.embedding_dim >= 1, "embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        _check(
            len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
            "hidden",
            f"needs one or more positive layer sizes like 64,10, got {self.hidden}",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.genre_mode in ("string", "bag"), "genre_mode", f"must be string or bag, got {self.genre_mode}")
        _check(self.init in ("keras", "scaled"), "init", f"must be keras or scaled, got {self.init}")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """How the network is trained.

    ``weight_decay`` is an L2 penalty on the embedding rows of each rating in a batch, so a row is penalised in
    proportion to its number of ratings (SGD matrix factorisation's convention). ``row_decay`` adds a penalty of that
    strength per user or movie row in total, spread over its ratings (``row_decay / n_ratings`` per rating): the
    prior of ALS and of the bias baseline, which shrinks a row with a handful of ratings hard and a popular one
    barely, so it matters on sparse catalogues and hardly at all on dense ones.

    Epoch selection: the validation RMSE picks the epoch whose weights are kept. With ``rmse_slack`` > 0 (and the
    watch output on), an epoch whose val RMSE is within that fraction of the best so far may be chosen instead for a
    higher val NDCG@10, and early stopping waits until neither metric improved for ``patience`` epochs, so the
    ranking output is not cut short by the rating output's optimum.

    ``rating_embedding_grad`` scales the gradient of the rating loss that reaches the shared user, movie and genre
    embeddings (the forward pass is unchanged); below 1 the embeddings are shaped mostly by the watch output, which
    on a sparse catalogue keeps the ratings from overfitting them (see :func:`adapt_to_data`).

    ``scale_free_rating_loss``: the rating MSE is weighed as on a 1..5 scale (:func:`rating_loss_weight`), so the
    balance of the objective does not depend on the data's rating scale. On in the default preset (on 1..5 data it
    changes nothing); off in the seed preset, the original's plain MSE.

    ``baseline_blend`` (needs the model's rating biases): after training, the rating output is blended with the bias
    baseline fitted on the train split, ``a * network logit + (1 - a) * baseline logit``, with ``a`` chosen on the
    val split from :data:`embedrec.train.BASELINE_BLEND_WEIGHTS` (1, the network alone, is one of them). The blend
    is the same network with other weights, so nothing downstream changes (:func:`embedrec.train.blend_rating_biases`).
    Off in the presets; the default preset turns it on for a sparse catalogue or a time-based split
    (:func:`adapt_to_data`), where the quality matrix measured it.
    """

    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 5
    weight_decay: float = 0.0
    row_decay: float = 0.0
    optimizer: OptimizerName = "lazy_adam"
    lr_decay: float = 1.0
    patience: int = 0
    seed: int = 42
    negatives: int = 0
    watch_weight: float = 1.0
    watch_loss: Literal["bce", "softmax"] = "softmax"
    sampling: Sampling = "uniform"
    sampling_alpha: float = 0.5
    val_users: int = 2000
    steps_per_call: int = 200
    rmse_slack: float = 0.0
    rating_embedding_grad: float = 1.0
    baseline_blend: bool = False
    shard_tables: bool = True  # on several devices: embedding tables split by rows over them (else replicated)
    history_samples: int = 32  # with ModelConfig.user_history: history movies sampled per rating in a batch
    scale_free_rating_loss: bool = False  # the rating MSE weighed as on a 1..5 scale (rating_loss_weight)

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be a positive number, got {self.lr}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.row_decay >= 0, "row_decay", f"must be >= 0, got {self.row_decay}")
        _check(0 <= self.rmse_slack < 1, "rmse_slack", f"must be in [0, 1), got {self.rmse_slack}")
        _check(
            0 <= self.rating_embedding_grad <= 1,
            "rating_embedding_grad",
            f"must be in [0, 1], got {self.rating_embedding_grad}",
        )
        _check(
            self.optimizer in ("adam", "lazy_adam", "rowwise_adam"),
            "optimizer",
            f"must be rowwise_adam, lazy_adam or adam, got {self.optimizer}",
        )
        _check(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        _check(self.patience >= 0, "patience", f"must be >= 0, got {self.patience}")
        _check(self.negatives >= 0, "negatives", f"must be >= 0, got {self.negatives}")
        _check(self.watch_weight >= 0, "watch_weight", f"must be >= 0, got {self.watch_weight}")
        _check(self.watch_loss in ("bce", "softmax"), "watch_loss", f"must be bce or softmax, got {self.watch_loss}")
        _check(
            self.sampling in ("uniform", "popularity"),
            "sampling",
            f"must be uniform or popularity, got {self.sampling}",
        )
        _check(self.val_users >= 0, "val_users", f"must be >= 0, got {self.val_users}")
        _check(
            self.sampling_alpha >= 0,
            "sampling_alpha",
            f"must be >= 0 (0 = uniform, 1 = proportional to popularity), got {self.sampling_alpha}",
        )
        _check(0 <= self.seed <= SEED_LIMIT, "seed", f"must be a whole number in 0..{SEED_LIMIT}, got {self.seed}")
        _check(self.steps_per_call >= 1, "steps_per_call", f"must be >= 1, got {self.steps_per_call}")
        _check(self.history_samples >= 1, "history_samples", f"must be >= 1, got {self.history_samples}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DataShape:
    """The data-dependent sizes of a network: vocabulary sizes and the rating range."""

    n_users: int
    n_movies: int
    n_genres: int
    rating_min: float
    rating_max: float
    max_genres_per_movie: int = 1

    def __post_init__(self) -> None:
        _check(
            all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in dataclasses.astuple(self)
            ),
            "data",
            f"sizes and rating range must be finite numbers, got {dataclasses.asdict(self)}",
        )
        _check(
            self.n_users >= 1 and self.n_movies >= 1 and self.n_genres >= 1,
            "data",
            "needs at least one user, one movie and one genre",
        )
        _check(
            self.rating_max > self.rating_min,
            "data",
            f"rating range is empty ({self.rating_min}..{self.rating_max}); every rating is the same value",
        )


TRAINING_BYTES_PER_PARAM = 20
"""What training holds per parameter, at least: the float32 weights, Adam's two moments, the host copy validation
reads and the best epoch's copy (4 bytes each)."""


def param_count(cfg: ModelConfig, shape: DataShape) -> int:
    """The network's trainable parameters for ``shape``, without building it (equal to ``EmbeddingConcat.n_params``):
    the user, movie and genre tables, the biases, the watch bias and history table when on, and the dense head."""
    d = cfg.embedding_dim
    tables = (shape.n_users + shape.n_movies + shape.n_genres) * d
    tables += (shape.n_users + shape.n_movies) if cfg.biases else 0
    tables += shape.n_movies if cfg.watch_head else 0
    tables += shape.n_movies * d if cfg.user_history else 0
    return tables + _head_params(cfg)


def _head_params(cfg: ModelConfig) -> int:
    sizes = (3 * cfg.embedding_dim, *cfg.hidden, 1)
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def check_model_fits(cfg: ModelConfig, shape: DataShape, *, n_movies_rated: int, memory_bytes: int | None) -> None:
    """Refuse, before anything is allocated, settings this data or machine cannot train: more movie clusters than
    movies to cluster, or a model whose training state (:data:`TRAINING_BYTES_PER_PARAM` a parameter) exceeds
    ``memory_bytes`` (the machine's memory; None: not known, not checked). The error names the setting that makes
    the model large: the dense layers or the embedding size."""
    _check(
        cfg.movie_clusters <= max(n_movies_rated, 1),
        "movie_clusters",
        f"{cfg.movie_clusters} is more clusters than the {n_movies_rated:,} movies with training ratings: choose at "
        f"most {n_movies_rated:,} (0: off)",
    )
    if memory_bytes is None:
        return
    n = param_count(cfg, shape)
    need = n * TRAINING_BYTES_PER_PARAM
    if need <= memory_bytes:
        return
    head = _head_params(cfg)
    setting, value, fix = (
        ("hidden", ",".join(map(str, cfg.hidden)), "choose smaller layers")
        if head > n - head
        else ("embedding_dim", f"{cfg.embedding_dim:,}", "choose a smaller embedding size")
    )
    raise SettingError(
        setting,
        f"{value} makes a model of {n:,} parameters, {need / 2**30:,.1f} GiB to train, more than this machine's "
        f"{memory_bytes / 2**30:,.1f} GiB of memory: {fix}",
    )


def machine_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the OS does not say."""
    import os

    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None
    return int(pages * page_size) if pages > 0 and page_size > 0 else None


def check_settings(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Settings that are valid alone but not together."""
    _check(
        train_cfg.negatives == 0 or model_cfg.watch_head,
        "negatives",
        "needs a model with the watch output (the default preset); the seed preset is rating-only",
    )


def preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The named preset's configs. ``seed`` is the original network; ``default`` is the measured best."""
    check_preset(name)
    if name == "seed":
        return (
            ModelConfig(
                embedding_dim=50,
                hidden=(64, 10),
                dropout=0.2,
                genre_mode="string",
                biases=False,
                watch_head=False,
                init="keras",
            ),
            # row-wise second moments for the embedding rows: 24% faster than per-entry ones at batch 1024, val RMSE
            # per epoch within 0.01 of Adam's (measured and tested; README "Benchmarks")
            TrainConfig(lr=1e-3, batch_size=1024, epochs=5, weight_decay=0.0, optimizer="rowwise_adam", negatives=0),
        )
    # the default preset, chosen on MovieLens-100K (random 70/10/20 split); the sweep: README "Quality on
    # MovieLens-100K"
    return (
        ModelConfig(
            embedding_dim=64,
            hidden=(64, 16),
            dropout=0.2,
            genre_mode="bag",
            biases=True,
            watch_head=True,
            init="scaled",
        ),
        TrainConfig(
            lr=3e-3,
            batch_size=256,
            epochs=40,
            weight_decay=0.01,
            optimizer="lazy_adam",
            # 64 shared negatives: test NDCG@10 0.340 against 0.317 with 16 (mean of four seeds), 13% slower
            lr_decay=1.0,
            patience=3,
            negatives=64,
            watch_weight=1.0,
            watch_loss="softmax",
            sampling="uniform",
            scale_free_rating_loss=True,
        ),
    )


def check_preset(name: object, *, where: str | None = None) -> str:
    """``name`` when it names a preset; else ConfigError, from ``--preset`` or from ``where`` (a config file's
    ``preset`` key). The one check of a preset name (train, tune, config files)."""
    if isinstance(name, str) and name in PRESETS:
        return name
    if where is None:
        raise ConfigError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    raise ConfigError(f"{where}: preset must be one of {', '.join(PRESETS)}, got {name!r}")


FIVE_STAR_SPAN = 4.0
"""The span of a 1..5 scale: the one :func:`rating_loss_weight` weighs every scale's rating loss as."""


def rating_loss_weight(train_cfg: TrainConfig, rating_min: float, rating_max: float) -> float:
    """The factor on the rating MSE in the training objective (and in fold-in): 1, or with
    ``scale_free_rating_loss`` ``(4 / (rating_max - rating_min))**2``, exactly 1 on a 1..5 scale.

    The objective adds the rating MSE, the watch loss and the L2 penalty. The MSE grows with the square of the
    rating scale while the other two do not, so on a -10..10 scale (Jester's) it is 25 times what it is on 1..5,
    and it drowned the watch output: MovieLens-100K with its stars mapped to -10..10 ranked at NDCG@10 0.155 against
    EASE's 0.287. Weighed as on a 1..5 scale, every scale trains as that one does (the sigmoid output is already
    scaled to the data's range). The seed preset keeps the original's plain MSE."""
    span = float(rating_max) - float(rating_min)
    if not train_cfg.scale_free_rating_loss or span <= 0:
        return 1.0
    return (FIVE_STAR_SPAN / span) ** 2


SPARSE_RATINGS_PER_MOVIE = 25.0
SPARSE_RATING_EMBEDDING_GRAD = 0.1
SPARSE_RMSE_SLACK = 0.01
SHORT_HISTORY_RATINGS_PER_USER = 40.0
SHORT_HISTORY_NEGATIVES = 128
LONG_HISTORY_WEIGHT_DECAY = 0.05
BARE_MOVIE_CLUSTERS = 16
CLUSTER_MIN_CO_RATINGS = 50.0


def adapt_to_data(
    preset_name: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    n_train: int,
    n_movies_rated: int,
    n_users: int | None = None,
    n_val: int | None = None,
    split_method: str = "random",
    bare: bool = False,
    explicit: set[str] | frozenset[str] = frozenset(),
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The default preset's settings that follow the data: (model config, train config, what was adapted and why).

    On a sparse catalogue (fewer than ``SPARSE_RATINGS_PER_MOVIE`` training ratings per rated movie) the rating
    loss reaches the shared embeddings at a tenth of its gradient (``rating_embedding_grad``): there the MSE pulls a
    movie's embedding towards its handful of ratings, which overfits the ratings and keeps the ranking output from
    learning. Measured on benchmarks/quality.py (seed 42): on ML-100K with every rating of a third of the users
    (15.5 ratings per movie) NDCG@10 0.194 -> 0.310 (most popular 0.194, EASE 0.338) and RMSE 1.878 -> 1.838 (bias
    baseline 1.890, 2..10 scale); on ML-100K random (41.6 per movie) the full gradient is better (NDCG@10 0.339
    against 0.336, RMSE 0.901 against 0.909), so dense data keeps it. With it, the epoch is chosen by val NDCG@10
    within 1% of the best val RMSE (``rmse_slack``; measured together with the gradient factor); on dense data
    that rule lost on ML-100K random (NDCG@10 0.330, RMSE 0.904 against 0.339, 0.901), so dense data keeps the
    val RMSE rule. The same two settings apply when the data is split by time (``temporal`` or ``leave-last-out``):
    the model is then judged on later ratings, often by new users (83% of the temporal val ratings on ML-100K), and
    there, at seed 42, they took ML-100K temporal from NDCG@10 0.251 to 0.273 (most popular 0.254) and RMSE 1.040
    to 1.031 (bias baseline 1.035), and leave-last-out from 0.082 to 0.102 (EASE 0.103) and RMSE 1.004 to 0.990.
    A sparse catalogue (not a time-based split alone) also gets ``user_history`` (with the watch output): where a
    movie has a handful of ratings, the movies a user rated say more about them than their own row learns from
    those few ratings. Measured on benchmarks/quality.py, mean of seeds 42 / 1 / 2: ``ml100k-few-users`` NDCG@10
    0.325 -> 0.336 (EASE 0.338) and RMSE 1.841 -> 1.836, ``ml100k-sparse`` 0.072 -> 0.074 and 0.969 -> 0.965; on
    the time-based rows it moved NDCG@10 or RMSE the wrong way in the fourth decimal, and on dense data it costs 2-3x
    the training time for less than a seed's spread, so those keep it off.
    Sparse catalogues and time-based splits also blend the rating output with the bias baseline (``baseline_blend``,
    the network's share chosen on val; a model without rating biases cannot blend). Measured on benchmarks/quality.py,
    seeds 42 / 1 / 2, RMSE: ``ml100k-sparse`` 0.965 -> 0.960, ``ml100k-sparse-users`` 0.983 -> 0.975 (the bias
    baseline 0.980), temporal 1.028 -> 1.027, with NDCG@10 equal or higher (sparse-users 0.052 -> 0.053); few-users
    (1.829) and leave-last-out (0.998, share 1 at every seed) were unchanged. On the dense rows it gained 0.001 RMSE
    for 0.001-0.002 NDCG@10 (ml100k-random, wide-scale) and costs a bias fit over every training rating at full
    MovieLens scale, so dense data keeps it off.
    A sparse catalogue whose users are short too (fewer than ``SHORT_HISTORY_RATINGS_PER_USER`` training ratings
    per user, ``n_train / n_users``, ``n_users`` counting those with training ratings) trains the watch output
    against ``SHORT_HISTORY_NEGATIVES`` shared negatives instead of 64. Measured on benchmarks/quality.py, seeds
    42 / 1 / 2 / 3 / 4, NDCG@10 (RMSE):
    ``ml100k-sparse-users`` (11.6 a user) 0.051 -> 0.057 (0.974 -> 0.970), most-popular 0.051; ``ml100k-sparse``
    (19.1 a user) 0.075 -> 0.076 (0.960 both). On long histories it loses: ``ml100k-few-users`` (74 a user) 0.330 ->
    0.318 (1.832 -> 1.821), so that row keeps 64.
    A sparse catalogue whose users are long (``SHORT_HISTORY_RATINGS_PER_USER`` training ratings a user or more:
    the shape of MovieLens latest-small, ~165 a user and ~11 a movie) trains with ``LONG_HISTORY_WEIGHT_DECAY``
    (0.05, not 0.01): there every user row learns from many ratings while each movie row has a handful, and the
    weak L2 let the movie rows fit them. Measured on benchmarks/quality.py, seeds 42 / 1 / 2 / 3 / 4, NDCG@10
    (RMSE), chosen on ``ml100k-few-users`` (74 a user) 0.330 -> 0.346 (1.833 -> 1.824), EASE 0.338; then checked on
    two rows added for it, ``ml100k-long-users`` (another 40% of the users, on 1..5) 0.336 -> 0.351 (0.915 ->
    0.911), EASE 0.344, and ``synthetic-latest-small`` (600 x 9,000 x 100,000 on 0.5..5) 0.383 -> 0.409 (0.760
    -> 0.761), EASE 0.387: each went from below EASE to above it. On short histories it
    loses (weight decay 0.05: ``ml100k-sparse`` 0.077 -> 0.074, ``ml100k-sparse-users`` 0.056 -> 0.053,
    ``ml100k-thin-01`` 0.043 -> 0.042), so those keep 0.01.
    A sparse catalogue without genres (``bare``: a plain ratings file) whose movies have at least
    ``CLUSTER_MIN_CO_RATINGS`` co-ratings each (training ratings per movie x (training ratings per user - 1)) gets
    ``BARE_MOVIE_CLUSTERS`` movie clusters learned from the ratings as its genre input (``movie_clusters``; the
    blend's movie prior uses them too). Measured on benchmarks/quality.py, NDCG@10 (RMSE), off -> on:
    ``ml100k-sparse-users-bare`` (91 co-ratings, seeds 42 / 1 .. 9) 0.0517 -> 0.0554 (0.9771 -> 0.9735),
    ``synthetic-sparse-short-bare`` (143, seeds 42 / 1 .. 4) 0.1844 -> 0.1925 (1.7794 -> 1.7558); on
    ``ml100k-thin-bare`` (30 co-ratings) every variant tried lost ranking (16 clusters, 10 seeds: 0.0383 -> 0.0345),
    hence the floor. Then checked on three bare rows that did not choose it (benchmarks/QUALITY.md).
    Settings named in ``explicit`` (the user's own
    flags) are never changed; only the ``default`` preset adapts.
    """
    if preset_name != "default" or n_movies_rated <= 0:
        return model_cfg, train_cfg, {}
    per_movie = n_train / n_movies_rated
    adapted: dict[str, Any] = {}
    sparse = per_movie < SPARSE_RATINGS_PER_MOVIE
    by_time = split_method in ("temporal", "leave-last-out")
    if sparse or by_time:
        settings: list[tuple[str, Any]] = [
            ("rating_embedding_grad", SPARSE_RATING_EMBEDDING_GRAD),
            ("rmse_slack", SPARSE_RMSE_SLACK),
        ]
        if model_cfg.biases and n_val != 0:  # the share is chosen on val: without val ratings there is no blend
            settings.append(("baseline_blend", True))
        for name, value in settings:
            if name not in explicit:
                train_cfg = train_cfg.replace(**{name: value})
                adapted[name] = value
    if sparse and model_cfg.watch_head and "user_history" not in explicit:
        model_cfg = model_cfg.replace(user_history=True)
        adapted["user_history"] = True
    per_user = n_train / n_users if n_users else math.inf
    short = sparse and per_user < SHORT_HISTORY_RATINGS_PER_USER and model_cfg.watch_head
    if short and "negatives" not in explicit and train_cfg.negatives < SHORT_HISTORY_NEGATIVES:
        train_cfg = train_cfg.replace(negatives=SHORT_HISTORY_NEGATIVES)
        adapted["negatives"] = SHORT_HISTORY_NEGATIVES
    long = sparse and n_users is not None and per_user >= SHORT_HISTORY_RATINGS_PER_USER
    if long and "weight_decay" not in explicit and train_cfg.weight_decay < LONG_HISTORY_WEIGHT_DECAY:
        train_cfg = train_cfg.replace(weight_decay=LONG_HISTORY_WEIGHT_DECAY)
        adapted["weight_decay"] = LONG_HISTORY_WEIGHT_DECAY
    # what the clusters are learned from: a movie's co-ratings, the other ratings of the users who rated it
    co_ratings = per_movie * max(per_user - 1.0, 0.0)
    clusters = sparse and bare and model_cfg.watch_head and co_ratings >= CLUSTER_MIN_CO_RATINGS
    clusters = clusters and n_movies_rated > BARE_MOVIE_CLUSTERS  # more movies than clusters to put them in
    if clusters and "movie_clusters" not in explicit and not model_cfg.movie_clusters:
        model_cfg = model_cfg.replace(movie_clusters=BARE_MOVIE_CLUSTERS)
        adapted["movie_clusters"] = BARE_MOVIE_CLUSTERS
    if adapted:
        reasons = (
            [f"{per_movie:.1f} training ratings per movie (< {SPARSE_RATINGS_PER_MOVIE:g}: a sparse catalogue)"]
            if sparse
            else []
        )
        if "negatives" in adapted:
            reasons.append(f"{per_user:.1f} per user (< {SHORT_HISTORY_RATINGS_PER_USER:g}: short histories)")
        if "weight_decay" in adapted:
            reasons.append(f"{per_user:.1f} per user (>= {SHORT_HISTORY_RATINGS_PER_USER:g}: long histories)")
        if "movie_clusters" in adapted:
            reasons.append(
                f"no genres, and {co_ratings:.0f} co-ratings per movie (>= {CLUSTER_MIN_CO_RATINGS:g}: movie clusters"
                " learned from the ratings stand in for the genres)"
            )
        if by_time:
            reasons.append(f"a {split_method} split (the model is judged on later ratings)")
        adapted["because"] = "; ".join(reasons)
    return model_cfg, train_cfg, adapted


def to_dict(cfg: ModelConfig | TrainConfig | DataShape) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    if "hidden" in out:
        out["hidden"] = list(out["hidden"])
    return out


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    return _from_dict(ModelConfig, d, "model config")


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    return _from_dict(TrainConfig, d, "train config")


def data_shape_from_dict(d: dict[str, Any]) -> DataShape:
    return _from_dict(DataShape, d, "data shape")


def _from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = dict(d)
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _no_repeated_keys(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key written twice (``json`` would keep the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"--config: {path} sets {key!r} twice: keep one of them")
        out[key] = value
    return out


def load_config_file(path: Path) -> dict[str, Any]:
    """Read hyperparameters from a JSON or TOML file: a flat table of option names (``lr``, ``hidden``, ...).

    Keys may use dashes or underscores (``batch-size`` or ``batch_size``). Returns the flat dict; the caller splits
    it between the model and training configs with :func:`split_overrides`.
    """
    if not path.is_file():
        raise ConfigError(f"--config: {path} does not exist" + (" as a file" if path.exists() else ""))
    raw_bytes = path.read_bytes()
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if raw_bytes[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(
            f"--config: {path} is not UTF-8 text{hint} (bad byte at offset {exc.start}): re-save it as UTF-8"
        ) from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text, object_pairs_hook=partial(_no_repeated_keys, path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold one table of settings")
    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
    flat: dict[str, Any] = {}
    written: dict[str, str] = {}  # each setting's spelling, so that one given twice is refused, not silently won

    def put(key: str, value: Any, spelled: str) -> None:
        name = key.replace("-", "_")
        if name in written:
            raise ConfigError(f"--config: {path} sets {name!r} twice ({written[name]} and {spelled}): keep one of them")
        written[name] = spelled
        flat[name] = value

    for key, value in raw.items():
        if isinstance(value, dict) and key in ("model", "train"):
            for k, v in value.items():
                put(k, v, f"{key}.{k}")
        else:
            put(key, value, key)
    for key, value in flat.items():
        if key == "preset":
            check_preset(value, where=f"--config: {path}")
            continue
        if key not in defaults:
            raise ConfigError(f"--config: {path} sets unknown {key!r}; known settings: {', '.join(sorted(defaults))}")
        coerced = _coerce(value, defaults[key])
        if coerced is None:
            kind = _KINDS.get(type(defaults[key]), type(defaults[key]).__name__)
            raise ConfigError(f"--config: {path}: {key} must be {kind}, got {value!r}")
        # as the setting's type (10.0 -> 10, 1 -> 1.0), so that the file reads the same as the run.json it writes
        flat[key] = list(coerced) if isinstance(coerced, tuple) else coerced
    model_changes, train_changes = split_overrides(flat)
    try:  # each value's own domain, before any flag or preset meets it (those are checked where they are combined)
        ModelConfig(**model_changes)
        TrainConfig(**train_changes)
    except SettingError as exc:
        raise exc.named(f"--config: {path}: {exc.setting}") from None
    return flat


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat dict of settings into (model changes, train changes); unknown keys are a ConfigError."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    model_changes: dict[str, Any] = {}
    train_changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in model_names:
            model_changes[key] = tuple(value) if key == "hidden" else value
        elif key in train_names:
            train_changes[key] = value
        elif key != "preset":
            known = ", ".join(sorted(model_names | train_names))
            raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
    return model_changes, train_changes
