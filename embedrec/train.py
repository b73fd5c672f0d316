"""The training loop: epochs of jitted step blocks, validation, early stopping with best weights, checkpoints.

Synopsis::

    from embedrec.train import train
    result = train(prepared, model_cfg, train_cfg)           # PreparedData from embedrec.data.load_prepared
    result.model, result.history

The rooms of training: :mod:`embedrec.losses` (the objective), :mod:`embedrec.sparse_adam` (the row-sparse
optimizer and the packed table slab), :mod:`embedrec.sampling` (shared negatives, the seen filter),
:mod:`embedrec.step` (the jitted step), :mod:`embedrec.validation` (val metrics, by the serving scorer) and
:mod:`embedrec.checkpoints`. This module only runs them.

Speed comes from these, each measured (see benchmarks/train_throughput.py and the README):

* the training split lives on the device, shuffled once per epoch on the host so a batch is a contiguous slice, and
  a whole block of steps (``steps_per_call``) runs in one ``lax.scan``, so Python is touched once per block;
* lazy (row-sparse) Adam for the embedding tables: only the rows in the batch get their moments and weights updated,
  instead of a dense update of all ~2.4M table entries every step. Bias correction uses the global step, as in
  TensorFlow's LazyAdam. All user and movie tables share one packed slab, so a step does one gather, one
  de-duplication and one scatter. ``optimizer="adam"`` gives the dense update for comparison;
* a genre table no larger than about a step's genre slots is updated densely instead (cheaper than the slots);
* the watch output's negatives are shared by the batch: one (B, K) matmul, B + K movie rows, and a Bloom filter of
  the training pairs (:func:`embedrec.sampling.seen_filter`) to mask rated movies;
* dropout masks from a counter-based integer hash instead of Threefry bits, on CPU computed once per step and read
  by both the forward and the backward pass (see :func:`embedrec.model.dropout`);
* static shapes: the last partial batch of an epoch is padded and masked, so nothing recompiles.

Determinism: the epoch's permutation comes from (seed, epoch), dropout and negative samples from (seed, epoch,
step), so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from embedrec.baselines import SigmoidBiasBaseline, movie_prior_features
from embedrec.checkpoints import (
    BackgroundSaves,
    Checkpointer,
    best_weights_of,
    checkpoint_arrays,
    flatten_tree,
    restore_tree,
)
from embedrec.config import DataShape, ModelConfig, TrainConfig, check_settings, rating_loss_weight
from embedrec.data.split import TRAIN, VAL
from embedrec.errors import ArtifactError, ConfigError, TrainingDiverged
from embedrec.history import UserHistories
from embedrec.model import TABLE_GROUPS, EmbeddingConcat, GenreInputs, data_shape, genre_inputs
from embedrec.sampling import popularity_cdf, seen_filter
from embedrec.sparse_adam import SlabLayout, head_optimizer
from embedrec.step import StepParts, StepSettings, TrainState, init_state, make_train_block, state_tables
from embedrec.validation import SplitRanking, scoring_weights, watch_scores

if TYPE_CHECKING:
    from concurrent.futures import Future

    from embedrec.data.store import PreparedData
    from embedrec.evaluation import HeldOut
    from embedrec.scoring import Scorer

__all__ = [
    "BASELINE_BLEND_WEIGHTS",
    "Callbacks",
    "Checkpointer",
    "Initialised",
    "TrainResult",
    "blend_rating_biases",
    "data_shape",
    "genre_inputs",
    "initialise",
    "select_epoch",
    "train",
    "untrained_users_as_average",
]

VAL_RATINGS_MAX = 500_000
"""Val RMSE and MAE are computed on at most this many val ratings: a fixed sample (seed 0, the same every epoch and
run, so epochs are compared on the same ratings). Every data set of the README's quality tables has fewer, so their
figures are over the whole val split. At full MovieLens scale (2.7M val ratings) predicting all of them was about
half of validation's time outside the epochs; the sample's RMSE has a standard error of about 0.001, and the
difference between two epochs, measured on the same ratings, much less."""
DENSE_GENRE_MAX = 1 << 18  # genre tables up to this many parameters are updated densely, outside the slab
BASELINE_BLEND_WEIGHTS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0)
"""The network's share ``a`` in the rating blend with the bias baseline (``TrainConfig.baseline_blend``), chosen on
the val split. Measured on benchmarks/quality.py's ml100k-sparse row (seeds 42, 1, 2, ``--override
baseline_blend=true``): test RMSE 0.964 / 0.974 / 0.967 for the network alone, against 0.958 / 0.964 / 0.960 blended
at the val-chosen ``a`` (0.625, 0.625, 0.75); the bias baseline is 0.967. On denser rows the val split chooses ``a``
= 1 or 0.875 (the network is far better there). The grid stopped at 0.5 until the baseline's movie biases were
shrunk toward a genre and release-year prior (2026-12-07); then the ml100k-sparse-users row chose 0.5 at every
seed, the grid's edge, and 0.375 / 0.25 lowered its test RMSE at each of seeds 42 and 1 to 7 (mean 0.9668 ->
0.9658, NDCG@10 0.0555 -> 0.0563); ml100k-sparse, few-users and temporal chose as before, bit for bit. Then
ml100k-thin-01 (the sparsest row, 0..1) chose 0.25 at every seed; 0.125 and 0 (the bias baseline alone) lowered its
test RMSE from 0.2529 to 0.2526 (seeds 42 / 1 / 2 chose 0.25 / 0.125 / 0.125; -2.01% -> -2.13% against the bias
baseline, NDCG@10 0.0437 both), and every other blending row chose as before, bit for bit (2026-12-07)."""


class Callbacks:
    """Hooks the loop reports through; the CLI renders them. All optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_block(self, epoch: int, step: int, steps: int, loss: float, samples_per_s: float) -> None: ...
    def on_epoch(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    model: EmbeddingConcat
    shape: DataShape
    history: list[dict[str, Any]]
    best_epoch: int
    genres: GenreInputs
    stopped_early: bool = False
    interrupted: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    val_held_out: HeldOut | None = None  # the val split's relevant sets, its ranked users' seen sets (validation's)
    histories: UserHistories | None = None  # the train split's user histories (ModelConfig.user_history)
    train_movie_counts: np.ndarray | None = None  # (n_movies,) int64: the train split's ratings per movie


@dataclass(frozen=True)
class Ratings:
    """(user, movie, rating) columns of one split."""

    users: np.ndarray
    movies: np.ndarray
    ratings: np.ndarray

    @classmethod
    def of_split(cls, prepared: PreparedData, code: int, rating_dtype: type) -> Ratings:
        mask = prepared.split == code
        return cls(  # the selections are new arrays: cast without a second copy (76 MB a column at full scale)
            prepared.user_idx[mask].astype(np.int32, copy=False),
            prepared.movie_idx[mask].astype(np.int32, copy=False),
            prepared.rating[mask].astype(rating_dtype, copy=False),
        )

    def sample(self, max_rows: int, *, seed: int = 0) -> Ratings:
        """At most ``max_rows`` of the rows: all of them when there are no more, else a subset drawn with ``seed``,
        in the rows' order."""
        if len(self.users) <= max_rows:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.users), size=max_rows, replace=False))
        return Ratings(self.users[keep], self.movies[keep], self.ratings[keep])


