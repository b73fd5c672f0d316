"""Bad input: a clear one-line DataError naming the file (and line), exit code 2; bad rows dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedrec.cli import app
from embedrec.data import PrepareConfig, load_prepared, prepare
from embedrec.errors import ArtifactError, ConfigError, DataError

HEADER = "userId,movieId,rating,timestamp\n"
MOVIES = (
    'movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,"Heat, The (1995)",Action\n3,Casino (1995),Drama\n'
)


def make(folder: Path, ratings: str, movies: str = MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    return folder


def run_error(src: Path, tmp_path: Path, config: PrepareConfig | None = None) -> str:
    with pytest.raises(DataError) as info:
        prepare(src, out=tmp_path / "out", config=config or PrepareConfig())
    msg = str(info.value)
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()
    return msg


def test_missing_file(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n")
    (src / "movies.csv").unlink()
    # without movies.csv the folder is no MovieLens layout at all
    assert "no MovieLens layout" in run_error(src, tmp_path)
    with pytest.raises(DataError, match=r"movies file not found: .*movies\.csv"):
        prepare(
            tmp_path / "src" / "ratings.csv",
            out=tmp_path / "o",
            config=PrepareConfig(format="csv", movies_file=str(src / "movies.csv")),
        )


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    src = make(tmp_path / "src", "userId,movieId,stars,timestamp\n1,1,4,100\n")
    msg = run_error(src, tmp_path)
    assert "ratings.csv" in msg and "'rating'" in msg and "'stars'" in msg


def test_wrong_delimiter_is_diagnosed(tmp_path: Path) -> None:
    src = make(tmp_path / "src", "userId;movieId;rating;timestamp\n1;1;4;100\n")
    msg = run_error(src, tmp_path)
    assert "ratings.csv" in msg and "--delimiter ';'" in msg


def test_empty_files(tmp_path: Path) -> None:
    src = make(tmp_path / "a", "")
    assert "ratings.csv is empty" in run_error(src, tmp_path)
    src = make(tmp_path / "b", HEADER)
    assert "no rating rows" in run_error(src, tmp_path)
    src = make(tmp_path / "c", HEADER + "1,1,4,100\n", movies="")
    assert "movies.csv is empty" in run_error(src, tmp_path)


def test_unreadable_encoding(tmp_path: Path) -> None:
    src = make(tmp_path / "a", HEADER)
    (src / "ratings.csv").write_bytes((HEADER + "1,1,4,100\n").encode("utf-16"))
    assert "UTF-16" in run_error(src, tmp_path)
    src = make(tmp_path / "b", HEADER + "1,1,4,100\n")
    (src / "movies.csv").write_bytes("movieId,title,genres\n1,Caf\xe9 (1995),Drama\n".encode("latin-1"))
    msg = run_error(src, tmp_path)
    assert "movies.csv" in msg and "UTF-8" in msg


def test_non_numeric_rating_names_the_line(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n1,2,good,101\n")
    msg = run_error(src, tmp_path)
    assert "ratings.csv, line 3" in msg and "'good'" in msg and "rating" in msg


def test_non_integer_id_names_the_line(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n2,1,4,100\nu3,1,4,100\n")
    msg = run_error(src, tmp_path)
    assert "ratings.csv, line 4" in msg and "'u3'" in msg and "integer" in msg
    src = make(tmp_path / "s2", HEADER + "1,1.5,4,100\n")
    assert "line 2" in run_error(src, tmp_path / "x")
    # ids Arrow's integer reader refuses though they look whole: a decimal point, or more than 64 bits
    msg = run_error(make(tmp_path / "s4", HEADER + "1,1,4,100\n2.0,1,4,100\n"), tmp_path / "z")
    assert "ratings.csv, line 3" in msg and "'2.0', expected an integer id" in msg
    msg = run_error(make(tmp_path / "s6", HEADER + "1,1,4,100\n+2,1,4,100\n"), tmp_path / "v")  # Arrow takes no "+"
    assert "ratings.csv, line 3" in msg and "'+2', expected an integer id;" in msg
    msg = run_error(make(tmp_path / "s5", HEADER + "1,1,4,100\n1,99999999999999999999,4,100\n"), tmp_path / "w")
    assert "ratings.csv, line 3" in msg and "expected an integer id within 64 bits" in msg
    src = make(tmp_path / "s3", HEADER + "1,1,4,100\n", movies="movieId,title,genres\nabc,X (1990),Drama\n")
    msg = run_error(src, tmp_path / "y")
    assert "movies.csv, line 2" in msg and "'abc'" in msg
    # the movies file's ids are read as the ratings' are: int() took "1_000" for 1000 and "+3" for 3, and an id
    # beyond 64 bits was an OverflowError traceback
    for bad, kind in (("1_000", "an integer"), ("+3", "an integer"), ("99999999999999999999", "within 64 bits")):
        src = make(tmp_path / f"m{len(bad)}", HEADER + "1,1,4,100\n", movies=f"movieId,title,genres\n{bad},X,Drama\n")
        msg = run_error(src, tmp_path / f"n{len(bad)}")
        assert msg.startswith(f"{src / 'movies.csv'}, line 2: movie id {bad!r} is not {kind}"), msg


@pytest.mark.parametrize(
    ("ratings", "movies", "words"),
    [
        (HEADER + "1,1,4,100\nu3,1,4,100\n", MOVIES, "'u3'"),  # a bad id
        (HEADER + "1,1,4,100\n1,2,good,101\n", MOVIES, "'good'"),  # a bad rating
        (HEADER + "1,1,4,100\n1,2\n", MOVIES, "malformed row"),  # a short row
        (HEADER + "1,1,4,100\n", "movieId,title,genres\nabc,X (1990),Drama\n", "'abc'"),  # a movies file's id
    ],
    ids=["id", "rating", "short-row", "movies-id"],
)
def test_a_file_that_cannot_be_read_again_for_its_line_number_still_gets_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ratings: str, movies: str, words: str
) -> None:
    """Errors count the file's lines again (pyarrow skips blank lines); when that second read fails (the file was
    removed or its permission changed since it was parsed), the error names the file and what is wrong, without
    the line, and is never an OSError traceback."""
    from embedrec.data import readers

    def unreadable(*args: object, **kwargs: object) -> list[int | None]:
        raise PermissionError(13, "Permission denied")

    src = make(tmp_path / "src", ratings, movies)
    monkeypatch.setattr(readers, "row_lines", unreadable)
    msg = run_error(src, tmp_path)
    assert words in msg and ", line " not in msg and "csv" in msg, msg


def test_empty_id_names_the_line(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n,2,4,100\n")
    assert "line 3" in run_error(src, tmp_path)


def test_malformed_row(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n1,2\n")
    msg = run_error(src, tmp_path)
    assert "ratings.csv, line 3: 2 fields where 4 are expected" in msg and "--delimiter" not in msg
    # read as a generic CSV, --delimiter is the option that applies
    msg = run_error(src / "ratings.csv", tmp_path, PrepareConfig(format="csv"))
    assert "ratings.csv, line 3: 2 fields where 4 are expected; check --delimiter (the file is read with ',')" in msg


def test_bad_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        "1,1,4.0,100",  # kept
        "1,2,NaN,101",  # NaN rating
        "1,3,7.0,102",  # out of scale (0.5..5)
        "1,3,0.0,102",  # out of scale
        "2,99,3.0,103",  # unknown movie
        "2,1,3.0,not-a-time",  # unparsable timestamp
        "2,2,2.0,200",  # duplicate, older -> dropped
        "2,2,5.0,300",  # duplicate, latest -> kept
        "2,2,1.0,250",  # duplicate, older -> dropped
        "3,3,,104",  # missing rating
        "3,1,3.5,105",  # kept
    ]
    src = make(tmp_path / "src", HEADER + "\n".join(rows) + "\n")
    s = prepare(src, out=tmp_path / "out", config=PrepareConfig(test_frac=0.0, val_frac=0.0))
    assert s["dropped"] == {"bad_rating": 4, "bad_timestamp": 1, "unknown_movie": 1, "duplicate": 2}
    assert s["n_ratings"] == 3 and s["n_read"] == len(rows)
    data = load_prepared(tmp_path / "out")
    got = sorted(
        zip(
            data.user_ids[data.user_idx].tolist(),
            data.movies["movie_id"].to_numpy()[data.movie_idx].tolist(),
            data.rating.tolist(),
            data.timestamp.tolist(),
        )
    )
    assert got == [(1, 1, 4.0, 100), (2, 2, 5.0, 300), (3, 1, 3.5, 105)]
    # movie 3 only had bad ratings: it is not in the data; user 3 is
    assert data.movies["movie_id"].tolist() == [1, 2]


def test_duplicates_with_equal_time_keep_the_later_row(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,2.0,100\n1,2,3.0,100\n1,1,4.5,100\n")
    s = prepare(src, out=tmp_path / "out", config=PrepareConfig(test_frac=0.0, val_frac=0.0))
    assert s["dropped"]["duplicate"] == 1
    data = load_prepared(tmp_path / "out")
    assert data.rating.tolist() == [3.0, 4.5]


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ("1,2,NaN,101", "line 3: a missing, non-finite or out-of-scale rating"),
        ("1,2,9,101", "line 3: a missing, non-finite or out-of-scale rating"),
        ("1,99,3,101", "line 3: movie id 99 has no row in"),
        ("1,2,3,yesterday", "line 3: an unparsable timestamp"),
        ("1,1,3,101", "line 2: a repeated (user, movie) pair"),
    ],
)
def test_strict_turns_bad_rows_into_errors(tmp_path: Path, row: str, words: str) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n" + row + "\n")
    msg = run_error(src, tmp_path, PrepareConfig(strict=True))
    assert "ratings.csv, " + words in msg and "--strict" in msg
    # without --strict the same file prepares fine
    prepare(src, out=tmp_path / "ok", config=PrepareConfig(test_frac=0.0, val_frac=0.0))


def test_everything_dropped_is_an_error(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,99,4,100\n")
    assert "no valid ratings left" in run_error(src, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"split": "sideways"}, "--split"),
        ({"test_frac": 1.2}, "--test-frac"),
        ({"val_frac": -0.1}, "--val-frac"),
        ({"test_frac": 0.6, "val_frac": 0.5}, "--test-frac + --val-frac"),
        ({"nrows": 0}, "--nrows"),
        ({"min_user_ratings": 0}, "--min-user-ratings"),
        ({"format": "ml-7m"}, "--format"),
        ({"delimiter": "::"}, "--delimiter"),
        ({"rating_scale": (5.0, 1.0)}, "--rating-scale"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option.replace("+", r"\+")):
        PrepareConfig(**kwargs)


def test_failed_prepare_keeps_the_previous_data_set(tmp_path: Path) -> None:
    good = make(tmp_path / "good", HEADER + "1,1,4,100\n2,2,3,101\n")
    out = tmp_path / "out"
    first = prepare(good, out=out, config=PrepareConfig())
    bad = make(tmp_path / "bad", HEADER + "1,1,x,100\n")
    with pytest.raises(DataError):
        prepare(bad, out=out, config=PrepareConfig())
    assert load_prepared(out).fingerprint == first["fingerprint"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_write_leaves_no_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import embedrec.data.store as store

    good = make(tmp_path / "good", HEADER + "1,1,4,100\n2,2,3,101\n")

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_replace_dir", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(good, out=tmp_path / "out", config=PrepareConfig())
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "good"]  # the temp folder was removed


def test_out_folder_with_other_files_is_not_replaced(tmp_path: Path) -> None:
    good = make(tmp_path / "good", HEADER + "1,1,4,100\n")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="--out"):
        prepare(good, out=out, config=PrepareConfig())
    assert (out / "thesis.tex").read_text() == "precious"


def test_load_prepared_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="embedrec prepare"):
        load_prepared(tmp_path / "nothing")
    good = make(tmp_path / "good", HEADER + "1,1,4,100\n2,2,3,101\n")
    out = tmp_path / "out"
    prepare(good, out=out, config=PrepareConfig())
    (out / "users.parquet").unlink()
    with pytest.raises(ArtifactError, match="incomplete.*users.parquet"):
        load_prepared(out)
    prepare(good, out=out, config=PrepareConfig())
    summary = json.loads((out / "summary.json").read_text())
    summary["schema_version"] = 99
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_prepared(out)


def test_cli_reports_one_line_and_exit_code_2(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,100\n1,2,good,101\n")
    result = CliRunner().invoke(app, ["prepare", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "error:" in text and "line 3" in text and "'good'" in text
    result = CliRunner().invoke(app, ["prepare", str(src), "--test-frac", "1.5"])
    assert result.exit_code == 2 and "--test-frac" in result.output


def test_ratings_are_float32_exact_for_half_stars(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,0.5,100\n1,2,5.0,100\n2,1,3.5,100\n")
    prepare(src, out=tmp_path / "out", config=PrepareConfig())
    r = load_prepared(tmp_path / "out").rating
    assert r.dtype == np.float32 and sorted(r.tolist()) == [0.5, 3.5, 5.0]


def test_dates_where_unix_timestamps_belong_say_what_a_timestamp_is(tmp_path: Path) -> None:
    src = make(tmp_path / "src", HEADER + "1,1,4,2020-01-31\n2,2,3,2020-02-01\n")
    msg = run_error(src, tmp_path)
    assert "no valid ratings left" in msg and "bad_timestamp: 2" in msg
    assert "timestamps must be Unix times in seconds" in msg and "--time-col ''" in msg


@pytest.mark.parametrize("chunk", [3, 7, 1 << 22])
@pytest.mark.parametrize("seed", range(4))
def test_row_lines_matches_pyarrow_and_pandas_row_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, chunk: int
) -> None:
    """Each row of a file with blank lines, lines of spaces, and \\n, \\r\\n and lone \\r line ends holds the number
    of its own line; row_lines must find it for the rows pyarrow (blank: empty) and pandas (blank: spaces too) read,
    across chunk boundaries that split a \\r\\n."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from embedrec.data import readers

    monkeypatch.setattr(readers, "LINE_SCAN_BYTES", chunk)
    rng = np.random.default_rng(seed)
    parts, kinds = [], []
    for no in range(1, 200):
        kind = "header" if no == 1 else str(rng.choice(["row", "row", "row", "empty", "spaces"]))
        parts.append({"header": "line", "row": f"{no}", "empty": "", "spaces": " \t"}[kind])
        ends = ["\r\n", "\r"] if kind == "empty" and parts[-2] == "\r" else ["\n", "\r\n", "\r"]  # \r + \n: one end
        parts.append(str(rng.choice(ends)))
        kinds.append(kind)
    if rng.random() < 0.5:
        parts[-1] = ""  # no line end after the last line
        if kinds[-1] != "row":
            parts[-2], kinds[-1] = "199", "row"
    data = "".join(parts).encode()
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    pandas_rows = pd.read_csv(io.BytesIO(data), dtype=str)["line"].astype(int).tolist()
    assert readers.row_lines(path, range(len(pandas_rows)), skip=1, spaces_blank=True) == pandas_rows
    arrow_rows = [
        int(v) if v.strip() else None
        for v in pacsv.read_csv(pa.BufferReader(data)).column("line").cast(pa.string()).to_pylist()
    ]
    found = readers.row_lines(data, range(len(arrow_rows)), skip=1)
    assert [line for line, v in zip(found, arrow_rows) if v is not None] == [v for v in arrow_rows if v is not None]
    assert all(kinds[line - 1] == "spaces" for line, v in zip(found, arrow_rows) if v is None)
    assert readers.row_lines(data, [len(arrow_rows)], skip=1) == [None]
    # a first line cut off before parsing (a RecBole header): the rows count from the line after it
    assert readers.row_lines(path, [0], start=1) == readers.row_lines(path, [0], skip=1)


