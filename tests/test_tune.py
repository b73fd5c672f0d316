"""``embedrec tune`` on real runs: the search trains real models on small data, the written config round-trips through
``embedrec train --config``, a second call continues the study, pruning and the budget stop training, and the test
split never influences anything."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli import EMBEDREC, run_cli
from typer.testing import CliRunner

from embedrec.cli import app
from embedrec.config import load_config_file, preset, to_dict
from embedrec.errors import ConfigError
from embedrec.tune import (
    CONFIG_MARKER,
    best_trial_number,
    config_text,
    gain_z,
    parse_budget,
    preset_point,
    preset_trial_number,
    search_space,
    tune,
)

SMALL = ["--trials", "2", "--max-epochs", "2"]


def _study(workdir: Path, name: str = "default-ndcg@10"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'tune' / 'study.db'}")


# ---------------------------------------------------------------------------------------------------------------
# Without training
# ---------------------------------------------------------------------------------------------------------------
def test_budgets_parse_and_bad_ones_are_one_line_errors() -> None:
    assert parse_budget("10m") == 600
    assert parse_budget("90s") == 90
    assert parse_budget("1h") == 3600
    assert parse_budget("1h30m") == 5400
    assert parse_budget(" 2.5M ") == 150
    for bad in ("", "10", "ten minutes", "10x", "0s", "-5m", "m10", "10m5"):
        with pytest.raises(ConfigError, match="--budget"):
            parse_budget(bad)
    result = CliRunner().invoke(app, ["tune", "--budget", "10x"])
    assert result.exit_code == 2
    assert "--budget" in result.output and "10m" in result.output and "Traceback" not in result.output


def test_the_search_space_follows_the_data_size_and_holds_the_preset() -> None:
    small = {p.name: p for p in search_space(preset="default", n_train=14_000, n_movies=400)}
    big = {p.name: p for p in search_space(preset="default", n_train=20_000_000, n_movies=27_000)}
    assert small["batch_size"].choices == (128, 256)  # at least 50 steps per epoch
    assert big["batch_size"].choices == (1024, 2048, 4096)  # at most 20,000 steps per epoch
    assert max(small["negatives"].choices) <= 100 and max(big["negatives"].choices) == 256
    model_cfg, train_cfg = preset("default")
    point = preset_point("default", list(small.values()))
    assert point == {
        "lr": train_cfg.lr,
        "weight_decay": train_cfg.weight_decay,
        "embedding_dim": model_cfg.embedding_dim,
        "dropout": model_cfg.dropout,
        "batch_size": train_cfg.batch_size,
        "patience": train_cfg.patience,
        "negatives": train_cfg.negatives,
        "watch_weight": train_cfg.watch_weight,
        "user_history": model_cfg.user_history,
    }
    assert small["user_history"].choices == (False, True) and model_cfg.user_history is False
    tiny = {p.name: p for p in search_space(preset="default", n_train=5_000, n_movies=400)}
    assert tiny["batch_size"].choices == (128,)
    held = {p.name: p for p in search_space(preset="default", n_train=5_000, n_movies=400, holds=point)}
    assert held["batch_size"].choices == (128, 256) and preset_point("default", list(held.values())) == point
    wide = {p.name: p for p in search_space(preset="default", n_train=5_000, n_movies=400, holds={"lr": 0.05})}
    assert (wide["lr"].low, wide["lr"].high) == (1e-3, 0.05) and wide["dropout"] == tiny["dropout"]
    rating_only = {p.name for p in search_space(preset="seed", n_train=14_000, n_movies=400)}
    assert "negatives" not in rating_only and "watch_weight" not in rating_only and "lr" in rating_only
    assert "user_history" not in rating_only
    bare = {p.name: p for p in search_space(preset="default", n_train=14_000, n_movies=400, bare=True)}
    assert bare["movie_clusters"].choices == (0, 8, 16, 32) and "movie_clusters" not in small
    few = {
        p.name: p for p in search_space(preset="default", n_train=14_000, n_movies=400, bare=True, n_movies_rated=20)
    }
    assert few["movie_clusters"].choices == (0, 8, 16)  # never more clusters than movies with training ratings
    assert "movie_clusters" not in {
        p.name for p in search_space(preset="seed", n_train=14_000, n_movies=400, bare=True)
    }


def test_the_best_trial_keeps_val_rmse_below_the_ceiling_when_any_trial_does() -> None:
    import optuna

    def study_of(*trials: tuple[float, float]):  # (val NDCG@10, val RMSE) of finished trials
        study = optuna.create_study(direction="maximize")
        for ndcg, rmse in trials:
            study.add_trial(
                optuna.trial.create_trial(
                    value=ndcg, params={}, distributions={}, user_attrs={"metrics": {"val_rmse": rmse}}
                )
            )
        return study

    mixed = study_of((0.30, 0.95), (0.33, 0.97), (0.31, 0.94))
    assert best_trial_number(mixed) == 1  # no ceiling: the objective alone
    assert best_trial_number(mixed, 0.96) == 2  # the best of the trials below the bias baseline's val RMSE
    assert best_trial_number(mixed, 0.945) == 2 and best_trial_number(mixed, 0.94) == 1  # equal is not below
    assert best_trial_number(study_of((0.30, 0.99), (0.32, 0.98)), 0.96) == 1  # none below: the best of all
    assert best_trial_number(study_of(), 0.96) is None


def test_a_trial_replaces_the_preset_only_when_it_beats_it_beyond_the_val_noise() -> None:
    import optuna

    def study_of(*trials: tuple[float, dict]):  # (val NDCG@10, user attrs) of finished trials
        study = optuna.create_study(direction="maximize")
        for value, attrs in trials:
            metrics = {"metrics": {"val_rmse": 0.9}}
            study.add_trial(
                optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={**metrics, **attrs})
            )
        return study

    preset_trial = (0.30, {"preset": True})
    lucky = (0.34, {"vs_preset": {"z": 1.2, "significant": False}})
    better = (0.32, {"vs_preset": {"z": 2.6, "significant": True}})
    never_compared = (0.36, {})
    assert best_trial_number(study_of(preset_trial, lucky, better, never_compared)) == 2
    assert best_trial_number(study_of(preset_trial, lucky, never_compared)) == 0  # the preset stays
    assert preset_trial_number(study_of(lucky, preset_trial)) == 1
    # no finished preset trial (a study from before the marker, or its preset trial was stopped): by value alone
    assert best_trial_number(study_of(lucky, better, never_compared)) == 2
    assert preset_trial_number(study_of(lucky, better)) is None
    # the RMSE ceiling comes first: a preset above it does not hold back the trials below it
    assert best_trial_number(study_of(preset_trial, lucky), 0.95) == 0
    assert best_trial_number(study_of(preset_trial, lucky), 0.85) == 0  # every trial above: the gate still holds


def test_the_gain_over_the_preset_is_counted_in_standard_errors_of_the_objective() -> None:
    from embedrec.evaluation import PairedGain

    gain = PairedGain(
        ndcg_gain=0.01, ndcg_se=0.004, n_users=500, mse_gain=0.02, mse_se=0.01, n_ratings=900, base_rmse=0.9
    )
    assert gain_z("ndcg@10", gain) == pytest.approx(2.5)
    assert gain_z("rmse", gain) == pytest.approx(2.0)
    w = 0.35 / (2 * 0.9)  # d RMSE = d MSE / (2 RMSE), weighed as the objective weighs RMSE
    assert gain_z("both", gain) == pytest.approx((0.01 + w * 0.02) / np.hypot(0.004, w * 0.01))
    nothing_ranked = PairedGain(
        ndcg_gain=None, ndcg_se=None, n_users=0, mse_gain=0.02, mse_se=0.01, n_ratings=900, base_rmse=0.9
    )
    assert gain_z("ndcg@10", nothing_ranked) == -math.inf and gain_z("rmse", nothing_ranked) == pytest.approx(2.0)
    same = PairedGain(ndcg_gain=0.0, ndcg_se=0.0, n_users=500, mse_gain=0.0, mse_se=0.0, n_ratings=900, base_rmse=0.9)
    assert gain_z("ndcg@10", same) == 0.0  # the preset against itself is no gain


def test_the_config_text_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    settings = {
        "preset": "default",
        "epochs": 40,
        "seed": 42,
        "lr": 0.0031234567891,
        "weight_decay": 1e-05,
        "embedding_dim": 32,
        "dropout": 0.0,
        "watch_weight": 1.0,
        "hidden": [64, 16],
        "biases": True,
    }
    path = tmp_path / "tuned.toml"
    path.write_text(config_text(settings, header=["a comment"]))
    assert path.read_text().startswith(CONFIG_MARKER)
    loaded = load_config_file(path)
    assert loaded == settings
    assert [type(v) for v in loaded.values()] == [type(v) for v in settings.values()]


def test_help_imports_neither_optuna_nor_jax() -> None:
    code = (
        "import sys\n"
        "from embedrec.cli import app\n"
        "try:\n"
        "    app(['tune', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('optuna', 'sqlalchemy', 'jax', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--budget" in proc.stdout and "--objective" in proc.stdout


def test_bad_options_are_refused_before_any_training(synthetic_prepared: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    mine = tmp_path / "mine.toml"
    mine.write_text("lr = 0.1\n")
    cases = [
        (["--out", str(mine)], "was not written by embedrec tune"),
        (["--out", str(tmp_path / "tuned.json")], "*.toml"),
        (["--preset", "seed"], "--objective ndcg@10 needs the ranking"),
        (["--objective", "mae"], "--objective"),
        (["--trials", "0"], "--trials"),
        (["--max-epochs", "0"], "--max-epochs"),
        (["--data", str(tmp_path / "nowhere")], "no prepared data"),
    ]
    for extra, message in cases:
        result = runner.invoke(
            app, ["tune", "--data", str(synthetic_prepared), "--workdir", str(tmp_path), "--trials", "1", *extra]
        )
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output, (extra, result.output)
    assert mine.read_text() == "lr = 0.1\n"
    assert not (tmp_path / "tune" / "models").exists()


def test_a_refused_option_prints_its_one_line_and_nothing_else(synthetic_prepared: Path, tmp_path: Path) -> None:
    """The progress view was stopped without having started: a blank line on stdout before every error."""
    res = run_cli(["tune", "--data", synthetic_prepared, "--workdir", tmp_path, "--trials", "0"], tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "error: --trials: must be >= 1, got 0\n"


# ---------------------------------------------------------------------------------------------------------------
# Real searches on the synthetic fixture
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two trials of two epochs, through the CLI, as a user would run it."""
    work = tmp_path_factory.mktemp("tuned")
    done = run_cli(["tune", "--data", str(synthetic_prepared), "--workdir", str(work), *SMALL, "--json"], work)
    assert done.returncode == 0, done.stderr
    return work, json.loads(done.stdout)


