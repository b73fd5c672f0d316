"""Low-level, fast reading of delimited rating files into numpy arrays, with one-line errors.

Synopsis::

    cols = read_rating_columns(path, columns=RatingColumns("userId", "movieId", "rating", "timestamp"),
                               delimiter=",", header=True, nrows=None)
    cols.user_id, cols.movie_id, cols.rating, cols.timestamp, cols.bad_timestamp

pyarrow's multi-threaded CSV reader parses with explicit column types (int64 ids, float32 ratings, int64 times);
only when that fails do we re-read the failing column as text to find the row to name, so the good path stays fast.
An unparsable timestamp is not fatal: the row is flagged in ``bad_timestamp`` and dropped later by validation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.data.encode import PLAIN_INT, fits_int64, parse_id
from embedrec.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class RatingColumns:
    """Column names of one rating file (``time`` None: the file has no timestamps; ``time_optional``: a header
    without the ``time`` column means the same)."""

    user: str
    movie: str
    rating: str
    time: str | None
    time_optional: bool = False


@dataclass
class RatingArrays:
    """The rating rows of one file, as read. ``first_line`` is the 1-based line of row 0 in a file without blank
    lines; ``source`` (None: no file, the rows are consecutive lines from ``first_line``) is the file they were read
    from, whose lines :meth:`line_of` counts again on an error path, skipping its first ``cut_lines`` lines (not
    parsed at all) and then ``header_lines`` non-blank ones (its header)."""

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    bad_timestamp: np.ndarray | None
    file: str
    first_line: int
    source: Path | None = None
    cut_lines: int = 0
    header_lines: int = 0

    def __len__(self) -> int:
        return len(self.user_id)

    def line_of(self, row: int) -> int | None:
        """The 1-based line of ``source`` that holds row ``row`` (None: the file is gone or shorter); for error
        messages only: it reads the file again."""
        if self.source is None:
            return row + self.first_line
        return line_of_row(self.source, row, skip=self.header_lines, start=self.cut_lines)


def check_text_file(path: Path, *, what: str) -> bytes:
    """Fail clearly on a missing, empty or non-text file; returns the first bytes for layout sniffing."""
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DataError(f"{what} path is not a file: {path}")
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head.strip():
        raise DataError(f"{path} is empty: expected {what} rows")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise DataError(
            f"{path} is not readable as text (it looks like UTF-16 or a binary file): save it as UTF-8 text"
        )
    return head


def header_fields(head: bytes, *, path: Path, delimiter: str, encoding: str = "utf-8") -> list[str]:
    """The column names on the first line, unquoted, with a RecBole ``name:type`` suffix kept as is."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    try:
        text = first.decode(encoding)
    except UnicodeDecodeError:
        raise DataError(f"{path}: the header line is not valid {encoding}: save the file as UTF-8") from None
    return [f.strip().strip('"').strip() for f in text.split(delimiter)]


def guess_delimiter(found: list[str], delimiter: str) -> str | None:
    """The delimiter a header read as one field seems to use instead of ``delimiter`` (None: no better guess)."""
    if len(found) != 1:
        return None
    return next((d for d in (",", ";", "\t", "|", ":") if d != delimiter and d in found[0]), None)


def missing_column_error(
    path: Path, missing: str, found: list[str], delimiter: str, option: str | None, *, hint: str | None = None
) -> DataError:
    """A missing column, with a hint when the real problem is the delimiter (``hint``: the caller's own advice)."""
    shown = ", ".join(repr(f) for f in found[:8]) + (", ..." if len(found) > 8 else "")
    if hint is None:
        hint = ""
        guess = guess_delimiter(found, delimiter)
        if guess is not None:
            hint = f"; the file seems to use {guess!r} as delimiter: pass --delimiter {guess!r}"
        elif option and len(found) > 1:
            hint = f"; pass {option} to name the right column"
    return DataError(f"{path} has no column {missing!r} (found {shown}){hint}")


def _arrow_error(path: Path, exc: Exception) -> DataError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "invalid UTF8" in msg:
        return DataError(f"{path} is not valid UTF-8 text: re-save it as UTF-8")
    return DataError(f"{path}: cannot parse ({msg})")


def _is_malformed_row(exc: Exception) -> bool:
    return bool(re.search(r"Expected \d+ columns, got \d+", str(exc)))


LINE_SCAN_BYTES = 1 << 22