@pytest.mark.parametrize("seed", range(6))
def test_row_lines_of_a_csv_with_line_ends_inside_quoted_values(tmp_path: Path, seed: int) -> None:
    """The movies file (pyarrow, newlines_in_values) and the user CSVs (pandas) read a quoted value across line
    ends: a record is named by the line it starts on, and a blank line inside quotes is part of a value, not a
    blank line the readers skip. Each record's first field holds its starting line; quotes also appear doubled and
    inside unquoted values, as in real titles."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from embedrec.data import readers

    rng = np.random.default_rng(seed)
    parts, line = ["line,title\n"], 2
    for _ in range(150):
        kind = str(rng.choice(["plain", "plain", "quoted", "multiline", "blank-inside", "empty", "literal-quote"]))
        end = str(rng.choice(["\n", "\r\n"]))
        if kind == "empty":
            parts.append(end)
            line += 1
            continue
        title = {
            "plain": "Heat (1995)",
            "quoted": '"Heat, The (1995)"',
            "multiline": f'"Two{end}Lines ""quoted"" (1999)"',
            "blank-inside": f'"A{end}{end}B"',
            "literal-quote": "The 5'10\" Man (2001)",
        }[kind]
        parts.append(f"{line},{title}{end}")
        line += 1 + title.count(end)
    data = "".join(parts).encode()
    path = tmp_path / "movies.csv"
    path.write_bytes(data)
    pandas_rows = pd.read_csv(io.BytesIO(data), dtype=str)["line"].astype(int).tolist()
    assert readers.row_lines(path, range(len(pandas_rows)), skip=1, spaces_blank=True, quoted=",") == pandas_rows
    arrow = pacsv.read_csv(pa.BufferReader(data), parse_options=pacsv.ParseOptions(newlines_in_values=True)).column(
        "line"
    )
    arrow_rows = [int(v) for v in arrow.cast(pa.string()).to_pylist()]
    assert arrow_rows == pandas_rows  # the two readers agree on these records
    assert readers.row_lines(data, range(len(arrow_rows)), skip=1, quoted=",") == arrow_rows
    assert readers.row_lines(data, [len(arrow_rows)], skip=1, quoted=",") == [None]


def test_a_bad_movie_id_after_a_title_over_two_lines_names_its_own_line(tmp_path: Path) -> None:
    movies = 'movieId,title,genres\n1,"Two\nLines (1999)",Drama\n2,Heat (1995),Action\nx3,Casino (1995),Drama\n'
    msg = run_error(make(tmp_path / "src", HEADER + "1,1,4,100\n", movies=movies), tmp_path)
    assert msg.startswith(f"{tmp_path / 'src' / 'movies.csv'}, line 5: movie id 'x3'"), msg


def test_rows_after_blank_lines_are_named_by_their_line(tmp_path: Path) -> None:
    """pyarrow skips blank lines: every error naming a line of the ratings file counts them back in."""
    src = make(tmp_path / "a", HEADER + "1,1,4,100\n\n\r\n2,abc,3,101\n")
    assert run_error(src, tmp_path).startswith(f"{src / 'ratings.csv'}, line 5: column 'movieId' has 'abc'")
    src = make(tmp_path / "b", HEADER + "1,1,4,100\n\n2,1,9,101\n")
    msg = run_error(src, tmp_path, PrepareConfig(strict=True))
    assert msg.startswith(f"{src / 'ratings.csv'}, line 4: a missing, non-finite or out-of-scale rating (9")
    src = make(tmp_path / "c", HEADER + "\n1,1,4,100\n\n\n2,7,3,101\n")
    msg = run_error(src, tmp_path, PrepareConfig(strict=True))
    assert msg.startswith(f"{src / 'ratings.csv'}, line 6: movie id 7 has no row in")
    src = make(tmp_path / "d", HEADER + "1,1,4,100\n\n1,2,4,100\n1,2,3,101\n")
    msg = run_error(src, tmp_path, PrepareConfig(strict=True))
    assert msg.startswith(f"{src / 'ratings.csv'}, line 4: a repeated (user, movie) pair")
    src = make(tmp_path / "e", HEADER + "1,1,4,100\n\n\n1,2,4,soon\n")
    msg = run_error(src, tmp_path, PrepareConfig(strict=True))
    assert msg.startswith(f"{src / 'ratings.csv'}, line 5: an unparsable timestamp")
    src = make(tmp_path / "f", HEADER + "1,1,4,100\n\n,2,4,100\n")
    assert run_error(src, tmp_path).startswith(f"{src / 'ratings.csv'}, line 4: empty user id")
    # without blank lines the numbers are those of row + header, as ever
    src = make(tmp_path / "g", HEADER + "1,1,4,100\n2,1,9,101\n")
    assert ", line 3: " in run_error(src, tmp_path, PrepareConfig(strict=True))
    src = make(tmp_path / "h", HEADER + "1,1,4,100\n", movies=MOVIES.replace("\n3,", "\n\nx3,"))
    assert run_error(src, tmp_path).startswith(f"{src / 'movies.csv'}, line 5: movie id 'x3' is not an integer")
