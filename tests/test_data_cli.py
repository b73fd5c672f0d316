"""`embedrec prepare` on the command line: work folder, synthetic default, JSON, generic CSV, instant help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli import EMBEDREC, cli_env
from typer.testing import CliRunner

from embedrec.cli import app
from embedrec.data import load_prepared

runner = CliRunner()


def test_default_is_synthetic_in_the_work_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--workdir", str(tmp_path / "wd")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "synthetic" in text and "embedrec download ml-latest-small" in text
    for label in ("unique users", "unique movies", "genre strings", "min rating", "max rating"):
        assert label in text
    data = load_prepared(tmp_path / "wd" / "data")
    assert (data.n_users, data.n_movies, len(data.rating)) == (600, 900, 60_000)


def test_workdir_from_environment_and_out_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDREC_WORKDIR", str(tmp_path / "envwd"))
    args = ["prepare", "--synthetic", "--users", "100", "--movies", "120", "--ratings", "2000", "--seed", "3"]
    assert runner.invoke(app, args).exit_code == 0
    assert (tmp_path / "envwd" / "data" / "summary.json").is_file()
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "elsewhere"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_ratings"] == 2000 and summary["generator"]["seed"] == 3
    assert summary["out"] == str(tmp_path / "elsewhere")
    assert load_prepared(tmp_path / "elsewhere").fingerprint == summary["fingerprint"]


def test_generic_csv_options(tmp_path: Path) -> None:
    f = tmp_path / "ratings.tsv"
    f.write_text("who\twhat\tstars\n1\t10\t3\n1\t11\t8\n2\t10\t4\n2\t12\t5\n")
    result = runner.invoke(
        app,
        [
            "prepare",
            "--ratings-file",
            str(f),
            "--delimiter",
            "\\t",
            "--user-col",
            "who",
            "--movie-col",
            "what",
            "--rating-col",
            "stars",
            "--time-col",
            "",
            "--rating-scale",
            "1,5",
            "--out",
            str(tmp_path / "o"),
            "--split",
            "random",
            "--test-frac",
            "0.25",
            "--val-frac",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "bad rating 1" in text and "--strict" in text
    cells = " ".join(result.output.replace("│", " ").split())  # the table's text, cell borders out
    assert "rating scale 1..5 (--rating-scale; ratings outside it are dropped)" in cells
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (s["format"], s["n_ratings"], s["n_test"]) == ("csv", 3, 1)


def test_a_movielens_folder_rated_zero_to_one_keeps_its_scale_and_says_so(tmp_path: Path) -> None:
    """A ratings.csv / movies.csv pair (MovieLens's layout) rated 0..1 in steps of 0.2: every rating is kept, and the
    prepare table says the scale is the data's own (before, the ratings under 0.5 were dropped as bad rows)."""
    src = tmp_path / "src"
    src.mkdir()
    rows = [f"{u},{m},{((u + m) % 6) / 5:g},{1000 + u * 10 + m}" for u in range(1, 21) for m in range(1, 6)]
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    (src / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{m},M{m} (1999),Drama\n" for m in range(1, 6)))
    result = runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # the table's text, cell borders out
    below = sum(((u + m) % 6) / 5 < 0.5 for u in range(1, 21) for m in range(1, 6))
    assert f"the data's own: {below} ratings lie outside ml-csv's usual 0.5..5" in text
    assert "dropped rows none" in text
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (s["n_ratings"], s["rating_min"], s["rating_max"]) == (100, 0.0, 1.0)


def test_bad_option_values_exit_2(tmp_path: Path) -> None:
    for args in (["--rating-scale", "five"], ["--split", "by-mood"], ["--nrows", "0"], ["--format", "xls"]):
        result = runner.invoke(app, ["prepare", "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2, args
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["prepare", str(tmp_path), "--synthetic"])
    assert result.exit_code == 2 and "cannot be combined" in result.output


def test_help_and_data_package_import_nothing_heavy() -> None:
    code = (
        "import sys, embedrec.data, embedrec.data.config\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from embedrec.cli import app\n"
        "try:\n"
        "    app(['prepare', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--test-frac" in proc.stdout


def test_prepare_writes_one_plain_line_per_step_when_piped(tmp_path: Path) -> None:
    args = ["prepare", "--synthetic", "--users", "100", "--movies", "120", "--ratings", "2000"]
    proc = subprocess.run(
        EMBEDREC + args + ["--out", str(tmp_path / "d")], capture_output=True, text=True, env=cli_env()
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for step in ("validating and encoding (step 2/4", "splitting (step 3/4", "writing (step 4/4"):
        assert any(line.startswith(f"prepare: {step}") for line in lines), proc.stderr
    assert lines[-1].startswith("prepare: done in "), proc.stderr