def row_lines(
    source: Path | bytes,
    rows: Sequence[int],
    *,
    skip: int = 0,
    start: int = 0,
    spaces_blank: bool = False,
    quoted: str | None = None,
) -> list[int | None]:
    """The 1-based lines of ``source`` (a file, or bytes as read) that hold data rows ``rows``, as numbered by a
    reader that skips blank lines (pyarrow and pandas both do): row ``r`` is the ``skip + r + 1``-th non-blank line
    after the first ``start`` lines (``skip``: a header; ``start``: lines cut off before parsing). A line ends at
    ``\\n``, ``\\r\\n`` or a lone ``\\r``, as both readers split them; blank means empty (pyarrow) or, with
    ``spaces_blank``, only spaces and tabs (pandas). None for a row past the end.

    ``quoted`` (a delimiter): the file is a CSV whose quoted values may hold line ends, as the movies file and the
    user CSVs are read (pyarrow's ``newlines_in_values``, pandas): rows are CSV records, each named by the line it
    starts on (:func:`_record_lines`). Without it every line end ends a row, as the rating readers split them.

    Only for error paths: it reads ``source`` again, in chunks, counting lines with numpy (about 5 s for a 27M-row,
    750 MB file)."""
    import io

    if quoted is not None:
        return _record_lines(source, rows, skip=skip, start=start, spaces_blank=spaces_blank, delimiter=quoted)
    want = sorted({skip + int(r) + 1 for r in rows})
    found: dict[int, int] = {}
    seen = 0  # non-blank lines counted so far (after ``start``)
    done = 0  # lines ended so far
    carry = b""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fh:
        while len(found) < len(want):
            chunk = fh.read(LINE_SCAN_BYTES)
            final = not chunk
            buf = carry + chunk
            if final:
                part, carry = buf, b""
            else:  # up to the last line end known for sure (a final \r may be the first half of \r\n)
                cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1))
                part, carry = buf[: cut + 1], buf[cut + 1 :]
            if part:
                arr = np.frombuffer(part, dtype=np.uint8)
                lf, cr = arr == 10, arr == 13
                end = lf.copy()
                end[:-1] |= cr[:-1] & ~lf[1:]
                end[-1] |= cr[-1]
                ends = np.flatnonzero(end)
                if final and (not ends.size or ends[-1] != len(arr) - 1):
                    ends = np.append(ends, len(arr) - 1)  # a last line without a line end
                text = ~(lf | cr)
                if spaces_blank:
                    text &= (arr != 32) & (arr != 9)
                filled = np.concatenate(([0], np.cumsum(text, dtype=np.int64)))
                starts = np.concatenate(([0], ends[:-1] + 1))
                numbers = done + 1 + np.arange(len(ends))
                counted = (filled[ends + 1] > filled[starts]) & (numbers > start)
                ordinal = seen + np.cumsum(counted)
                for w in want:
                    if w not in found and seen < w <= (ordinal[-1] if len(ordinal) else seen):
                        found[w] = int(numbers[int(np.searchsorted(ordinal, w))])
                seen = int(ordinal[-1]) if len(ordinal) else seen
                done += len(ends)
            if final:
                break
    return [found.get(skip + int(r) + 1) for r in rows]


