"""Hyperparameter search on the validation split: Optuna's TPE with per-epoch pruning, a time budget, a resumable
study in the work folder, and the best settings written as a config file for ``embedrec train --config``.

Synopsis::

    from embedrec.tune import parse_budget, tune
    result = tune(Path(".embedrec/data"), workdir=Path(".embedrec"), budget_s=parse_budget("10m"))
    result.config_path     # .embedrec/tuned.toml, for `embedrec train --config .embedrec/tuned.toml`

Choices, and why:

* **Search**: Optuna's multivariate TPE (seeded), over the settings that moved the README's sweeps: learning rate,
  weight decay, embedding size, dropout, batch size, early-stopping patience and, for the ranking (watch) output,
  the shared negatives, the watch loss weight and ``user_history`` (:func:`search_space`; sizes are filtered by the
  data's size). The first trial of a new study is the preset itself, as ``embedrec train`` trains it on this data
  (the default's adaptation to the data included), so the search starts from the measured default and, once that
  trial has finished, the best it reports is never worse on validation than the default with the same epochs.
* **Objective**: ``ndcg@10`` maximises val NDCG@10 of the ranking the saved model uses (the blend chosen on val);
  ``rmse`` minimises val RMSE; ``both`` maximises ``val NDCG@10 - 0.35 x val RMSE`` (a scalarisation, so pruning
  works: at ML-100K's operating point, NDCG@10 about 0.34 and RMSE about 0.90, one percent of either weighs the same).
  Every metric is the saved model's: the epoch whose weights are kept (best val RMSE with early stopping).
* **The rating output keeps its worth**: with a ranking objective, the best trial is the best among those whose
  val RMSE is at least 1% below the bias baseline's (user + movie biases fitted on train, :func:`rmse_ceiling`);
  only when no trial is, the best of all. On the quality matrix's sparse row (benchmarks/tune_quality.py, seed 42)
  the best val NDCG@10 came with val RMSE 0.9637 against the baseline's 0.9624, and test RMSE 0.979 against 0.967:
  ranking bought with the ratings, which a user asking for ``ndcg@10`` did not ask to give up. The 1% margin: a
  trial's val RMSE is optimistic (its epoch is chosen on val), there by about 1% against the baseline (the preset:
  val 1.3% below the baseline, test 0.3%); a trial chosen at 0.4% below on val (0.9586) was 0.7% above on test.
* **The preset stays unless a trial beats it beyond the val noise**: the first trial is the preset (user attr
  ``preset``), and another trial is chosen over it only when its saved model beats the preset's on val by
  :data:`PRESET_MARGIN_Z` standard errors of the paired difference (per val user for NDCG@10, per val rating for
  the squared error: :func:`embedrec.evaluation.paired_gain`, user attr ``vs_preset``). On the quality matrix's
  sparsest row (ML-100K thinned to 8% of each user's ratings, 0..1) a 10-minute search ran 141 trials and wrote one
  whose val NDCG@10 beat the preset's, but whose test NDCG@10 was 0.038 against the preset's 0.045: the best of a
  hundred noisy val figures is mostly luck. Both trials' run folders are kept for that comparison.
* **Pruning**: every epoch reports its val metric to the trial; Optuna's median rule stops a trial whose value is
  worse than the median of earlier trials at the same epoch (after a few warm-up trials and epochs). A pruned trial
  stops training at once (``optuna.TrialPruned`` raised from the epoch callback) and its folder is deleted.
* **Budget**: no trial starts after the budget, and a running trial is stopped at its next block of steps (recorded
  as failed, reason "time budget reached", so the sampler does not learn from it; so is a trial whose loss
  diverged). ``n_trials`` caps the trials of one call.
* **Storage**: SQLite in ``<workdir>/tune/study.db``, one study per preset and objective; calling again continues
  it (``--restart`` deletes this study and its trial folders first, never the other studies of ``study.db``). A
  second call seeds the sampler with (seed, trials so far), so it does not replay the first call's samples.
  A killed call leaves its running trial behind; the next call marks it failed at once when its process is gone
  (same host), else Optuna's heartbeat does after 90 s. Two calls may search one study at once: neither removes
  a trial folder the other still trains, the config file is written under a lock on the tune folder (so it holds
  the study's best when last written, not an older best one of them read), and a ``prepare`` that replaces the
  data stops the search at its next trial (the study's trials compare on one data set).
* **Trial runs** train through :func:`embedrec.runs.train_run` into ``<workdir>/tune/models/<study>/trial-NNNN``
  (``<workdir>/tune`` is their work folder, so the user's ``latest`` model is untouched). Only the best trial's
  folder is kept; a pruned, stopped or beaten trial's folder is deleted.
* **Never the test split**: training reads the train and val splits only (:func:`embedrec.train.train`) and every
  number here is a validation number.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from embedrec.config import SEED_LIMIT, ModelConfig, TrainConfig, check_preset, to_dict
from embedrec.config import preset as preset_configs
from embedrec.errors import ArtifactError, ConfigError, EmbedrecError, SettingError, TrainingDiverged
from embedrec.workdir import LATEST_FILE, atomic_write_text, latest_run, models_dir, set_latest_run

if TYPE_CHECKING:
    import optuna

    from embedrec.data.store import PreparedData
    from embedrec.distributed import Cluster
    from embedrec.evaluation import PairedGain

OBJECTIVES: tuple[str, ...] = ("ndcg@10", "rmse", "both")
BOTH_RMSE_WEIGHT = 0.35
RMSE_MARGIN = 0.01  # a chosen ranking trial's val RMSE is at least this fraction below the bias baseline's
DEFAULT_BUDGET_S = 600.0
CONFIG_MARKER = "# Written by embedrec tune"
TRIAL_PREFIX = "trial-"
SPACE_VERSION = 2
PRESET_MARGIN_Z = 2.0
"""A trial replaces the preset (the study's first trial) only when it beats it on val by this many standard errors
of the paired difference (:func:`gain_z`): over a hundred trials on a small val split, the best val figure is
mostly luck (see :func:`best_trial_number` and the README's "Tuned" section)."""
PAIRED_USERS = 5_000  # val users ranked for that comparison (a seeded sample beyond it)

_BUDGET_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


# ---------------------------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------------------------
def parse_budget(text: str) -> float:
    """Seconds in a duration like ``90s``, ``10m``, ``1h`` or ``1h30m``; a ConfigError naming ``--budget`` otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _BUDGET_RE.findall(compact)
    if not compact or not parts or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"--budget: expected a duration like 90s, 10m or 1h, got {text!r}")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--budget: must be more than zero, got {text!r}")
    return seconds


def tune_dir(workdir: Path) -> Path:
    """Where the study and the trial runs live: ``<workdir>/tune``."""
    return Path(workdir) / "tune"


def default_config_path(workdir: Path) -> Path:
    return Path(workdir) / "tuned.toml"


def objective_value(objective: str, metrics: dict[str, float]) -> float:
    """The number the search optimises, from one epoch's (or the saved model's) val metrics."""
    if objective == "rmse":
        return float(metrics["val_rmse"])
    ndcg = float(metrics["val_ndcg@10"])
    if objective == "ndcg@10":
        return ndcg
    return ndcg - BOTH_RMSE_WEIGHT * float(metrics["val_rmse"])


def _needs_ranking(objective: str) -> bool:
    return objective in ("ndcg@10", "both")


def rmse_ceiling(prepared: Any) -> float:
    """The val RMSE a ranking trial must stay below to be chosen: ``RMSE_MARGIN`` below the bias baseline's (fitted
    on the train split), since a trial's own val RMSE is optimistic (its epoch was chosen on val)."""
    from embedrec.baselines import BiasBaseline
    from embedrec.data.split import TRAIN, VAL
    from embedrec.evaluation import evaluate_ratings

    train, val = prepared.split == TRAIN, prepared.split == VAL
    bias = BiasBaseline().fit(
        prepared.user_idx[train],
        prepared.movie_idx[train],
        prepared.rating[train],
        n_users=prepared.n_users,
        n_movies=prepared.n_movies,
    )
    got = evaluate_ratings(
        bias.predict, user_idx=prepared.user_idx[val], movie_idx=prepared.movie_idx[val], rating=prepared.rating[val]
    )
    return (1.0 - RMSE_MARGIN) * float(got["rmse"])


