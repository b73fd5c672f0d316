"""The readers of user-supplied CSVs: header spellings, exact integer ids, and one-line errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.data.user_files import check_user_ratings, read_pairs, read_user_ids, read_user_ratings
from embedrec.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_pairs_keep_the_ids_as_written(tmp_path: Path) -> None:
    pairs = read_pairs(write(tmp_path / "p.csv", "user_id,MovieId,extra\n 9007199254740993 ,1,x\n2,abc,y\n"))
    assert list(pairs.columns) == ["userId", "movieId"]
    assert pairs["userId"].tolist() == ["9007199254740993", "2"] and pairs["movieId"].tolist() == ["1", "abc"]
    with pytest.raises(DataError, match=r"--input: .*p2.csv needs a header with userId and movieId"):
        read_pairs(write(tmp_path / "p2.csv", "user,movie\n1,2\n"))
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.csv")


def test_a_ragged_csv_is_one_line_naming_the_file_the_row_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        read_pairs(write(tmp_path / "ragged.csv", "userId,movieId\n1,10\n2,3,x\n"))
    message = str(caught.value)
    assert "\n" not in message and "ragged.csv is not a readable CSV" in message
    assert "Expected 2 fields in line 3, saw 3" in message and message.endswith(
        "the same number of fields on every row"
    )


def test_user_ratings_are_integer_ids_and_numbers(tmp_path: Path) -> None:
    mine = read_user_ratings(write(tmp_path / "mine.csv", "movie_id,Rating\n1,5\n9007199254740993,3.5\n 2 ,4\n"))
    assert mine["movieId"].tolist() == [1, 9007199254740993, 2] and mine["movieId"].dtype == np.int64
    assert mine["rating"].tolist() == [5.0, 3.5, 4.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("movieId,rating\n1,5\n1.5,4\n", r"mine.csv line 3: movieId '1.5' is not an integer"),
        ("movieId,rating\n1,5\nabc,4\n", r"mine.csv line 3: movieId 'abc' is not an integer"),
        # what Python's int() or Decimal would read as another number: only plain decimal digits are ids
        ("movieId,rating\n1,5\n2.0,4\n", r"mine.csv line 3: movieId '2.0' is not an integer"),
        ("movieId,rating\n1_000,5\n", r"mine.csv line 2: movieId '1_000' is not an integer"),
        ("movieId,rating\n+5,5\n", r"mine.csv line 2: movieId '\+5' is not an integer"),
        ("movieId,rating\n1e3,5\n", r"mine.csv line 2: movieId '1e3' is not an integer"),
        ("movieId,rating\n\u0663,5\n", r"mine.csv line 2: movieId '\u0663' is not an integer"),
        ("movieId,rating\n1,great\n", r"mine.csv line 2: rating 'great' is not a number"),
        ("movieId,stars\n1,5\n", r"needs a header with movieId and rating"),
        ("movieId,rating\n", r"mine.csv has no ratings"),
        ("movieId,rating\n1,5\n2,3\n01,2\n", r"mine.csv lines 2 and 4 both rate movie 1: keep one"),
        # pandas skips blank lines (and lines of only spaces or tabs, before the header too): the errors name the
        # line of the file all the same
        ("movieId,rating\n1,5\n\n  \n1.5,4\n", r"mine.csv line 5: movieId '1.5' is not an integer"),
        ("movieId,rating\r\n1,5\r\n\r\n\t\r\nabc,4\r\n", r"mine.csv line 5: movieId 'abc' is not an integer"),
        ("\nmovieId,rating\n\n1,great\n", r"mine.csv line 4: rating 'great' is not a number"),
        ("movieId,rating\n1,5\n\n2,3\n01,2\n", r"mine.csv lines 2 and 5 both rate movie 1: keep one"),
        ("movieId,rating\n\n522,4,5\n", r"mine.csv line 3 has more fields than the header's 2"),
        # a quoted value across lines (pandas reads it as one value): the next row is named by its own line
        ('movieId,rating,note\n1,5,"seen\n\ntwice"\nx,4,ok\n', r"mine.csv line 5: movieId 'x' is not an integer"),
    ],
)
def test_bad_user_ratings_name_the_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_user_ratings(write(tmp_path / "mine.csv", body))


def test_a_file_that_cannot_be_read_again_for_line_numbers_still_gets_its_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines are counted by reading the file a second time; if that fails (the file was removed or its
    permission changed in between), every error still says what is wrong, only without the line."""
    from embedrec.data import readers

    def gone(*args: object, **kwargs: object) -> list[int | None]:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path / "mine.csv", "movieId,rating\n1,5\n2,3\n1,2\n")
    monkeypatch.setattr(readers, "row_lines", gone)
    with pytest.raises(DataError, match=r"mine.csv both rate movie 1: keep one of the two rows$"):
        read_user_ratings(path)
    with pytest.raises(DataError, match=r"bad.csv: movieId 'x' is not an integer$"):
        read_user_ratings(write(tmp_path / "bad.csv", "movieId,rating\nx,5\n"))