def _record_lines(
    source: Path | bytes, rows: Sequence[int], *, skip: int, start: int, spaces_blank: bool, delimiter: str
) -> list[int | None]:
    """:func:`row_lines` of a CSV whose quoted values may span lines: the line each record starts on, counting
    records as the CSV readers do (a blank line between records is skipped; one inside quotes is part of a value).
    Read as latin-1, which keeps every byte (and so every quote, delimiter and line end of any ASCII-based text) in
    place; Python's csv module splits the records, the same quoting rules as pandas' and pyarrow's."""
    import csv
    import io

    want = {skip + int(r) + 1 for r in rows}  # the ordinals of the wanted records
    found: dict[int, int] = {}
    binary = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with binary, io.TextIOWrapper(binary, encoding="latin-1", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        seen = 0  # records counted so far (after ``start`` lines)
        first = 1  # the line the next record starts on
        try:
            for record in reader:
                line, first = first, reader.line_num + 1
                blank = not record or (spaces_blank and len(record) == 1 and not record[0].strip(" \t"))
                if line <= start or blank:
                    continue
                seen += 1
                if seen in want:
                    found[seen] = line
                    if len(found) == len(want):
                        break
        except csv.Error:  # a record the readers refused too: the rows after it have no line to name
            pass
    return [found.get(skip + int(r) + 1) for r in rows]


def lines_of_rows(
    source: Path | bytes,
    rows: Sequence[int],
    *,
    skip: int = 0,
    start: int = 0,
    spaces_blank: bool = False,
    quoted: str | None = None,
) -> list[int | None]:
    """:func:`row_lines` for an error message: None for every row when the file cannot be read again (removed, or
    its permission changed, since it was parsed), so that the error is still one line, without the line number."""
    try:
        return row_lines(source, rows, skip=skip, start=start, spaces_blank=spaces_blank, quoted=quoted)
    except OSError:
        return [None] * len(rows)


def line_of_row(
    source: Path | bytes, row: int, *, skip: int = 0, start: int = 0, quoted: str | None = None
) -> int | None:
    """:func:`lines_of_rows` of one row."""
    return lines_of_rows(source, [row], skip=skip, start=start, quoted=quoted)[0]


def _malformed_row_error(
    path: Path,
    data: bytes | None,
    exc: Exception,
    *,
    names: list[str] | None,
    order: list[str],
    delimiter: str,
    quoting: bool,
    line_offset: int,
    row_format: str | None,
) -> DataError:
    """A row with the wrong number of fields, named by its line, with advice that applies to this file's layout:
    ``row_format`` describes a row of a fixed layout; None (a generic CSV) points at ``--delimiter``.

    pyarrow's multi-threaded reader does not know the row's number, so the file is read again on one thread (only
    on this error path) with a handler that records the first bad row."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    hits: list[Any] = []

    def record(row: Any) -> str:
        hits.append(row)
        return "error"

    try:
        with pacsv.open_csv(
            _source(path, data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quoting else False, invalid_row_handler=record
            ),
            convert_options=pacsv.ConvertOptions(column_types={order[0]: pa.string()}, include_columns=order[:1]),
        ) as reader:
            for _ in reader:
                pass
    except (pa.ArrowInvalid, pa.ArrowKeyError):
        pass
    line = None
    if hits and hits[0].number is not None and hits[0].number > 0:  # pyarrow numbers non-blank lines from 1
        line = line_of_row(path if data is None else data, hits[0].number - 1)
    if row_format is None:
        advice = f"check --delimiter (the file is read with {delimiter!r}) or fix that line"
    else:
        advice = f"a row is {row_format}: fix or remove that line"
    if line is None:
        msg = str(exc).splitlines()[0].removeprefix("CSV parse error: ")
        return DataError(f"{path}: malformed row ({msg}); {advice}")
    row = hits[0]
    fields = f"{row.actual_columns} field{'s' if row.actual_columns != 1 else ''}"
    return DataError(f"{path}, line {line + line_offset}: {fields} where {row.expected_columns} are expected; {advice}")


def _failed_column(exc: Exception, order: Sequence[str]) -> str | None:
    """The name of the column a pyarrow conversion error names, when it names one."""
    col_no = _conversion_column(exc)
    return order[col_no] if col_no is not None and col_no < len(order) else None


def _conversion_column(exc: Exception) -> int | None:
    m = re.search(r"In CSV column #(\d+): CSV conversion error", str(exc))
    return int(m.group(1)) if m else None


def _read_table(
    source: Any,
    *,
    path: Path,
    names: list[str] | None,
    delimiter: str,
    quoting: bool,
    types: dict[str, Any],
    nrows: int | None,
) -> pa.Table:
    """One pyarrow read (streaming when ``nrows`` is set so we stop early)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read_opts = pacsv.ReadOptions(column_names=names, block_size=1 << 24)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False)
    conv_opts = pacsv.ConvertOptions(column_types=types, include_columns=list(types), strings_can_be_null=False)
    if nrows is None:
        return pacsv.read_csv(source, read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts)
    batches = []
    got = 0
    with pacsv.open_csv(source, read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts) as rd:
        for batch in rd:
            batches.append(batch)
            got += batch.num_rows
            if got >= nrows:
                break
        schema = rd.schema
    return pa.Table.from_batches(batches, schema=schema).slice(0, nrows)


def _source(path: Path, data: bytes | None) -> Any:
    if data is None:
        return str(path)
    import pyarrow as pa

    return pa.BufferReader(data)