# ---------------------------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched setting: a float range (``log`` for scale-like ones, else stepped) or a list of choices."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        value = trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        return round(value, 6) if self.step else value  # 0.30000000000000004 -> 0.3 in the config file

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


BATCH_SIZES = (128, 256, 512, 1024, 2048, 4096)
EMBEDDING_DIMS = (32, 64, 128)
NEGATIVES = (32, 64, 128, 256)  # 16 ranked clearly worse (README sweep)
PATIENCES = (2, 3, 5)
MOVIE_CLUSTERS = (0, 8, 16, 32)  # searched on a catalogue without genres (the default: 16 above a co-rating floor)


def search_space(
    *,
    preset: str,
    n_train: int,
    n_movies: int,
    holds: Mapping[str, Any] | None = None,
    bare: bool = False,
    n_movies_rated: int | None = None,
) -> list[Param]:
    """The settings searched for ``preset`` on a data set with ``n_train`` training ratings and ``n_movies`` movies.

    Batch sizes keep an epoch between 50 and 20,000 steps (small data gets small batches, big data is not stepped
    through 128 ratings at a time); negatives are at most a quarter of the catalogue, since a batch's shared
    negatives are drawn from the movies. The ranges centre on the default preset (learning rate 3x, weight decay
    10x either side), where the README's hand sweeps found the best settings, so a short budget spends its trials
    near them; 16 negatives (measured clearly worse than 64) and 16-d embeddings (below the 32-d that already
    ranked worse) are left out. With the watch output, ``user_history`` is searched too, and on a catalogue without
    genres (``bare``) the number of learned ``movie_clusters`` (0: none), which the default sets by a rule measured
    on a handful of data sets.

    ``holds``: values the space must hold whatever the data's size, the preset's own as ``train`` trains it on this
    data (:func:`preset_point`), so that the study's first trial is exactly the default: a choice list gains the
    value, a range widens to it. Without it, 6,500 training ratings left only batch 128 (50 steps an epoch), and the
    "preset" trial was the default with half its batch size.
    """
    model_cfg, train_cfg = preset_configs(preset)
    batches = tuple(b for b in BATCH_SIZES if 50 <= n_train / b <= 20_000) or (
        (BATCH_SIZES[0],) if n_train / BATCH_SIZES[0] < 50 else (BATCH_SIZES[-1],)
    )
    space = [
        Param("lr", 1e-3, 1e-2, log=True),
        Param("weight_decay", 1e-3, 1e-1, log=True),
        Param("embedding_dim", choices=EMBEDDING_DIMS),
        Param("dropout", 0.0, 0.4, step=0.05),
        Param("batch_size", choices=batches),
        Param("patience", choices=PATIENCES),
    ]
    if model_cfg.watch_head and train_cfg.negatives > 0:
        negatives = tuple(k for k in NEGATIVES if k <= max(n_movies // 4, NEGATIVES[0]))
        space += [Param("negatives", choices=negatives), Param("watch_weight", 0.5, 2.0, log=True)]
        # a user's history as an input: the one setting that moved the few-users row of the quality matrix (README),
        # at 2-3x the training time, so it is a choice for the search rather than the default
        space.append(Param("user_history", choices=(False, True)))
        if bare:
            # no more clusters than movies to cluster (training refuses that)
            rated = n_movies if n_movies_rated is None else n_movies_rated
            space.append(Param("movie_clusters", choices=tuple(k for k in MOVIE_CLUSTERS if k <= rated)))
    return [_holding(p, (holds or {}).get(p.name)) for p in space]


def _holding(param: Param, value: Any) -> Param:
    """``param`` widened to hold ``value`` (None, or a value a log range cannot hold such as the seed preset's weight
    decay 0: as it is)."""
    if value is None or param.contains(value) or (param.log and not float(value) > 0):
        return param
    if param.choices:
        return replace(param, choices=tuple(sorted({*param.choices, value})))
    return replace(param, low=min(param.low, float(value)), high=max(param.high, float(value)))


def preset_point(
    preset: str, space: list[Param], configs: tuple[ModelConfig, TrainConfig] | None = None
) -> dict[str, Any]:
    """The preset's own values of the searched settings that lie in the space (the first trial of a new study);
    ``configs``: the preset as adapted to the data (:func:`embedrec.runs.adapt_to_prepared`), which is what
    ``embedrec train`` trains (on a sparse catalogue the default turns on ``user_history`` and more negatives)."""
    model_cfg, train_cfg = configs if configs is not None else preset_configs(preset)
    point = {}
    for p in space:
        value = getattr(model_cfg, p.name, getattr(train_cfg, p.name, None))
        if p.contains(value):
            point[p.name] = value
    return point


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TrialOutcome:
    """How one trial ended: ``state`` is complete, pruned or failed (``reason`` says why for the last two)."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    reason: str = ""
    is_best: bool = False
    best_number: int | None = None
    best_value: float | None = None


class TuneCallbacks:
    """Hooks the search reports through; the CLI renders them. All optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_trial_start(self, number: int, params: dict[str, Any]) -> None: ...
    def on_epoch(self, number: int, record: dict[str, Any], value: float) -> None: ...
    def on_trial_end(self, outcome: TrialOutcome) -> None: ...


@dataclass
class TuneResult:
    config_path: Path
    command: str
    study_path: Path
    study_name: str
    objective: str
    best_number: int
    best_value: float
    best_metrics: dict[str, float]
    best_params: dict[str, Any]
    best_run_dir: Path | None
    settings: dict[str, Any]
    n_this_call: int
    counts: dict[str, int]
    rmse_ceiling: float | None = None  # with a ranking objective: 1% below the bias baseline's val RMSE
    preset_number: int | None = None  # the preset's finished trial
    vs_preset: dict[str, Any] | None = None  # the best trial's paired val gain over the preset's trial


# ---------------------------------------------------------------------------------------------------------------
# The config file
# ---------------------------------------------------------------------------------------------------------------
def check_config_target(path: Path) -> None:
    """Refuse an ``--out`` that is not TOML, or that exists and was not written by ``embedrec tune``."""
    if path.suffix.lower() != ".toml":
        raise ConfigError(f"--out {path}: the tuned settings are written as TOML; name the file *.toml")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name a file such as {path / 'tuned.toml'}")
    if path.exists():
        try:
            first = path.read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            first = []
        if not first or not first[0].startswith(CONFIG_MARKER):
            raise ConfigError(
                f"--out {path} exists and was not written by embedrec tune; choose another --out or move that file away"
            )


def _check_writable_at(path: Path, *, named: Path | None = None) -> None:
    """Write a probe where ``path`` will go (its folder, or the nearest folder above it that exists, which is where
    ``atomic_write_text`` creates the rest), so that a read-only or unwritable ``--out`` (or study folder) is refused
    before the search, not when its first best trial is written; an OSError names ``named`` (default ``path``).
    Nothing stays behind."""
    from embedrec.tempfiles import name_target, temp_sibling

    below = path
    while not below.parent.exists() and below.parent != below.parent.parent:
        below = below.parent  # the first missing folder on the way to path
    probe = temp_sibling(below)
    try:
        if below == path:
            probe.touch()
            probe.unlink()
        else:
            probe.mkdir()
            probe.rmdir()
    except OSError as exc:
        name_target(exc, probe, named if named is not None else path)
        raise


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"cannot write the non-finite value {value!r} to a config file")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_text(settings: dict[str, Any], *, header: list[str]) -> str:
    """A flat TOML table of ``settings`` (what :func:`embedrec.config.load_config_file` reads), under comment lines."""
    lines = [CONFIG_MARKER + "; `embedrec tune` may overwrite this file (delete this line to keep it)."]
    lines += [f"# {h}" for h in header]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def train_command(config_path: Path, *, data_dir: Path | None, workdir: Path | None) -> str:
    """The ``embedrec train`` command line that trains with the tuned settings (``--workdir`` only when it is not
    the one a bare command would use)."""
    from embedrec.workdir import resolve_workdir

    parts = ["embedrec", "train", "--config", str(config_path)]
    if workdir is not None and Path(workdir) != resolve_workdir(None):
        parts += ["--workdir", str(workdir)]
    if data_dir is not None:
        parts += ["--data", str(data_dir)]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------------------
class _BudgetSpent(Exception):
    """Raised inside a trial whose training the time budget stopped (the trial is recorded as failed)."""


def _is_trial_run(path: Path, root: Path) -> bool:
    """A folder embedrec tune made: directly under ``root``, named trial-NNNN, holding the run.json train_run wrote."""
    return (
        path.parent == root
        and path.name.startswith(TRIAL_PREFIX)
        and path.name[len(TRIAL_PREFIX) :].isdigit()
        and (path / "run.json").is_file()
    )


def _remove_trial_run(path: Path, root: Path) -> None:
    """Remove a trial's folder, unless a process trains into it now (it holds the run folder's lock: a trial of
    another ``tune`` of the same study)."""
    from embedrec.locks import folder_lock

    if not (path.is_dir() and _is_trial_run(path, root)):
        return
    try:
        with folder_lock(path, exclusive=True, wait=False):
            shutil.rmtree(path, ignore_errors=True)
    except BlockingIOError:
        pass
    except OSError:  # gone meanwhile, or unreadable: nothing of ours to remove
        pass


def _process_of_this_run() -> dict[str, Any]:
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def _fail_dead_trials(study: optuna.Study, runs_root: Path) -> None:
    """Mark failed the running trials whose ``tune`` process is gone (killed: it never finished them), and remove
    their folders. Optuna's heartbeat would mark them only 90 s after their last beat, and only inside the search:
    a call started sooner saw the killed call's first trial (the preset) still running, did not queue the preset
    again, and the study never had a preset trial to hold the search to. A trial of a live process (another
    ``tune`` of the study), of another host, or without the process recorded is left to the heartbeat."""
    import optuna

    from embedrec.tempfiles import process_gone

    here = _process_of_this_run()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("process")
        if not isinstance(owner, dict) or owner.get("host") != here["host"]:
            continue
        pid = owner.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or not process_gone(pid):
            continue
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        _remove_trial_run(runs_root / f"{TRIAL_PREFIX}{t.number:04d}", runs_root)


def _check_writable(db: Path) -> None:
    """SQLite writes the study file and a journal beside it; where either cannot be written, Optuna fails in the
    middle of a commit with a traceback, so both are tried first and an OSError names the path (one line)."""
    with open(db, "ab"):  # an empty file is an empty SQLite database
        pass
    _check_writable_at(db, named=db.parent)  # the journal beside it


def _storage(db: Path) -> optuna.storages.RDBStorage:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{db.resolve()}",
            heartbeat_interval=30,
            grace_period=90,
            engine_kwargs={"connect_args": {"timeout": 60}},
        )


