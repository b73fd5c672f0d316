"""Bad or extreme input to the serving commands, through the real CLI: exit 2 and one line, or a bounded result.

Each test here failed before its fix (the reliability issue): ids read through float64, ``1.5`` taken for movie 1, a
traceback for an id past 64 bits, a 1.2 TiB allocation for a huge ``-k``, a traceback for ``--output`` naming a
folder, and ``<bool>`` after every flag in ``--help``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from planted import write_planted_model
from typer.testing import CliRunner

from embedrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrec.data import load_prepared
    from embedrec.workdir import data_dir, models_dir, set_latest_run

    wd = tmp_path_factory.mktemp("wd")
    shutil.copytree(synthetic_prepared, data_dir(wd))
    run = write_planted_model(load_prepared(data_dir(wd)), models_dir(wd) / "run-1")
    set_latest_run(wd, run)
    return wd


def run(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res: object) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_predict_reads_ids_beyond_float_precision_exactly(workdir: Path, tmp_path: Path) -> None:
    """A model knowing user 2**53 must not score user 2**53 + 1 as that user (float64 cannot tell them apart)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = tmp_path / "big-ids"
    shutil.copytree(workdir / "models" / "run-1", model)
    users = pq.read_table(model / "users.parquet")
    ids = users.column("user_id").to_pylist()
    ids[-1] = 2**53
    pq.write_table(
        users.set_column(users.schema.get_field_index("user_id"), "user_id", pa.array(ids, pa.int64())),
        model / "users.parquet",
    )
    movie = int(pq.read_table(model / "movies.parquet").column("movie_id")[0].as_py())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"userId,movieId\n{2**53},{movie}\n{2**53 + 1},{movie}\n")
    out = tmp_path / "preds.csv"
    res = run("predict", "--input", pairs, "--output", out, "--workdir", workdir, "--model", model)
    assert res.exit_code == 0, res.output
    lines = out.read_text().strip().splitlines()
    user, movie_text, prediction, reason = lines[1].split(",")
    assert (user, movie_text, reason) == (str(2**53), str(movie), "") and 0.5 <= float(prediction) <= 5.0
    assert lines[2] == f"{2**53 + 1},{movie},,unknown user"


def test_fold_in_refuses_a_non_integer_movie_id(workdir: Path, tmp_path: Path) -> None:
    from embedrec.data import load_prepared

    movie = int(load_prepared(workdir / "data").movie_ids[0])
    mine = tmp_path / "mine.csv"
    mine.write_text(f"movieId,rating\n{movie + 1},4\n{movie}.5,5\n")  # {movie}.5 used to be read as {movie}
    line = one_line_error(run("recommend", "--ratings", mine, "--workdir", workdir))
    assert f"mine.csv line 3: movieId '{movie}.5' is not an integer" in line


def test_fold_in_names_the_file_and_line_of_an_unknown_movie_or_a_rating_off_the_scale(
    workdir: Path, tmp_path: Path
) -> None:
    from embedrec.data import load_prepared

    ids = load_prepared(workdir / "data").movie_ids
    unknown = int(ids.max()) + 1
    mine = tmp_path / "mine.csv"
    mine.write_text(f"movieId,rating\n{ids[0]},4\n{unknown},5\n")
    line = one_line_error(run("recommend", "--ratings", mine, "--workdir", workdir))
    assert f"--ratings: {mine} line 3: movie {unknown} is not known to the model" in line
    mine.write_text(f"movieId,rating\n{ids[0]},4\n{ids[1]},7\n")
    line = one_line_error(run("recommend", "--ratings", mine, "--workdir", workdir))
    assert f"{mine} line 3: rating 7 is outside the model's rating scale" in line


def test_users_file_with_an_id_past_64_bits_is_one_line(workdir: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"1\n{10**23}\n")
    line = one_line_error(run("recommend", "--users-file", users, "--output", tmp_path / "r.csv", "--workdir", workdir))
    assert "users.txt line 2" in line and "out of range" in line


def test_batch_k_beyond_the_catalogue_is_clamped(workdir: Path, tmp_path: Path) -> None:
    import pandas as pd

    from embedrec.data import load_prepared

    prepared = load_prepared(workdir / "data")
    out = tmp_path / "all.parquet"
    res = run(
        "recommend",
        "--all-users",
        "-k",
        10**9,
        "--include-seen",
        "--min-ratings",
        0,
        "--output",
        out,
        "--workdir",
        workdir,
    )
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(out)
    assert len(table) == prepared.n_users * prepared.n_movies and table["rank"].max() == prepared.n_movies
    assert f"wrote top {prepared.n_movies} for {prepared.n_users:,} users" in res.stderr


def test_output_naming_a_folder_is_one_line(workdir: Path, tmp_path: Path) -> None:
    from embedrec.data import load_prepared

    prepared = load_prepared(workdir / "data")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"userId,movieId\n{int(prepared.user_ids[0])},{int(prepared.movie_ids[0])}\n")
    folder = tmp_path / "out"
    folder.mkdir()
    line = one_line_error(run("predict", "--input", pairs, "--output", folder, "--workdir", workdir))
    assert "--output" in line and "is a folder" in line
    line = one_line_error(run("recommend", "--all-users", "--output", folder, "--workdir", workdir))
    assert "is a folder" in line


def test_predict_prints_a_movie_without_a_year(workdir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedrec.data import load_prepared

    model = tmp_path / "no-year"
    shutil.copytree(workdir / "models" / "run-1", model)
    movies = pq.read_table(model / "movies.parquet")
    years = movies.column("year").to_pylist()
    years[0] = None
    pq.write_table(
        movies.set_column(movies.schema.get_field_index("year"), "year", pa.array(years, pa.int32())),
        model / "movies.parquet",
    )
    prepared = load_prepared(workdir / "data")
    user, movie = int(prepared.user_ids[0]), int(prepared.movie_ids[0])
    res = run("predict", "--user", user, "--movie", movie, "--workdir", workdir, "--model", model)
    assert res.exit_code == 0, res.output
    title = movies.column("title")[0].as_py()
    assert f"movie {movie} ({title}): predicted rating" in res.stdout


def test_help_shows_flags_without_a_value_placeholder() -> None:
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"prepare", "train", "evaluate", "predict", "recommend", "similar"} <= set(commands)
    for args in [["--help"]] + [[name, "--help"] for name in commands]:
        res = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert res.exit_code == 0, (args, res.output)
        assert "<bool>" not in res.output, args
    res = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    flag = next(line for line in res.output.splitlines() if "--json" in line)
    assert "<" not in flag  # a flag takes no value
    assert "<path>" in next(line for line in res.output.splitlines() if "--input" in line)