@dataclass(frozen=True)
class Schedule:
    """How an epoch is cut: steps of ``batch_size`` ratings, grouped in blocks of ``steps_in_block`` steps."""

    n_train: int
    batch_size: int
    steps_per_epoch: int
    steps_in_block: int
    padded: int  # ratings per epoch after padding to whole blocks

    @classmethod
    def of(cls, n_train: int, batch_size: int, steps_per_call: int) -> Schedule:
        steps_per_epoch = -(-n_train // batch_size)
        n_blocks = -(-steps_per_epoch // steps_per_call)
        steps_in_block = -(-steps_per_epoch // n_blocks)
        return cls(n_train, batch_size, steps_per_epoch, steps_in_block, n_blocks * steps_in_block * batch_size)


@dataclass
class BestEpoch:
    """Early stopping's record: the best val RMSE (and NDCG@10) so far, the kept epoch, its weights, val NDCG@10 and
    val RMSE, and the epochs since a validation metric last improved (see :func:`select_epoch`)."""

    rmse: float = math.inf
    epoch: int = 0
    weights: dict[str, np.ndarray] | None = None
    bad_epochs: int = 0
    ndcg: float = -math.inf
    kept_ndcg: float = -math.inf
    kept_rmse: float = math.inf


def select_epoch(best: BestEpoch, record: Mapping[str, Any], *, rmse_slack: float, has_val: bool) -> tuple[bool, bool]:
    """(keep this epoch's weights, did a validation metric improve), updating the running bests in ``best``.

    Without ``rmse_slack`` (or without a val NDCG@10) this is plain early stopping on val RMSE. With it, the kept
    weights are those of the epoch with the highest val NDCG@10 among the epochs whose val RMSE is within
    ``rmse_slack`` of the best val RMSE so far (an epoch that sets a new best RMSE always qualifies, and replaces a
    kept epoch that no longer does), and an improvement of either metric resets the patience.
    """
    if not has_val:
        return True, True
    rmse = record["val_rmse"]
    ndcg = record.get("val_ndcg@10")
    rmse_better = rmse < best.rmse
    if rmse_better:
        best.rmse = rmse
    if rmse_slack <= 0 or ndcg is None:
        if rmse_better:
            best.kept_rmse = rmse
        return rmse_better, rmse_better
    ndcg_better = ndcg > best.ndcg
    if ndcg_better:
        best.ndcg = ndcg
    limit = best.rmse * (1.0 + rmse_slack)
    keep = rmse <= limit and (ndcg > best.kept_ndcg or best.kept_rmse > limit)
    if keep:
        best.kept_ndcg, best.kept_rmse = ndcg, rmse
    return keep, rmse_better or ndcg_better


def _inverse_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """1 / (number of training ratings) per row (1 for rows without any: they never appear in a batch)."""
    return (1.0 / np.maximum(np.bincount(idx, minlength=n), 1)).astype(np.float32)


def untrained_users_as_average(tables: Mapping[str, Any], trained: np.ndarray) -> dict[str, Any]:
    """User rows that no training rating ever touched, set to the mean of the trained rows (the user tables come
    back as new host arrays; the others as they were).

    Such a row still holds its random initialisation, which scores a new user by noise around the movie biases;
    the average user's row ranks what the average user watches and predicts the average user's ratings. Under a
    temporal split most test users are new (203 of 290 on MovieLens-100K), so this is most of that row's ranking.
    """
    out = dict(tables)
    if trained.all() or not trained.any():
        return out
    for name in TABLE_GROUPS["user"]:
        if name in out:
            table = np.array(out[name])  # a copy: the caller's table stays as it was
            table[~trained] = table[trained].mean(axis=0, keepdims=True)
            out[name] = table
    return out


@dataclass
class Position:
    """Where the loop resumes: the epoch, the step within it, and the loss sums of the steps already done."""

    epoch: int = 1
    step: int = 0
    loss_sums: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))


@dataclass
class Run:
    """Everything fixed for one training run, built by :func:`_set_up`."""

    prepared: PreparedData
    train_cfg: TrainConfig
    genres: GenreInputs
    shape: DataShape
    train_split: Ratings
    val_split: Ratings
    val_scored: Ratings  # the val ratings whose RMSE/MAE validation reports: at most VAL_RATINGS_MAX of val_split
    schedule: Schedule
    model: EmbeddingConcat
    layout: SlabLayout
    run_block: Callable[..., Any]
    inputs: dict[str, Any]
    rank_val: SplitRanking | None
    trained_users: np.ndarray  # (n_users,) bool: users with a training rating (the others are served as average)
    shuffles: _Shuffles  # each epoch's order, built ahead in a background thread; closed by train()
    histories: UserHistories | None = None  # the train split's user histories (ModelConfig.user_history)
    devices: list[Any] = field(default_factory=list)
    batch_columns: Any = None  # the sharding of the epoch's (steps, batch) columns: each device holds its share
    state_shardings: dict[str, Any] | None = None  # per train-state entry; the slab's rows split over the devices
    pad_rows: int = 0  # zero rows after the slab's last table row, so that its rows divide by the devices

    def place(self, state: TrainState) -> TrainState:
        """A host-side train state (as a checkpoint stores it) on the devices, laid out as training needs it."""
        if self.state_shardings is None:
            return state
        state = self.padded(state)
        return {name: _to_devices(value, self.state_shardings[name]) for name, value in state.items()}

    def padded(self, state: TrainState) -> TrainState:
        if not self.pad_rows:
            return state
        return {**state, "slab": jnp.pad(jnp.asarray(state["slab"]), ((0, self.pad_rows), (0, 0)))}

    def unpadded(self, state: TrainState) -> TrainState:
        """The state as a checkpoint stores it: the slab without its padding rows, whatever the device count."""
        if not self.pad_rows:
            return state
        return {**state, "slab": state["slab"][: self.layout.n_rows]}

    def host(self, tree: Any) -> Any:
        """``tree`` readable on this host. When the devices span processes the row-split tables are gathered (every
        process must call this at the same point); within one process every shard is readable as it is."""
        if jax.process_count() == 1:
            return tree
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)

    def batches(self, columns: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """The epoch's padded columns as (steps, batch) device arrays, batch ``i`` in row ``i``.

        On several devices each device receives only its columns of every row, its share of every batch, and
        each process builds only its own devices' shards from its host copy: no device holds the whole split, and
        nothing crosses between processes.
        """
        steps = self.schedule.padded // self.schedule.batch_size
        shaped = {name: arr.reshape(steps, self.schedule.batch_size) for name, arr in columns.items()}
        if self.batch_columns is None:
            return jax.device_put(shaped)
        return _to_devices(shaped, self.batch_columns, local_shards=True)

    def tables(self, state: TrainState) -> dict[str, jax.Array]:
        return state_tables(state, self.layout)

    def host_tables(self, state: TrainState) -> dict[str, np.ndarray]:
        """Every table of ``state``, readable on this host (what validation and the best-epoch copy read).

        In one process the slab's params block is copied to the host once and each table is a numpy view of that
        copy (never of the state, whose buffers the next step block reuses): slicing each table on the device
        compiled one small XLA program per table, ~0.4 s of the first validation at full MovieLens scale."""
        if jax.process_count() > 1 or self.state_shardings is not None:
            return self.host(self.tables(state))
        host: dict[str, Any] = {"slab": np.asarray(state["slab"][:, : self.layout.width])}
        if "genre" in state:
            host["genre"] = np.array(state["genre"])
        return {name: np.asarray(table) for name, table in state_tables(host, self.layout).items()}  # views

    def served_scorer(self, head: Any, tables: dict[str, Any]) -> Scorer:
        """The numpy serving scorer of these host weights as they would be served (users without training ratings
        as the average user; with ``user_history``, each user's history part from the train split): validation
        and the choices made on val judge what is served."""
        from embedrec.scoring import Scorer

        tables = untrained_users_as_average(tables, self.trained_users)
        weights = scoring_weights(head, tables, self.genres, self.histories)
        return Scorer.from_weights(weights, self.model.cfg, self.shape)


def _to_devices(tree: Any, sharding: Any, *, local_shards: bool = False) -> Any:
    """``tree``'s host arrays laid out by ``sharding``.

    Within one process this is ``jax.device_put``. With ``local_shards``, or when the mesh spans processes, each
    process fills only the shards of its own devices from its host copy (``jax.make_array_from_callback``), so a
    multi-process put is neither a transfer between processes nor a cross-process equality check of the data.
    """
    if not local_shards and jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)