def _open_study(
    db: Path, *, name: str, direction: Literal["minimize", "maximize"], sampler: Any, pruner: Any
) -> optuna.Study:
    import optuna

    db.parent.mkdir(parents=True, exist_ok=True)
    _check_writable(db)
    return optuna.create_study(
        storage=_storage(db), study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
    )


def _restart_study(db: Path, *, name: str, runs_root: Path) -> None:
    """``--restart``: delete the study ``name`` from ``db`` and its trial folders, so that the search starts over.

    Only this study goes: ``db`` holds every study of the work folder (one per preset and objective), and only the
    trial folders embedrec wrote under ``runs_root`` (``models/<study>``), none that a process trains into now.
    Refused while a live process runs one of the study's trials (another ``tune`` of it: deleting the study under
    it would fail its next write); a trial whose process is gone (same host), or whose heartbeat stopped 90 s ago,
    is failed first, as a resumed search does. No study of that name: nothing to delete."""
    import optuna

    if not db.is_file():
        return
    _check_writable(db)
    storage = _storage(db)
    if name not in optuna.get_all_study_names(storage):
        return
    study = optuna.load_study(study_name=name, storage=storage)
    _fail_dead_trials(study, runs_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        owner = running[0].user_attrs.get("process") or {}
        by = f" (process {owner['pid']} on {owner['host']})" if {"pid", "host"} <= set(owner) else ""
        raise ConfigError(
            f"--restart: another embedrec tune of the study {name!r} in {db} is running trial "
            f"{running[0].number}{by}; wait for it to finish or stop it, then restart"
        )
    # the tune folder is the trials' work folder: its `latest` names the best trial of the last search
    try:
        pointed: Path | None = latest_run(db.parent).resolve()
    except (ArtifactError, OSError):  # none, or not a pointer embedrec wrote: nothing of this study to unlink
        pointed = None
    optuna.delete_study(study_name=name, storage=storage)
    for path in sorted(runs_root.glob(f"{TRIAL_PREFIX}*")):
        _remove_trial_run(path, runs_root)
    if pointed is not None and runs_root.resolve() in pointed.parents:
        with contextlib.suppress(OSError):  # a pointer left behind names no folder: the next search replaces it
            (models_dir(db.parent) / LATEST_FILE).unlink(missing_ok=True)


def _check_same_study(study: optuna.Study, identity: dict[str, Any], db: Path) -> None:
    """A resumed study must search the same data, epochs, seed and space, or its trials are not comparable."""
    stored = study.user_attrs.get("embedrec")
    if stored is None:
        if study.trials:
            raise ConfigError(
                f"{db} holds a study {study.study_name!r} that embedrec tune did not start; pass --restart to "
                "replace it (the other studies are kept), or use another --workdir"
            )
        study.set_user_attr("embedrec", identity)
        return
    names = {
        "data_fingerprint": "--data",
        "max_epochs": "--max-epochs",
        "seed": "--seed",
        "space": "the search space (another embedrec version)",
    }
    for key, option in names.items():
        if key == "data_fingerprint" and stored.get(key) != identity[key]:
            raise ConfigError(  # re-prepared data: the study's data is usually gone, so "pass the same" cannot help
                f"the study {study.study_name!r} in {db} was run on other data than --data holds now (prepared "
                "again since?); pass --restart to start this study over on this data (the other studies are "
                "kept), or pass the --data the study was run on"
            )
        if stored.get(key) != identity[key]:
            raise ConfigError(
                f"the study {study.study_name!r} in {db} was run with other {option} "
                f"({stored.get(key)!r}, now {identity[key]!r}); pass the same, or pass --restart to start this "
                "study over (the other studies are kept)"
            )


def _check_rankable(record: dict[str, Any], objective: str, data_path: Path) -> None:
    """A ranking objective needs an epoch with val NDCG@10 (every process of a distributed trial checks it at the
    same point, so all of them leave the trial together)."""
    if _needs_ranking(objective) and "val_ndcg@10" not in record:
        raise ConfigError(
            f"{data_path}: the validation split has no rating high enough to rank "
            "by (NDCG@10 is undefined); use --objective rmse"
        )


class _TrialReport:
    """The training loop's callbacks for one trial: report each epoch's value to Optuna, and prune when it says so.

    Raising ``optuna.TrialPruned`` here unwinds the training loop at once (before the epoch's checkpoint), so a
    pruned trial trains no further epoch and writes no model.
    """

    def __init__(self, trial: optuna.Trial, search: _Search) -> None:
        self.trial = trial
        self.search = search

    def on_start(self, info: dict[str, Any]) -> None:
        """Refuse a trial on data prepared again since the search started. In a distributed trial process 0 decides
        and every process leaves the trial with it (``train_run`` checks only that the processes train the same
        data as each other, not the study's: after a ``prepare`` that replaced a data folder they all read, they
        agreed on the new data and trained it in a study of the old)."""
        refused: Exception | None = None
        try:
            self.search.check_same_data(self.trial.number)
        except Exception as exc:  # also an unreadable run.json: raised after the collective, or the others wait
            refused = exc
        if self.search.several:  # the others wait for the answer before their first epoch (_FollowerReport)
            from embedrec import distributed

            distributed.any_process(refused is not None)
        if refused is not None:
            raise refused

    def on_block(self, epoch: int, step: int, steps: int, loss: float, samples_per_s: float) -> None: ...

    def on_epoch(self, record: dict[str, Any]) -> None:
        import optuna

        _check_rankable(record, self.search.objective, self.search.data_path)
        value = objective_value(self.search.objective, record)
        self.trial.report(value, record["epoch"])
        self.search.callbacks.on_epoch(self.trial.number, record, value)
        prune = self.trial.should_prune()
        if self.search.several:  # every process of a distributed trial stops at the same epoch
            from embedrec import distributed

            prune = distributed.any_process(prune)
        if prune:
            self.trial.set_user_attr("epochs", int(record["epoch"]))
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")


@dataclass
class _Search:
    """One call's search: what a trial trains, and what follows it (cleanup, the config file, the report)."""

    space: list[Param]
    objective: str
    fixed: dict[str, Any]  # preset, epochs, seed: the same for every trial
    data_path: Path
    prepared: PreparedData  # the data_path folder, as _tune_here loaded it (compare_with_preset ranks its val split)
    data_dir: Path | None  # as the user gave it (for the printed command)
    workdir: Path
    root: Path
    runs_root: Path
    db: Path
    config_path: Path
    deadline: float
    callbacks: TuneCallbacks
    best_before: int | None
    ceiling: float | None = None  # a trial with val RMSE at or above it is chosen only when every trial is
    several: bool = False  # one of several processes (this one process 0): trials are announced to the others
    _preset_scorer: Any = None  # the preset trial's model, loaded once (compare_with_preset)

    ran: int = 0  # trials this call ran (another tune of the same study may add its own meanwhile)

    def run_dir(self, number: int) -> Path:
        return self.runs_root / f"{TRIAL_PREFIX}{number:04d}"

    def check_same_data(self, number: int) -> None:
        """Each trial loads the data folder again: a ``prepare`` that replaced it since the search started would
        mix trials of two data sets in one study (and compare them with the preset on the old val split). The trial's
        ``run.json`` holds the fingerprint of the data it is about to train on."""
        from embedrec.artifacts import read_json

        meta = read_json(self.run_dir(number) / "run.json")
        got = meta.get("data", {}).get("fingerprint") if isinstance(meta, dict) else None
        if got != self.prepared.fingerprint:
            raise ConfigError(
                f"{self.data_path} was prepared again while tune ran (now {got}, the study's data is "
                f"{self.prepared.fingerprint}): trial {number} was not trained; its study compares trials on one "
                "data set, so run tune again with --restart to start this study over on the new data"
            )

    def run_trial(self, trial: optuna.Trial) -> float:
        """Train one sampled setting on the train split; its value is the saved model's validation metric."""
        import jax
        import optuna

        from embedrec.runs import train_run

        params = {p.name: p.suggest(trial) for p in self.space}
        run_dir = self.run_dir(trial.number)
        _remove_trial_run(run_dir, self.runs_root)  # left by an earlier study of the same name
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("settings", params)
        trial.set_user_attr("process", _process_of_this_run())  # a later call can tell that a killed one left it
        self.callbacks.on_trial_start(trial.number, params)
        if self.several:  # the other processes train the same trial with process 0 (see _follow)
            from embedrec import distributed

            command = {
                "kind": "trial",
                "params": params,
                "fixed": self.fixed,
                "objective": self.objective,
                "run_dir": str(run_dir),
            }
            distributed.exchange_text(json.dumps(command))
        t0 = time.monotonic()
        try:
            result = train_run(
                self.data_path,
                out=run_dir,
                workdir=self.root,
                preset=self.fixed["preset"],
                overrides={**params, "epochs": self.fixed["epochs"], "seed": self.fixed["seed"]},
                callbacks=_TrialReport(trial, self),
                stop_requested=lambda: time.monotonic() > self.deadline,
            )
            if result.interrupted:
                done = len(result.history)
                raise _BudgetSpent(f"time budget reached after {done} epoch{'s' if done != 1 else ''}")
        except BaseException as exc:  # pruned, budget, diverged, Ctrl-C: nothing of this trial stays on disk
            _remove_trial_run(run_dir, self.runs_root)
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
            if not isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr("reason", str(exc) or type(exc).__name__)
            raise
        finally:
            jax.clear_caches()  # each trial compiles its own step; do not let 100 trials' programs pile up
        record = next(h for h in result.history if h["epoch"] == result.best_epoch)
        metrics = {k: float(v) for k, v in record.items() if k.startswith("val_")}
        ranking = result.ranking or {}
        if "val_ndcg@10" in ranking and "beta" in ranking:  # the blend the saved model ranks by
            metrics["val_ndcg@10"] = float(ranking["val_ndcg@10"][str(ranking["beta"])])
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("best_epoch", int(result.best_epoch))
        trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        value = objective_value(self.objective, metrics)
        self.compare_with_preset(trial, result.run_dir, value)
        return value

    def compare_with_preset(self, trial: optuna.Trial, run_dir: Path, value: float) -> None:
        """Record (user attr ``vs_preset``) how far this trial beats the preset's trial on val, paired over the same
        users and ratings, when it could become the best trial (:func:`best_trial_number` needs it then)."""
        import optuna

        from embedrec.artifacts import load_model
        from embedrec.evaluation import paired_gain
        from embedrec.scoring import Scorer

        study = trial.study
        preset = preset_trial_number(study)
        if preset is None or trial.user_attrs.get("preset"):
            return
        best = best_trial_number(study, self.ceiling)
        best_value = study.trials[best].value if best is not None else None
        if best_value is not None:
            minimise = study.direction == optuna.study.StudyDirection.MINIMIZE
            if not (value < best_value if minimise else value > best_value):
                return  # it cannot become the best trial: no need to know
        if self._preset_scorer is None:
            self._preset_scorer = Scorer.from_artifact(load_model(self.run_dir(preset)))
        gain = paired_gain(
            Scorer.from_artifact(load_model(run_dir)), self._preset_scorer, self.prepared, max_users=PAIRED_USERS
        )
        z = gain_z(self.objective, gain)
        trial.set_user_attr("vs_preset", {**gain.to_dict(), "z": round(z, 3), "significant": z >= PRESET_MARGIN_Z})

    def after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Keep only the best trial's folder, rewrite the config on a new best, report the trial."""
        import optuna

        best = best_trial_number(study, self.ceiling)
        if frozen.state == optuna.trial.TrialState.COMPLETE and best is not None:
            keep = self.run_dir(best)
            preset = preset_trial_number(study)
            kept = {keep} | ({self.run_dir(preset)} if preset is not None else set())  # the preset: to compare
            # and the trials still running: another tune of this study trains them, or has not yet reported them
            unfinished = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
            kept |= {self.run_dir(t.number) for t in study.get_trials(deepcopy=False, states=unfinished)}
            for path in self.runs_root.glob(f"{TRIAL_PREFIX}*"):
                if path not in kept:
                    _remove_trial_run(path, self.runs_root)
            if keep.is_dir():
                set_latest_run(self.root, keep)
            if best != self.best_before:
                self.write_config(study)
        self.best_before = best
        self.ran += 1
        user = frozen.user_attrs
        state = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}.get(
            frozen.state, "failed"
        )
        reason = user.get("reason", "")
        if state == "pruned":
            reason = f"pruned after epoch {max(frozen.intermediate_values, default=0)}"
        best_trial = study.trials[best] if best is not None else None
        self.callbacks.on_trial_end(
            TrialOutcome(
                number=frozen.number,
                state=state,
                params=dict(user.get("settings", frozen.params)),
                value=frozen.value,
                metrics=dict(user.get("metrics", {})),
                epochs=int(user.get("epochs", len(frozen.intermediate_values))),
                seconds=float(user.get("seconds", 0.0)),
                reason=reason,
                is_best=best == frozen.number,
                best_number=best,
                best_value=best_trial.value if best_trial is not None else None,
            )
        )

    def write_config(self, study: optuna.Study) -> None:
        """The best trial's settings as TOML for ``train --config`` (atomic; only over a file embedrec wrote).

        Reading the best trial and writing the file is one critical section under an exclusive lock on the tune
        folder (the study's own, so nothing is created beside ``--out``): two ``tune`` of one study each wrote the
        best they had read, and the one that read first could write last, leaving the file on an older best than
        the study's. Now the file holds the study's best at the time of the last write."""
        from embedrec.locks import folder_lock

        with folder_lock(self.root, exclusive=True):
            self._write_config(study)

    def _write_config(self, study: optuna.Study) -> None:
        best = best_trial_number(study, self.ceiling)
        if best is None:
            return
        trial = study.trials[best]
        check_config_target(self.config_path)
        metrics = trial.user_attrs.get("metrics", {})
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val_ndcg@10", "val_rmse", "val_mae") if k in metrics)
        counts = _counts(study)
        command = train_command(self.config_path, data_dir=self.data_dir, workdir=self.workdir)
        header = [
            (
                f"Best of {counts['complete']} finished trials ({counts['pruned']} pruned) of the study "
                f"{study.study_name!r} in {self.db}: trial {best},"
            ),
            f"{shown} (validation split; the test split was not used).",
            *(
                [
                    f"Chosen among the trials with val RMSE below {self.ceiling:.4f} (1% under the bias "
                    "baseline's), if any."
                ]
                if self.ceiling is not None
                else []
            ),
            _preset_line(trial, preset_trial_number(study)),
            f"Train with: {command}",
        ]
        atomic_write_text(self.config_path, config_text({**self.fixed, **trial.user_attrs["settings"]}, header=header))


