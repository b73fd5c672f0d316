"""The two data-loss defects and their neighbours (issue #10, items 1-4): embedrec never deletes a folder it did not
write, a model folder always carries the vocabulary it was trained with, a read never mixes two prepared versions,
and a movie without a year prints. Each test fails on the code before the fix."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli import EMBEDREC, run_cli


def _ratings_csv(path: Path, *, n_users: int = 30, n_movies: int = 25, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["userId,movieId,rating"]
    for u in range(1, n_users + 1):
        for m in rng.choice(np.arange(1, n_movies + 1), size=12, replace=False):
            lines.append(f"{u},{m},{rng.integers(1, 6)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_refuses_a_folder_that_merely_holds_a_summary_json(tmp_path: Path) -> None:
    ratings = _ratings_csv(tmp_path / "r.csv")
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "summary.json").write_text("{}\n")
    (proj / "notes.txt").write_text("keep\n")
    (proj / "src" / "main.py").write_text("print('mine')\n")
    before = _tree(proj)
    res = run_cli(["prepare", ratings, "--out", proj], tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]  # not progress lines
    assert len(lines) == 1 and "did not write" in lines[0] and "Traceback" not in res.stderr
    assert _tree(proj) == before


def test_prepare_refuses_a_foreign_summary_json_alone(tmp_path: Path) -> None:
    ratings = _ratings_csv(tmp_path / "r.csv")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "summary.json").write_text('{"mine": true}\n')
    res = run_cli(["prepare", ratings, "--out", proj], tmp_path)
    assert res.returncode == 2 and "not a data set embedrec prepared" in res.stderr
    assert (proj / "summary.json").read_text() == '{"mine": true}\n'


def test_prepare_still_replaces_its_own_data_set(tmp_path: Path) -> None:
    from embedrec.data import load_prepared

    out = tmp_path / "data"
    assert run_cli(["prepare", _ratings_csv(tmp_path / "a.csv", n_users=30), "--out", out], tmp_path).returncode == 0
    assert run_cli(["prepare", _ratings_csv(tmp_path / "b.csv", n_users=40), "--out", out], tmp_path).returncode == 0
    assert load_prepared(out).n_users == 40
    (out / "notes.txt").write_text("mine\n")  # once the user adds a file, the folder is theirs too
    res = run_cli(["prepare", tmp_path / "a.csv", "--out", out], tmp_path)
    assert res.returncode == 2 and (out / "notes.txt").exists() and load_prepared(out).n_users == 40


def test_train_refuses_an_out_folder_holding_other_files(tmp_path: Path, synthetic_prepared: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("my own notes\n")
    res = run_cli(["train", "--data", synthetic_prepared, "--out", out, "--epochs", "1"], tmp_path)
    assert res.returncode == 2 and "not empty" in res.stderr and "Traceback" not in res.stderr
    assert _tree(out) == {"run.json": b"my own notes\n"}


def test_a_model_keeps_the_vocabulary_it_was_trained_on_when_the_data_is_re_prepared_meanwhile(tmp_path: Path) -> None:
    """A prepare of other data into the run's data folder while training runs must not reach the model folder."""
    from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
    from embedrec.recommender import Recommender
    from embedrec.runs import train_run

    data = tmp_path / "wd" / "data"
    prepare_synthetic(out=data, n_users=120, n_movies=150, n_ratings=4_000, seed=0, config=PrepareConfig())
    trained_on = load_prepared(data)

    class RePrepare:
        done = False

        def on_start(self, info: dict) -> None:
            prepare_synthetic(out=data, n_users=200, n_movies=180, n_ratings=6_000, seed=1, config=PrepareConfig())

        def on_block(self, *args: object) -> None: ...

        def on_epoch(self, record: dict) -> None: ...

    result = train_run(data, out=tmp_path / "run", overrides={"epochs": 1}, callbacks=RePrepare())
    assert load_prepared(data).n_users == 200  # the data folder really changed meanwhile
    rec = Recommender.load(result.run_dir)
    assert len(rec.user_ids) == trained_on.n_users
    np.testing.assert_array_equal(rec.user_ids, trained_on.user_ids)
    np.testing.assert_array_equal(rec.movies["movie_id"].to_numpy(), trained_on.movie_ids)


def test_load_model_refuses_a_vocabulary_that_does_not_fit_the_weights(
    tmp_path: Path, synthetic_prepared: Path
) -> None:
    import shutil

    from planted import write_planted_model

    from embedrec.artifacts import load_model
    from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
    from embedrec.errors import ArtifactError

    run = write_planted_model(load_prepared(synthetic_prepared), tmp_path / "run")
    load_model(run)
    other = tmp_path / "other"
    prepare_synthetic(out=other, n_users=50, n_movies=400, n_ratings=3_000, seed=3, config=PrepareConfig())
    shutil.copyfile(other / "users.parquet", run / "users.parquet")
    with pytest.raises(ArtifactError, match="users.parquet lists .* ids but user_embedding has"):
        load_model(run)
    res = run_cli(["predict", "--model", run, "--user", "1", "--movie", "1"], tmp_path)
    assert res.returncode == 2 and "does not belong to these weights" in res.stderr and "Traceback" not in res.stderr