def _device_mesh(batch_size: int) -> tuple[list[Any], Any]:
    """The devices, and a data-parallel mesh over them when there are several."""
    devices = jax.devices()
    if len(devices) == 1:
        return devices, None
    from jax.sharding import Mesh

    if batch_size % len(devices):
        raise ConfigError(f"--batch-size {batch_size} must be divisible by the {len(devices)} devices")
    return devices, Mesh(np.array(devices), ("data",))


@dataclass
class Initialised:
    """The fresh model of one run's settings and data, and what its train state was built for (:func:`initialise`).

    It trains one run: training consumes its state (the step donates the buffers) and the run's result is its model.
    """

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data_fingerprint: str  # of the prepared data it was sized for (:attr:`PreparedData.fingerprint`)
    genres: GenreInputs
    shape: DataShape
    genre_table: bool  # the genre table is updated densely, outside the slab
    tx: Any  # the head's optimizer
    model: EmbeddingConcat
    graphdef: Any
    layout: SlabLayout
    state: TrainState
    used: bool = False  # set by the run that trains it


def _genre_input(prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig) -> GenreInputs:
    """The movies' genre input: their genres, or with ``movie_clusters`` the clusters learned from the train split
    (seeded by the run's seed, so a resumed run recomputes the same ones)."""
    if not model_cfg.movie_clusters:
        return genre_inputs(prepared, model_cfg.genre_mode)
    from embedrec.movie_clusters import movie_clusters

    train_split = Ratings.of_split(prepared, TRAIN, np.float32)
    found = movie_clusters(
        train_split.users,
        train_split.movies,
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
        k=model_cfg.movie_clusters,
        seed=train_cfg.seed,
    )
    return GenreInputs(found.idx, found.weight, found.n_clusters, learned=True)