def _preset_line(trial: optuna.trial.FrozenTrial, preset: int | None) -> str:
    """The config header's line on the preset: what the chosen trial gained over it on val, and how surely."""
    if preset is None:
        return "The preset's own trial has not finished: chosen among the trials alone."
    if trial.number == preset:
        return f"This is the preset (trial {preset}): no trial beat it on val by {PRESET_MARGIN_Z:g} standard errors."
    gain = trial.user_attrs.get("vs_preset", {})
    return (
        f"It beats the preset (trial {preset}) on val by {gain.get('z', math.nan):.1f} standard errors "
        f"(NDCG@10 {gain.get('ndcg_gain') or 0.0:+.4f} over {gain.get('n_users', 0)} users, "
        f"squared error {gain.get('mse_gain', 0.0):+.4f} over {gain.get('n_ratings', 0)} ratings)."
    )


def tune(
    data_dir: Path | None,
    *,
    workdir: Path,
    out: Path | None = None,
    preset: str = "default",
    objective: str = "ndcg@10",
    budget_s: float | None = DEFAULT_BUDGET_S,
    n_trials: int | None = None,
    max_epochs: int | None = None,
    seed: int = 42,
    callbacks: TuneCallbacks | None = None,
    pruner: Any = None,
    cluster: Cluster | None = None,
    restart: bool = False,
) -> TuneResult:
    """Search hyperparameters on the validation split and write the best as a config file; returns the outcome.

    ``data_dir`` defaults to ``<workdir>/data``; ``out`` to ``<workdir>/tuned.toml``. The search runs until
    ``budget_s`` seconds have passed or ``n_trials`` trials have run in this call, whichever comes first (at least
    one of them must be given). ``max_epochs`` caps each trial's epochs (default: the preset's). ``pruner`` replaces
    the median rule (any Optuna pruner). ``restart`` deletes this study (``<preset>-<objective>``, the other studies
    in ``study.db`` are kept) and its trial folders first, so the search starts over (:func:`_restart_study`).
    Raises ConfigError when no trial finished.

    With ``cluster`` (or a JAX cluster the caller joined) every trial trains across the processes: process 0 runs
    the study (its database, sampler, pruner, budget and the config file) and announces each trial; the others train
    it with process 0 (:func:`embedrec.runs.train_run` checks that they train the same thing), stop at the epoch the
    pruner or the budget stops process 0, write nothing, and end with process 0's outcome. ``restart`` must be
    given to every process or to none (process 0 restarts the study before it announces the first trial); every
    process refuses a mix.
    """
    from embedrec import distributed

    if cluster is not None:
        distributed.join(cluster)
    from functools import partial

    search = partial(
        _tune_here,
        data_dir,
        workdir=workdir,
        out=out,
        preset=preset,
        objective=objective,
        budget_s=budget_s,
        n_trials=n_trials,
        max_epochs=max_epochs,
        seed=seed,
        callbacks=callbacks,
        pruner=pruner,
        restart=restart,
    )
    if not distributed.joined():
        return search()
    flags = [bool(json.loads(text)) for text in distributed.exchange_text(json.dumps(restart))]
    if any(flags) and not all(flags):  # every process sees the same list and refuses together: none waits
        given = ", ".join(str(i) for i, flag in enumerate(flags) if flag)
        raise ConfigError(
            f"--restart was given to process {given} only: give every process the same options, --restart to all "
            "of them or to none (process 0 starts the study over before the first trial)"
        )
    if not distributed.is_writer():
        return _follow(data_dir, workdir=Path(workdir))
    try:
        result = search(several=True)
    except BaseException as exc:
        error = distributed.as_error(exc)
        distributed.exchange_text(json.dumps({"kind": "error", "message": str(error), "exit_code": error.exit_code}))
        raise
    distributed.exchange_text(json.dumps({"kind": "done", "result": _result_json(result)}))
    return result


