"""A training run: settings, a run folder, training with checkpoints, the ranking-score choice, the model artifact.

Synopsis::

    from embedrec.runs import train_run
    run_dir = train_run(Path(".embedrec/data"), workdir=Path(".embedrec"), preset="default")

The run folder is created first with ``run.json`` (the resolved settings and the data fingerprint), so that
``--resume`` continues with exactly the settings it started with. The finished model (``model.json`` and friends,
see :mod:`embedrec.artifacts`) is written at the end, and only then does the run become the work folder's ``latest``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.artifacts import (
    SCHEMA_VERSION,
    read_json,
    read_run_meta,
    save_model,
    write_json,
    write_model_vocabulary,
)
from embedrec.checkpoints import RESUME_KEYS, BackgroundSaves, CheckpointDir, ReadOnlyCheckpoints
from embedrec.config import (
    DataShape,
    ModelConfig,
    TrainConfig,
    adapt_to_data,
    as_setting_type,
    check_model_fits,
    check_settings,
    machine_memory_bytes,
    model_config_from_dict,
    split_overrides,
    to_dict,
    train_config_from_dict,
)
from embedrec.config import (
    preset as preset_configs,
)
from embedrec.data.split import TRAIN
from embedrec.errors import ArtifactError, ConfigError, EmbedrecError, LostPeer, ResumeChangesSettings
from embedrec.locks import run_folder_lock
from embedrec.workdir import data_dir as data_dir_of
from embedrec.workdir import models_dir, set_latest_run

if TYPE_CHECKING:
    from concurrent.futures import Future

    from embedrec.data.store import PreparedData
    from embedrec.distributed import Cluster
    from embedrec.train import Initialised, TrainResult

BETAS = (0.0, 0.25, 0.5, 1.0, 2.0)  # blends of watch logit + beta * predicted rating tried on the val split
GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # weights of the popularity prior in that blend, tried on the val split
RECENT_HALF_LIVES = (0.25, 0.1, 0.05, 0.025)  # time-based splits: prior half-lives, as shares of the training span
TIME_SPLITS = ("temporal", "leave-last-out")


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    interrupted: bool
    stopped_early: bool
    best_epoch: int
    n_params: int
    ranking: dict[str, Any]
    summary_rows: list[tuple[str, str, int]]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (see train.train), and writing
    baseline_blend: dict[str, Any] | None = None  # the rating blend with the bias baseline (TrainConfig.baseline_blend)
    adapted: dict[str, Any] = field(default_factory=dict)  # the default preset's settings that followed the data


def _as_json(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def resolve_configs(preset: str, overrides: dict[str, Any] | None) -> tuple[ModelConfig, TrainConfig]:
    """The preset's configs with ``overrides`` (flat option names) applied and validated."""
    model_cfg, train_cfg = preset_configs(preset)
    model_changes, train_changes = split_overrides(dict(overrides or {}))
    model_cfg, train_cfg = model_cfg.replace(**model_changes), train_cfg.replace(**train_changes)
    check_settings(model_cfg, train_cfg)
    return model_cfg, train_cfg


def _check_fits(model_cfg: ModelConfig, prepared: PreparedData) -> None:
    """:func:`embedrec.config.check_model_fits` on ``prepared``'s sizes and this machine's memory."""
    n_genres = model_cfg.movie_clusters or max(prepared.n_genres, 1)
    shape = DataShape(prepared.n_users, prepared.n_movies, n_genres, 0.0, 1.0)  # the rating range counts no weights
    check_model_fits(
        model_cfg, shape, n_movies_rated=prepared.split_extent(TRAIN)[1], memory_bytes=machine_memory_bytes()
    )