def _process_0s_clusters(genres: GenreInputs) -> GenreInputs:
    """Process 0's learned movie clusters, on every process of a distributed run (a collective). Each process learns
    its own from the same ratings and seed, but another host's BLAS may round the SVD differently and move a movie
    that lies near a cluster boundary; the run must train one genre input."""
    from dataclasses import replace

    from jax.experimental import multihost_utils

    idx, weight = multihost_utils.broadcast_one_to_all((genres.idx, genres.weight))
    return replace(genres, idx=np.asarray(idx, np.int32), weight=np.asarray(weight, np.float32))


def initialise(prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Initialised:
    """The freshly initialised model and train state that :func:`train` starts from (a resumed run replaces the
    state with its checkpoint's).

    Needs the prepared folder's summary and movie table, not its ratings (but for ``movie_clusters``, learned from
    the train split's pairs in this thread too): :func:`embedrec.runs.train_run` calls it in a background thread
    (importing JAX there too) while the ratings are read, and passes the future to :func:`train`. Most of its time
    is small XLA compilations, one per table shape; the weights are the same whichever thread draws them.
    """
    check_settings(model_cfg, train_cfg)
    genres = _genre_input(prepared, model_cfg, train_cfg)
    shape = data_shape(prepared, genres)
    bsz = train_cfg.batch_size
    # a genre table with at most twice as many rows as a step has genre slots (single genres always; the original's
    # ~1,400 genre strings from batch 1024 up) is updated densely: a dense Adam step on it is cheaper than the
    # row-sparse gather / de-duplicate / scatter of B * G slots. Measured on the seed preset: +10% at batch 1024,
    # +9% at 8192; at batch 256 (1,357 rows, 256 slots) the sparse path is 27% faster
    genre_table = (
        genres.n_genres <= 2 * bsz * genres.idx.shape[1]
        and genres.n_genres * model_cfg.embedding_dim <= DENSE_GENRE_MAX
    )
    tx = head_optimizer()
    model = EmbeddingConcat(model_cfg, shape, rngs=nnx.Rngs(train_cfg.seed))
    graphdef, layout, state = init_state(
        model, tx, genre_table=genre_table, rowwise=train_cfg.optimizer == "rowwise_adam"
    )
    return Initialised(
        model_cfg, train_cfg, prepared.fingerprint, genres, shape, genre_table, tx, model, graphdef, layout, state
    )


def _set_up(
    prepared: PreparedData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    first_epoch: int | None = None,
    initialised: Future[Initialised] | None = None,
) -> tuple[Run, TrainState]:
    """Build the model, the step and the validation functions; return them with the fresh train state.

    The model's initialisation (:func:`initialise`, mostly small XLA compilations) runs in a background thread
    (``initialised``, when the caller started it earlier) while this one builds the host-side arrays (the split,
    the seen filter, the val sets), and the shuffle of ``first_epoch`` starts as soon as the split is known: at full
    MovieLens scale they overlap on two cores instead of taking turns.
    """
    from concurrent.futures import ThreadPoolExecutor

    check_settings(model_cfg, train_cfg)
    bsz = train_cfg.batch_size
    rowwise = train_cfg.optimizer == "rowwise_adam"
    with ThreadPoolExecutor(1, thread_name_prefix="embedrec-init") as init_pool, ExitStack() as on_failure:
        if initialised is None:
            initialised = init_pool.submit(initialise, prepared, model_cfg, train_cfg)
        train_split = Ratings.of_split(prepared, TRAIN, np.float32)
        if len(train_split.users) == 0:
            raise ConfigError("the prepared data has no training ratings; prepare it again with smaller --test-frac")
        schedule = Schedule.of(len(train_split.users), bsz, train_cfg.steps_per_call)
        shuffles = _Shuffles(schedule, train_split, seed=train_cfg.seed, last_epoch=train_cfg.epochs)
        on_failure.callback(shuffles.close)
        if first_epoch is not None:
            shuffles.prepare(first_epoch)
        devices, mesh = _device_mesh(bsz)
        inputs: dict[str, Any] = {}
        if train_cfg.row_decay > 0:
            inputs["user_inv_count"] = _inverse_counts(train_split.users, prepared.n_users)
            inputs["movie_inv_count"] = _inverse_counts(train_split.movies, prepared.n_movies)
        if train_cfg.negatives > 0:
            inputs["seen_bits"] = seen_filter(train_split.users, train_split.movies)
            inputs["neg_cdf"] = popularity_cdf(train_split.movies, prepared.n_movies, alpha=train_cfg.sampling_alpha)
        histories = None
        if model_cfg.user_history:
            histories = UserHistories.of_pairs(train_split.users, train_split.movies, n_users=prepared.n_users)
            inputs["history_ptr"] = histories.ptr.astype(np.int32)
            inputs["history_movies"] = histories.movies
        val_split = Ratings.of_split(prepared, VAL, np.float64)
        rank_val = None
        if model_cfg.watch_head and train_cfg.val_users > 0 and len(val_split.users):
            rank_val = SplitRanking(prepared, split_code=VAL, max_users=train_cfg.val_users)
            rank_val.build()  # the val sets, once per run, while the model initialises
        init = initialised.result()
        if (init.model_cfg, init.train_cfg) != (model_cfg, train_cfg):
            raise ValueError("the initialised model was built for other settings than this run's")
        if init.data_fingerprint != prepared.fingerprint:  # tables sized for other data: JAX clamps, never fails
            raise ValueError("the initialised model was built for other data than this run's")
        if init.used:  # its state's buffers were donated to that run's steps, and its model is that run's result
            raise ValueError("the initialised model has trained a run already: call initialise again for another")
        init.used = True
        genres, model, layout = init.genres, init.model, init.layout
        if genres.learned and jax.process_count() > 1:
            genres = _process_0s_clusters(genres)
        inputs.update({"genre_idx": genres.idx, "genre_w": genres.weight})
        settings = StepSettings(
            batch_size=bsz,
            steps_in_block=schedule.steps_in_block,
            n_train=schedule.n_train,
            negatives=train_cfg.negatives,
            watch_weight=train_cfg.watch_weight,
            watch_loss=train_cfg.watch_loss,
            weight_decay=train_cfg.weight_decay,
            lazy=train_cfg.optimizer in ("lazy_adam", "rowwise_adam"),
            rowwise=rowwise,
            sampling=train_cfg.sampling,
            genre_table=init.genre_table,
            genre_width=int(model_cfg.embedding_dim),
            row_decay=train_cfg.row_decay,
            rating_embedding_grad=train_cfg.rating_embedding_grad,
            history_samples=train_cfg.history_samples if model_cfg.user_history else 0,
            rating_loss_weight=rating_loss_weight(train_cfg, init.shape.rating_min, init.shape.rating_max),
        )
        replicated = table_rows = state_shardings = batch_columns = None
        pad_rows = 0
        if mesh is not None:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            replicated = NamedSharding(mesh, P())
            batch_columns = NamedSharding(mesh, P(None, "data"))  # each device: its columns of every batch
            state_shardings = {name: replicated for name in init.state}
            if train_cfg.shard_tables:
                table_rows = state_shardings["slab"] = NamedSharding(mesh, P("data", None))
                pad_rows = -layout.n_rows % len(devices)
            inputs = _to_devices(inputs, replicated)
        else:
            inputs = jax.device_put(inputs)
        run = Run(
            prepared=prepared,
            train_cfg=train_cfg,
            genres=genres,
            shape=init.shape,
            train_split=train_split,
            val_split=val_split,
            val_scored=val_split.sample(VAL_RATINGS_MAX),
            schedule=schedule,
            model=model,
            layout=layout,
            run_block=make_train_block(
                StepParts(init.graphdef, layout, init.shape, settings, init.tx, mesh, table_rows)
            ),
            inputs=inputs,
            rank_val=rank_val,
            trained_users=np.bincount(train_split.users, minlength=prepared.n_users) > 0,
            histories=histories,
            devices=devices,
            batch_columns=batch_columns,
            state_shardings=state_shardings,
            pad_rows=pad_rows,
            shuffles=shuffles,
        )
        on_failure.pop_all()  # the run owns the shuffles from here
    return run, run.place(init.state)


def _resume(
    run: Run, checkpointer: Checkpointer | None, state: TrainState
) -> tuple[TrainState, list[dict[str, Any]], BestEpoch, Position]:
    """The train state, history, early-stopping record and position of the checkpointer's latest checkpoint."""
    if checkpointer is None:
        raise ConfigError("--resume needs a run folder with checkpoints")
    loaded = checkpointer.load()
    if loaded is None:
        raise ArtifactError("no complete checkpoint to resume from; start a new run without --resume")
    arrays, meta = loaded
    prepared = run.prepared
    if meta.get("epoch_order") != EPOCH_ORDER:  # written before the bucketed order existed: the run keeps numpy's
        run.shuffles.legacy_order()
    if meta.get("fingerprint") != prepared.fingerprint:
        raise ArtifactError(
            f"checkpoint was trained on data {meta.get('fingerprint')} but {prepared.path} is "
            f"{prepared.fingerprint}: the data was re-prepared; resume with the same --data or start a new run"
        )
    state = run.place(restore_tree(run.unpadded(state), arrays, "state"))  # the template's shapes and dtypes only
    best = BestEpoch(
        rmse=meta["best_rmse"],
        epoch=meta["best_epoch"],
        weights=best_weights_of(arrays),
        bad_epochs=meta["bad_epochs"],
        ndcg=_meta_float(meta, "best_ndcg", -math.inf),
        kept_ndcg=_meta_float(meta, "kept_ndcg", -math.inf),
        kept_rmse=_meta_float(meta, "kept_rmse", math.inf),
    )
    position = Position(
        int(meta["epoch"]), int(meta["step"]), np.asarray(meta.get("carried", [0.0, 0.0, 0.0]), dtype=np.float64)
    )
    if position.step >= run.schedule.steps_per_epoch:
        position = Position(position.epoch + 1)
    return state, list(meta["history"]), best, position


def _meta_float(meta: Mapping[str, Any], key: str, default: float) -> float:
    """An optional number of a checkpoint's meta: ``default`` when absent (a checkpoint written before the key
    existed) or null (strict JSON stores an infinite running best as null)."""
    value = meta.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _check_finite(stats: np.ndarray, epoch: int, first_step: int) -> None:
    if not np.all(np.isfinite(stats)):
        bad = int(np.argmax(~np.all(np.isfinite(stats), axis=1)))
        raise TrainingDiverged(
            f"loss became NaN/Inf at epoch {epoch}, step {first_step + bad + 1}; the last good checkpoint "
            "is kept. Lower --lr (or raise --weight-decay) and train again"
        )


BUCKETED_ORDER_MIN = 1 << 22
"""From this many training ratings on, an epoch's order is drawn by :func:`epoch_order`'s bucketed shuffle."""


def epoch_order(n: int, seed: int, epoch: int, *, bucketed_from: int = BUCKETED_ORDER_MIN) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (int64), the same for the same (seed, epoch, n).

    Below ``bucketed_from`` it is numpy's ``permutation``. That Fisher-Yates shuffle makes every swap a cache miss
    once the array outgrows the caches (32 MB of int64 at 2**22): ~2 s of CPU at 19M training ratings, in the first
    epoch's critical path and beside every later epoch's training. From there on each index goes to one of 256
    buckets drawn at random (one radix pass of numpy's stable argsort groups them, in index order), and each bucket
    is shuffled on its own, mostly in cache: 0.75 s at 19M. The result is as uniform: the buckets' contents are a
    uniformly random partition of the indices, each bucket uniformly ordered. Small data sets keep their orders.
    """
    rng = np.random.default_rng([seed, epoch])
    if n < bucketed_from:
        return rng.permutation(n)
    keys = rng.integers(0, 256, n, dtype=np.uint8)
    order = np.argsort(keys, kind="stable")
    bounds = np.zeros(257, np.int64)
    np.cumsum(np.bincount(keys, minlength=256), out=bounds[1:])
    del keys
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rng.shuffle(order[lo:hi])
    return order


EPOCH_ORDER = "bucketed-2**22"
"""What a checkpoint's meta says of the order its run's epochs follow (:func:`epoch_order` with its default size);
a checkpoint without it was written before the bucketed shuffle existed, and its run resumes in numpy's order."""


def _epoch_columns(
    schedule: Schedule, split: Ratings, seed: int, epoch: int, *, bucketed_from: int
) -> dict[str, np.ndarray]:
    """The training split in the epoch's order, seeded by (seed, epoch), padded to whole batches (host side)."""
    perm = epoch_order(schedule.n_train, seed, epoch, bucketed_from=bucketed_from)
    columns = {}
    for name, arr in (("user", split.users), ("movie", split.movies), ("rating", split.ratings)):
        column = np.zeros(schedule.padded, dtype=arr.dtype)  # the padding stays zero
        np.take(arr, perm, out=column[: schedule.n_train])  # gathered in place: no second copy to pad
        columns[name] = column
    return columns


class _Shuffles:
    """Each epoch's shuffled columns, the next epoch's built in a background thread while this one trains.

    Permuting and gathering the split is host work (about 5 s an epoch at 19M training ratings) that would
    otherwise sit between the epochs; numpy releases the GIL in its large loops, so the thread overlaps the
    step blocks (and, for the first epoch, the rest of the set-up). The order is the same whichever thread builds
    it.
    """

    def __init__(self, schedule: Schedule, split: Ratings, *, seed: int, last_epoch: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._columns = partial(_epoch_columns, schedule, split, seed)
        self.bucketed_from = BUCKETED_ORDER_MIN  # epoch_order's size for the bucketed shuffle (see legacy_order)
        self.last_epoch = last_epoch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="embedrec-shuffle")
        self._next: tuple[int, Future[dict[str, np.ndarray]]] | None = None

    def legacy_order(self) -> None:
        """Every epoch in numpy's permutation, whatever its size (a run resumed from a checkpoint written before
        :func:`epoch_order`'s bucketed shuffle: the rest of its epoch must not repeat or skip ratings)."""
        self.bucketed_from = sys.maxsize

    @property
    def order(self) -> str:
        """The order its epochs follow, as a checkpoint's meta records it (:data:`EPOCH_ORDER`, or numpy's)."""
        return "numpy" if self.bucketed_from == sys.maxsize else EPOCH_ORDER

    def _build(self, epoch: int) -> dict[str, np.ndarray]:
        return self._columns(epoch, bucketed_from=self.bucketed_from)

    def columns(self, epoch: int) -> dict[str, np.ndarray]:
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == epoch:
            return ahead[1].result()
        return self._build(epoch)

    def prepare(self, epoch: int) -> None:
        if epoch <= self.last_epoch:
            self._next = (epoch, self._pool.submit(self._build, epoch))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _run_epoch(
    run: Run,
    state: TrainState,
    epoch: int,
    start: Position,
    lr: jax.Array,
    cb: Callbacks,
    stop_requested: Callable[[], bool],
    shuffles: _Shuffles,
) -> tuple[TrainState, Position, int, float, bool]:
    """Train one epoch from ``start``; (state, position reached, samples trained, seconds of training (the shuffle
    excluded), whether a stop was requested mid-epoch)."""
    cfg, schedule = run.train_cfg, run.schedule
    n_train, bsz = schedule.n_train, schedule.batch_size
    epoch_ratings = run.batches(shuffles.columns(epoch))
    shuffles.prepare(epoch + 1)
    sums = start.loss_sums
    t0 = time.perf_counter()
    samples_done = 0
    steps_done = start.step
    for block_start in range(start.step, schedule.steps_per_epoch, schedule.steps_in_block):
        state, stats = run.run_block(
            state,
            run.inputs,
            epoch_ratings,
            jnp.int32(block_start),
            lr,
            jnp.uint32(cfg.seed & 0xFFFFFFFF),
            jnp.int32(epoch),
        )
        stats = np.asarray(stats, dtype=np.float64)
        _check_finite(stats, epoch, block_start)
        sums = sums + stats.sum(axis=0)
        steps_done = min(block_start + schedule.steps_in_block, schedule.steps_per_epoch)
        samples_done = min(steps_done * bsz, n_train) - start.step * bsz
        elapsed = time.perf_counter() - t0
        cb.on_block(
            epoch,
            steps_done,
            schedule.steps_per_epoch,
            float(sums[0] / max(sums[1], 1)),
            samples_done / max(elapsed, 1e-9),
        )
        if stop_requested() and steps_done < schedule.steps_per_epoch:
            return state, Position(epoch, steps_done, sums), samples_done, time.perf_counter() - t0, True
    return state, Position(epoch, steps_done, sums), samples_done, time.perf_counter() - t0, False


def _epoch_record(
    run: Run, weights: dict[str, Any], position: Position, seconds: float, samples: int, lr: jax.Array
) -> dict[str, Any]:
    """The epoch's line in the history: train loss, val RMSE/MAE (on :data:`VAL_RATINGS_MAX` of them at most; and
    NDCG@10 with the watch output), speed. ``weights``: the epoch's ``{"head", "tables"}`` on the host."""
    from embedrec.evaluation import in_threads

    val, sums, epoch = run.val_scored, position.loss_sums, position.epoch
    scorer = run.served_scorer(weights["head"], weights["tables"])
    pred = in_threads(scorer.predict_pairs)(val.users, val.movies)
    val_r = val.ratings
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": float(sums[0] / max(sums[1], 1)),
        "val_rmse": float(np.sqrt(np.mean((pred - val_r) ** 2))) if len(val_r) else float("nan"),
        "val_mae": float(np.mean(np.abs(pred - val_r))) if len(val_r) else float("nan"),
        "seconds": round(seconds, 3),
        "samples_per_s": round(samples / max(seconds, 1e-9), 1),
        "lr": float(lr),
    }
    if run.train_cfg.negatives > 0:
        record["train_watch_loss"] = float(sums[2] / max(sums[1], 1))
    if len(val_r) and not np.isfinite(record["val_rmse"]):  # the epoch's last update can still blow up
        raise TrainingDiverged(
            f"val predictions became NaN/Inf after epoch {epoch}; the last good checkpoint is kept. Lower --lr "
            "(or raise --weight-decay) and train again"
        )
    if run.rank_val is not None:
        ndcg = run.rank_val(watch_scores(scorer))
        if ndcg is not None:
            record["val_ndcg@10"] = ndcg
    return record


def _save_checkpoint(
    checkpointer: Checkpointer | None,
    run: Run,
    state: TrainState,
    position: Position,
    history: list[dict[str, Any]],
    best: BestEpoch,
) -> None:
    if checkpointer is None:
        return
    checkpointer.save(
        checkpoint_arrays(run.unpadded(run.host(state)), best.weights),
        {
            "epoch": position.epoch,
            "step": position.step,
            "carried": [float(x) for x in position.loss_sums],
            "history": history,
            "best_rmse": best.rmse,
            "best_epoch": best.epoch,
            "bad_epochs": best.bad_epochs,
            "best_ndcg": best.ndcg,
            "kept_ndcg": best.kept_ndcg,
            "kept_rmse": best.kept_rmse,
            "fingerprint": run.prepared.fingerprint,
            "epoch_order": run.shuffles.order,
        },
    )


def train(
    prepared: PreparedData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    callbacks: Callbacks | None = None,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    stop_requested: Callable[[], bool] | None = None,
    initialised: Future[Initialised] | None = None,
) -> TrainResult:
    """Train on the prepared data's train split, validating on its val split after every epoch.

    ``checkpointer`` receives a full checkpoint after every epoch (and when ``stop_requested`` turns true between
    blocks), written by a background thread; the last one is on disk when this returns, unless the checkpointer
    is the caller's own :class:`BackgroundSaves`, which the caller closes. With ``resume`` the loop continues from
    the checkpointer's latest one. Models with the watch output
    also get val NDCG@10 (full ranking by watch logit) on ``train_cfg.val_users`` sampled users every epoch.
    With ``patience`` the loop stops after that many epochs without a better val RMSE (or, with ``rmse_slack``, val
    NDCG@10) and returns the kept epoch's weights (:func:`select_epoch`); otherwise the last epoch's. Users without
    a training rating are validated and returned as the average user (:func:`untrained_users_as_average`). Raises
    :class:`TrainingDiverged` on a NaN/Inf loss, naming epoch and step; the last checkpoint is kept.
    ``initialised``: :func:`initialise` of these settings, started by the caller (in a thread) before the ratings
    were read; by default it runs while the split is built.
    """
    cb = callbacks or Callbacks()
    stop_requested = stop_requested or (lambda: False)
    clock = _PhaseClock()
    with clock("setup_s"):  # the model, the step, the seen filter, the arrays on the devices (and a resume's load)
        run, state = _set_up(prepared, model_cfg, train_cfg, first_epoch=None if resume else 1, initialised=initialised)
        shuffles = run.shuffles
        history: list[dict[str, Any]] = []
        best, position = BestEpoch(), Position()
        if resume:
            try:
                state, history, best, position = _resume(run, checkpointer, state)
            except BaseException:
                shuffles.close()
                raise
            shuffles.prepare(position.epoch)
    cb.on_start(
        {
            "n_params": run.model.n_params(),
            "n_train": run.schedule.n_train,
            "n_val": len(run.val_split.users),
            "steps_per_epoch": run.schedule.steps_per_epoch,
            "devices": [str(d) for d in run.devices],
            "start_epoch": position.epoch,
            "summary": run.model.summary(),
        }
    )
    # checkpoints are written by a background writer: this run's own, closed below, unless the caller passed its
    # own BackgroundSaves, which stays open (the caller waits for the last checkpoint while it does other work)
    own_saves = None
    if checkpointer is not None and not isinstance(checkpointer, BackgroundSaves):
        own_saves = BackgroundSaves(checkpointer)
    save = partial(_save_checkpoint, own_saves or checkpointer, run)
    interrupted = stopped_early = False
    try:
        for epoch in range(position.epoch, train_cfg.epochs + 1):
            lr = jnp.float32(train_cfg.lr * train_cfg.lr_decay ** (epoch - 1))
            start = position if epoch == position.epoch else Position(epoch)
            t_epoch = time.perf_counter()
            state, reached, samples, seconds, interrupted = _run_epoch(
                run, state, epoch, start, lr, cb, stop_requested, shuffles
            )
            clock.add("epochs_s", seconds)  # the blocks of steps (the first epoch's include compiling the step)
            clock.add("shuffle_s", time.perf_counter() - t_epoch - seconds)  # the epoch's permutation onto the devices
            if interrupted:
                with clock("checkpoints_s"):
                    save(state, reached, history, best)
                break
            with clock("validation_s"):  # the epoch's weights copied to the host once, for validation and the best copy
                weights = {"head": run.host(state["head"]), "tables": run.host_tables(state)}
                record = _epoch_record(run, weights, reached, seconds, samples, lr)
            history.append(record)
            keep, improved = select_epoch(
                best, record, rmse_slack=train_cfg.rmse_slack, has_val=bool(len(run.val_split.ratings))
            )
            if keep:
                best.epoch = epoch
                with clock("best_copy_s"):
                    best.weights = flatten_tree(weights, "")
            del weights
            best.bad_epochs = 0 if improved else best.bad_epochs + 1
            cb.on_epoch(record)
            with clock("checkpoints_s"):
                save(state, reached, history, best)
            if train_cfg.patience and best.bad_epochs >= train_cfg.patience:
                stopped_early = True
                break
            if stop_requested():
                interrupted = epoch < train_cfg.epochs
                break
    finally:
        shuffles.close()
        if own_saves is not None:
            with clock("checkpoints_s"):  # the last checkpoint is on disk before the run returns
                own_saves.close()
    with clock("final_weights_s"):
        result = _result(run, state, history, best, stopped_early=stopped_early, interrupted=interrupted)
    result.info["timings"] = clock.rounded()
    return result


class _PhaseClock:
    """Seconds spent per phase of a run (``with clock("name"): ...`` or :meth:`add`), so that the time outside the
    epochs can be read part by part (``model.json``'s ``timings``, the end of ``embedrec train``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def rounded(self) -> dict[str, float]:
        return {phase: round(value, 3) for phase, value in self.seconds.items()}


def _result(
    run: Run,
    state: TrainState,
    history: list[dict[str, Any]],
    best: BestEpoch,
    *,
    stopped_early: bool,
    interrupted: bool,
) -> TrainResult:
    """The model with its final weights: the best epoch's with early stopping, else the last epoch's."""
    restore = best.weights is not None and (run.train_cfg.patience or stopped_early) and not interrupted
    best_epoch = best.epoch
    if restore:
        assert best.weights is not None
        # the model's initial tables are the template (names, shapes, dtypes): reading the last state's from the
        # devices here cost up to 0.8 s at full MovieLens scale, for values that are replaced
        final = restore_tree({"head": state["head"], "tables": run.model.tables()}, best.weights, "", on_device=False)
    else:
        final = {"head": run.host(state["head"]), "tables": run.host_tables(state)}
        if history:  # without early stopping the last epoch's weights are the model (as in the original)
            best_epoch = history[-1]["epoch"]
    blend = None
    # an interrupted run writes no model (its checkpoint resumes), so the blend would only delay its stop
    blending = run.train_cfg.baseline_blend and "user_bias" in final["tables"] and len(run.val_split.ratings)
    if blending and not interrupted:
        final, blend = _blend_with_baseline(run, final)
    final["tables"] = untrained_users_as_average(final["tables"], run.trained_users)
    model = run.model
    model.set_tables({name: jnp.asarray(table) for name, table in final["tables"].items()})
    nnx.update(model.head, jax.tree.map(jnp.asarray, final["head"]))
    return TrainResult(
        model=model,
        shape=run.shape,
        history=history,
        best_epoch=int(best_epoch),
        genres=run.genres,
        stopped_early=stopped_early,
        interrupted=interrupted,
        val_held_out=run.rank_val.held_out if run.rank_val is not None else None,
        histories=run.histories,
        train_movie_counts=np.bincount(run.train_split.movies, minlength=run.prepared.n_movies),
        info={
            "n_params": model.n_params(),
            "n_train": run.schedule.n_train,
            "devices": len(run.devices),
            "steps_per_epoch": run.schedule.steps_per_epoch,
            **({"baseline_blend": blend} if blend is not None else {}),
        },
    )


def blend_rating_biases(
    weights: Mapping[str, Any], baseline: SigmoidBiasBaseline, network_share: float
) -> dict[str, Any]:
    """``{"head", "tables"}`` whose rating logit is ``a * (the network's) + (1 - a) * (the baseline's)``.

    The network's rating logit is ``out(h) + b_user + b_movie`` and the baseline's ``c + b'_user + b'_movie``, so
    the blend is exact with the same shapes: the output layer's kernel and bias scaled by ``a`` (plus ``(1 - a) c``
    on its bias) and each bias row mixed, ``a b + (1 - a) b'``. The watch output and the embeddings are untouched.
    """
    a = float(network_share)

    def scale_output(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
        keys = [getattr(k, "key", None) for k in path]
        if keys[0] != "out":
            return x
        return a * x + ((1.0 - a) * baseline.offset_ if keys[1] == "bias" else 0.0)

    tables = dict(weights["tables"])
    for name, rows in (("user_bias", baseline.user_bias_), ("movie_bias", baseline.movie_bias_)):
        mixed = a * np.asarray(tables[name], np.float64) + (1.0 - a) * rows[:, None]
        tables[name] = jnp.asarray(mixed, dtype=tables[name].dtype)
    return {**weights, "head": jax.tree_util.tree_map_with_path(scale_output, weights["head"]), "tables": tables}


def _blend_with_baseline(run: Run, final: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final weights blended with the bias baseline at the network share that the val split prefers (ties keep
    the larger share), and the record of the choice: the share and the val RMSE of each one tried."""
    from embedrec.evaluation import in_threads

    train_split, val, shape = run.train_split, run.val_scored, run.shape
    # the movies' genres, or the clusters learned in their place
    genres = run.genres.dense() if run.genres.learned else run.prepared.movie_genre_multi_hot()
    features = movie_prior_features(genres, run.prepared.movie_year())
    baseline = SigmoidBiasBaseline(rating_min=shape.rating_min, rating_max=shape.rating_max).fit(
        train_split.users,
        train_split.movies,
        train_split.ratings,
        n_users=shape.n_users,
        n_movies=shape.n_movies,
        movie_features=features,
    )
    val_rmse: dict[str, float] = {}
    best_share, best_rmse, best = 1.0, math.inf, final
    for share in BASELINE_BLEND_WEIGHTS:
        blended = blend_rating_biases(final, baseline, share)
        pred = in_threads(run.served_scorer(blended["head"], blended["tables"]).predict_pairs)(val.users, val.movies)
        rmse = float(np.sqrt(np.mean((pred - val.ratings) ** 2)))
        val_rmse[f"{share:g}"] = round(rmse, 6)
        if rmse < best_rmse:
            best_share, best_rmse, best = share, rmse, blended
    return best, {"network_share": best_share, "val_rmse": round(best_rmse, 6), "val_rmse_by_share": val_rmse}