def _result_json(result: TuneResult) -> dict[str, Any]:
    out = dict(vars(result))
    for key in ("config_path", "study_path", "best_run_dir"):
        out[key] = str(out[key]) if out[key] is not None else None
    return out


def _follow(data_dir: Path | None, *, workdir: Path) -> TuneResult:
    """A process other than 0 of a distributed search: train each trial process 0 announces, until it is done."""
    import jax

    from embedrec import distributed
    from embedrec.runs import train_run
    from embedrec.workdir import data_dir as data_dir_of

    data_path = Path(data_dir) if data_dir is not None else data_dir_of(workdir)
    while True:
        command = json.loads(distributed.exchange_text("")[0])
        if command["kind"] == "done":
            fields = dict(command["result"])
            for key in ("config_path", "study_path", "best_run_dir"):
                fields[key] = Path(fields[key]) if fields[key] is not None else None
            return TuneResult(**fields)
        if command["kind"] == "error":
            error = EmbedrecError(f"process 0: {command['message']}")
            error.exit_code = int(command["exit_code"])
            raise error
        fixed = command["fixed"]
        try:
            train_run(
                data_path,
                out=Path(command["run_dir"]),
                workdir=workdir,
                preset=fixed["preset"],
                overrides={**command["params"], "epochs": fixed["epochs"], "seed": fixed["seed"]},
                callbacks=_FollowerReport(command["objective"], data_path),
                stop_requested=lambda: False,  # process 0's budget stops every process (train_run shares it)
            )
        except (_FollowerPruned, EmbedrecError):
            pass  # process 0 met the same end of this trial and decides what comes next
        finally:
            jax.clear_caches()