def _first_bad_value(
    path: Path,
    data: bytes | None,
    *,
    names: list[str] | None,
    delimiter: str,
    quoting: bool,
    column: str,
    nrows: int | None,
    integer: bool,
) -> tuple[int, str] | None:
    """Re-read one column as text and return (row, value) of its first non-numeric (or non-integer) entry."""
    import pandas as pd
    import pyarrow as pa

    table = _read_table(
        _source(path, data),
        path=path,
        names=names,
        delimiter=delimiter,
        quoting=quoting,
        types={column: pa.string()},
        nrows=nrows,
    )
    text = table.column(column).to_pandas()
    stripped = text.str.strip()
    if integer:  # what Arrow's int64 reader takes: digits with an optional minus, within 64 bits ("2.0" is not one)
        digits = stripped.str.fullmatch(PLAIN_INT).fillna(False).to_numpy(bool).copy()
        long = digits & (stripped.str.len().to_numpy() >= 19)
        for i in np.flatnonzero(long):
            digits[i] = fits_int64(int(stripped.iloc[i]))
        bad = ~digits & (stripped != "").to_numpy()
    else:
        bad = pd.to_numeric(text, errors="coerce").isna().to_numpy() & (stripped != "").to_numpy()
    rows = np.flatnonzero(bad)
    if len(rows) == 0:
        return None
    return int(rows[0]), str(text.iloc[rows[0]])