def test_ratings_a_model_cannot_fold_in_name_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.csv", "movieId,rating\n1,5\n7,4\n8,9\n")
    mine = read_user_ratings(path)
    unknown = r"--ratings: .*mine.csv line 3: movie 7 is not known to the model \(and 1 more\)"
    with pytest.raises(DataError, match=unknown):
        check_user_ratings(mine, path, known=np.array([True, False, False]), scale=(1.0, 5.0))
    with pytest.raises(DataError, match=r"mine.csv line 4: rating 9 is outside the model's rating scale 1..5"):
        check_user_ratings(mine, path, known=np.ones(3, bool), scale=(1.0, 5.0))
    check_user_ratings(mine, path, known=np.ones(3, bool), scale=(0.5, 10.0))  # all of them fold in
    spaced = write(tmp_path / "spaced.csv", "movieId,rating\n1,5\n\n7,4\n \n8,9\n")
    mine = read_user_ratings(spaced)
    with pytest.raises(DataError, match=r"spaced.csv line 4: movie 7 is not known to the model \(and 1 more\)"):
        check_user_ratings(mine, spaced, known=np.array([True, False, False]), scale=(1.0, 5.0))
    with pytest.raises(DataError, match=r"spaced.csv line 6: rating 9 is outside the model's rating scale 1..5"):
        check_user_ratings(mine, spaced, known=np.ones(3, bool), scale=(1.0, 5.0))


def test_user_ids_one_per_line_or_a_csv_column(tmp_path: Path) -> None:
    assert read_user_ids(write(tmp_path / "u.txt", "3\n\n9007199254740993\n-1, note\n")).tolist() == [
        3,
        9007199254740993,
        -1,
    ]
    assert read_user_ids(write(tmp_path / "u.csv", "name,user_id\na,7\nb,8\n")).tolist() == [7, 8]
    # a header whose first name holds a digit is still a header: pandas writes its index column as "Unnamed: 0"
    assert read_user_ids(write(tmp_path / "p.csv", "Unnamed: 0,userId\n0,42\n1,7\n")).tolist() == [42, 7]
    assert read_user_ids(write(tmp_path / "v.csv", "user2,userId\nx,5\n")).tolist() == [5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1\n" + str(10**23) + "\n", r"u.txt line 2: user id 100000000000000000000000 is out of range"),
        ("1\n\n2.5\n", r"u.txt line 3: user id '2.5' is not an integer"),
        ("userId\n1\nx\n", r"u.txt line 3: user id 'x' is not an integer"),
        # a first line that is no plain integer is a bad id, not a header: 1_000 is not user 1000, nor +5 user 5
        ("1_000\n2\n", r"u.txt line 1: user id '1_000' is not an integer"),
        ("1\n+5\n", r"u.txt line 2: user id '\+5' is not an integer"),
        ("+5\n1\n", r"u.txt line 1: user id '\+5' is not an integer"),
        ("1e3\n", r"u.txt line 1: user id '1e3' is not an integer"),
        ("0x10\n", r"u.txt line 1: user id '0x10' is not an integer"),
        ("1\n5.0\n", r"u.txt line 2: user id '5.0' is not an integer"),
        ("userId\n1\n0x10\n", r"u.txt line 3: user id '0x10' is not an integer"),
        ("userId\n1\n\n \nx\n", r"u.txt line 5: user id 'x' is not an integer"),
        ("name\nbob\n", r"needs a header with userId"),
        ("\n\n", r"u.txt holds no user ids"),
    ],
)
def test_bad_user_ids_name_the_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_user_ids(write(tmp_path / "u.txt", body))