class _FollowerPruned(Exception):
    """Process 0's pruner stopped the trial (raised on the other processes at the same epoch), or process 0 refused
    it before its first epoch (the data was prepared again)."""


class _FollowerReport:
    """A following process's training callbacks: learn at each epoch whether process 0's pruner stops the trial."""

    def __init__(self, objective: str, data_path: Path) -> None:
        self.objective, self.data_path = objective, data_path

    def on_start(self, info: dict[str, Any]) -> None:
        from embedrec import distributed

        if distributed.any_process(False):  # process 0 found the data prepared again (_TrialReport.on_start)
            raise _FollowerPruned("the data was prepared again: process 0 refuses the trial")

    def on_block(self, epoch: int, step: int, steps: int, loss: float, samples_per_s: float) -> None: ...

    def on_epoch(self, record: dict[str, Any]) -> None:
        from embedrec import distributed

        _check_rankable(record, self.objective, self.data_path)  # as process 0 does, before the collective
        if distributed.any_process(False):
            raise _FollowerPruned(f"pruned after epoch {record['epoch']}")


def _tune_here(
    data_dir: Path | None,
    *,
    workdir: Path,
    out: Path | None,
    preset: str,
    objective: str,
    budget_s: float | None,
    n_trials: int | None,
    max_epochs: int | None,
    seed: int,
    callbacks: TuneCallbacks | None,
    pruner: Any,
    restart: bool = False,
    several: bool = False,
) -> TuneResult:
    """:func:`tune` in this process (process 0 of a distributed search: ``several``)."""
    import optuna

    from embedrec.data import load_prepared
    from embedrec.workdir import data_dir as data_dir_of

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective: choose one of {', '.join(OBJECTIVES)}, got {objective!r}")
    check_preset(preset)
    if budget_s is None and n_trials is None:
        raise ConfigError("give a time --budget or a number of --trials (or both)")
    if budget_s is not None and budget_s <= 0:
        raise ConfigError(f"--budget: must be more than zero, got {budget_s}")
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--trials: must be >= 1, got {n_trials}")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--max-epochs: must be >= 1, got {max_epochs}")
    try:  # every trial trains with this seed: the train config's own check
        TrainConfig(seed=seed)
    except SettingError as exc:
        raise exc.named("--seed") from None
    model_cfg, train_cfg = preset_configs(preset)
    if _needs_ranking(objective) and not (model_cfg.watch_head and train_cfg.negatives > 0):
        raise ConfigError(
            f"--objective {objective} needs the ranking (watch) output, which --preset {preset} lacks; "
            "use --objective rmse, or --preset default"
        )
    workdir = Path(workdir)
    config_path = Path(out) if out is not None else default_config_path(workdir)
    check_config_target(config_path)
    _check_writable_at(config_path)
    data_path = Path(data_dir) if data_dir is not None else data_dir_of(workdir)
    prepared = load_prepared(data_path)
    from embedrec.data.split import TRAIN, VAL

    n_train = int((prepared.split == TRAIN).sum())
    if not (prepared.split == VAL).any():
        val_frac = float(prepared.summary.get("split", {}).get("val_frac", 0) or 0)
        fix = (
            f"its --val-frac {val_frac:g} of {len(prepared.split)} ratings left none: prepare more ratings, or "
            "again with a larger --val-frac"
            if val_frac > 0
            else "prepare it again with --val-frac above 0"
        )
        raise ConfigError(f"{data_path} has no validation split to tune on (the test split is never used): {fix}")
    epochs = int(max_epochs if max_epochs is not None else train_cfg.epochs)
    ceiling = rmse_ceiling(prepared) if _needs_ranking(objective) else None
    from embedrec.runs import adapt_to_prepared

    adapted = adapt_to_prepared(preset, model_cfg, train_cfg, prepared)
    own = {**to_dict(adapted[0]), **to_dict(adapted[1])}  # the preset as train trains it on this data
    space = search_space(
        preset=preset,
        n_train=n_train,
        n_movies=prepared.n_movies,
        holds=own,
        bare=prepared.n_genres == 0,
        n_movies_rated=prepared.split_extent(TRAIN)[1],
    )

    root = tune_dir(workdir)
    db = root / "study.db"
    name = f"{preset}-{objective}"
    runs_root = root / "models" / name  # trial numbers are per study
    direction: Literal["minimize", "maximize"] = "minimize" if objective == "rmse" else "maximize"
    identity = {
        "data_fingerprint": prepared.fingerprint,
        "max_epochs": epochs,
        "seed": seed,
        "space": {"version": SPACE_VERSION, **{p.name: p.describe() for p in space}},
    }
    pruner = (
        pruner
        if pruner is not None
        else optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=min(3, max(epochs // 4, 1)))
    )
    if restart:  # before the study is opened: a study refused below (other data, epochs, seed) is what it replaces
        _restart_study(db, name=name, runs_root=runs_root)
    study = _open_study(db, name=name, direction=direction, sampler=None, pruner=pruner)
    _check_same_study(study, identity, db)
    _fail_dead_trials(study, runs_root)
    n_before = len(study.trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=(seed + n_before) % (SEED_LIMIT + 1), multivariate=True, n_startup_trials=5
        )
    if all(t.state == optuna.trial.TrialState.FAIL for t in study.trials):  # new, or its first trials were stopped
        study.enqueue_trial(preset_point(preset, space, adapted[:2]), user_attrs={"preset": True})

    fixed = {"preset": preset, "epochs": epochs, "seed": seed}
    deadline = time.monotonic() + budget_s if budget_s is not None else math.inf
    search = _Search(
        space=space,
        objective=objective,
        fixed=fixed,
        data_path=data_path,
        prepared=prepared,
        data_dir=data_dir,
        workdir=workdir,
        root=root,
        runs_root=runs_root,
        db=db,
        config_path=config_path,
        deadline=deadline,
        callbacks=callbacks or TuneCallbacks(),
        best_before=best_trial_number(study, ceiling),
        ceiling=ceiling,
        several=several,
    )
    search.callbacks.on_start(
        {
            "study": str(db),
            "study_name": name,
            "previous_trials": n_before,
            "budget_s": budget_s,
            "n_trials": n_trials,
            "max_epochs": epochs,
            "objective": objective,
            "space": {p.name: p.describe() for p in space},
        }
    )
    try:
        if time.monotonic() < deadline:
            study.optimize(
                search.run_trial,
                n_trials=n_trials,
                timeout=None if budget_s is None else max(deadline - time.monotonic(), 0.0),
                catch=(_BudgetSpent, TrainingDiverged),
                callbacks=[search.after_trial],
                gc_after_trial=True,
            )
    finally:  # also after Ctrl-C: the best so far, with this call's trial counts in its header
        search.write_config(study)

    best = best_trial_number(study, ceiling)
    counts = _counts(study)
    if best is None:
        raise ConfigError(
            f"no trial finished ({counts['pruned']} pruned, {counts['failed']} stopped or failed): "
            "raise --budget or lower --max-epochs"
        )
    best_trial = study.trials[best]
    run_dir = runs_root / f"{TRIAL_PREFIX}{best:04d}"
    return TuneResult(
        config_path=config_path,
        command=train_command(config_path, data_dir=data_dir, workdir=workdir),
        study_path=db,
        study_name=name,
        objective=objective,
        best_number=best,
        best_value=float(cast(float, best_trial.value)),
        best_metrics=dict(best_trial.user_attrs.get("metrics", {})),
        best_params=dict(best_trial.user_attrs["settings"]),
        best_run_dir=run_dir if run_dir.is_dir() else None,
        settings={**fixed, **best_trial.user_attrs["settings"]},
        n_this_call=search.ran,
        counts=counts,
        rmse_ceiling=ceiling,
        preset_number=preset_trial_number(study),
        vs_preset=best_trial.user_attrs.get("vs_preset"),
    )


def best_trial_number(study: optuna.Study, ceiling: float | None = None) -> int | None:
    """The best finished trial: by the objective, among those with val RMSE below ``ceiling`` when any is, and
    among the preset's trial and the trials that beat it on val by :data:`PRESET_MARGIN_Z` standard errors (user
    attr ``vs_preset``) when the preset's trial has finished."""
    import optuna

    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    preset = preset_trial_number(study)

    def above(t: optuna.trial.FrozenTrial) -> bool:
        return ceiling is not None and not t.user_attrs.get("metrics", {}).get("val_rmse", math.inf) < ceiling

    def unproven(t: optuna.trial.FrozenTrial) -> bool:
        return preset is not None and t.number != preset and not t.user_attrs.get("vs_preset", {}).get("significant")

    done = [
        (above(t), unproven(t), sign * t.value, t.number)
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    return min(done)[3] if done else None


def preset_trial_number(study: optuna.Study) -> int | None:
    """The finished trial of the preset's own settings (the first trial of a new study), if any."""
    import optuna

    for t in study.trials:
        if t.user_attrs.get("preset") and t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            return t.number
    return None


def gain_z(objective: str, gain: PairedGain) -> float:
    """How many standard errors a trial's paired val gain over the preset is, in the objective's own terms: NDCG@10
    per user, squared error per rating, or for ``both`` the two combined as the objective weighs them (the RMSE
    gain from the MSE gain to first order, ``d RMSE = d MSE / (2 RMSE)``; the two parts' errors taken as
    independent)."""
    if objective == "rmse":
        parts = [(gain.mse_gain, gain.mse_se)]
    else:
        if gain.ndcg_gain is None or gain.ndcg_se is None:
            return -math.inf
        parts = [(gain.ndcg_gain, gain.ndcg_se)]
        if objective == "both":
            w = BOTH_RMSE_WEIGHT / (2.0 * max(gain.base_rmse, 1e-12))
            parts.append((w * gain.mse_gain, w * gain.mse_se))
    mean = sum(g for g, _ in parts)
    se = math.sqrt(sum(e * e for _, e in parts))
    if se == 0.0:
        return math.inf if mean > 0 else 0.0
    return mean / se


def _counts(study: optuna.Study) -> dict[str, int]:
    import optuna

    states = [t.state for t in study.trials]
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "total": len(states),
    }
