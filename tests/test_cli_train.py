"""`embedrec train` and `embedrec info` argument handling, with the training call patched out (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrec.cli import app
from embedrec.runs import RunResult

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict]:
    """Replace the training run: record its arguments and return a finished two-epoch result."""
    import embedrec.runs

    seen: list[dict] = []

    def fake_train_run(data_dir, **kwargs) -> RunResult:
        seen.append({"data_dir": data_dir, **kwargs})
        history = [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "val_rmse": 0.9,
                "val_mae": 0.7,
                "seconds": 1.0,
                "samples_per_s": 10.0,
                "lr": 0.001,
            }
            for e in (1, 2)
        ]
        return RunResult(
            run_dir=tmp_path / "run",
            history=history,
            interrupted=False,
            stopped_early=False,
            best_epoch=2,
            n_params=1234,
            ranking={"score": "rating"},
            summary_rows=[],
        )

    monkeypatch.setattr(embedrec.runs, "train_run", fake_train_run)
    return seen


def test_flags_become_overrides_with_library_names(calls: list[dict], tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tmp_path / "d"),
            "--workdir",
            str(tmp_path),
            "--preset",
            "seed",
            "--hidden",
            "32, 8",
            "--optimizer",
            "lazy-adam",
            "--lr",
            "0.01",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    (call,) = calls
    assert call["data_dir"] == tmp_path / "d" and call["preset"] == "seed" and call["resume"] is False
    assert call["overrides"] == {"hidden": (32, 8), "optimizer": "lazy_adam", "lr": 0.01}
    assert "1,234 parameters" in res.output and "val RMSE 0.9000" in res.output


def test_the_rating_blend_is_reported_in_text_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataclasses

    import embedrec.runs

    blend = {"network_share": 0.75, "val_rmse": 0.9412, "val_rmse_by_share": {"1": 0.95, "0.75": 0.9412}}
    record = {"epoch": 1, "train_loss": 1.0, "val_rmse": 0.95, "val_mae": 0.7, "seconds": 1.0, "samples_per_s": 1.0}
    done = RunResult(tmp_path / "run", [record], False, False, 1, 10, {"score": "rating"}, [], baseline_blend=blend)
    monkeypatch.setattr(embedrec.runs, "train_run", lambda data_dir, **kwargs: done)
    args = ["train", "--data", str(tmp_path / "d"), "--workdir", str(tmp_path), "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "network share 0.75 (chosen on val: RMSE 0.9500 -> 0.9412)" in " ".join(res.output.split())
    res = runner.invoke(app, [*args, "--json"])
    assert json.loads(res.output)["baseline_blend"] == blend
    monkeypatch.setattr(
        embedrec.runs, "train_run", lambda data_dir, **kwargs: dataclasses.replace(done, baseline_blend=None)
    )
    assert "blended" not in runner.invoke(app, args).output


def test_a_config_file_sets_the_preset_and_flags_win(calls: list[dict], tmp_path: Path) -> None:
    cfg = tmp_path / "hp.toml"
    cfg.write_text('preset = "seed"\nlr = 0.5\nepochs = 3\n')
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--config", str(cfg), "--lr", "0.02", "--json"])
    assert res.exit_code == 0, res.output
    (call,) = calls
    assert call["preset"] == "seed" and call["overrides"]["lr"] == 0.02 and call["overrides"]["epochs"] == 3
    out = json.loads(res.stdout)
    assert out["best_epoch"] == 2 and out["final"]["epoch"] == 2 and out["n_params"] == 1234


@pytest.mark.parametrize("hidden", ["64,x", ","])
def test_a_bad_hidden_is_one_line_and_exit_2_before_training(calls: list[dict], tmp_path: Path, hidden: str) -> None:
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--hidden", hidden])
    assert res.exit_code == 2
    assert "--hidden" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert calls == []


def test_resume_is_passed_through(calls: list[dict], tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["train", "--workdir", str(tmp_path), "--resume", "--out", str(tmp_path / "r"), "--epochs", "9", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert calls[0]["resume"] is True and calls[0]["out"] == tmp_path / "r"
    assert calls[0]["overrides"] == {"epochs": 9}


def test_info_reads_a_model_folder(synthetic_prepared: Path, tmp_path: Path) -> None:
    from planted import write_planted_model

    from embedrec.artifacts import read_json, write_json
    from embedrec.data import load_prepared

    run = write_planted_model(load_prepared(synthetic_prepared), tmp_path / "run", ranking={"score": "rating"})
    meta = read_json(run / "model.json")
    write_json(run / "model.json", {**meta, "n_params": 99, "metrics": {"val_rmse": 0.95}, "epochs_run": 2})
    res = runner.invoke(app, ["info", str(run), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["n_params"] == 99 and info["metrics"] == {"val_rmse": 0.95} and info["epochs_run"] == 2
    table = runner.invoke(app, ["info", str(run)])
    assert table.exit_code == 0 and "predicted rating" in table.output and "0.9500" in table.output
    missing = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert "model folder" in missing.stderr and "nowhere does not exist" in missing.stderr


def _damaged_weights(run: Path, damage: str) -> None:
    import numpy as np

    from embedrec.artifacts import load_arrays, read_json, save_arrays, write_json

    weights = run / "weights.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":  # a copy cut short: the header promises bytes the file lacks
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "not-safetensors":
        weights.write_text("junk")
    elif damage == "nan":
        arrays = load_arrays(weights)
        arrays["movie_embedding"][3, 1] = np.nan
        save_arrays(weights, arrays)
    elif damage == "other-shape":  # model.json of a wider model beside these weights
        meta = read_json(run / "model.json")
        meta["model"]["embedding_dim"] += 1
        write_json(run / "model.json", meta)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"weights\.safetensors is missing: the model folder is incomplete; retrain"),
        ("truncated", r"weights\.safetensors is unreadable \(tensor '.*' does not fit its bytes\)"),
        ("not-safetensors", r"weights\.safetensors is unreadable \(no safetensors header\)"),
        ("nan", r"weights\.safetensors does not match model\.json \(movie_embedding holds NaN"),
        ("other-shape", r"weights\.safetensors does not match model\.json \(user_embedding is 300x\d+, expected"),
    ],
)
def test_info_refuses_a_model_whose_weights_are_damaged(
    synthetic_prepared: Path, tmp_path: Path, damage: str, message: str
) -> None:
    """info reads model.json, but a folder the other commands refuse is not shown as a usable model."""
    import re

    from planted import write_planted_model

    from embedrec.data import load_prepared

    run = write_planted_model(load_prepared(synthetic_prepared), tmp_path / "run")
    _damaged_weights(run, damage)
    for args in (["info", str(run)], ["info", str(run), "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.stdout == "", res.output
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert re.search(message, " ".join(res.stderr.split())), res.stderr
    recommend = runner.invoke(app, ["recommend", "--model", str(run), "--data", str(synthetic_prepared), "--user", "1"])
    assert recommend.exit_code == 2 and recommend.stderr == res.stderr  # the verdict every command gives


def test_a_data_set_too_small_for_a_val_split_trains_and_says_so_instead_of_nan(tmp_path: Path) -> None:
    """Four ratings: the random split leaves val empty, and the summary once read "val RMSE nan, MAE nan"."""
    from embedrec.data.pipeline import prepare

    csv = tmp_path / "four.csv"
    csv.write_text("userId,movieId,rating\n1,1,4\n2,1,3\n1,2,5\n2,2,1\n")
    summary = prepare(str(csv), out=tmp_path / "data")
    assert summary["n_val"] == 0
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "nan" not in text.lower(), text
    assert "epoch 1 loss" in text and "no val " in text
    assert "trained" in text and "no val ratings to score it on (the val split is empty" in text
    # evaluating that empty split is refused, with what to do instead
    res = runner.invoke(app, ["evaluate", "--workdir", str(tmp_path), "--split", "val"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.output
    assert "val split of" in res.stderr and "is empty: evaluate --split test" in " ".join(res.stderr.split())