def adapt_to_prepared(
    preset: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    prepared: PreparedData,
    *,
    explicit: set[str] | frozenset[str] = frozenset(),
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """:func:`embedrec.config.adapt_to_data` on ``prepared``'s train split: the settings a run trains, and the
    first trial of ``embedrec tune`` (the default as ``train`` trains it), adapted from the same counts."""
    n_train, n_movies_rated = prepared.split_extent(TRAIN)
    n_val = prepared.summary.get("n_val")
    return adapt_to_data(
        preset,
        model_cfg,
        train_cfg,
        n_train=n_train,
        n_movies_rated=n_movies_rated,
        n_users=prepared.users_rated(TRAIN),
        n_val=n_val if isinstance(n_val, int) else None,
        split_method=_split_method(prepared),
        bare=prepared.n_genres == 0,
        explicit=explicit,
    )


def new_run_dir(workdir: Path, preset: str) -> Path:
    base = models_dir(workdir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    run = base
    i = 1
    while run.exists():
        i += 1
        run = base.with_name(f"{base.name}-{i}")
    return run


def latest_checkpointed_run(workdir: Path) -> Path:
    """The most recently checkpointed run folder of the work folder (what a bare ``--resume`` continues)."""
    runs = [p.parent.parent for p in models_dir(workdir).glob("*/checkpoints/LATEST")]
    if not runs:
        raise ArtifactError(f"no run with checkpoints under {models_dir(workdir)}: start one with `embedrec train`")
    return max(runs, key=lambda p: (p / "checkpoints" / "LATEST").stat().st_mtime)


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run goes into a new or empty folder only: a run writes several files, and none may replace a user's."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder: choose a new or empty folder")
    if (run_dir / "model.json").exists() or (run_dir / "checkpoints").exists():
        raise ConfigError(f"--out {run_dir} already holds a run; choose a new folder, or add --resume")
    names = sorted(p.name for p in run_dir.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(f"--out {run_dir} is not empty ({shown}): choose a new or empty folder for the run")


def _check_resumable(run_dir: Path, train_cfg: TrainConfig) -> None:
    """A finished run (all epochs done, or stopped early) has nothing to resume unless --epochs goes beyond it."""
    if not (run_dir / "model.json").is_file():
        return
    meta = read_json(run_dir / "model.json")
    done = int(meta.get("epochs_run", 0))
    if meta.get("stopped_early"):
        raise ConfigError(
            f"{run_dir} stopped early at epoch {done} (best epoch {meta.get('best_epoch')}): there is "
            "nothing to resume; train a new run instead"
        )
    if train_cfg.epochs <= done:
        raise ConfigError(
            f"{run_dir} already finished its {done} epochs: pass --epochs N with N > {done} to train it further"
        )


def prior_candidates(
    prepared: PreparedData, train_counts: np.ndarray | None = None
) -> list[tuple[float | None, np.ndarray]]:
    """The popularity priors the ranking may weigh, as (half-life in seconds or None, (n_movies,) prior);
    ``train_counts``: the train split's ratings per movie when the caller has them (training does), else counted.

    Always the plain training counts. When the data is split by time (and has timestamps), also counts decayed
    with each of :data:`RECENT_HALF_LIVES` of the training span: the model is then judged on later ratings, and the
    val split is the slice between train and test, the honest place to learn how much recency matters. A random
    split gets no recency candidates: its val ratings are spread over the same period as train, so recency has
    nothing to predict there, and each extra candidate is one more chance to fit the val sample's noise.
    """
    from embedrec.baselines import popularity_prior, prior_of_counts

    if train_counts is None:
        train_counts = np.bincount(prepared.movie_idx[prepared.split == 0], minlength=prepared.n_movies)
    out: list[tuple[float | None, np.ndarray]] = [(None, prior_of_counts(train_counts))]
    if _split_method(prepared) not in TIME_SPLITS:
        return out
    train = prepared.split == 0
    movies = prepared.movie_idx[train]
    stamps = prepared.timestamp[train]
    span = float(stamps.max() - stamps.min()) if stamps.size else 0.0
    if span > 0:
        for share in RECENT_HALF_LIVES:
            half_life = share * span
            out.append((half_life, popularity_prior(movies, stamps, n_movies=prepared.n_movies, half_life=half_life)))
    return out


def _split_method(prepared: PreparedData) -> str:
    """How ``prepare`` split the ratings (random, temporal, leave-last-out)."""
    return str(prepared.summary.get("split", {}).get("method", "random"))


@dataclass
class RankingChoice:
    """The served ranking (``model.json``'s ``"ranking"``) and the weights it needs beside the network."""

    ranking: dict[str, Any]
    weights: dict[str, np.ndarray]


def _with_train_counts(weights: dict[str, np.ndarray], counts: np.ndarray | None) -> dict[str, np.ndarray]:
    """The ranking's extra weights plus ``movie_train_count`` (n_movies, 1): which movies' embeddings were trained."""
    if counts is None:
        return weights
    return {**weights, "movie_train_count": np.asarray(counts, dtype=np.float32).reshape(-1, 1)}


def choose_ranking(
    result: TrainResult, prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> RankingChoice:
    """Pick the recommend score by val NDCG@10: watch logit + gamma * popularity prior + beta * rating over
    :data:`BETAS` x :data:`GAMMAS` x :func:`prior_candidates`; rating-only models rank by rating.

    The prior guarantees the served ranking is at least as good as most-popular on the val sample (gamma 0 is one
    choice, so nothing is lost when it does not help): where the watch output underfits popularity (a sparse
    catalogue) or popularity drifts (a temporal split, where new users are served as the average user) the val
    split says how much of it to add. Ties go to the smaller gamma, then the plain counts, then the smaller beta.

    Each blend is ranked two-stage, as ``recommend`` and ``evaluate`` rank it, on the ``val_users`` sample, all in
    one pass (:func:`embedrec.evaluation.ndcg_by_blends`): per batch of users the watch logits once, each (prior,
    gamma)'s candidates retrieved from them, each (user, movie) pair through the network once, every beta a
    re-ordering; scoring every movie through the network once per beta cost minutes at 86,000 movies.
    """
    if not model_cfg.watch_head or train_cfg.negatives == 0:
        return RankingChoice({"score": "rating"}, {})  # without sampled negatives the watch output never learned
    from flax import nnx

    from embedrec.evaluation import ndcg_by_blends
    from embedrec.scoring import Scorer, blend_watch_side
    from embedrec.validation import scoring_weights, training_relevance

    weights = scoring_weights(nnx.state(result.model.head), result.model.tables(), result.genres, result.histories)
    priors = prior_candidates(prepared, result.train_movie_counts)
    blends: list[tuple[int, float]] = []  # (prior position, gamma); gamma 0 is the same ranking for every prior
    sides: list[np.ndarray] = []
    scorer = Scorer.from_weights(weights, model_cfg, result.shape)
    for position, (_, prior) in enumerate(priors):
        for gamma in GAMMAS if position == 0 else GAMMAS[1:]:
            blends.append((position, gamma))  # the side served with this prior (stored as float32) and gamma
            sides.append(blend_watch_side(scorer.watch_bias, prior.astype(np.float32), gamma))
    found = ndcg_by_blends(
        scorer,
        prepared,
        sides=sides,
        betas=BETAS,
        split="val",
        relevance=training_relevance(prepared),
        max_users=train_cfg.val_users or None,
        held_out=result.val_held_out,  # built by training's validation, when it ranked
    )
    if found is None:
        no_val = "default (no relevant rating in the val split)"
        return RankingChoice({"score": "blend", "beta": 0.0, "gamma": 0.0, "chosen_by": no_val}, {})
    # (score, -gamma, -prior position, -beta): the best val NDCG@10, ties to the simplest ranking
    best: tuple[tuple[float, float, int, float], float, float, int, dict[float, float]] | None = None
    tried: dict[str, float] = {}
    for (position, gamma), by_beta in zip(blends, found):
        beta = max(BETAS, key=lambda b: (round(by_beta[b], 6), -b))
        tried[f"{_prior_name(priors[position][0])}, gamma {gamma:g}"] = round(by_beta[beta], 5)
        key = (round(by_beta[beta], 6), -gamma, -position, -beta)
        if best is None or key > best[0]:
            best = (key, beta, gamma, position, by_beta)
    assert best is not None
    _, beta, gamma, position, scores = best
    half_life, prior = priors[position]
    ranking: dict[str, Any] = {"score": "blend", "beta": beta, "gamma": gamma}
    extra: dict[str, np.ndarray] = {}
    if gamma != 0.0:
        ranking["prior"] = {
            "what": "log1p of the movie's training ratings" + (", time-decayed" if half_life else ""),
            "half_life_days": None if half_life is None else round(half_life / 86_400, 3),
        }
        extra["popularity_prior"] = prior[:, None]
    ranking.update(
        {
            "chosen_by": "val ndcg@10",
            "val_ndcg@10": {str(b): round(v, 5) for b, v in scores.items()},
            "val_ndcg@10_by_prior": tried,
        }
    )
    return RankingChoice(ranking, extra)


def _prior_name(half_life: float | None) -> str:
    return "counts" if half_life is None else f"counts, half-life {half_life / 86_400:.3g} days"


def train_run(
    data_dir: Path | None,
    *,
    out: Path | None = None,
    workdir: Path | None = None,
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
    callbacks: Any = None,  # a Callbacks, or any object with its on_start/on_block/on_epoch
    resume: bool = False,
    stop_requested: Callable[[], bool] | None = None,
    cluster: Cluster | None = None,
) -> RunResult:
    """Train a model on a prepared data set and write its run folder; returns where and how it went.

    ``data_dir`` defaults to ``<workdir>/data`` (with ``resume``: the data the run started on). ``out`` names the
    run folder (default: a new one under ``<workdir>/models``). With ``resume`` the run continues from its last
    checkpoint (``out``, else the work folder's most recently checkpointed run) with the settings it was started
    with; only ``epochs`` may be raised, and a finished run is refused unless it is.

    With ``cluster`` (or when the caller has joined a JAX cluster itself) this is one process of a distributed run
    (:mod:`embedrec.distributed`): every process must be started with the same settings and data, which is checked
    before training (one error naming the difference); each trains on its share of every batch; process 0 alone
    writes the run folder, its checkpoints and ``latest``; every process ends with the same outcome. A resumed run
    reads its checkpoint on every process, so the run folder must be on a file system they all see.
    """
    with ExitStack() as held:  # the run folder's lock, while this process trains into it
        return _train_run(
            data_dir,
            out=out,
            workdir=workdir,
            preset=preset,
            overrides=overrides,
            callbacks=callbacks,
            resume=resume,
            stop_requested=stop_requested,
            cluster=cluster,
            held=held,
        )


def _train_run(
    data_dir: Path | None,
    *,
    out: Path | None,
    workdir: Path | None,
    preset: str,
    overrides: dict[str, Any] | None,
    callbacks: Any,
    resume: bool,
    stop_requested: Callable[[], bool] | None,
    cluster: Cluster | None,
    held: ExitStack,
) -> RunResult:
    """:func:`train_run`'s body; ``held`` keeps the run folder's lock until the run has returned."""
    from embedrec import distributed

    if cluster is not None:
        distributed.join(cluster)
    several, writer = distributed.joined(), distributed.is_writer()
    if several and stop_requested is not None:
        local_stop = stop_requested

        def stop_requested() -> bool:  # a stop on any process stops all of them at the same block
            return distributed.any_process(local_stop())

    # training's slow start begins before the ratings are read: one thread imports JAX and initialises the model
    # (mostly small XLA compilations) while this one reads them (at full MovieLens scale ~5 s and ~2 s, on two
    # cores). Not on a distributed run, whose processes first agree on the settings
    from concurrent.futures import ThreadPoolExecutor, wait

    starting = None if several else ThreadPoolExecutor(1, thread_name_prefix="embedrec-init")
    initialised: Future[Initialised] | None = None
    try:
        with _signals_held(starting is not None):  # the two threads import at once until `imported` is done
            imported = starting.submit(_import_training) if starting is not None else None
            plan = _plan_run(data_dir, out=out, workdir=workdir, preset=preset, overrides=overrides, resume=resume)
            plan.check_writable(writer)
            if resume and writer:
                held.enter_context(run_folder_lock(plan.run_dir))
            if starting is not None:
                initialised = starting.submit(_initialise, plan.prepared, plan.model_cfg, plan.train_cfg)
            plan.prepared.read_all()  # the ratings (checked), while the model initialises
            if _split_method(plan.prepared) in TIME_SPLITS:  # the ranking choice's recency priors read them, after
                _ = plan.prepared.timestamp  # training: a damaged column is found now, with the ratings
            if imported is not None:
                wait([imported])  # its error, if any, comes from `initialised`
    except EmbedrecError as exc:
        if several:
            distributed.agree(exc)  # every process fails with it
        raise
    finally:
        if starting is not None:  # its thread ends when the initialisation (if any) is done
            starting.shutdown(wait=False, cancel_futures=initialised is None)
    if several:
        distributed.agree(plan.facts())
        plan.run_dir = Path(distributed.exchange_text(str(plan.run_dir))[0])  # process 0's folder, for the report
    # a folder named by the clock is claimed by an exclusive mkdir (two runs started in the same second each get
    # their own); a distributed run's name was announced above, so it keeps it
    claim = plan.auto_named and writer and not several
    created_run_dir = not resume and writer and (claim or not plan.run_dir.exists())
    prepared, model_cfg, train_cfg = plan.prepared, plan.model_cfg, plan.train_cfg
    if not resume:
        locked: dict[str, Any] | EmbedrecError = {}
        if writer:
            try:
                plan.run_dir = _make_and_lock(
                    plan.run_dir, held, created=created_run_dir, renamed=plan.renamed if claim else None
                )
            except ConfigError as exc:  # another trainer holds the folder: every process stops with the same line
                if not several:
                    raise
                locked = exc
        if several:
            distributed.agree(locked)
    run_dir = plan.run_dir
    checkpoints: Any = CheckpointDir(run_dir / "checkpoints", required=RESUME_KEYS)
    if not writer:
        checkpoints = ReadOnlyCheckpoints(checkpoints)
    from embedrec.train import train

    # written in the background; the last checkpoint is waited for while the ranking is chosen (not before)
    saves = BackgroundSaves(checkpoints)

    def last_checkpoint_on_disk() -> None:
        """Wait for the last checkpoint; a run whose checkpoint failed before any was written is removed."""
        try:
            saves.close()
        except BaseException:
            if not resume and writer:
                _drop_unresumable(run_dir, created=created_run_dir)
            raise

    try:
        if not resume and writer:  # inside the try: a signal or a full disk from here on leaves no run folder
            write_json(run_dir / "run.json", plan.run_meta())
        result = train(
            prepared,
            model_cfg,
            train_cfg,
            callbacks=callbacks,
            checkpointer=saves,
            resume=resume,
            stop_requested=stop_requested,
            initialised=initialised,
        )
    except BaseException as exc:
        try:
            saves.close()  # the last good checkpoint is on disk before the error is reported
        finally:
            if not resume and writer:
                _drop_unresumable(run_dir, created=created_run_dir)
        if several and _is_lost_peer(exc):
            raise LostPeer(
                f"another process of the distributed run stopped mid-run ({_one_line(exc)}); the last checkpoint in "
                f"{run_dir / 'checkpoints'} is kept: start every process again with --resume"
            ) from None
        raise
    summary_rows = result.model.summary()
    ranking: dict[str, Any] = {}
    try:
        if result.interrupted or not writer:
            last_checkpoint_on_disk()
        else:
            ranking = _write_model(result, plan, last_checkpoint_on_disk)
    except (EmbedrecError, OSError) as exc:
        if several:
            distributed.agree(distributed.as_error(exc))
        raise
    if several:  # the others wait for process 0's folder, and fail with it when it could not be written
        distributed.agree({})
    return RunResult(
        run_dir=run_dir,
        history=result.history,
        interrupted=result.interrupted,
        stopped_early=result.stopped_early,
        best_epoch=result.best_epoch,
        n_params=int(result.info["n_params"]),
        ranking=ranking,
        summary_rows=summary_rows,
        timings=dict(result.info.get("timings", {})),
        baseline_blend=result.info.get("baseline_blend"),
        adapted=dict(plan.adapted),
    )


@dataclass
class _Plan:
    """What a run will train, on what, and where: resolved before anything is written or trained."""

    run_dir: Path
    workdir: Path
    data_dir: Path
    prepared: PreparedData
    preset: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    adapted: dict[str, Any]
    resume: bool
    resume_from: dict[str, Any] | None = None  # the checkpoint's position, when resuming
    auto_named: bool = False  # a new run without --out: a folder named by the clock (new_run_dir)

    def check_writable(self, writer: bool) -> None:
        if writer and not self.resume and not self.auto_named:  # a name new_run_dir found free is claimed later
            _check_new_run_dir(self.run_dir)

    def renamed(self) -> Path:
        """Another free name for an automatically named run, when another process took this one first."""
        return new_run_dir(self.workdir, self.preset)

    def run_meta(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "preset": self.preset,
            "model": to_dict(self.model_cfg),
            "train": to_dict(self.train_cfg),
            "adapted": self.adapted,
            "data": {"path": str(Path(self.data_dir).resolve()), "fingerprint": self.prepared.fingerprint},
        }

    def facts(self) -> dict[str, Any]:
        """What every process of a distributed run must agree on (paths aside: hosts may mount data elsewhere)."""
        from embedrec import __version__

        meta = self.run_meta()
        return {
            "embedrec": __version__,
            "preset": self.preset,
            "settings": {**meta["model"], **meta["train"]},
            "data fingerprint": self.prepared.fingerprint,
            "resume": self.resume,
            "checkpoint": self.resume_from,
        }


def _plan_run(
    data_dir: Path | None,
    *,
    out: Path | None,
    workdir: Path | None,
    preset: str,
    overrides: dict[str, Any] | None,
    resume: bool,
) -> _Plan:
    """Resolve the run's folder, data and settings (a resumed run: those it started with); writes nothing."""
    from embedrec.data import load_prepared

    if workdir is None:
        if data_dir is None:
            raise ConfigError("train_run needs data_dir or workdir")
        workdir = Path(data_dir).parent
    workdir = Path(workdir)
    if resume:
        run_dir = Path(out) if out is not None else latest_checkpointed_run(workdir)
        run_meta = read_run_meta(run_dir)
        if data_dir is None:  # the data the run started on
            data_dir = Path(run_meta["data"]["path"])
        prepared = load_prepared(data_dir, lazy=True)  # read by train_run while the model initialises
        try:
            model_cfg = model_config_from_dict(run_meta["model"])
            train_cfg = train_config_from_dict(run_meta["train"])
        except ConfigError as exc:
            raise ArtifactError(f"{run_dir / 'run.json'} is damaged ({exc}): start a new run") from None
        extra = {k: v for k, v in (overrides or {}).items() if k != "preset"}
        if "epochs" in extra:
            train_cfg = train_cfg.replace(epochs=int(extra.pop("epochs")))
        _check_resumable(run_dir, train_cfg)
        stored = {**to_dict(model_cfg), **to_dict(train_cfg)}
        changed = [
            k
            for k, v in extra.items()
            if k not in stored or _as_json(stored[k]) != _as_json(as_setting_type(v, stored[k]))
        ]
        if changed:
            raise ResumeChangesSettings(changed, str(run_dir / "run.json"))
        loaded = CheckpointDir(run_dir / "checkpoints", required=RESUME_KEYS).load()
        if loaded is None:  # answered before JAX starts
            raise ArtifactError(
                f"{run_dir / 'checkpoints'} holds no complete checkpoint to resume from; start a new run without "
                "--resume"
            )
        return _Plan(
            run_dir=run_dir,
            workdir=workdir,
            data_dir=Path(data_dir),
            prepared=prepared,
            preset=run_meta.get("preset", preset),
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            adapted=run_meta.get("adapted", {}),
            resume=True,
            resume_from={"epoch": loaded[1]["epoch"], "step": loaded[1]["step"]},
        )
    data_dir = Path(data_dir) if data_dir is not None else data_dir_of(workdir)
    prepared = load_prepared(data_dir, lazy=True)  # train_run reads the ratings while the model initialises
    model_cfg, train_cfg = resolve_configs(preset, overrides)
    model_cfg, train_cfg, adapted = adapt_to_prepared(
        preset, model_cfg, train_cfg, prepared, explicit=set((overrides or {}).keys())
    )
    _check_fits(model_cfg, prepared)
    return _Plan(
        run_dir=Path(out) if out is not None else new_run_dir(workdir, preset),
        workdir=workdir,
        data_dir=data_dir,
        prepared=prepared,
        preset=preset,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        adapted=adapted,
        resume=False,
        auto_named=out is None,
    )


def _write_model(result: TrainResult, plan: _Plan, last_checkpoint: Callable[[], None]) -> dict[str, Any]:
    """Choose the ranking score, write the model into the run folder and make it the latest; the ranking.

    ``last_checkpoint`` waits for the run's last checkpoint (raising its error): nothing of the model is written
    before it returns, so a run whose checkpoint failed leaves no half-written model."""
    from concurrent.futures import ThreadPoolExecutor

    prepared, model_cfg, train_cfg = plan.prepared, plan.model_cfg, plan.train_cfg
    with ThreadPoolExecutor(3, thread_name_prefix="embedrec-write") as pool:
        # done while the ranking is chosen: waiting for the last checkpoint (hundreds of MB at full MovieLens scale,
        # mostly disk waits), then writing what does not depend on the ranking: the curve (matplotlib's import
        # included, ~2 s) and the id maps (1-1.8 s at full MovieLens scale, mostly disk waits)
        checkpointed = pool.submit(last_checkpoint)
        curve = pool.submit(
            _after,
            checkpointed,
            write_learning_curve,
            plan.run_dir / "learning_curve.png",
            result.history,
            title=f"embedrec {plan.preset}",
        )
        vocabulary = pool.submit(_after, checkpointed, write_model_vocabulary, plan.run_dir, prepared)
        t0 = time.perf_counter()
        choice = choose_ranking(result, prepared, model_cfg, train_cfg)
        timings = result.info.setdefault("timings", {})
        timings["ranking_choice_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        ranking = choice.ranking
        gi = result.genres
        checkpointed.result()
        vocabulary.result()
        final = dict(result.history[result.best_epoch - 1]) if result.history and result.best_epoch else {}
        save_model(
            plan.run_dir,
            module=result.model,
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            shape=result.shape,
            genre_idx=gi.idx,
            genre_w=gi.weight,
            prepared=prepared,
            history=result.history,
            extra_weights=_with_train_counts(choice.weights, result.train_movie_counts),
            vocabulary_written=True,
            histories=result.histories,
            extra_meta={
                "preset": plan.preset,
                "ranking": ranking,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "epochs_run": len(result.history),
                "adapted": plan.adapted,
                "baseline_blend": result.info.get("baseline_blend"),
                "metrics": {k: v for k, v in final.items() if k.startswith("val_")},
                "timings": dict(timings),
            },
        )
        curve.result()
    set_latest_run(plan.workdir, plan.run_dir)
    timings["write_s"] = round(time.perf_counter() - t0, 3)  # after model.json: in the run's result only
    return ranking


def _import_training() -> None:
    """Import the training modules (JAX, Flax, Optax: ~1.5 s), in :func:`train_run`'s starting thread."""
    import embedrec.train  # noqa: F401


@contextmanager
def _signals_held(hold: bool) -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM held back, then deliver them to the handlers they had (in order).

    While :func:`train_run`'s starting thread imports JAX, the main thread imports too (pandas, pyarrow): the
    exception that the CLI's handlers raise (KeyboardInterrupt, Terminated) landed inside the main thread's import
    machinery and left Python's import locks held, so the process hung, or a module half imported (a wrong
    "unreadable Parquet file" error). Held here, the signal raises once both imports are done, outside any import.
    Only the main thread can change handlers; elsewhere (or with ``hold`` False) the block runs as it is."""
    import signal
    import threading

    if not hold or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold_back(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous = {signum: signal.signal(signum, hold_back) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # None: not set from Python
        for held in caught:
            signal.raise_signal(held)


def _initialise(prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Initialised:
    from embedrec.train import initialise

    return initialise(prepared, model_cfg, train_cfg)


def _after(first: Future[None], then: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """``then(*args, **kwargs)`` once ``first`` has succeeded (its error, if it failed)."""
    first.result()
    then(*args, **kwargs)


_LOST_PEER_SIGNS = ("gloo", "connection reset", "connection closed", "socket closed", "unavailable")


def _is_lost_peer(exc: BaseException) -> bool:
    """A collective of a distributed run failed because another process is gone: XLA's runtime error from the
    transport (gloo: connection reset), not any runtime error (a device out of memory keeps its own message)."""
    text = str(exc).lower()
    return type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and any(s in text for s in _LOST_PEER_SIGNS)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _make_and_lock(run_dir: Path, held: ExitStack, *, created: bool, renamed: Callable[[], Path] | None = None) -> Path:
    """Create a new run's folder and lock it for this process; returns the folder. When another trainer holds it
    (two ``--out`` of one folder at once) nothing is removed: the folder and whatever is in it are the other run's.

    With ``renamed`` (a run named by the clock) the folder must be new: when another process created it first (two
    ``train`` without ``--out`` started in the same second), ``renamed()`` names another one, instead of refusing
    this run as if the user had chosen that folder."""
    try:
        for _ in range(1000 if renamed is not None else 0):
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                run_dir = renamed()  # type: ignore[misc]
        run_dir.mkdir(parents=True, exist_ok=True)
        held.enter_context(run_folder_lock(run_dir))
    except ConfigError:
        raise
    except BaseException:
        if created:  # this run made it and wrote nothing yet: only an empty folder is removed
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    return run_dir


def _drop_unresumable(run_dir: Path, *, created: bool) -> None:
    """A new run that failed before its first checkpoint cannot be resumed: remove what it wrote (the whole folder
    when this run created it, else only ``run.json`` and ``checkpoints/``), so no orphan run folder is left. A run
    with a checkpoint is kept: ``--resume`` continues it."""
    import shutil

    if CheckpointDir(run_dir / "checkpoints", required=RESUME_KEYS).load() is not None:
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    (run_dir / "run.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def write_learning_curve(path: Path, history: list[dict[str, Any]], *, title: str) -> None:
    """Train loss (MSE) and val RMSE² per epoch (same units), plus val NDCG@10 when present; written atomically.

    Drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot: no global figure registry, no backend choice), so
    it may run in a background thread beside other work."""
    if not history:
        return
    import os

    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    has_ndcg = any("val_ndcg@10" in h for h in history)
    fig = Figure(figsize=(10 if has_ndcg else 6, 4))
    axes = fig.subplots(1, 2 if has_ndcg else 1, squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train MSE")
    ax.plot(epochs, [h["val_rmse"] ** 2 for h in history], marker="o", label="val MSE (RMSE²)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if has_ndcg:
        ax2 = axes[0][1]
        ax2.plot(
            epochs, [h.get("val_ndcg@10", np.nan) for h in history], marker="o", color="tab:green", label="val NDCG@10"
        )
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("NDCG@10 (sampled val users)")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    from embedrec.tempfiles import removed_on_failure, temp_sibling

    tmp = temp_sibling(path)
    with removed_on_failure(tmp.with_name(tmp.name + ".png")) as tmp:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
