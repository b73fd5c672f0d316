"""``embedrec evaluate / predict / recommend / similar`` through Typer's CliRunner, on a planted model (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli import EMBEDREC, cli_env
from planted import write_planted_model
from typer.testing import CliRunner

from embedrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder laid out as `embedrec prepare` + `embedrec train` leave it."""
    from embedrec.data import load_prepared
    from embedrec.workdir import data_dir, models_dir, set_latest_run

    wd = tmp_path_factory.mktemp("wd")
    shutil.copytree(synthetic_prepared, data_dir(wd))
    prepared = load_prepared(data_dir(wd))
    run = write_planted_model(prepared, models_dir(wd) / "run-1", ranking={"score": "blend", "beta": 0.2})
    set_latest_run(wd, run)
    return wd


@pytest.fixture(scope="module")
def ids(workdir: Path) -> dict:
    from embedrec.data import load_prepared

    p = load_prepared(workdir / "data")
    return {"user": int(p.user_ids[4]), "movie": int(p.movie_ids[0]), "movies": p.movie_ids, "prepared": p}


def run(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_recommend_defaults_to_the_workdir(workdir: Path, ids: dict) -> None:
    res = run("recommend", "--user", ids["user"], "--workdir", workdir, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 10
    assert set(rows[0]) == {"movieId", "title", "year", "genres", "score", "rating"}
    p = ids["prepared"]
    seen = set(p.movie_ids[p.movie_idx[p.user_idx == 4]].tolist())
    assert not seen & {r["movieId"] for r in rows}
    res = run("recommend", "--user", ids["user"], "--workdir", workdir, "-k", "3", "--genre", "Drama")
    assert res.exit_code == 0 and "Drama" in res.stdout
    res = run("recommend", "--user", ids["user"], "--workdir", workdir, "--k", "4", "--format", "csv")
    assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == 5


def test_an_empty_list_names_the_filters_that_emptied_it_and_k_beyond_the_catalogue_says_what_fits(
    workdir: Path, ids: dict
) -> None:
    res = run("recommend", "--user", ids["user"], "--workdir", workdir, "--min-ratings", 10**6)
    assert res.exit_code == 0
    assert "no movie passes the filters" in res.stdout and f"--min-ratings {10**6}" in res.stdout
    assert "--include-seen" in res.stdout
    for fmt in ("json", "csv"):  # stdout stays what a script parses; the reason goes to stderr
        res = run("recommend", "--user", ids["user"], "--workdir", workdir, "--min-ratings", 10**6, "--format", fmt)
        assert res.exit_code == 0 and f"--min-ratings {10**6}" in res.stderr
        assert res.stdout.strip() == ("[]" if fmt == "json" else "movieId,title,year,genres,score,rating")
    out = workdir / "empty-batch.csv"
    res = run("recommend", "--all-users", "--output", out, "--workdir", workdir, "--min-ratings", 10**6)
    assert res.exit_code == 0 and "(0 rows)" in res.stderr
    assert "no movie passes the filters for any user" in res.stderr and f"--min-ratings {10**6}" in res.stderr
    out.unlink()
    n_movies = len(ids["movies"])
    res = run("evaluate", "--workdir", workdir, "--k", n_movies + 1)
    assert res.exit_code == 2
    assert f"pass --k {n_movies} or less" in res.output and "Traceback" not in res.output


def test_data_prepared_before_the_user_index_still_serves_and_says_how_to_speed_it_up(
    workdir: Path, ids: dict, tmp_path: Path
) -> None:
    old = tmp_path / "old-data"
    shutil.copytree(workdir / "data", old)
    for f in old.glob("*.npy"):
        f.unlink()
    summary = json.loads((old / "summary.json").read_text())
    del summary["user_index"]
    (old / "summary.json").write_text(json.dumps(summary))
    args = ("recommend", "--user", ids["user"], "--workdir", workdir, "--format", "json")
    res_old, res_new = run(*args, "--data", old), run(*args)
    assert res_old.exit_code == 0, res_old.output
    assert "without the per-user index" in res_old.stderr and "embedrec prepare" in res_old.stderr
    assert "per-user index" not in res_new.stderr
    assert json.loads(res_old.stdout) == json.loads(res_new.stdout)


def test_recommend_cold_start_and_fold_in(workdir: Path, ids: dict, tmp_path: Path) -> None:
    res = run("recommend", "--user", 10**9, "--workdir", workdir, "--format", "json", "-k", "5")
    assert res.exit_code == 0
    assert "not known" in res.stderr
    assert len(json.loads(res.stdout)) == 5
    mine = tmp_path / "mine.csv"
    mine.write_text("movieId,rating\n" + "".join(f"{m},{r}\n" for m, r in zip(ids["movies"][:4], [5, 4.5, 1, 3])))
    res = run("recommend", "--ratings", mine, "--workdir", workdir, "--format", "json")
    assert res.exit_code == 0, res.output
    assert not {r["movieId"] for r in json.loads(res.stdout)} & set(ids["movies"][:4].tolist())
    bad = tmp_path / "bad.csv"
    bad.write_text("movieId,rating\n999999999,4\n")
    res = run("recommend", "--ratings", bad, "--workdir", workdir)
    assert res.exit_code == 2 and "not known" in res.stderr


def test_recommend_batch_writes_csv_and_parquet(workdir: Path, ids: dict, tmp_path: Path) -> None:
    import pandas as pd

    users = tmp_path / "users.txt"
    users.write_text(f"{ids['user']}\n{10**9}\n1\n")
    out = tmp_path / "recs.csv"
    res = run("recommend", "--users-file", users, "--output", out, "--workdir", workdir, "-k", "3")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["userId", "rank", "movieId", "title", "score", "rating"]
    assert sorted(set(table["userId"])) == sorted({ids["user"], 1}) and len(table) == 6
    out = tmp_path / "all.parquet"
    res = run("recommend", "--all-users", "--output", out, "--workdir", workdir, "-k", "2")
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(out)) == 2 * ids["prepared"].n_users
    assert run("recommend", "--all-users", "--workdir", workdir).exit_code == 2  # needs --output


def test_predict_single_and_batch(workdir: Path, ids: dict, tmp_path: Path) -> None:
    res = run("predict", "--user", ids["user"], "--movie", ids["movie"], "--workdir", workdir, "--json")
    assert res.exit_code == 0, res.output
    rating = json.loads(res.stdout)["rating"]
    assert 0.5 <= rating <= 5.0
    res = run("predict", "--user", ids["user"], "--movie", 10**9, "--workdir", workdir)
    assert res.exit_code == 2 and "movie 1000000000" in res.stderr
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"userId,movieId\n{ids['user']},{ids['movie']}\n{10**9},{ids['movie']}\n{ids['user']},abc\n")
    out = tmp_path / "preds.csv"
    res = run("predict", "--input", pairs, "--output", out, "--workdir", workdir)
    assert res.exit_code == 0, res.output
    assert "2 left empty" in res.stderr
    lines = out.read_text().strip().splitlines()
    assert lines[0] == "userId,movieId,prediction,reason"
    assert float(lines[1].split(",")[2]) == pytest.approx(rating, abs=1e-3)
    assert lines[2].endswith(",,unknown user") and lines[3].endswith(",,movie id 'abc' is not an integer")