def read_rating_columns(
    path: Path,
    *,
    columns: RatingColumns,
    delimiter: str,
    header: bool,
    nrows: int | None = None,
    names: list[str] | None = None,
    data: bytes | None = None,
    quoting: bool = True,
    time_as_float: bool = False,
    options: dict[str, str] | None = None,
    row_format: str | None = None,
    line_offset: int = 0,
) -> RatingArrays:
    """Read the four rating columns of ``path`` (or of ``data``, its already-transformed bytes).

    ``header`` False means ``names`` gives the column names. ``options`` maps a role (``user`` ...) to the CLI flag
    that renames it, for the missing-column hint. Non-integer ids and non-numeric ratings raise DataError naming the
    line; a NaN/empty rating becomes NaN (dropped later); a bad timestamp is flagged in ``bad_timestamp``.
    ``row_format``: what a row of this fixed layout looks like, for the advice on a row with the wrong number of
    fields (None: a generic CSV, whose advice is ``--delimiter``). ``line_offset``: lines of ``path`` before
    ``data`` starts (a header cut off), so that errors name the line of the file. ``data`` must keep the line ends of
    ``path`` (from line ``line_offset + 1`` on): validation names a row's line by reading ``path`` again.
    """
    import pyarrow as pa

    head = check_text_file(path, what="ratings") if data is None else data[:SNIFF_BYTES]
    if data is not None and not data.strip():
        raise DataError(f"{path} has no rating rows")
    if header:
        found = header_fields(head, path=path, delimiter=delimiter)
        if columns.time_optional and columns.time not in found:
            columns = replace(columns, time=None)
        for role in ("user", "movie", "rating", "time"):
            col = getattr(columns, role)
            if col is not None and col not in found:
                raise missing_column_error(path, col, found, delimiter, (options or {}).get(role))
    first_line = (2 if header else 1) + line_offset

    def line_of(row: int) -> str:
        """``, line N`` for data row ``row`` (counted again on this error path: pyarrow skips blank lines)."""
        line = line_of_row(path if data is None else data, row, skip=1 if header else 0)
        return f", line {line + line_offset}" if line is not None else ""

    time_type = pa.float64() if time_as_float else pa.int64()
    types: dict[str, Any] = {columns.user: pa.int64(), columns.movie: pa.int64(), columns.rating: pa.float32()}
    if columns.time is not None:
        types[columns.time] = time_type
    kw: dict[str, Any] = dict(path=path, names=names, delimiter=delimiter, quoting=quoting, nrows=nrows)
    time_text = False
    try:
        table = _read_table(_source(path, data), types=types, **kw)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
        table = None
        order = names if names is not None else header_fields(head, path=path, delimiter=delimiter)
        failed = _failed_column(exc, order)
        if failed is not None and failed == columns.time:
            types[columns.time] = pa.string()
            time_text = True
            try:
                table = _read_table(_source(path, data), types=types, **kw)
            except (pa.ArrowInvalid, pa.ArrowKeyError) as exc2:
                exc = exc2
                failed = _failed_column(exc2, order)
        if table is None:
            if failed in (columns.user, columns.movie, columns.rating):
                integer = failed != columns.rating
                hit = _first_bad_value(
                    path,
                    data,
                    names=names,
                    delimiter=delimiter,
                    quoting=quoting,
                    column=failed,
                    nrows=nrows,
                    integer=integer,
                )
                kind = "an integer id" if integer else "a number"
                todo = (
                    "embedrec reads whole-number ids, as MovieLens numbers them: number the users and movies first"
                    if integer
                    else "fix or remove that row"
                )
                if hit is not None:
                    row, value = hit
                    if integer and parse_id(value.strip()) is not None:
                        kind = "an integer id within 64 bits"
                    raise DataError(
                        f"{path}{line_of(row)}: column {failed!r} has {value!r}, expected {kind}; {todo}"
                    ) from None
                raise DataError(f"{path}: column {failed!r} has a value that is not {kind}; {todo}") from None
            if _is_malformed_row(exc):
                raise _malformed_row_error(
                    path,
                    data,
                    exc,
                    names=names,
                    order=order,
                    delimiter=delimiter,
                    quoting=quoting,
                    line_offset=line_offset,
                    row_format=row_format,
                ) from None
            raise _arrow_error(path, exc) from None
    n = table.num_rows
    if n == 0:
        raise DataError(f"{path} has a header but no rating rows")
    cols = {name: table.column(name) for name in types}
    del table
    for role in ("user", "movie"):
        name = getattr(columns, role)
        if cols[name].null_count:
            row = int(np.flatnonzero(cols[name].is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}{line_of(row)}: empty {role} id in column {name!r}")
    user_id = cols.pop(columns.user).to_numpy()
    movie_id = cols.pop(columns.movie).to_numpy()
    rating_col = cols.pop(columns.rating)
    if rating_col.null_count:
        import pyarrow.compute as pc

        rating_col = pc.fill_null(rating_col, float("nan"))
    rating = rating_col.to_numpy()
    del rating_col
    bad_ts: np.ndarray | None = None
    if columns.time is None:
        timestamp = np.zeros(n, dtype=np.int64)
    else:
        tcol = cols.pop(columns.time)
        if time_text:
            import pandas as pd

            num = pd.to_numeric(tcol.to_pandas(), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            bad_ts = ~_representable_time(num)
            timestamp = np.where(bad_ts, 0, num).astype(np.int64)
        elif time_as_float or tcol.null_count:
            if tcol.null_count:
                import pyarrow.compute as pc

                bad_ts = tcol.is_null().to_numpy(zero_copy_only=False)
                tcol = pc.fill_null(tcol, 0)
            vals = tcol.to_numpy()
            if time_as_float:
                fin = _representable_time(vals)
                bad_ts = ~fin if bad_ts is None else (bad_ts | ~fin)
                vals = np.where(fin, vals, 0)
            timestamp = vals.astype(np.int64, copy=False)
        else:
            timestamp = tcol.to_numpy()
        del tcol
        if bad_ts is not None and not bad_ts.any():
            bad_ts = None
    return RatingArrays(
        user_id=np.ascontiguousarray(user_id, dtype=np.int64),
        movie_id=np.ascontiguousarray(movie_id, dtype=np.int64),
        rating=np.ascontiguousarray(rating, dtype=np.float32),
        timestamp=np.ascontiguousarray(timestamp, dtype=np.int64),
        bad_timestamp=bad_ts,
        file=str(path),
        first_line=first_line,
        source=path,
        cut_lines=line_offset,
        header_lines=1 if header else 0,
    )


MAX_ABS_TIMESTAMP = 2.0**62  # unix seconds; anything beyond int64 range (1e30) would wrap to INT64_MIN when cast


def _representable_time(values: np.ndarray) -> np.ndarray:
    """True where a float timestamp is finite and fits int64 (the rest are flagged as bad timestamps)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.abs(values) < MAX_ABS_TIMESTAMP)


def read_text(path: Path, *, what: str, encodings: tuple[str, ...] = ("utf-8",)) -> str:
    """A whole (small) text file, trying ``encodings`` in order; a clear error when none fits."""
    check_text_file(path, what=what)
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for enc in encodings:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError as exc:
            last = exc
    raise DataError(
        f"{path} is not valid {' or '.join(encodings)} (bad byte at offset {last.start}): re-save it as UTF-8"
    )
