"""Training on real runs: learning, determinism, optimisers, checkpoints, resume after a kill, NaN stop, sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli import EMBEDREC, run_cli

from embedrec.artifacts import load_arrays, load_model
from embedrec.checkpoints import CheckpointDir
from embedrec.config import preset
from embedrec.data import load_prepared
from embedrec.data.split import TRAIN, VAL
from embedrec.errors import ArtifactError, TrainingDiverged
from embedrec.train import train


def _seed_cfg(**train_changes):
    model_cfg, train_cfg = preset("seed")
    return model_cfg, train_cfg.replace(**{"epochs": 3, "batch_size": 512, **train_changes})


@pytest.fixture(scope="module")
def prepared(synthetic_prepared: Path):
    return load_prepared(synthetic_prepared)


def test_loss_decreases_and_beats_the_global_mean(prepared) -> None:
    model_cfg, train_cfg = _seed_cfg(lr=3e-3)
    result = train(prepared, model_cfg, train_cfg)
    losses = [h["train_loss"] for h in result.history]
    assert losses[0] > losses[1] > losses[2]
    val = prepared.split == VAL
    mean_rmse = float(np.sqrt(np.mean((prepared.rating[val] - prepared.rating[prepared.split == TRAIN].mean()) ** 2)))
    assert result.history[-1]["val_rmse"] < mean_rmse - 0.05
    for record in result.history:
        assert set(record) >= {"epoch", "train_loss", "val_rmse", "val_mae", "seconds", "samples_per_s"}
        assert record["samples_per_s"] > 0


def test_same_seed_same_numbers_other_seed_other_numbers(prepared) -> None:
    model_cfg, train_cfg = _seed_cfg(epochs=1)
    a = train(prepared, model_cfg, train_cfg)
    b = train(prepared, model_cfg, train_cfg)
    c = train(prepared, model_cfg, train_cfg.replace(seed=7))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    np.testing.assert_array_equal(a.model.tables()["movie_embedding"], b.model.tables()["movie_embedding"])
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]


def test_sparse_adams_learn_as_well_as_dense_adam(prepared) -> None:
    model_cfg, train_cfg = _seed_cfg(epochs=3, lr=3e-3)
    dense = train(prepared, model_cfg, train_cfg.replace(optimizer="adam"))
    for name in ("lazy_adam", "rowwise_adam"):
        sparse = train(prepared, model_cfg, train_cfg.replace(optimizer=name))
        for sp, dn in zip(sparse.history, dense.history):
            assert sp["val_rmse"] <= dn["val_rmse"] + 0.01, name


def test_early_stopping_restores_the_best_epoch(prepared) -> None:
    model_cfg, train_cfg = _seed_cfg(epochs=12, lr=2e-2, patience=2)
    result = train(prepared, model_cfg, train_cfg)
    best = min(result.history, key=lambda h: h["val_rmse"])
    assert result.best_epoch == best["epoch"]
    if result.stopped_early:
        assert len(result.history) == best["epoch"] + 2
    # the returned model carries the best epoch's weights: recompute its val RMSE
    from embedrec.model import genre_inputs

    gi = genre_inputs(prepared, model_cfg.genre_mode)
    val = prepared.split == VAL
    u, m = prepared.user_idx[val], prepared.movie_idx[val]
    pred = np.asarray(result.model(u, m, gi.idx[m], gi.weight[m]))
    assert float(np.sqrt(np.mean((pred - prepared.rating[val]) ** 2))) == pytest.approx(best["val_rmse"], abs=1e-4)


def test_nan_loss_stops_with_epoch_and_step(prepared, tmp_path: Path) -> None:
    model_cfg, train_cfg = _seed_cfg(epochs=2, lr=1e35)
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+"):
        train(prepared, model_cfg, train_cfg, checkpointer=ckpt)
    assert ckpt.load() is None  # nothing bad was written


@pytest.mark.parametrize("user_history", [False, True])
def test_resume_after_a_kill_ends_with_the_same_weights(
    synthetic_prepared: Path, tmp_path: Path, user_history: bool
) -> None:
    common = [
        "train",
        "--data",
        str(synthetic_prepared),
        "--preset",
        "seed",
        "--epochs",
        "6",
        "--batch-size",
        "256",
        "--quiet",
    ]
    if user_history:  # the history rows live in the checkpointed slab; their samples are counter-based
        (tmp_path / "history.toml").write_text("user_history = true\nhistory_samples = 8\n")
        common += ["--config", str(tmp_path / "history.toml")]
    straight = tmp_path / "straight"
    done = run_cli(common + ["--out", str(straight)], tmp_path)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        EMBEDREC + common + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    marker = killed / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists():
        time.sleep(0.02)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: a hard crash, possibly mid-save
    proc.wait()
    assert marker.exists(), "training never wrote a checkpoint"
    assert not (killed / "model.json").exists(), "the run finished before it could be killed; make it longer"

    resumed = run_cli(common + ["--out", str(killed), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = load_arrays(straight / "weights.safetensors")
    b = load_arrays(killed / "weights.safetensors")
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (
        json.loads((straight / "history.json").read_text())[-1]["val_rmse"]
        == json.loads((killed / "history.json").read_text())[-1]["val_rmse"]
    )


def test_ctrl_c_saves_a_checkpoint_and_exits_130(synthetic_prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        EMBEDREC
        + [
            "train",
            "--data",
            str(synthetic_prepared),
            "--preset",
            "seed",
            "--epochs",
            "200",
            "--batch-size",
            "128",
            "--out",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "LATEST").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "embedrec train --resume" in err
    assert CheckpointDir(run / "checkpoints").load() is not None
    assert "Traceback" not in err


def test_resume_refuses_re_prepared_data(synthetic_prepared: Path, tmp_path: Path) -> None:
    from embedrec.data import PrepareConfig, prepare_synthetic

    run = tmp_path / "run"
    first = run_cli(
        ["train", "--data", str(synthetic_prepared), "--preset", "seed", "--epochs", "1", "--out", str(run), "--quiet"],
        tmp_path,
    )
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other"
    prepare_synthetic(out=other, n_users=300, n_movies=400, n_ratings=20_000, seed=0, config=PrepareConfig(seed=1))
    again = run_cli(["train", "--data", str(other), "--out", str(run), "--resume", "--epochs", "2"], tmp_path)
    assert again.returncode == 2
    assert "re-prepared" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_resume_with_other_settings_names_them_by_key(synthetic_prepared: Path, tmp_path: Path) -> None:
    """The Python API's names (the CLI names them by flag or --config key: test_bad_inputs.py)."""
    from embedrec.errors import ResumeChangesSettings
    from embedrec.runs import train_run

    run = tmp_path / "run"
    train_run(synthetic_prepared, out=run, preset="seed", overrides={"epochs": 1})
    with pytest.raises(ResumeChangesSettings) as caught:
        train_run(synthetic_prepared, out=run, resume=True, overrides={"epochs": 2, "row_decay": 0.5, "lr": 0.5})
    assert caught.value.settings == ["row_decay", "lr"]
    assert str(caught.value).endswith("run.json; drop row_decay, lr (only epochs may change)")
    named = caught.value.named(lambda setting: f"<{setting}>")
    assert str(named).endswith("drop <row_decay>, <lr> (only <epochs> may change)")
    # the run's own settings spelled as another number type (1024.0 for its batch 1024, 0 for its weight decay 0.0)
    # are the same settings: the run resumes
    same = {"epochs": 2, "batch_size": 1024.0, "weight_decay": 0, "hidden": [64.0, 10]}
    resumed = train_run(synthetic_prepared, out=run, resume=True, overrides=same)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_two_devices_match_one(synthetic_prepared: Path, tmp_path: Path) -> None:
    script = (
        "import sys, numpy as np, jax\n"
        "from embedrec.data import load_prepared\n"
        "from embedrec.config import preset\n"
        "from embedrec.train import train\n"
        "m, t = preset('default')\n"
        "t = t.replace(epochs=2, patience=0, val_users=0, batch_size=256, shard_tables=sys.argv[3] == 'rows')\n"
        "r = train(load_prepared(sys.argv[1]), m, t)\n"
        "np.savez(sys.argv[2], n=jax.device_count(), loss=r.history[-1]['train_loss'],"
        " **{k: np.asarray(v) for k, v in r.model.tables().items()})\n"
    )
    outs = []
    for n, tables in ((1, "rows"), (2, "rows"), (2, "replicated")):
        out = tmp_path / f"d{n}-{tables}.npz"
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        done = subprocess.run(
            [sys.executable, "-c", script, str(synthetic_prepared), str(out), tables],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        outs.append(np.load(out))
    one, two, replicated = outs
    assert int(one["n"]) == 1 and int(two["n"]) == 2
    assert float(one["loss"]) == pytest.approx(float(two["loss"]), rel=1e-5)
    for name in ("user_embedding", "movie_embedding", "genre_embedding", "watch_bias"):
        np.testing.assert_allclose(one[name], two[name], atol=2e-3, err_msg=name)
        # tables split by rows over the devices train exactly as tables replicated on each
        np.testing.assert_allclose(two[name], replicated[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_artifact_round_trip_predicts_the_same(synthetic_prepared: Path, tmp_path: Path) -> None:
    from embedrec.model import genre_inputs
    from embedrec.runs import train_run

    result = train_run(
        synthetic_prepared, out=tmp_path / "run", workdir=tmp_path, preset="default", overrides={"epochs": 2}
    )
    artifact = load_model(result.run_dir)
    assert artifact.meta["n_params"] == result.n_params
    assert artifact.fingerprint == load_prepared(synthetic_prepared).fingerprint
    assert artifact.meta["ranking"]["score"] == "blend"
    module = artifact.to_flax()
    data = load_prepared(synthetic_prepared)
    gi = genre_inputs(data, artifact.model.genre_mode)
    u, m = data.user_idx[:500], data.movie_idx[:500]
    reloaded = np.asarray(module(u, m, gi.idx[m], gi.weight[m]))
    assert np.all(np.isfinite(reloaded))
    # the folder is complete and self-describing
    for name in (
        "model.json",
        "weights.safetensors",
        "history.json",
        "learning_curve.png",
        "users.parquet",
        "movies.parquet",
        "vocab.json",
        "run.json",
    ):
        assert (result.run_dir / name).is_file(), name
    assert (tmp_path / "models" / "latest").read_text().strip() == str(result.run_dir.resolve())
    # where the run's time went, phase by phase, in model.json and in the result
    timings = json.loads((result.run_dir / "model.json").read_text())["timings"]
    assert {"setup_s", "epochs_s", "validation_s", "checkpoints_s", "ranking_choice_s"} <= set(timings)
    assert all(v >= 0 for v in timings.values()) and timings["epochs_s"] > 0
    assert result.timings["write_s"] >= 0 and result.timings["epochs_s"] == timings["epochs_s"]
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and "val_ndcg@10" in history[0]
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_with_a_user_history_the_saved_model_serves_what_training_validated(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    from embedrec.history import UserHistories
    from embedrec.runs import train_run
    from embedrec.scoring import Scorer

    result = train_run(
        synthetic_prepared,
        out=tmp_path / "run",
        workdir=tmp_path,
        preset="default",
        overrides={"epochs": 3, "user_history": True},
    )
    artifact = load_model(result.run_dir)
    assert artifact.model.user_history and artifact.meta["schema_version"] == 3
    data = load_prepared(synthetic_prepared)
    history_rows = artifact.weights["history_embedding"]
    assert np.abs(history_rows).max() > 1e-2  # the history input learned
    # served: each user's exact mean over every training movie (training sampled them)
    np.testing.assert_allclose(
        artifact.weights["user_history_vector"], UserHistories.of_prepared(data).means(history_rows), rtol=1e-6
    )
    val = data.split == VAL
    served = Scorer.from_artifact(artifact).predict_pairs(data.user_idx[val], data.movie_idx[val])
    kept = result.history[result.best_epoch - 1]
    assert float(np.sqrt(np.mean((served - data.rating[val]) ** 2))) == pytest.approx(kept["val_rmse"], rel=1e-5)
    mean_rmse = float(np.sqrt(np.mean((data.rating[val] - data.rating[data.split == TRAIN].mean()) ** 2)))
    assert kept["val_rmse"] < mean_rmse - 0.05 and kept["val_ndcg@10"] > 0


def test_config_file_and_info_json(synthetic_prepared: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "hp.toml"
    cfg.write_text('preset = "seed"\nepochs = 1\nhidden = [32, 8]\nbatch-size = 256\n')
    run = tmp_path / "run"
    done = run_cli(
        ["train", "--data", str(synthetic_prepared), "--config", str(cfg), "--out", str(run), "--quiet"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    info = run_cli(["info", str(run), "--json"], tmp_path)
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["model"]["hidden"] == [32, 8] and meta["train"]["batch_size"] == 256
    data = load_prepared(synthetic_prepared)
    d = 50
    expected = (data.n_users + data.n_movies + data.n_genre_strings) * d + (3 * d * 32 + 32) + (32 * 8 + 8) + 9
    assert meta["n_params"] == expected
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 0.1}')
    fail = run_cli(
        ["train", "--data", str(synthetic_prepared), "--config", str(bad), "--out", str(tmp_path / "x")], tmp_path
    )
    assert fail.returncode == 2 and "learning_rate" in fail.stderr and "Traceback" not in fail.stderr


def test_without_early_stopping_the_reported_epoch_is_the_saved_one(synthetic_prepared: Path, tmp_path: Path) -> None:
    from embedrec.runs import train_run

    result = train_run(
        synthetic_prepared, out=tmp_path / "run", workdir=tmp_path, preset="seed", overrides={"epochs": 4, "lr": 0.05}
    )
    assert result.best_epoch == 4  # patience 0: the last epoch's weights are the model, as in the original
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert meta["metrics"]["val_rmse"] == result.history[-1]["val_rmse"]
    resumed = run_cli(["train", "--resume", "--out", str(result.run_dir)], tmp_path)
    assert resumed.returncode == 2 and "already finished its 4 epochs" in resumed.stderr


def test_other_rating_scales_and_no_val_split_train_and_print_strict_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    csv = tmp_path / "ratings.csv"
    users = rng.integers(1, 80, n)
    movies = rng.integers(1, 60, n)
    stars = rng.integers(1, 4, n)  # a 1..3 scale
    csv.write_text("userId,movieId,rating\n" + "".join(f"{u},{m},{r}\n" for u, m, r in zip(users, movies, stars)))
    work = tmp_path / "w"
    prep = run_cli(
        ["prepare", str(csv), "--workdir", str(work), "--time-col", "", "--val-frac", "0", "--json"], tmp_path
    )
    assert prep.returncode == 0, prep.stderr
    done = run_cli(["train", "--workdir", str(work), "--epochs", "2", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # strict JSON: no bare NaN for the missing val metrics
    assert out["final"]["val_rmse"] is None
    info = run_cli(["info", "--workdir", str(work), "--json"], tmp_path)
    assert info.returncode == 0 and json.loads(info.stdout)["shape"]["rating_max"] == 3.0


def test_config_values_of_the_wrong_type_are_one_line_errors(synthetic_prepared: Path, tmp_path: Path) -> None:
    for text, key in (('{"lr": "0.1"}', "lr"), ('{"hidden": 64}', "hidden"), ('{"batch_size": 1.5}', "batch_size")):
        cfg = tmp_path / "hp.json"
        cfg.write_text(text)
        fail = run_cli(
            ["train", "--data", str(synthetic_prepared), "--config", str(cfg), "--out", str(tmp_path / "x")], tmp_path
        )
        assert fail.returncode == 2, fail.stderr
        assert str(cfg) in fail.stderr and key in fail.stderr and "Traceback" not in fail.stderr
        assert not (tmp_path / "x").exists()  # nothing half-made is left behind


def test_with_rmse_slack_the_kept_epoch_ranks_best_within_the_slack_of_the_best_rmse() -> None:
    from embedrec.train import BestEpoch, select_epoch

    best = BestEpoch()
    curve = [(1.00, 0.10), (0.95, 0.12), (0.955, 0.15), (0.97, 0.20), (0.94, 0.13), (0.96, 0.14)]
    decisions = [select_epoch(best, {"val_rmse": r, "val_ndcg@10": n}, rmse_slack=0.01, has_val=True) for r, n in curve]
    # epoch 3 ranks better within 1% of 0.95; epoch 4 is 2% off; epoch 5 sets a new best RMSE (0.94), so epoch 3
    # (0.955 > 0.9494) no longer qualifies and epoch 5 replaces it; epoch 6 is outside the slack of 0.94
    assert [keep for keep, _ in decisions] == [True, True, True, False, True, False]
    assert [improved for _, improved in decisions] == [True, True, True, True, True, False]
    # without slack: plain early stopping on val RMSE, whatever the ranking does
    best = BestEpoch()
    plain = [select_epoch(best, {"val_rmse": r, "val_ndcg@10": n}, rmse_slack=0.0, has_val=True) for r, n in curve]
    assert plain == [(True, True), (True, True), (False, False), (False, False), (True, True), (False, False)]


def test_a_user_without_training_ratings_is_scored_as_the_average_user() -> None:
    from embedrec.train import untrained_users_as_average

    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    bias = np.array([[1.0], [3.0], [9.0], [7.0]], np.float32)
    trained = np.array([True, True, False, False])
    out = untrained_users_as_average({"user_embedding": emb, "user_bias": bias, "movie_bias": bias}, trained)
    np.testing.assert_allclose(np.asarray(out["user_embedding"])[2:], [[1.5, 2.5, 3.5]] * 2)
    np.testing.assert_allclose(np.asarray(out["user_bias"])[:, 0], [1.0, 3.0, 2.0, 2.0])
    np.testing.assert_array_equal(np.asarray(out["user_embedding"])[:2], emb[:2])
    np.testing.assert_array_equal(np.asarray(out["movie_bias"]), bias)  # movies are not users


def test_at_rating_embedding_grad_zero_the_ratings_never_move_the_embeddings(prepared) -> None:
    from flax import nnx

    from embedrec.model import EmbeddingConcat, data_shape, genre_inputs

    model_cfg, train_cfg = preset("default")
    train_cfg = train_cfg.replace(
        epochs=2, patience=0, negatives=0, weight_decay=0.0, rating_embedding_grad=0.0, val_users=0
    )
    result = train(prepared, model_cfg, train_cfg)
    shape = data_shape(prepared, genre_inputs(prepared, model_cfg.genre_mode))
    init = EmbeddingConcat(model_cfg, shape, rngs=nnx.Rngs(train_cfg.seed)).tables()
    trained = result.model.tables()
    np.testing.assert_array_equal(np.asarray(trained["movie_embedding"]), np.asarray(init["movie_embedding"]))
    np.testing.assert_array_equal(np.asarray(trained["genre_embedding"]), np.asarray(init["genre_embedding"]))
    assert not np.allclose(np.asarray(trained["movie_bias"]), 0.0)  # the rating output itself did learn
    assert result.history[-1]["val_rmse"] < result.history[0]["val_rmse"] + 0.05


def test_the_baseline_blend_is_the_same_network_with_its_rating_logit_mixed(prepared) -> None:
    import jax
    from flax import nnx

    from embedrec.baselines import SigmoidBiasBaseline
    from embedrec.model import EmbeddingConcat, data_shape, genre_inputs
    from embedrec.scoring import Scorer
    from embedrec.train import blend_rating_biases
    from embedrec.validation import scoring_weights

    model_cfg, _ = preset("default")
    genres = genre_inputs(prepared, model_cfg.genre_mode)
    shape = data_shape(prepared, genres)
    model = EmbeddingConcat(model_cfg, shape, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(3)
    tables = dict(model.tables())
    for name in ("user_bias", "movie_bias"):
        tables[name] = rng.normal(0, 0.5, tables[name].shape).astype(np.float32)
    _, head = nnx.split(model.head)
    train_mask = prepared.split == TRAIN
    baseline = SigmoidBiasBaseline(rating_min=shape.rating_min, rating_max=shape.rating_max).fit(
        prepared.user_idx[train_mask],
        prepared.movie_idx[train_mask],
        prepared.rating[train_mask],
        n_users=shape.n_users,
        n_movies=shape.n_movies,
    )
    users, movies = prepared.user_idx[:500], prepared.movie_idx[:500]

    def logit(head_state, tables_):
        scorer = Scorer.from_weights(scoring_weights(head_state, tables_, genres), model_cfg, shape)
        pred = scorer.predict_pairs(users, movies).astype(np.float64)
        q = (pred - shape.rating_min) / (shape.rating_max - shape.rating_min)
        return np.log(q / (1 - q))

    network = logit(head, tables)
    for share in (1.0, 0.625, 0.0):  # 0: the bias baseline alone, its predictions exactly
        blended = blend_rating_biases({"head": head, "tables": tables}, baseline, share)
        expected = share * network + (1 - share) * baseline.logit(users, movies)
        np.testing.assert_allclose(logit(blended["head"], blended["tables"]), expected, atol=2e-3)
        for name in ("user_embedding", "movie_embedding", "genre_embedding"):  # the watch output is untouched
            np.testing.assert_array_equal(np.asarray(blended["tables"][name]), np.asarray(tables[name]))
    assert jax.tree.structure(blended["head"]) == jax.tree.structure(head)
    alone = blend_rating_biases({"head": head, "tables": tables}, baseline, 0.0)
    served = Scorer.from_weights(scoring_weights(alone["head"], alone["tables"], genres), model_cfg, shape)
    np.testing.assert_allclose(served.predict_pairs(users, movies), baseline.predict(users, movies), atol=1e-5)


def test_with_the_baseline_blend_training_keeps_the_share_that_the_val_split_prefers(prepared) -> None:
    from embedrec.train import BASELINE_BLEND_WEIGHTS

    model_cfg, train_cfg = preset("default")
    train_cfg = train_cfg.replace(epochs=2, patience=0, negatives=8, val_users=100, baseline_blend=True)
    result = train(prepared, model_cfg, train_cfg)
    blend = result.info["baseline_blend"]
    assert blend["network_share"] in BASELINE_BLEND_WEIGHTS
    assert blend["val_rmse"] == min(blend["val_rmse_by_share"].values()) <= blend["val_rmse_by_share"]["1"]
    assert blend["val_rmse_by_share"]["1"] == pytest.approx(result.history[-1]["val_rmse"], abs=1e-5)
    val = prepared.split == VAL
    u, m = prepared.user_idx[val], prepared.movie_idx[val]
    pred = np.asarray(result.model(u, m, result.genres.idx[m], result.genres.weight[m]))
    served_rmse = float(np.sqrt(np.mean((pred - prepared.rating[val]) ** 2)))
    assert served_rmse == pytest.approx(blend["val_rmse"], abs=1e-5)  # the model returned is the one chosen
    off = train(prepared, model_cfg, train_cfg.replace(baseline_blend=False))
    assert "baseline_blend" not in off.info


def test_an_interrupted_run_does_not_fit_the_baseline_blend(prepared) -> None:
    """An interrupted run writes no model (its checkpoint is what resumes), so the blend (a bias fit over every
    training rating and five val predictions: seconds at full MovieLens scale) would only delay the Ctrl-C or a tune
    trial stopped by its budget."""
    model_cfg, train_cfg = preset("default")
    train_cfg = train_cfg.replace(epochs=2, patience=0, negatives=8, val_users=100, baseline_blend=True)
    stopped = train(prepared, model_cfg, train_cfg, stop_requested=lambda: True)
    assert stopped.interrupted and "baseline_blend" not in stopped.info


def test_above_the_cap_val_rmse_is_that_of_a_fixed_sample_of_val_ratings(prepared, monkeypatch) -> None:
    from flax import nnx

    import embedrec.train as train_module
    from embedrec.scoring import Scorer
    from embedrec.train import Ratings
    from embedrec.validation import scoring_weights

    full = Ratings.of_split(prepared, VAL, np.float64)
    cap = len(full.users) // 4
    sample = full.sample(cap)
    assert full.sample(len(full.users)) is full  # at or under the cap: every val rating
    assert len(sample.users) == cap
    again = full.sample(cap)  # the same ratings every time
    for a, b in ((sample.users, again.users), (sample.movies, again.movies), (sample.ratings, again.ratings)):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(train_module, "VAL_RATINGS_MAX", cap)
    model_cfg, train_cfg = _seed_cfg(epochs=1, lr=3e-3)
    result = train(prepared, model_cfg, train_cfg)
    model = result.model
    scorer = Scorer.from_weights(
        scoring_weights(nnx.state(model.head), model.tables(), result.genres), model_cfg, result.shape
    )

    def rmse(split: Ratings) -> float:
        return float(np.sqrt(np.mean((scorer.predict_pairs(split.users, split.movies) - split.ratings) ** 2)))

    assert result.history[0]["val_rmse"] == pytest.approx(rmse(sample), rel=1e-6)
    assert result.history[0]["val_rmse"] != pytest.approx(rmse(full), rel=1e-6)


def test_an_initialised_model_started_early_trains_to_the_same_numbers(prepared) -> None:
    """What train_run does (the model initialised in a thread before the ratings are read) is what train does."""
    from concurrent.futures import ThreadPoolExecutor

    from embedrec.train import initialise

    model_cfg, train_cfg = _seed_cfg(epochs=1)
    plain = train(prepared, model_cfg, train_cfg)
    with ThreadPoolExecutor(1) as pool:
        early = train(
            prepared, model_cfg, train_cfg, initialised=pool.submit(initialise, prepared, model_cfg, train_cfg)
        )
    assert early.history[0]["train_loss"] == plain.history[0]["train_loss"]
    np.testing.assert_array_equal(early.model.tables()["movie_embedding"], plain.model.tables()["movie_embedding"])
    with ThreadPoolExecutor(1) as pool:
        once = pool.submit(initialise, prepared, model_cfg, train_cfg)
        train(prepared, model_cfg, train_cfg, initialised=once)
        with pytest.raises(ValueError, match="trained a run already"):  # its buffers were donated to that run
            train(prepared, model_cfg, train_cfg, initialised=once)


def test_an_initialised_model_of_other_settings_or_other_data_is_refused(prepared, tmp_path: Path) -> None:
    """Tables sized for another catalogue would not fail where they are used (JAX clamps an index to the last row):
    the model must have been initialised for this data, not only for these settings."""
    from concurrent.futures import Future

    from embedrec.data import PrepareConfig, prepare_synthetic
    from embedrec.train import initialise

    model_cfg, train_cfg = _seed_cfg(epochs=1)
    other_path = tmp_path / "other"
    prepare_synthetic(out=other_path, n_users=200, n_movies=900, n_ratings=8_000, seed=1, config=PrepareConfig())
    other = load_prepared(other_path)

    def ready(init) -> Future:
        done: Future = Future()
        done.set_result(init)
        return done

    with pytest.raises(ValueError, match="settings"):
        train(
            prepared,
            model_cfg,
            train_cfg,
            initialised=ready(initialise(prepared, model_cfg, train_cfg.replace(seed=9))),
        )
    with pytest.raises(ValueError, match="data"):
        train(prepared, model_cfg, train_cfg, initialised=ready(initialise(other, model_cfg, train_cfg)))


def test_an_epochs_order_is_numpys_permutation_below_the_bucketed_size_and_as_uniform_above_it() -> None:
    """Small data keeps numpy's orders (every figure measured on it stays); from BUCKETED_ORDER_MIN on the order is
    the bucketed shuffle, which must still be a permutation, fixed by (seed, epoch), and uniform: where each index
    lands, and which index comes first, are spread evenly over many seeds (a chi-square bound that an order keeping
    low indices early, as grouping without the in-bucket shuffles would, fails by far)."""
    from embedrec.train import BUCKETED_ORDER_MIN, epoch_order

    assert BUCKETED_ORDER_MIN >= 1 << 20  # the quality matrix and the tests' data sets are far below it
    np.testing.assert_array_equal(epoch_order(5_000, 42, 3), np.random.default_rng([42, 3]).permutation(5_000))

    big = epoch_order(70_000, 42, 1, bucketed_from=0)
    np.testing.assert_array_equal(np.sort(big), np.arange(70_000))
    np.testing.assert_array_equal(big, epoch_order(70_000, 42, 1, bucketed_from=0))
    assert not np.array_equal(big, epoch_order(70_000, 42, 2, bucketed_from=0))
    assert not np.array_equal(big, epoch_order(70_000, 7, 1, bucketed_from=0))

    n, draws, bins = 4_096, 1_600, 16  # 16 indices a bucket: the in-bucket shuffles matter
    orders = np.stack([epoch_order(n, seed, 1, bucketed_from=0) for seed in range(draws)])
    expected = draws / bins
    first = np.bincount(orders[:, 0] * bins // n, minlength=bins)  # which index comes first (in 16 ranges)
    where_zero = np.bincount(np.argmax(orders == 0, axis=1) * bins // n, minlength=bins)  # where index 0 lands
    for counts in (first, where_zero):
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 50, counts  # 15 degrees of freedom: mean 15, sd 5.5 (without the in-bucket shuffles: 10,000)


def test_a_checkpoint_written_before_the_bucketed_order_resumes_in_numpys_order(
    prepared, tmp_path: Path, monkeypatch
) -> None:
    """A run stopped by an embedrec that shuffled every epoch with numpy's permutation must finish in that order
    (the bucketed one would repeat some of the epoch's ratings and skip others); a checkpoint that names the
    bucketed order resumes in it. The bucketed order is forced at this small size through its size parameter."""
    import shutil

    import embedrec.train as train_module

    monkeypatch.setattr(train_module, "BUCKETED_ORDER_MIN", 0)
    calls: list[int] = []
    real_order = train_module.epoch_order

    def spy(n: int, seed: int, epoch: int, *, bucketed_from: int) -> np.ndarray:
        calls.append(bucketed_from)
        return real_order(n, seed, epoch, bucketed_from=bucketed_from)

    monkeypatch.setattr(train_module, "epoch_order", spy)
    model_cfg, train_cfg = _seed_cfg(epochs=1)
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    train(prepared, model_cfg, train_cfg, checkpointer=ckpt)
    assert calls and set(calls) == {0}
    meta_file = max((tmp_path / "checkpoints").glob("epoch-*")) / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["epoch_order"] == train_module.EPOCH_ORDER

    calls.clear()
    train(prepared, model_cfg, train_cfg.replace(epochs=2), checkpointer=ckpt, resume=True)
    assert calls and set(calls) == {0}  # its own order

    del meta["epoch_order"]  # as the embedrec before the bucketed order wrote it
    meta_file.write_text(json.dumps(meta))
    for newer in (tmp_path / "checkpoints").glob("epoch-*"):
        if newer != meta_file.parent:
            shutil.rmtree(newer)
    calls.clear()
    train(prepared, model_cfg, train_cfg.replace(epochs=2), checkpointer=ckpt, resume=True)
    assert calls and set(calls) == {sys.maxsize}  # numpy's permutation, whatever the size
    latest = max((tmp_path / "checkpoints").glob("epoch-*")) / "meta.json"
    assert json.loads(latest.read_text())["epoch_order"] == "numpy"  # and it says so for the next resume