@pytest.mark.parametrize("given", ["1_000", "+5", " 5", "5.0", "\u0665", "0x10"])
def test_an_id_option_is_plain_decimal_digits(workdir: Path, ids: dict, given: str) -> None:
    """click's int() would take "1_000" for user 1000 and "+5", " 5" or the Arabic-Indic 5 for user 5."""
    for args in (("recommend", "--user", given), ("predict", "--user", ids["user"], "--movie", given)):
        res = run(*args, "--workdir", workdir)  # the one-line form of this usage error: test_bad_inputs.py
        assert res.exit_code == 2 and res.stdout == "", res.output
        option = "--user" if args[0] == "recommend" else "--movie"
        said = " ".join(res.stderr.replace("│", " ").split())
        assert f"Invalid value for '{option}': expected a whole number in plain digits, like 42 or -7" in said, said
    if given.strip() == given:  # similar's --movie is an id or title words (spaces around it are dropped)
        res = run("similar", "--movie", given, "--workdir", workdir)  # no title holds these words
        assert res.exit_code == 2 and res.stderr == f"error: no movie title contains {given!r}\n", res.output


def test_evaluate_json_and_table(workdir: Path) -> None:
    res = run("evaluate", "--workdir", workdir, "--json", "--k", "5,10")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    for key in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "hr@10", "map@10", "coverage@10", "ndcg@5"):
        assert key in got
    assert set(got["baselines"]) == {"global_mean", "bias", "popular", "top_rated", "ease"}
    assert "rmse" in got["baselines"]["bias"] and "ndcg@10" in got["baselines"]["popular"]
    res = run("evaluate", "--workdir", workdir, "--split", "val", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert "ndcg@10" in res.stdout


def test_evaluate_refuses_other_data(workdir: Path, tmp_path: Path) -> None:
    from embedrec.data import PrepareConfig, prepare_synthetic

    other = tmp_path / "other"
    prepare_synthetic(out=other, n_users=300, n_movies=400, n_ratings=20_000, seed=0, config=PrepareConfig(seed=7))
    res = run("evaluate", "--workdir", workdir, "--data", other)
    assert res.exit_code == 2 and "leak" in res.stderr
    res = run("recommend", "--user", 1, "--workdir", workdir, "--data", other, "-k", "2")
    assert res.exit_code == 0 and "warning" in res.stderr


def test_similar_by_id_and_title(workdir: Path, ids: dict) -> None:
    res = run("similar", "--movie", ids["movie"], "--workdir", workdir, "--json", "-k", "4")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["movieId"] == ids["movie"] and len(got["similar"]) == 4
    title = got["title"]
    res = run("similar", "--movie", title, "--workdir", workdir, "--json")
    assert res.exit_code == 0  # an exact title picks its movie even when other titles contain it
    assert json.loads(res.stdout)["movieId"] == ids["movie"]


def test_similar_with_an_ambiguous_title_lists_candidates_and_fails(workdir: Path, ids: dict) -> None:
    titles = ids["prepared"].movies["title"].astype(str).str.lower()
    words = titles.str.split().explode().value_counts().index
    n_match = {w: int(titles.str.contains(w, regex=False).sum()) for w in words}
    few = next(w for w in words if w.isalpha() and 2 <= n_match[w] <= 50 and not (titles == w).any())
    many = next(w for w in words if w.isalpha())  # the commonest title word
    assert n_match[many] > 50
    for word, hint in ((few, "pass one of the listed movie ids"), (many, "add title words or pass a movie id")):
        res = run("similar", "--movie", word, "--workdir", workdir)
        assert res.exit_code == 2
        assert res.stderr.strip().endswith(f"matches {n_match[word]} titles; {hint}"), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        listed = [line.split()[0] for line in res.stdout.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
        assert len(listed) == min(n_match[word], 50)
        res = run("similar", "--movie", word, "--workdir", workdir, "--json")
        assert res.exit_code == 2
        got = json.loads(res.stdout)
        assert got["n_candidates"] == n_match[word] and len(got["candidates"]) == min(n_match[word], 50)
    res = run("similar", "--movie", "qqqq zzzz", "--workdir", workdir)
    assert res.exit_code == 2
    res = run("similar", "--movie", "  ", "--workdir", workdir)
    assert res.exit_code == 2 and "--movie is empty" in res.stderr


def test_years_print_as_integers_when_some_are_unknown(workdir: Path, ids: dict, tmp_path: Path) -> None:
    """Parquet's nullable int32 year reads back as float64 once one year is missing (ML-100K has such a movie)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = tmp_path / "run-null-year"
    shutil.copytree(workdir / "models" / "run-1", run_dir)
    table = pq.read_table(run_dir / "movies.parquet")
    years = table.column("year").to_pylist()
    years[0] = None
    table = table.set_column(table.schema.get_field_index("year"), "year", pa.array(years, pa.int32()))
    pq.write_table(table, run_dir / "movies.parquet")
    res = run(
        "recommend",
        "--user",
        ids["user"],
        "--workdir",
        workdir,
        "--model",
        run_dir,
        "--format",
        "json",
        "--include-seen",
        "--min-ratings",
        "0",
        "-k",
        "400",
    )
    assert res.exit_code == 0, res.output
    got = {r["movieId"]: r["year"] for r in json.loads(res.stdout)}
    assert got[ids["movie"]] is None  # movies.parquet row 0
    assert all(isinstance(y, int) for m, y in got.items() if m != ids["movie"])
    res = run("recommend", "--user", ids["user"], "--workdir", workdir, "--model", run_dir, "-k", "5")
    assert res.exit_code == 0 and ".0 " not in res.stdout


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    res = run("recommend", "--user", 1, "--workdir", tmp_path)
    assert res.exit_code == 2 and "embedrec train" in res.stderr
    assert "Traceback" not in res.output


def test_long_commands_write_plain_progress_lines_when_piped(workdir: Path, tmp_path: Path) -> None:
    """Not a terminal (a log, CI, nohup): each stage says it started and when it ended, with counts."""
    import subprocess

    env = cli_env({"EMBEDREC_PROGRESS_SECONDS": "0"})
    proc = subprocess.run(
        EMBEDREC + ["evaluate", "--workdir", str(workdir), "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # progress never mixes into the machine-readable output
    lines = proc.stderr.splitlines()
    for stage in ("model", "rating only", "watch only", "baseline popular", "baseline top rated", "baseline EASE"):
        assert any(line.startswith(f"evaluate {stage}: started") for line in lines), proc.stderr
        assert any(line.startswith(f"evaluate {stage}: ") and " done in " in line for line in lines), proc.stderr
    assert any("users/s, about" in line for line in lines), proc.stderr  # periodic lines: rate and time left
    out = tmp_path / "all.csv"
    proc = subprocess.run(
        EMBEDREC + ["recommend", "--all-users", "--workdir", str(workdir), "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    done = [line for line in proc.stderr.splitlines() if line.startswith("recommend all users: ")]
    assert done and " done in " in done[-1] and "300/300 users" in done[-1], proc.stderr
    assert any("users/s, about" in line for line in done), proc.stderr


def test_exhaustive_flag_gives_the_same_lists_here(workdir: Path, ids: dict) -> None:
    """A catalogue of 400 movies and 500 candidates: two-stage holds every movie, so the lists are identical."""
    base = ("recommend", "--user", ids["user"], "--workdir", workdir, "--format", "json", "-k", "10")
    two, full = run(*base), run(*base, "--exhaustive")
    assert two.exit_code == 0 and full.exit_code == 0, two.output + full.output
    assert json.loads(two.stdout) == json.loads(full.stdout)
    few = run(*base, "--candidates", "20")
    assert few.exit_code == 0 and len(json.loads(few.stdout)) == 10


def test_similar_neither_answers_for_nor_lists_a_movie_without_training_ratings(tmp_path: Path) -> None:
    """A movie rated only in the held-out splits has an embedding that training never moved from its random start:
    its cosine neighbours looked as confident as any. Training now stores each movie's training-rating count, and
    ``similar`` refuses such a movie and leaves it out of other movies' lists."""
    import numpy as np
    import pandas as pd

    from embedrec.artifacts import load_model
    from embedrec.data import PrepareConfig, load_prepared, prepare
    from embedrec.data.split import TRAIN
    from embedrec.runs import train_run

    rng = np.random.default_rng(3)
    pairs = {(u, m) for u in range(1, 81) for m in rng.choice(np.arange(1, 61), size=15, replace=False)}
    ratings = pd.DataFrame(sorted(pairs), columns=["userId", "movieId"])
    ratings["rating"] = rng.integers(1, 6, len(ratings)).astype(float)
    ratings["timestamp"] = rng.permutation(len(ratings)) + 1_000
    late = pd.DataFrame({"userId": [1, 2, 3, 4, 5], "movieId": 999, "rating": 5.0, "timestamp": 10**9})
    pd.concat([ratings, late]).to_csv(tmp_path / "ratings.csv", index=False)  # movie 999: only the latest ratings
    config = PrepareConfig(format="csv", ratings_file=str(tmp_path / "ratings.csv"), split="temporal")
    prepare(tmp_path / "ratings.csv", out=tmp_path / "data", config=config)
    p = load_prepared(tmp_path / "data")
    run_dir = train_run(tmp_path / "data", out=tmp_path / "run", overrides={"epochs": 1}).run_dir

    train = p.split == TRAIN
    counts = load_model(run_dir).weights["movie_train_count"].ravel()
    np.testing.assert_array_equal(counts, np.bincount(p.movie_idx[train], minlength=p.n_movies))
    assert counts[list(p.movie_ids).index(999)] == 0
    res = run("similar", "--movie", 999, "--model", run_dir)
    assert res.exit_code != 0 and "movie 999 has no rating in the training split" in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1
    res = run("similar", "--movie", 7, "--model", run_dir, "--json", "-k", "100")
    assert res.exit_code == 0, res.output
    listed = {row["movieId"] for row in json.loads(res.stdout)["similar"]}
    assert listed and 999 not in listed and 7 not in listed
    assert listed == {int(m) for m, c in zip(p.movie_ids, counts) if c > 0} - {7}  # every other trained movie