@pytest.mark.slow
def test_tune_writes_a_config_that_train_uses(tuned, synthetic_prepared: Path) -> None:
    work, report = tuned
    config = Path(report["config"])
    assert config == work / "tuned.toml" and config.read_text().startswith(CONFIG_MARKER)
    assert report["trials"] == {"this_call": 2, "complete": 2, "pruned": 0, "failed": 0, "total": 2}
    assert "embedrec train --config" in report["command"]
    settings = load_config_file(config)
    assert settings == report["best"]["settings"] and settings["epochs"] == 2 and settings["preset"] == "default"
    study = _study(work)
    best = study.trials[report["best"]["trial"]]
    # a ranking objective chooses among the trials whose val RMSE is 1% below the bias baseline's, if any is (after
    # 2 epochs here, often none is)
    ceiling = report["rmse_ceiling"]
    below = [t for t in study.trials if t.user_attrs["metrics"]["val_rmse"] < ceiling]
    # and among the preset's trial (the first) and those that beat it on val beyond the noise
    assert study.trials[0].user_attrs["preset"] is True and report["preset_trial"] == 0
    eligible = [
        t for t in below or study.trials if t.number == 0 or t.user_attrs.get("vs_preset", {}).get("significant")
    ]
    assert best.value == pytest.approx(report["best"]["value"]) == max(t.value for t in eligible)
    if report["best"]["trial"] != 0:
        assert report["vs_preset"]["z"] >= 2.0
    for t in study.trials[1:]:  # a trial that could have been the best was compared with the preset
        if t.value > study.trials[0].value and t.user_attrs["metrics"]["val_rmse"] < ceiling:
            assert t.user_attrs["vs_preset"]["n_users"] > 0
    assert 0.5 < ceiling < 1.5  # 0.99 x the bias baseline's val RMSE, on a 0.5..5 scale
    assert 0 < report["best"]["metrics"]["val_ndcg@10"] <= 1 and report["best"]["metrics"]["val_rmse"] > 0
    # trial runs live under tune/, only the best's and the preset's are kept, and the user's `latest` is not a trial
    assert sorted(p.name for p in (work / "tune" / "models").glob("*/trial-*")) == sorted(
        {f"trial-{report['best']['trial']:04d}", "trial-0000"}
    )
    assert not (work / "models" / "latest").exists()

    run = work / "run"
    done = run_cli(
        [
            "train",
            "--config",
            str(config),
            "--data",
            str(synthetic_prepared),
            "--workdir",
            str(work),
            "--out",
            str(run),
            "--quiet",
            "--json",
        ],
        work,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((run / "model.json").read_text())
    trained = {**meta["model"], **meta["train"]}
    assert meta["preset"] == "default"
    for key, value in settings.items():
        if key != "preset":
            assert trained[key] == value, key
    # same settings, same seed, same data: the trained model is the best trial's model
    assert json.loads(done.stdout)["final"]["val_rmse"] == pytest.approx(report["best"]["metrics"]["val_rmse"])
    assert (work / "models" / "latest").read_text().strip() == str(run.resolve())


@pytest.mark.slow
def test_a_second_call_continues_the_study(tuned, synthetic_prepared: Path, tmp_path: Path) -> None:
    first_work, _ = tuned
    work = tmp_path / "work"
    shutil.copytree(first_work, work)
    done = run_cli(
        [
            "tune",
            "--data",
            str(synthetic_prepared),
            "--workdir",
            str(work),
            "--trials",
            "1",
            "--max-epochs",
            "2",
            "--json",
        ],
        work,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["trials"]["this_call"] == 1 and report["trials"]["total"] == 3
    trials = _study(work).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[2].params != trials[1].params  # the resumed sampler does not replay the first call's samples
    best = json.loads(done.stdout)["best"]["trial"]
    assert sorted(p.name for p in (work / "tune" / "models").glob("*/trial-*")) == sorted(
        {f"trial-{best:04d}", "trial-0000"}
    )
    changed = run_cli(
        ["tune", "--data", str(synthetic_prepared), "--workdir", str(work), "--trials", "1", "--max-epochs", "3"], work
    )
    assert changed.returncode == 2 and "--max-epochs" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.slow
def test_the_test_split_never_changes_a_result(tuned, synthetic_prepared: Path, tmp_path: Path) -> None:
    """The same search on a copy whose test ratings are scrambled gives the same validation numbers, to the bit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    table = pq.read_table(data / "ratings.parquet")
    split = table.column("split").to_numpy()
    rating = table.column("rating").to_numpy().copy()
    is_test = split == 2
    assert is_test.sum() > 1000
    rating[is_test] = np.random.default_rng(0).permutation(np.where(rating[is_test] >= 3, 1.0, 5.0))
    pq.write_table(
        table.set_column(table.column_names.index("rating"), "rating", pa.array(rating, pa.float32())),
        data / "ratings.parquet",
    )
    assert not np.array_equal(
        pq.read_table(data / "ratings.parquet").column("rating").to_numpy(),
        pq.read_table(synthetic_prepared / "ratings.parquet").column("rating").to_numpy(),
    )
    result = tune(data, workdir=tmp_path / "work", n_trials=1, budget_s=None, max_epochs=2)
    first_work, _ = tuned
    original = _study(first_work).trials[0]
    assert result.best_number == 0
    assert result.best_metrics == original.user_attrs["metrics"]
    assert result.best_value == original.value


def test_on_data_the_default_adapts_to_the_first_trial_is_what_train_trains(tmp_path: Path) -> None:
    """The first trial of a new study is the default, so the best tune reports is never worse on val than `train`
    with the same epochs. On a sparse catalogue with short user histories the default adapts ``user_history`` and
    ``negatives``, both searched: a first trial with the preset's own values (off, 64) was not the default."""
    from embedrec.data import PrepareConfig, prepare_synthetic
    from embedrec.runs import _plan_run

    data = tmp_path / "data"
    prepare_synthetic(out=data, n_users=300, n_movies=600, n_ratings=6_000, seed=0, config=PrepareConfig())
    plan = _plan_run(data, out=None, workdir=tmp_path / "plain", preset="default", overrides=None, resume=False)
    assert plan.adapted["user_history"] is True and plan.adapted["negatives"] == 128  # the data is such data
    tune(data, workdir=tmp_path / "work", n_trials=1, budget_s=None, max_epochs=1)
    first = _study(tmp_path / "work").trials[0]
    default = {**to_dict(plan.model_cfg), **to_dict(plan.train_cfg)}
    n_train, _ = plan.prepared.split_extent(0)
    space = search_space(preset="default", n_train=n_train, n_movies=plan.prepared.n_movies, holds=default)
    expected = {p.name: default[p.name] for p in space}
    assert {"user_history", "negatives", "lr", "batch_size"} <= set(expected)
    assert first.params == expected and first.user_attrs["preset"] is True  # every searched setting is the default's
    # ~4,200 training ratings: only batch 128 keeps 50 steps an epoch, so the space holds 256 for the preset alone
    assert next(p for p in space if p.name == "batch_size").choices == (128, 256)


@pytest.mark.slow
def test_on_a_bare_ratings_file_the_number_of_movie_clusters_is_searched_from_the_default(tmp_path: Path) -> None:
    """A plain userId,movieId,rating file of a sparse catalogue: the default learns 16 movie clusters (its first
    trial too), and the search tries other counts, 0 (none) among them; the tuned config names the count."""
    from embedrec.data import PrepareConfig, prepare

    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(300), 20)
    movies = (users % 6 + 6 * rng.integers(0, 100, len(users))).astype(int)  # six taste blocks of 100 movies
    pairs = np.unique(np.stack([users, movies], axis=1), axis=0)
    csv = tmp_path / "ratings.csv"
    stars = rng.integers(1, 6, len(pairs))
    csv.write_text("userId,movieId,rating\n" + "".join(f"{u},{m},{r}\n" for (u, m), r in zip(pairs, stars)))
    data = tmp_path / "data"
    prepare(csv, out=data, config=PrepareConfig(format="csv", ratings_file=str(csv), rating_scale=(1.0, 5.0)))
    result = tune(data, workdir=tmp_path / "work", n_trials=3, budget_s=None, max_epochs=1, out=tmp_path / "t.toml")
    trials = _study(tmp_path / "work").trials
    assert trials[0].params["movie_clusters"] == 16 and trials[0].user_attrs["preset"] is True
    assert all(t.params["movie_clusters"] in (0, 8, 16, 32) for t in trials)
    assert load_config_file(result.config_path)["movie_clusters"] == trials[result.best_number].params["movie_clusters"]


def test_a_pruned_trial_stops_training_and_leaves_nothing(synthetic_prepared: Path, tmp_path: Path) -> None:
    import optuna

    always = optuna.pruners.ThresholdPruner(upper=0.0)  # every RMSE is above 0: prune at the first report
    with pytest.raises(ConfigError, match="no trial finished"):
        tune(
            synthetic_prepared,
            workdir=tmp_path,
            preset="seed",
            objective="rmse",
            n_trials=1,
            budget_s=None,
            max_epochs=3,
            pruner=always,
        )
    (trial,) = _study(tmp_path, "seed-rmse").trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # epochs 2 and 3 never ran
    assert not list((tmp_path / "tune" / "models").glob("*/trial-*"))
    assert not (tmp_path / "tuned.toml").exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_the_budget_stops_a_running_trial(synthetic_prepared: Path, tmp_path: Path) -> None:
    import optuna

    done = run_cli(
        [
            "tune",
            "--data",
            str(synthetic_prepared),
            "--workdir",
            str(tmp_path),
            "--preset",
            "seed",
            "--objective",
            "rmse",
            "--budget",
            "1s",
            "--max-epochs",
            "500",
        ],
        tmp_path,
    )
    assert done.returncode == 2 and "no trial finished" in done.stderr and "Traceback" not in done.stderr
    (trial,) = _study(tmp_path, "seed-rmse").trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "time budget" in trial.user_attrs["reason"]
    assert len(trial.intermediate_values) < 500
    assert not list((tmp_path / "tune" / "models").glob("*/trial-*"))
    # the next call starts again from the preset, since its trial never finished
    again = run_cli(
        [
            "tune",
            "--data",
            str(synthetic_prepared),
            "--workdir",
            str(tmp_path),
            "--preset",
            "seed",
            "--objective",
            "rmse",
            "--budget",
            "1s",
            "--max-epochs",
            "500",
        ],
        tmp_path,
    )
    assert again.returncode == 2
    first, second = _study(tmp_path, "seed-rmse").trials
    point = preset_point("seed", search_space(preset="seed", n_train=14_000, n_movies=400))
    assert point == {"lr": preset("seed")[1].lr, "dropout": preset("seed")[0].dropout}  # the rest is outside the space
    assert {k: first.params[k] for k in point} == {k: second.params[k] for k in point} == point


def test_a_data_set_too_small_for_a_val_split_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """Four ratings at the default --val-frac 0.1: the advice was "--val-frac above 0", which it already was."""
    from embedrec.data.pipeline import prepare

    csv = tmp_path / "four.csv"
    csv.write_text("userId,movieId,rating\n1,1,4\n2,1,3\n1,2,5\n2,2,1\n")
    prepare(str(csv), out=tmp_path / "data")
    res = CliRunner().invoke(app, ["tune", "--workdir", str(tmp_path), "--trials", "1", "--max-epochs", "1"])
    assert res.exit_code == 2
    assert "its --val-frac 0.1 of 4 ratings left none: prepare more ratings" in " ".join(res.output.split())


# ---------------------------------------------------------------------------------------------------------------
# Two commands at once, and a killed call
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_call_after_a_killed_first_trial_still_starts_from_the_preset(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    """A kill -9 during the study's first trial (the preset) left it running in the study; the next call, started
    before Optuna's heartbeat marks it failed, did not queue the preset again, so the study never had one: its
    tuned.toml was the best of the other trials, below the default on val, with nothing saying so."""
    import signal

    import optuna
    from cli import cli_env

    args = ["tune", "--data", str(synthetic_prepared), "--workdir", str(tmp_path), "--trials", "1", "--max-epochs", "1"]
    first = subprocess.Popen([*EMBEDREC, *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL)
    started = tmp_path / "tune" / "models" / "default-ndcg@10" / "trial-0000" / "run.json"
    try:
        for _ in range(1200):
            if started.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert started.exists() and first.poll() is None
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    again = run_cli([*args, "--json"], tmp_path)
    assert again.returncode == 0, again.stderr
    killed, preset_trial = _study(tmp_path).trials
    assert killed.state == optuna.trial.TrialState.FAIL  # its process is gone: failed at once, not after 90 s
    assert preset_trial.user_attrs.get("preset") is True and preset_trial.state == optuna.trial.TrialState.COMPLETE
    assert json.loads(again.stdout)["preset_trial"] == 1
    assert [p.name for p in (tmp_path / "tune" / "models" / "default-ndcg@10").glob("trial-*")] == ["trial-0001"]


@pytest.mark.slow
def test_a_second_tune_of_the_study_keeps_the_trials_another_one_runs(
    tuned, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """Two ``tune`` of one study at once: each deleted every trial folder but the best and the preset's after its
    trials, the other's running trial included (rmtree while it trained: its checkpoints and model were written into
    a folder without run.json, kept forever after). A trial still running in the study, or whose folder a trainer
    holds, is kept; a running trial whose process is gone is failed and its folder removed. The other call here is
    this test: its trial is running in the study, with this process as its owner."""
    import os
    import socket

    import optuna

    from embedrec.locks import run_folder_lock

    work = tmp_path / "work"
    shutil.copytree(tuned[0], work)
    runs = work / "tune" / "models" / "default-ndcg@10"
    study = _study(work)
    live, dead = study.ask(), study.ask()  # another tune's running trial, and a killed tune's
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live.set_user_attr("process", {"host": socket.gethostname(), "pid": os.getpid()})
    dead.set_user_attr("process", {"host": socket.gethostname(), "pid": gone.pid})
    held = runs / "trial-0099"  # a folder a trainer holds now
    for folder in (runs / f"trial-{live.number:04d}", runs / f"trial-{dead.number:04d}", held):
        folder.mkdir()
        shutil.copyfile(runs / "trial-0000" / "run.json", folder / "run.json")
    with run_folder_lock(held):
        done = run_cli(
            ["tune", "--data", synthetic_prepared, "--workdir", work, "--trials", "1", "--max-epochs", "2", "--json"],
            work,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trials"]["this_call"] == 1  # its own trials, not the other call's
    trials = _study(work).trials
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[-1].state == optuna.trial.TrialState.COMPLETE
    names = {p.name for p in runs.glob("trial-*")}
    assert {f"trial-{live.number:04d}", "trial-0099", "trial-0000"} <= names
    assert f"trial-{dead.number:04d}" not in names


@pytest.mark.slow
def test_two_tunes_of_one_study_leave_the_config_on_the_studys_best(tuned, tmp_path: Path, monkeypatch) -> None:
    """Two ``tune`` of one study each read the best trial and wrote the config file: the one that read first (here
    the thread "first", held between its read and its write) could write last, leaving the file on an older best
    than the study's. Reading and writing now happen under one lock on the tune folder, so the second writer waits
    and then reads the study's new best."""
    import threading

    import optuna

    from embedrec import tune as tune_module
    from embedrec.tune import TuneCallbacks, _Search

    work = tmp_path / "work"
    shutil.copytree(tuned[0], work)
    config, root = work / "tuned.toml", work / "tune"
    old_lr = load_config_file(config)["lr"]
    first_read, let_first_write = threading.Event(), threading.Event()
    real_text = tune_module.config_text

    def held_between_read_and_write(settings, *, header):
        if threading.current_thread().name == "first":
            first_read.set()
            let_first_write.wait(30)
        return real_text(settings, header=header)

    monkeypatch.setattr(tune_module, "config_text", held_between_read_and_write)
    search = _Search(
        space=[],
        objective="ndcg@10",
        fixed={"preset": "default", "epochs": 2, "seed": 42},
        data_path=work / "data",
        prepared=None,  # type: ignore[arg-type]  # writing the config reads the study alone
        data_dir=None,
        workdir=work,
        root=root,
        runs_root=root / "models" / "default-ndcg@10",
        db=root / "study.db",
        config_path=config,
        deadline=0.0,
        callbacks=TuneCallbacks(),
        best_before=None,
    )
    first = threading.Thread(target=search.write_config, args=(_study(work),), name="first")
    first.start()
    assert first_read.wait(60)
    # meanwhile the other tune finishes a trial that beats every one (the preset's beyond the noise too)
    study = _study(work)
    settings = {**study.trials[0].user_attrs["settings"], "lr": 0.00777}
    study.add_trial(
        optuna.trial.create_trial(
            value=1.0,
            user_attrs={
                "settings": settings,
                "metrics": {"val_ndcg@10": 1.0, "val_rmse": 0.1},
                "vs_preset": {"z": 9.0, "significant": True},
            },
        )
    )
    second = threading.Thread(target=search.write_config, args=(_study(work),), name="second")
    second.start()
    second.join(timeout=2)
    assert second.is_alive()  # it waits for the first writer
    let_first_write.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert not first.is_alive() and not second.is_alive()
    assert old_lr != 0.00777 and load_config_file(config)["lr"] == 0.00777  # the study's best, not the first's read
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in (tuned[0] / "tune").iterdir())
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # nothing left beside the config


def test_a_prepare_that_replaces_the_data_stops_the_search(synthetic_prepared: Path, tmp_path: Path) -> None:
    """Every trial loads the data folder again: after a ``prepare`` replaced it during the search, the later trials
    trained on the new data in a study of the old (and were compared with the preset on the old val split). The next
    trial now stops the search before it trains, with one line; the config holds the trials of the old data."""
    import optuna

    from embedrec.data import PrepareConfig, prepare_synthetic
    from embedrec.tune import TuneCallbacks

    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)

    class PrepareAfterTheFirstTrial(TuneCallbacks):
        def on_trial_end(self, outcome) -> None:
            if outcome.number == 0:  # another command replaces the data set meanwhile
                prepare_synthetic(out=data, n_users=250, n_movies=300, n_ratings=15_000, seed=1, config=PrepareConfig())

    with pytest.raises(ConfigError, match="was prepared again while tune ran") as err:
        tune(
            data,
            workdir=tmp_path,
            n_trials=2,
            budget_s=None,
            max_epochs=1,
            preset="seed",
            objective="rmse",
            callbacks=PrepareAfterTheFirstTrial(),
        )
    assert "--restart to start this study over on the new data" in str(err.value) and "delete" not in str(err.value)
    first, second = _study(tmp_path, "seed-rmse").trials
    assert first.state == optuna.trial.TrialState.COMPLETE and second.state == optuna.trial.TrialState.FAIL
    assert "epochs" not in second.user_attrs  # it never trained an epoch
    assert not (tmp_path / "tune" / "models" / "seed-rmse" / "trial-0001").exists()
    assert load_config_file(tmp_path / "tuned.toml")["lr"] == first.user_attrs["settings"]["lr"]
    # the next call, on the data as it is now: the study's data is gone, so the fix is a new study, not "the same"
    with pytest.raises(ConfigError, match=r"was run on other data than --data holds now \(prepared again") as err:
        tune(data, workdir=tmp_path, n_trials=1, budget_s=None, max_epochs=1, preset="seed", objective="rmse")
    assert "pass --restart to start this study over" in str(err.value) and "pass the same" not in str(err.value)
    assert "delete" not in str(err.value)


@pytest.mark.slow
def test_restart_starts_only_this_study_over(tuned, synthetic_prepared: Path, tmp_path: Path) -> None:
    """On data prepared again, the refusal said to delete the tune folder, which holds every study of the work folder
    (and their trial models). ``--restart`` deletes only this study and the trial folders embedrec wrote for it (not
    one a process trains into, nor any other file), then tunes from scratch; it is refused while another tune runs
    one of the study's trials, and harmless where there is no study."""
    import os
    import socket

    import optuna

    from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
    from embedrec.locks import run_folder_lock

    work = tmp_path / "work"
    shutil.copytree(tuned[0], work)
    runs = work / "tune" / "models" / "default-ndcg@10"
    other_study = ["--preset", "seed", "--objective", "rmse", "--trials", "1", "--max-epochs", "1"]
    done = run_cli(["tune", "--data", synthetic_prepared, "--workdir", work, *other_study], work)
    assert done.returncode == 0, done.stderr
    seed_trials = len(_study(work, "seed-rmse").trials)
    seed_runs = sorted(p.name for p in (work / "tune" / "models" / "seed-rmse").iterdir())
    assert seed_runs
    new_data = tmp_path / "new-data"  # the data prepared again: another fingerprint
    prepare_synthetic(out=new_data, n_users=250, n_movies=300, n_ratings=15_000, seed=1, config=PrepareConfig())
    args = ["tune", "--data", new_data, "--workdir", work, "--trials", "1", "--max-epochs", "1", "--json"]

    refused = run_cli(args, work)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert "pass --restart to start this study over on this data" in refused.stderr
    assert "delete" not in refused.stderr

    study = _study(work)
    live = study.ask()  # another tune's trial, running now in this process
    live.set_user_attr("process", {"host": socket.gethostname(), "pid": os.getpid()})
    busy = run_cli([*args, "--restart"], work)
    assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    assert f"is running trial {live.number}" in busy.stderr and "Traceback" not in busy.stderr
    assert len(_study(work).trials) == 3 and (runs / "trial-0000").is_dir()  # nothing deleted
    study.tell(live, state=optuna.trial.TrialState.FAIL)

    held, mine = runs / "trial-0099", runs / "notes"  # a folder a trainer holds now, and one embedrec did not write
    held.mkdir()
    shutil.copyfile(runs / "trial-0000" / "run.json", held / "run.json")
    mine.mkdir()
    (mine / "keep.txt").write_text("mine\n")
    with run_folder_lock(held):
        again = run_cli([*args, "--restart"], work)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["trials"]["total"] == report["trials"]["this_call"] == 1 and report["best"]["trial"] == 0
    restarted = _study(work)
    assert restarted.user_attrs["embedrec"]["data_fingerprint"] == load_prepared(new_data).fingerprint
    assert json.loads((runs / "trial-0000" / "run.json").read_text())["data"]["fingerprint"] == (
        load_prepared(new_data).fingerprint
    )  # the new search's trial, not the old study's
    assert sorted(p.name for p in runs.iterdir()) == ["notes", "trial-0000", "trial-0099"]
    assert (mine / "keep.txt").read_text() == "mine\n"
    # the other study of the work folder, and its trial models, are untouched
    assert len(_study(work, "seed-rmse").trials) == seed_trials
    assert sorted(p.name for p in (work / "tune" / "models" / "seed-rmse").iterdir()) == seed_runs

    # no study to restart (no study.db at all, then a study.db without this study): the search just starts
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    done = run_cli(["tune", "--data", synthetic_prepared, "--workdir", fresh, *other_study, "--restart"], fresh)
    assert done.returncode == 0, done.stderr
    assert len(_study(fresh, "seed-rmse").trials) == 1
    rmse_study = ["--objective", "rmse", "--trials", "1", "--max-epochs", "1", "--restart"]
    done = run_cli(["tune", "--data", synthetic_prepared, "--workdir", fresh, *rmse_study], fresh)
    assert done.returncode == 0, done.stderr
    assert len(_study(fresh, "default-rmse").trials) == 1 and len(_study(fresh, "seed-rmse").trials) == 1


def test_restart_drops_the_tune_folders_latest_only_when_it_names_a_trial_of_that_study(tuned, tmp_path: Path) -> None:
    """The tune folder's ``latest`` names the best trial of its last search: a restart of that study deletes the
    trial, so the pointer goes with it; a pointer into another study's trials stays."""
    import optuna

    from embedrec import tune
    from embedrec.workdir import latest_run

    work = tmp_path / "work"
    shutil.copytree(tuned[0], work)
    root = work / "tune"
    runs = root / "models" / "default-ndcg@10"
    assert runs in latest_run(root).parents  # the fixture's search: its best trial is the latest
    (root / "models" / "seed-rmse" / "trial-0000").mkdir(parents=True)
    (root / "models" / "latest").write_text("seed-rmse/trial-0000\n")
    tune._restart_study(root / "study.db", name="default-ndcg@10", runs_root=runs)
    assert latest_run(root) == root / "models" / "seed-rmse" / "trial-0000"  # another study's: kept
    shutil.rmtree(work)
    shutil.copytree(tuned[0], work)
    tune._restart_study(root / "study.db", name="default-ndcg@10", runs_root=runs)
    assert not (root / "models" / "latest").exists()
    assert "default-ndcg@10" not in optuna.get_all_study_names(f"sqlite:///{root / 'study.db'}")


def test_an_out_that_cannot_be_written_is_refused_before_any_trial(synthetic_prepared: Path, tmp_path: Path) -> None:
    """An unwritable ``--out`` was found only when the first best trial was written, after its training (with
    ``--budget 10m``, up to the whole budget). A read-only file system is a tmpfs mounted read-only (skipped where
    mounting is not allowed); a missing folder under it is found too, and nothing is created."""
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        for out in (ro / "tuned.toml", ro / "a" / "b" / "tuned.toml"):
            res = run_cli(
                ["tune", "--data", synthetic_prepared, "--workdir", tmp_path, "--trials", "1", "--out", out], tmp_path
            )
            assert res.returncode == 2, res.stderr
            assert res.stderr.strip() == (
                f"error: {out}: the file system is read-only: choose a folder on a writable disk"
            )
            assert os.listdir(ro) == []
        assert not (tmp_path / "tune").exists()
    finally:
        subprocess.run(["umount", str(ro)], check=False)