def test_a_read_waits_for_a_replacement_in_progress(tmp_path: Path, synthetic_prepared: Path) -> None:
    """The rename that replaces a data set holds the parent's exclusive lock; a reader waits for it instead of
    reading half the files of each version."""
    import shutil

    from embedrec.data import load_prepared
    from embedrec.locks import folder_lock

    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    done = threading.Event()
    with folder_lock(tmp_path, exclusive=True):
        reader = threading.Thread(target=lambda: (load_prepared(data), done.set()))
        reader.start()
        time.sleep(0.5)
        assert not done.is_set()
    reader.join(timeout=30)
    assert done.is_set()


def test_concurrent_prepares_and_reads_never_mix_two_data_sets(tmp_path: Path) -> None:
    """A writer process re-prepares two different data sets into one folder in a loop while this process reads it:
    every read is one complete version (its fingerprint recomputed from the arrays read matches its summary)."""
    from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
    from embedrec.data.store import fingerprint

    data = tmp_path / "data"
    prepare_synthetic(out=data, n_users=60, n_movies=100, n_ratings=1_500, seed=0, config=PrepareConfig())
    script = (
        "import sys, time\n"
        "from embedrec.data import PrepareConfig, prepare_synthetic\n"
        "end = time.time() + float(sys.argv[2])\n"
        "i = 0\n"
        "while time.time() < end:\n"
        "    n = (60, 80)[i % 2]\n"
        "    prepare_synthetic(out=sys.argv[1], n_users=n, n_movies=2 * n, n_ratings=25 * n, seed=i % 2,\n"
        "                      config=PrepareConfig())\n"
        "    i += 1\n"
        "print(i)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(data), "8"], stdout=subprocess.PIPE, text=True)
    reads = 0
    try:
        while writer.poll() is None:
            p = load_prepared(data)
            fp = fingerprint(
                p.user_idx,
                p.movie_idx,
                p.rating,
                p.timestamp,
                p.split,
                n_users=p.n_users,
                n_movies=p.n_movies,
                n_genres=p.n_genres,
                n_genre_strings=p.n_genre_strings,
            )
            assert fp == p.fingerprint, f"read {reads} mixed two versions"
            assert p.user_idx.max() < p.n_users and p.movie_idx.max() < p.n_movies
            reads += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0 and int(writer.stdout.read().strip()) >= 2 and reads >= 5


def test_predict_prints_a_movie_without_a_year(tmp_path: Path) -> None:
    from embedrec.data import PrepareConfig, load_prepared, prepare
    from embedrec.runs import train_run

    data = tmp_path / "data"
    prepare(_ratings_csv(tmp_path / "r.csv"), out=data, config=PrepareConfig())  # no movies file: no years
    prepared = load_prepared(data)
    assert prepared.movies["year"].isna().all()
    run = train_run(data, out=tmp_path / "run", overrides={"epochs": 1}).run_dir
    user, movie = int(prepared.user_ids[0]), int(prepared.movie_ids[0])
    res = run_cli(["predict", "--model", run, "--data", data, "--user", user, "--movie", movie], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"user {user}, movie {movie}" in res.stdout and "predicted rating" in res.stdout


def test_a_run_being_trained_refuses_a_second_trainer_and_keeps_its_files(
    tmp_path: Path, synthetic_prepared: Path
) -> None:
    """While one process trains into a run folder (it holds the folder's lock), ``train --resume`` or a new run with
    that ``--out`` is refused at once and touches nothing; once the lock is released, the resume goes ahead."""
    from embedrec.locks import run_folder_lock

    run = tmp_path / "run"
    first = run_cli(["train", "--data", synthetic_prepared, "--out", run, "--epochs", "1", "-q"], tmp_path)
    assert first.returncode == 0, first.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    before, before_fresh = _tree(run), _tree(fresh)
    with run_folder_lock(run), run_folder_lock(fresh):  # what a training process holds
        resumed = run_cli(["train", "--resume", "--out", run, "--epochs", "2", "-q"], tmp_path)
        second = run_cli(["train", "--data", synthetic_prepared, "--out", fresh, "--epochs", "1", "-q"], tmp_path)
    for res, folder in ((resumed, run), (second, fresh)):
        assert res.returncode == 2, res.stderr
        assert f"{folder} is being trained by another embedrec process" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _tree(run) == before and fresh.is_dir() and _tree(fresh) == before_fresh
    again = run_cli(["train", "--resume", "--out", run, "--epochs", "2", "-q"], tmp_path)
    assert again.returncode == 0, again.stderr


def test_two_trains_without_out_started_in_the_same_second_each_get_their_own_run(
    tmp_path: Path, synthetic_prepared: Path
) -> None:
    """Two ``train`` commands on one work folder, no ``--out``: a run folder is named by the clock, and two started in
    the same second picked the same name; the one that came second was refused ("is being trained by another
    embedrec process ... or choose another --out", an option it never had) or told the folder "already holds a run".
    Both wait here on the data folder's lock (held as a replacing ``prepare`` holds it) and are let go together."""
    import shutil

    from cli import cli_env

    from embedrec.locks import folder_lock

    work = tmp_path / "work"
    shutil.copytree(synthetic_prepared, work / "data")
    with folder_lock(work, exclusive=True):
        procs = [
            subprocess.Popen(
                [*EMBEDREC, "train", "--workdir", str(work), "--epochs", "1", "-q"],
                cwd=tmp_path,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        time.sleep(8)  # both have started and wait for the lock
        time.sleep(1.05 - time.time() % 1)  # let go early in a second: both name their run in it
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    runs = sorted(p for p in (work / "models").iterdir() if p.is_dir())
    assert len(runs) == 2 and all((r / "model.json").is_file() for r in runs), runs
    assert (work / "models" / "latest").read_text().strip() in {r.name for r in runs}
