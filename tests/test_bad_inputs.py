"""The bad-input corpus: every user mistake, hostile file and machine fault of issue #10 through the real CLI.

Each case builds its files in ``tmp_path`` (nothing here is committed MovieLens data), runs one ``embedrec`` command
and asserts three things: the exit code, the one error line (a regex; never a traceback, never a second line), and
that nothing under ``tmp_path`` changed except what the case names (no half-written output, no temp leftovers, the
user's files untouched). ``$TMPDIR`` points inside ``tmp_path``, so leftovers in the system temp folder count too.

Exit codes: 2 for a bad input, option or path; 74 for a machine fault (disk full, file size limit); 143 for SIGTERM.

Faults are real, not mocked: a full disk is a 1 MiB tmpfs (root only; skipped elsewhere) or ``RLIMIT_FSIZE`` (EFBIG,
everywhere); a read-only or unreadable path is a ``chmod`` that root obeys because the command runs without
CAP_DAC_OVERRIDE (skipped, with the reason, where capabilities cannot be dropped).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cli import EMBEDREC, cli_env

ERROR_LINE = re.compile(r"^error: ")


# ------------------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def corpus_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment (tests/cli.py) without the caller's ``EMBEDREC_*`` settings, its temp folder inside
    ``tmp_path``, and plain, wide, warning-free output."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("EMBEDREC_")}
    env["TMPDIR"] = str(tmp_path / "systmp")
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONWARNINGS="ignore", JAX_PLATFORMS="cpu")
    return env


# Applied in a fresh interpreter that then execs the CLI: no Python runs between fork and exec in the test process
# (which may hold JAX's threads), so the limits cannot deadlock it.
_LIMITED = """
import ctypes, json, os, resource, signal, sys
limits = json.loads(sys.argv[1])
if limits.get("fsize"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
if limits.get("no_dac") and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped from the bounding set before exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            sys.exit(f"prctl(PR_CAPBSET_DROP) failed: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def limited(cmd: list[str], limits: dict | None) -> list[str]:
    """``cmd`` run under ``limits`` (``fsize``: bytes per file, else EFBIG; ``no_dac``: root obeys permission bits)."""
    if not limits:
        return cmd
    assert cmd[0] == sys.executable
    return [sys.executable, "-c", _LIMITED, json.dumps(limits), *cmd[1:]]


def run_cli(args: list[str], tmp_path: Path, *, limits: dict | None = None, timeout: float = 600) -> Outcome:
    """``embedrec ARGS`` in a fresh process with its cwd and temp folder inside ``tmp_path``."""
    proc = subprocess.run(
        limited(EMBEDREC + args, limits),
        cwd=tmp_path,
        env=corpus_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_error_line(out: Outcome, code: int, pattern: str) -> str:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    # progress lines (plain text on a pipe, e.g. "prepare: reading (step 1/4, 0 s so far)") may come before it
    lines = [line for line in out.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert out.code == code, (out.code, out.stderr[-3000:])
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), lines
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


PROGRESS_LINE = re.compile(r"^[a-z][\w -]*: (started, |done in |[\d,]+/[\d,]+ |.+ \(step \d+/\d+, )")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, mode, size, mtime and content digest."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
                found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                found[rel] = ("other", st.st_mode)
    return found


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


# ------------------------------------------------------------------------------------------- faults, for real
def _permissions_enforced() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return True, ""
    proc = subprocess.run(
        limited([sys.executable, "-c", "pass"], {"no_dac": True}), capture_output=True, text=True, timeout=60
    )
    return proc.returncode == 0, (
        "running as root and cannot drop CAP_DAC_OVERRIDE "
        f"({proc.stderr.strip()[-200:]}): chmod cannot make a path unusable"
    )


PERMS_OK, PERMS_WHY = _permissions_enforced()
NO_DAC = {"no_dac": True}


def file_size_limit(limit: int) -> dict:
    """Writes beyond ``limit`` bytes per file fail with EFBIG (SIGXFSZ ignored): a stand-in for a full disk that
    needs no privileges."""
    return {"fsize": limit}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted inside tmp_path (needs root; skipped with the reason elsewhere)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        mnt.rmdir()
        pytest.skip(
            f"cannot mount a small tmpfs to fill ({proc.stderr.strip() or 'mount failed'}); the "
            "RLIMIT_FSIZE case covers the write-failure path"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_run(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small model trained once (1 epoch) for every case that tampers with a model or a run folder."""
    from embedrec.runs import train_run

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train_run(synthetic_prepared, out=out, overrides={"epochs": 1})
    return out


@dataclass
class Ctx:
    tmp: Path
    data: Path  # the session's prepared synthetic data (read-only for the cases: copy before changing)
    run_factory: Callable[[], Path]
    extra: dict = field(default_factory=dict)

    def copy_data(self) -> Path:
        return Path(shutil.copytree(self.data, self.tmp / "data"))

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.run_factory(), self.tmp / "run"))

    def first_user(self) -> str:
        import pyarrow.parquet as pq

        return str(pq.read_table(self.data / "users.parquet").column("user_id")[0].as_py())


# ---------------------------------------------------------------------------------------------- file makers
def ratings_csv(path: Path, rows: int = 40) -> Path:
    lines = ["userId,movieId,rating,timestamp"]
    for i in range(rows):
        lines.append(f"{i % 7 + 1},{i % 11 + 1},{(i % 5) + 1}.0,{1_000_000 + i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def movies_csv(path: Path) -> Path:
    path.write_text("movieId,title,genres\n" + "".join(f"{m},Movie {m} (1999),Drama\n" for m in range(1, 12)))
    return path


def ml_csv_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings_csv(folder / "ratings.csv")
    movies_csv(folder / "movies.csv")
    return folder


def zip_of(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def ml_csv_members(prefix: str = "ml-latest-small/") -> dict[str, bytes]:
    tmp = io.StringIO()
    tmp.write("userId,movieId,rating,timestamp\n")
    for i in range(400):
        tmp.write(f"{i % 17 + 1},{i % 23 + 1},{(i % 9) / 2 + 1},{1_000_000 + i}\n")
    movies = "movieId,title,genres\n" + "".join(f"{m},Movie {m} (1999),Drama|Comedy\n" for m in range(1, 24))
    return {prefix + "ratings.csv": tmp.getvalue().encode(), prefix + "movies.csv": movies.encode()}


def corrupt_deflate_zip(path: Path) -> Path:
    """A zip whose deflate stream is garbage while every header is intact (zlib.error on reading)."""
    members = ml_csv_members()
    zip_of(path, members)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("ml-latest-small/ratings.csv")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 4, start + info.compress_size - 4):
        raw[i] = 0xFF  # an invalid block type / distance: zlib rejects it
    path.write_bytes(bytes(raw))
    return path


def bomb_zip(path: Path, size: int = 64 * 1024**2) -> Path:
    """ratings.csv of ``size`` zero bytes: a 1000:1 compression ratio, as a zip bomb has."""
    members = ml_csv_members()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/movies.csv", members["ml-latest-small/movies.csv"])
        with zf.open("ml-latest-small/ratings.csv", "w", force_zip64=False) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(size // len(chunk)):
                fh.write(chunk)
    return path


def lying_zip(path: Path) -> Path:
    """A zip whose ratings.csv declares 100 bytes (local header and central directory) but inflates to more."""
    zip_of(path, ml_csv_members())
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("ml-latest-small/ratings.csv")
    true_size = info.file_size.to_bytes(4, "little")
    fake = (100).to_bytes(4, "little")
    # the uncompressed size sits at offset 22 of the local header and 24 of the central directory entry
    local = info.header_offset
    assert raw[local + 22 : local + 26] == true_size
    raw[local + 22 : local + 26] = fake
    name = info.filename.encode()
    central = raw.find(b"PK\x01\x02", 0)
    while raw[central + 46 : central + 46 + len(name)] != name:
        central = raw.find(b"PK\x01\x02", central + 4)
    assert raw[central + 24 : central + 28] == true_size
    raw[central + 24 : central + 28] = fake
    path.write_bytes(bytes(raw))
    return path


def recbole_folder(folder: Path, *, times: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for i, t in enumerate(times):
        rows.append(f"{i % 5 + 1}\t{i % 4 + 1}\t{i % 5 + 1}\t{t}")
    (folder / "x.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{m}\tMovie {m}\t1999\tDrama" for m in range(1, 5)]
    (folder / "x.item").write_text("\n".join(items) + "\n")
    return folder


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def edit_weights(run: Path, change: Callable[[dict], None]) -> None:
    from safetensors.numpy import load_file, save_file

    weights = dict(load_file(str(run / "weights.safetensors")))
    change(weights)
    save_file(weights, str(run / "weights.safetensors"))


def edit_ratings(data: Path, column: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(data / "ratings.parquet")
    values = change(table.column(column).to_numpy().copy())
    typed = pa.array(values, table.schema.field(column).type)
    table = table.set_column(table.column_names.index(column), column, typed)
    pq.write_table(table, data / "ratings.parquet")


# -------------------------------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], list[str]]  # makes the files, returns the command's arguments
    code: int
    pattern: str
    may_change: frozenset[str] = frozenset()  # relative paths allowed to differ afterwards
    limits: dict | None = None  # see limited()
    needs_perms: bool = False


def _unreadable_file(c: Ctx) -> list[str]:
    f = ratings_csv(c.tmp / "ratings.csv")
    f.chmod(0)
    return ["prepare", "--ratings-file", str(f), "--out", str(c.tmp / "out")]


def _unreadable_folder(c: Ctx) -> list[str]:
    folder = ml_csv_folder(c.tmp / "ml")
    folder.chmod(0)
    return ["prepare", str(folder), "--out", str(c.tmp / "out")]


def _read_only_target(c: Ctx) -> list[str]:
    ro = c.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ["prepare", "--synthetic", "--users", "50", "--movies", "60", "--ratings", "500", "--out", str(ro / "data")]


def _predict_into_read_only_folder(c: Ctx) -> list[str]:
    run = c.copy_run()
    (c.tmp / "pairs.csv").write_text("userId,movieId\n1,10\n")
    ro = c.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return [
        "predict",
        "--model",
        str(run),
        "--data",
        str(c.data),
        "--input",
        str(c.tmp / "pairs.csv"),
        "--output",
        str(ro / "out.csv"),
    ]


def _tune_in_a_read_only_study_folder(c: Ctx) -> list[str]:
    """The study file may be written, its folder not (SQLite's journal goes beside it)."""
    tune = c.tmp / "wd" / "tune"
    tune.mkdir(parents=True)
    (tune / "study.db").write_bytes(b"")
    tune.chmod(0o555)
    return ["tune", "--data", str(c.data), "--workdir", str(c.tmp / "wd"), "--trials", "1", "--max-epochs", "1"]


def _workdir_is_file(c: Ctx) -> list[str]:
    (c.tmp / "wd").write_text("not a folder\n")
    return [
        "prepare",
        "--synthetic",
        "--users",
        "50",
        "--movies",
        "60",
        "--ratings",
        "500",
        "--workdir",
        str(c.tmp / "wd"),
    ]


def _cache_is_file(c: Ctx) -> list[str]:
    (c.tmp / "cache").write_text("not a folder\n")
    return ["download", "ml-latest-small", "--cache", str(c.tmp / "cache")]


def _latest(c: Ctx, content: bytes) -> list[str]:
    models = c.tmp / "wd" / "models"
    models.mkdir(parents=True)
    (models / "latest").write_bytes(content)
    return ["recommend", "--workdir", str(c.tmp / "wd"), "--user", "1"]


def _utf16_config(c: Ctx) -> list[str]:
    (c.tmp / "cfg.json").write_bytes(json.dumps({"lr": 0.01}).encode("utf-16"))
    return ["train", "--data", str(c.data), "--config", str(c.tmp / "cfg.json"), "--out", str(c.tmp / "run")]


def _config(c: Ctx, settings: dict) -> list[str]:
    (c.tmp / "cfg.json").write_text(json.dumps(settings).replace("Infinity", "1e999"))
    return ["train", "--data", str(c.data), "--config", str(c.tmp / "cfg.json"), "--out", str(c.tmp / "run")]


def _train_flags(c: Ctx, *flags: str) -> list[str]:
    return ["train", "--data", str(c.data), "--workdir", str(c.tmp / "wd"), *flags]


def _model_output_onto_input(c: Ctx, command: str, option: str, text: str) -> list[str]:
    """``command --model RUN option FILE --output FILE``: the output names the input file."""
    run = c.copy_run()
    (c.tmp / "pairs.csv").write_text(text)
    return [
        command,
        "--model",
        str(run),
        "--data",
        str(c.data),
        option,
        str(c.tmp / "pairs.csv"),
        "--output",
        str(c.tmp / "pairs.csv"),
    ]


def _with_model(c: Ctx, *args: str) -> list[str]:
    """``args`` run against a copy of the tiny trained model (``{tmp}`` in an argument is the case's folder)."""
    run = c.copy_run()
    data = [] if args[0] == "similar" else ["--data", str(c.data)]  # similar reads the model folder alone
    return [args[0], "--model", str(run), *data, *(a.format(tmp=c.tmp) for a in args[1:])]


def _ragged_ratings(c: Ctx) -> list[str]:
    (c.tmp / "mine.csv").write_text("movieId,rating\n522,4,5\n")  # pandas would take 522 as a row label
    return _with_model(c, "recommend", "--ratings", "{tmp}/mine.csv")


def _fold_in_file(c: Ctx, option: str, text: str, *flags: str) -> list[str]:
    (c.tmp / "mine.csv").write_text(text)
    return _with_model(c, "recommend", option, "{tmp}/mine.csv", *flags)


def _users_file(c: Ctx) -> Path:
    """A regular file that is not a model folder (a common slip: the users file passed as --model)."""
    path = c.tmp / "users.csv"
    path.write_text("userId\n1\n")
    return path


def _work_folder(c: Ctx) -> Path:
    """A work folder with a latest run (passed as --model instead of --workdir)."""
    run = c.copy_run()
    (c.tmp / "models").mkdir()
    (c.tmp / "models" / "latest").write_text(f"{run}\n")
    return c.tmp


def _model_case(change: Callable[[Ctx, Path], None]) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        run = c.copy_run()
        change(c, run)
        return ["recommend", "--model", str(run), "--data", str(c.data), "--user", c.first_user()]

    return build


def _tampered(c: Ctx, change: Callable[[object], object]) -> Path:
    run = c.copy_run()
    edit_json(run / "model.json", change)
    return run


def _set(d: object, key: str, value: object) -> object:
    assert isinstance(d, dict)
    d[key] = value
    return d


def _del(d: object, key: str) -> object:
    assert isinstance(d, dict)
    del d[key]
    return d


def _resume_case(change: Callable[[Path], None]) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        run = c.copy_run()
        change(run)
        return ["train", "--resume", "--out", str(run), "--epochs", "2", "--data", str(c.data)]

    return build


def _resume_with_other_settings(c: Ctx) -> list[str]:
    """row_decay has no flag and lr comes from the file here: each is named as the user gave it."""
    (c.tmp / "cfg.toml").write_text("row_decay = 0.5\nlr = 0.5\n")
    return [*_resume_case(lambda r: None)(c), "--config", str(c.tmp / "cfg.toml"), "--dropout", "0.31"]


def _drop_history(run: Path) -> None:
    for meta in (run / "checkpoints").glob("epoch-*/meta.json"):
        edit_json(meta, lambda m: _del(m, "history"))


def _prepared_case(change: Callable[[Path], None]) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        data = c.copy_data()
        change(data)
        return ["train", "--data", str(data), "--workdir", str(c.tmp / "wd"), "--epochs", "1"]

    return build


def _zip_case(make: Callable[[Path], Path]) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        archive = make(c.tmp / "ml-latest-small.zip")
        return ["prepare", str(archive), "--out", str(c.tmp / "out")]

    return build


def _cached_corrupt(c: Ctx) -> list[str]:
    cache = c.tmp / "wd" / "downloads"
    cache.mkdir(parents=True)
    corrupt_deflate_zip(cache / "ml-latest-small.zip")
    return ["prepare", "ml-latest-small", "--workdir", str(c.tmp / "wd")]


def _two_datasets(c: Ctx) -> list[str]:
    members = {**ml_csv_members("a/"), **ml_csv_members("b/")}
    return ["prepare", str(zip_of(c.tmp / "two.zip", members)), "--out", str(c.tmp / "out")]


def _prepare(c: Ctx, folder: Path, *flags: str) -> list[str]:
    return ["prepare", str(folder), "--out", str(c.tmp / "out"), *flags]


def _ml_csv_with(c: Ctx, ratings: str, *, name: str = "ml") -> Path:
    folder = ml_csv_folder(c.tmp / name)
    (folder / "ratings.csv").write_text(ratings)
    return folder


def _ml_csv_with_movies(c: Ctx, movies: str) -> Path:
    folder = ml_csv_folder(c.tmp / "ml")
    (folder / "movies.csv").write_text(movies)
    return folder


NO_TIMES = "userId,movieId,rating\n" + "".join(f"{i % 7 + 1},{i % 11 + 1},{i % 5 + 1}.0\n" for i in range(40))


def _ml_csv_zip_without_timestamps(c: Ctx) -> list[str]:
    members = ml_csv_members("ml/")
    members["ml/ratings.csv"] = NO_TIMES.encode()
    return _prepare(c, zip_of(c.tmp / "mine.zip", members))


def _u_data(c: Ctx, rows: str) -> list[str]:
    folder = c.tmp / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(rows)
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    (folder / "u.item").write_text("".join(f"{m}|Movie {m} (1999)|01-Jan-1999||http://x|{flags}\n" for m in (1, 2)))
    return _prepare(c, folder)


def _ml_1m(c: Ctx, rows: str) -> list[str]:
    folder = c.tmp / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(rows)
    (folder / "movies.dat").write_text("1::Movie 1 (1999)::Drama\n2::Movie 2 (1999)::Drama\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return _prepare(c, folder)


def _recbole_rows(c: Ctx, rows: list[str]) -> list[str]:
    folder = recbole_folder(c.tmp / "rb", times=["900000000"])
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "x.inter").write_text(header + "".join(r + "\n" for r in rows))
    return _prepare(c, folder)


def _tsv_and_csv(c: Ctx, *flags: str) -> list[str]:
    """Tab-separated ratings beside a comma-separated movies file."""
    (c.tmp / "r.tsv").write_text(ratings_csv(c.tmp / "r.csv").read_text().replace(",", "\t"))
    (c.tmp / "r.csv").unlink()
    movies = movies_csv(c.tmp / "m.csv")
    return ["prepare", "--ratings-file", str(c.tmp / "r.tsv"), "--movies-file", str(movies), *flags]


def _generic_csv(c: Ctx, text: str) -> list[str]:
    (c.tmp / "r.csv").write_text(text)
    return _prepare(c, c.tmp / "r.csv", "--format", "csv")


def _strict_zip_after_blank_line(c: Ctx) -> list[str]:
    members = ml_csv_members("ml/")
    members["ml/ratings.csv"] = b"userId,movieId,rating,timestamp\n1,1,4,5\n\n\n2,1,9,6\n"
    return _prepare(c, zip_of(c.tmp / "mine.zip", members), "--strict")


def _movies_dat(c: Ctx, movies: bytes) -> list[str]:
    folder = c.tmp / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1::4::978300760\n")
    (folder / "movies.dat").write_bytes(movies)
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return _prepare(c, folder)


def _recbole_huge_times(c: Ctx) -> list[str]:
    folder = recbole_folder(c.tmp / "rb", times=["1e30", "-1e30"] + [str(900_000_000 + i) for i in range(18)])
    return ["prepare", str(folder), "--out", str(c.tmp / "out"), "--strict"]


CASES = [
    # 5. OS errors
    Case("unreadable-ratings-file", _unreadable_file, 2, r"ratings\.csv: permission denied", needs_perms=True),
    Case("unreadable-source-folder", _unreadable_folder, 2, r"/ml: permission denied", needs_perms=True),
    Case("read-only-target", _read_only_target, 2, r"/ro/data: permission denied", needs_perms=True),
    Case(
        "tune-read-only-study-folder",
        _tune_in_a_read_only_study_folder,
        2,
        r"/wd/tune: permission denied",
        needs_perms=True,
    ),
    # the error names the user's path, not embedrec's temp file beside it
    Case(
        "predict-read-only-output",
        _predict_into_read_only_folder,
        2,
        r"/ro/out\.csv: permission denied",
        needs_perms=True,
    ),
    Case(
        "prepare-file-size-limit",
        lambda c: [
            "prepare",
            "--synthetic",
            "--users",
            "300",
            "--movies",
            "400",
            "--ratings",
            "20000",
            "--out",
            str(c.tmp / "out"),
        ],
        74,
        r"/out: the file grew beyond .*ulimit -f.*partial output was removed",
        limits=file_size_limit(20_000),
    ),
    Case(
        "train-file-size-limit",
        lambda c: ["train", "--data", str(c.data), "--epochs", "1", "--out", str(c.tmp / "run"), "--preset", "seed"],
        74,
        r"/run/checkpoints: the file grew beyond",
        limits=file_size_limit(60_000),
    ),
    Case("workdir-is-a-file", _workdir_is_file, 2, r"--workdir .*/wd is a file, not a folder"),
    Case("download-cache-is-a-file", _cache_is_file, 2, r"--cache .*/cache is a file, not a folder"),
    Case("latest-not-utf8", lambda c: _latest(c, b"\xff\xfe\x00run\n"), 2, r"latest is not a run pointer"),
    Case("latest-5000-chars", lambda c: _latest(c, b"r" * 5000 + b"\n"), 2, r"latest is not a run pointer"),
    Case("latest-long-component", lambda c: _latest(c, b"r" * 4000 + b"\n"), 2, r"names .* which does not exist"),
    Case("config-utf16", _utf16_config, 2, r"--config: .*cfg\.json is not UTF-8 text \(it looks like UTF-16\)"),
    # 6. zip files
    Case("zip-corrupt-deflate", _zip_case(corrupt_deflate_zip), 2, r"ratings\.csv is damaged \(error: .*corrupt"),
    Case("zip-bomb-ratio", _zip_case(bomb_zip), 2, r"claims a [\d,]+:1 compression ratio .*zip bomb"),
    # reading stops at the declared 100 bytes (zipfile's own limit, and embedrec's counter behind it); the CRC of
    # those 100 bytes then fails
    Case("zip-member-lies-about-size", _zip_case(lying_zip), 2, r"ratings\.csv is damaged \(BadZipFile: Bad CRC"),
    Case(
        "zip-cached-corrupt-is-dropped",
        _cached_corrupt,
        2,
        r"is damaged .*cached archive was deleted",
        may_change=frozenset({"wd/downloads/ml-latest-small.zip"}),
    ),
    Case("zip-two-datasets", _two_datasets, 2, r"holds 2 data sets \(ml-csv in a/, ml-csv in b/\)"),
    # an error about a file in an archive names the archive and the member, not the temporary folder it was read from
    Case(
        "zip-member-error-names-the-archive",
        _ml_csv_zip_without_timestamps,
        2,
        r"/mine\.zip/ml/ratings\.csv has no column 'timestamp' .* --ratings-file ml/ratings\.csv "
        r"--movies-file ml/movies\.csv",
    ),
    # 6b. rows and headers a layout cannot read: the line, and a fix that applies to that layout
    Case(
        "ml-csv-without-timestamps",
        lambda c: _prepare(c, _ml_csv_with(c, NO_TIMES)),
        2,
        r"ml/ratings\.csv has no column 'timestamp' \(found 'userId', 'movieId', 'rating'\); the ml-csv layout needs "
        r"one: .* pass the generic CSV layout: --format csv --ratings-file ratings\.csv --movies-file movies\.csv",
    ),
    Case(
        "ml-csv-semicolons",
        lambda c: _prepare(c, _ml_csv_with(c, "userId;movieId;rating;timestamp\n1;1;4;5\n")),
        2,
        r"ratings\.csv has no column 'userId' .*the ml-csv layout is comma-separated: .*--format csv "
        r"--ratings-file ratings\.csv --movies-file movies\.csv --delimiter ';' --movies-delimiter ,$",
    ),
    Case(
        "ml-csv-other-column-names",
        lambda c: _prepare(c, _ml_csv_with(c, "user,item,rating,timestamp\n1,1,4,5\n")),
        2,
        r"no column 'userId' \(found 'user', 'item', .*--format csv .*, with --user-col, --movie-col",
    ),
    Case(
        "ml-csv-short-row",
        lambda c: _prepare(c, _ml_csv_with(c, "userId,movieId,rating,timestamp\n1,1,4,5\n\n\n2,1,3\n")),
        2,
        r"ml/ratings\.csv, line 5: 3 fields where 4 are expected; a row is userId,movieId,rating,timestamp "
        r"\(the ml-csv layout's ratings\.csv\): fix or remove that line$",
    ),
    Case(
        "u-data-short-row",
        lambda c: _u_data(c, "1\t1\t4\t880000000\n2\t1\t4\t880000001\n2\t2\t3\n"),
        2,
        r"ml-100k/u\.data, line 3: 3 fields where 4 are expected; a row is user id, item id, rating, timestamp, "
        r"separated by tabs \(ml-100k's u\.data\): fix or remove that line$",
    ),
    Case(
        "u-data-spaces-not-tabs",
        lambda c: _u_data(c, "1 1 4 880000000\n"),
        2,
        r"u\.data, line 1: 1 field where 4 are expected; a row is .*separated by tabs",
    ),
    Case(
        "ratings-dat-long-row",
        lambda c: _ml_1m(c, "1::1::4::978300760\n1::2::3::978300761::x\n"),
        2,
        r"ml-1m/ratings\.dat, line 2: 5 fields where 4 are expected; a row is UserID::MovieID::Rating::Timestamp",
    ),
    Case(
        "recbole-short-row",
        lambda c: _recbole_rows(c, ["1\t1\t4\t900000000", "2\t1\t4\t900000001", "2\t2"]),
        2,
        r"rb/x\.inter, line 4: 2 fields where 4 are expected; a row is the 4 tab-separated fields its header names",
    ),
    # the .inter's header is read apart from its rows: a bad value is still named by its line in the file
    Case(
        "recbole-bad-user-id",
        lambda c: _recbole_rows(c, ["1\t1\t4\t900000000", "u2\t1\t4\t900000001"]),
        2,
        r"rb/x\.inter, line 3: column 'user_id' has 'u2'",
    ),
    # a TSV rating file beside a CSV movies file: each file's delimiter is named, and the flags read both
    Case(
        "tsv-ratings-csv-movies",
        lambda c: _tsv_and_csv(c),
        2,
        r"r\.tsv has no column 'userId' .*it seems to use '\\t' as delimiter, and the movies file .*m\.csv ',': "
        r"pass --delimiter '\\t' --movies-delimiter ,$",
    ),
    Case(
        "tsv-ratings-csv-movies-delimiter-tab",
        lambda c: _tsv_and_csv(c, "--delimiter", "\\t"),
        2,
        r"m\.csv has no column 'movieId' .*it seems to use ',' as delimiter, and the ratings file .*r\.tsv '\\t': "
        r"pass --movies-delimiter ,$",
    ),
    Case(
        "movies-delimiter-two-characters",
        lambda c: _tsv_and_csv(c, "--movies-delimiter", "::"),
        2,
        r"--movies-delimiter must be one character",
    ),
    # a relative --ratings-file found both in the current folder and beside SOURCE is not guessed at (the current
    # folder's was read silently)
    Case(
        "generic-ratings-file-in-two-places",
        lambda c: _prepare(
            c, ml_csv_folder(c.tmp / "ml"), "--ratings-file", str(ratings_csv(c.tmp / "ratings.csv").name)
        ),
        2,
        r"--ratings-file ratings\.csv names two files, .*/ratings\.csv in the current folder and .*ml/ratings\.csv "
        r"beside SOURCE: pass the path of the one you mean$",
    ),
    Case(
        "generic-csv-wrong-delimiter",
        lambda c: ["prepare", "--ratings-file", str(ratings_csv(c.tmp / "r.csv")), "--delimiter", ";"],
        2,
        r"r\.csv has no column 'userId' .*it seems to use ',' as delimiter: pass --delimiter ,$",
    ),
    Case(
        "generic-csv-short-row-after-blank-lines",
        lambda c: _generic_csv(c, "userId,movieId,rating\n1,1,4\n\n2,1\n"),
        2,
        r"r\.csv, line 4: 2 fields where 3 are expected; check --delimiter \(the file is read with ','\) or fix",
    ),
    # pyarrow skips blank lines: an error naming a row's line counts them back in (CRLF too), after the header or
    # not, in a .dat file read as transformed bytes, in a RecBole file read without its header, and with --strict
    Case(
        "generic-csv-bad-id-after-blank-lines",
        lambda c: _generic_csv(c, "userId,movieId,rating\n1,1,4\n\n\n2,abc,3\n"),
        2,
        r"r\.csv, line 5: column 'movieId' has 'abc', expected an integer id",
    ),
    Case(
        "generic-csv-crlf-bad-rating-after-blank-line",
        lambda c: _generic_csv(c, "userId,movieId,rating\r\n1,1,4\r\n\r\n2,1,x\r\n"),
        2,
        r"r\.csv, line 4: column 'rating' has 'x', expected a number",
    ),
    Case(
        "generic-csv-empty-id-after-blank-line",
        lambda c: _generic_csv(c, "userId,movieId,rating\n1,1,4\n\n,1,3\n"),
        2,
        r"r\.csv, line 4: empty user id in column 'userId'",
    ),
    Case(
        "ratings-dat-bad-id-after-blank-line",
        lambda c: _ml_1m(c, "1::1::4::978300760\n\n1::x::3::978300761\n"),
        2,
        r"ml-1m/ratings\.dat, line 3: column 'item' has 'x'",
    ),
    Case(
        "recbole-bad-user-id-after-blank-line",
        lambda c: _recbole_rows(c, ["1\t1\t4\t900000000", "", "u2\t1\t4\t900000001"]),
        2,
        r"rb/x\.inter, line 4: column 'user_id' has 'u2'",
    ),
    Case(
        "strict-bad-rating-after-blank-line",
        lambda c: _prepare(c, _ml_csv_with(c, "userId,movieId,rating,timestamp\n1,1,4,5\n\n2,1,9,6\n"), "--strict"),
        2,
        r"ml/ratings\.csv, line 4: a missing, non-finite or out-of-scale rating \(9, scale 0\.5\.\.5\)",
    ),
    Case(
        "strict-u-data-after-leading-blank-lines",
        lambda c: _u_data(c, "\n\n1\t1\t4\t880000000\n1\t1\t3\t880000001\n") + ["--strict"],
        2,
        r"ml-100k/u\.data, line 3: a repeated \(user, movie\) pair",
    ),
    Case(
        "strict-recbole-bad-timestamp-after-blank-line",
        lambda c: _recbole_rows(c, ["1\t1\t4\t900000000", "", "2\t1\t4\tsoon"]) + ["--strict"],
        2,
        r"rb/x\.inter, line 4: an unparsable timestamp",
    ),
    # validated while the archive's files are still unpacked: the line, and the archive's name, not the temp folder
    Case(
        "zip-strict-error-names-the-archive-and-line",
        _strict_zip_after_blank_line,
        2,
        r"/mine\.zip/ml/ratings\.csv, line 5: a missing, non-finite or out-of-scale rating \(9",
    ),
    Case(
        "movies-csv-bad-id-after-blank-line",
        lambda c: _prepare(c, _ml_csv_with_movies(c, "movieId,title,genres\n1,A (1999),Drama\n\nx2,B,Drama\n")),
        2,
        r"ml/movies\.csv, line 4: movie id 'x2' is not an integer",
    ),
    # U+0085 (a Windows-1252 ellipsis read as latin-1) is no line end: str.splitlines split the title there
    Case(
        "movies-dat-title-with-x85",
        lambda c: _movies_dat(c, b"1::Movie\x85 (1999)::Drama\n\nx2::B (1999)::Drama\n"),
        2,
        r"ml-1m/movies\.dat, line 3: movie id 'x2' is not an integer",
    ),
    # 7. tampered model folders
    Case(
        "model-json-is-a-list",
        _model_case(lambda c, r: edit_json(r / "model.json", lambda m: [m])),
        2,
        r"model\.json is not a valid embedrec model \(expected a JSON object, found a list\)",
    ),
    Case(
        "info-model-null",
        lambda c: ["info", str(_tampered(c, lambda m: _set(m, "model", None)))],
        2,
        r"'model' must be a table of settings, found a NoneType",
    ),
    Case(
        "model-null",
        _model_case(lambda c, r: edit_json(r / "model.json", lambda m: _set(m, "model", None))),
        2,
        r"'model' must be a table of settings, found a NoneType",
    ),
    Case(
        "model-missing-shape",
        _model_case(lambda c, r: edit_json(r / "model.json", lambda m: _del(m, "shape"))),
        2,
        r"'shape' must be a table of settings, found missing",
    ),
    Case(
        "model-missing-key",
        _model_case(lambda c, r: edit_json(r / "model.json", lambda m: _set(m, "shape", {"n_users": 3}))),
        2,
        r"not a valid embedrec model \(data shape",
    ),
    Case(
        "model-string-beta",
        _model_case(
            lambda c, r: edit_json(r / "model.json", lambda m: _set(m, "ranking", {"score": "blend", "beta": "0.5"}))
        ),
        2,
        r"beta must be a finite number, found '0\.5'",
    ),
    Case(
        "model-string-setting",
        _model_case(
            lambda c, r: edit_json(r / "model.json", lambda m: _set(m, "model", {**m["model"], "embedding_dim": "64"}))
        ),
        2,
        r"embedding_dim: expected a whole number",
    ),
    Case(
        "weights-wrong-shape",
        _model_case(lambda c, r: edit_weights(r, lambda w: w.update(user_embedding=w["user_embedding"][:, :3].copy()))),
        2,
        r"user_embedding is \d+x3, expected \d+x64",
    ),
    Case(
        "weights-fewer-user-rows",
        _model_case(lambda c, r: edit_weights(r, lambda w: w.update(user_embedding=w["user_embedding"][:-5].copy()))),
        2,
        r"user_embedding is \d+x64, expected \d+x64",
    ),
    Case(
        "weights-nan",
        _model_case(lambda c, r: edit_weights(r, lambda w: w["movie_embedding"].__setitem__((0, 0), np.nan))),
        2,
        r"movie_embedding holds NaN or infinite values",
    ),
    Case(
        "weights-genre-index-out-of-range",
        _model_case(lambda c, r: edit_weights(r, lambda w: w["genre_idx"].__setitem__((0, 0), 10_000))),
        2,
        r"genre_idx spans .*outside the",
    ),
    # a --model (or info's RUN) that is not a model folder says what it is and what to pass, the same in every command
    Case(
        "evaluate-model-is-a-file",
        lambda c: ["evaluate", "--model", str(_users_file(c)), "--data", str(c.data)],
        2,
        r"users\.csv is a file, not a model folder: pass a run folder that `embedrec train` made",
    ),
    Case(
        "predict-model-is-a-file",
        lambda c: ["predict", "--model", str(_users_file(c)), "--user", "1", "--movie", "1"],
        2,
        r"users\.csv is a file, not a model folder",
    ),
    Case(
        "recommend-model-is-a-file",
        lambda c: ["recommend", "--model", str(_users_file(c)), "--user", "1"],
        2,
        r"users\.csv is a file, not a model folder",
    ),
    Case(
        "similar-model-is-a-file",
        lambda c: ["similar", "--model", str(_users_file(c)), "--movie", "x"],
        2,
        r"users\.csv is a file, not a model folder",
    ),
    Case("serve-model-is-a-file", lambda c: ["serve", "--model", str(_users_file(c))], 2, r"users\.csv is a file, not"),
    Case("info-model-is-a-file", lambda c: ["info", str(_users_file(c))], 2, r"users\.csv is a file, not a model"),
    Case(
        "recommend-model-is-model-json",
        lambda c: ["recommend", "--model", str(c.copy_run() / "model.json"), "--user", "1"],
        2,
        r"run/model\.json is a file, not a model folder: pass the folder that holds it, .*/run$",
    ),
    Case(
        "recommend-model-is-a-work-folder",
        lambda c: ["recommend", "--model", str(_work_folder(c)), "--user", "1"],
        2,
        r"is not a model folder \(it has no model\.json\): it looks like a work folder: pass --workdir ",
    ),
    Case(
        "evaluate-model-missing",
        lambda c: ["evaluate", "--model", str(c.tmp / "nowhere"), "--data", str(c.data)],
        2,
        r"model folder .*/nowhere does not exist: pass a run folder",
    ),
    # 8. out-of-domain values
    Case("train-seed-negative", lambda c: _train_flags(c, "--seed", "-1"), 2, r"--seed: must be a whole number"),
    Case("train-seed-21-digits", lambda c: _train_flags(c, "--seed", "1" * 21), 2, r"--seed: must be a whole num"),
    Case(
        "train-weight-decay-inf",
        lambda c: _train_flags(c, "--weight-decay", "inf"),
        2,
        r"--weight-decay: must be a finite number",
    ),
    Case(
        "config-sampling-alpha-negative",
        lambda c: _config(c, {"sampling_alpha": -1}),
        2,
        r"sampling_alpha: must be >= 0",
    ),
    Case(
        "config-sampling-alpha-nan",
        lambda c: _config(c, {"sampling_alpha": float("nan")}),
        2,
        r"--config: .*cfg\.json: sampling_alpha: must be a finite number",
    ),
    Case(
        "config-embedding-dim-huge",
        lambda c: _config(c, {"embedding_dim": 10**20}),
        2,
        r"--config: .*cfg\.json: embedding_dim: 100000000000000000000 is out of range",
    ),
    # an output that is the input file would replace the user's file with the result: refused, the input unchanged
    Case(
        "predict-output-is-the-input",
        lambda c: _model_output_onto_input(c, "predict", "--input", "userId,movieId\n1,10\n"),
        2,
        r"--output .*pairs\.csv is the same file as --input .*pairs\.csv: writing it would replace your input",
    ),
    Case(
        "recommend-output-is-the-users-file",
        lambda c: _model_output_onto_input(c, "recommend", "--users-file", "userId\n1\n"),
        2,
        r"--output .*pairs\.csv is the same file as --users-file .*pairs\.csv",
    ),
    # the user's own text in an error is printed as written, never read as rich markup (a traceback before)
    Case(
        "similar-title-markup",
        lambda c: _with_model(c, "similar", "--movie", "[/]"),
        2,
        r"no movie title contains '\[/\]'",
    ),
    Case(
        "recommend-genre-markup",
        lambda c: _with_model(c, "recommend", "--user", c.first_user(), "--genre", "[red]x[/red]"),
        2,
        r"--genre: unknown genre '\[red\]x\[/red\]'",
    ),
    # an empty --genre matches no genre: it was read as no filter at all (the whole catalogue, exit 0)
    Case(
        "recommend-genre-empty",
        lambda c: _with_model(c, "recommend", "--user", c.first_user(), "--genre", ""),
        2,
        r"--genre is empty: pass a genre such as Comedy, or drop --genre",
    ),
    Case(
        "recommend-cold-start-genre-blank",
        lambda c: _with_model(c, "recommend", "--user", "999999", "--genre", "  "),
        2,
        r"--genre is empty",
    ),
    Case(  # the cold-start note came first, a second line before the error
        "recommend-cold-start-genre-unknown",
        lambda c: _with_model(c, "recommend", "--user", "999999", "--genre", "Space Opera"),
        2,
        r"--genre: unknown genre 'Space Opera'",
    ),
    # an --output under a file (where its folder should be) is refused before any work: it was found only when the
    # table was written, after ranking every user, and told as "already exists"
    Case(
        "recommend-batch-output-under-a-file",
        lambda c: _with_model(c, "recommend", "--all-users", "--output", str(_users_file(c) / "recs.csv")),
        2,
        r"--output .*users\.csv/recs\.csv: .*users\.csv is a file, not a folder: choose a path in a folder",
    ),
    Case(
        "predict-output-under-a-file",
        lambda c: _with_model(
            c, "predict", "--input", str(_users_file(c)), "--output", str(c.tmp / "users.csv" / "deeper" / "p.csv")
        ),
        2,
        r"--output .*p\.csv: .*users\.csv is a file, not a folder",
    ),
    # a long first row is not silently read with its columns shifted
    Case(
        "fold-in-ragged-row", _ragged_ratings, 2, r"--ratings: .*mine\.csv line 2 has more fields than the header's 2"
    ),
    # pandas skips blank lines (and lines of spaces) in a user's CSV: the line named is the file's all the same
    Case(
        "fold-in-bad-rating-after-blank-lines",
        lambda c: _fold_in_file(c, "--ratings", "movieId,rating\n1,4\n\n  \n2,great\n"),
        2,
        r"--ratings: .*mine\.csv line 5: rating 'great' is not a number",
    ),
    Case(
        "fold-in-ragged-row-after-blank-line",
        lambda c: _fold_in_file(c, "--ratings", "movieId,rating\n\n522,4,5\n"),
        2,
        r"--ratings: .*mine\.csv line 3 has more fields than the header's 2",
    ),
    Case(
        "users-file-bad-id-after-blank-line",
        lambda c: _fold_in_file(c, "--users-file", "userId\n1\n\nx\n", "--output", "{tmp}/recs.csv"),
        2,
        r"--users-file: .*mine\.csv line 4: user id 'x' is not an integer",
    ),
    # Typer's own parse errors are one line too, naming the option and where the help is (a usage box before)
    Case(
        "unknown-option",
        lambda c: _train_flags(c, "--bogus"),
        2,
        r"No such option: --bogus .*\(see `.* train --help`\)",
    ),
    Case(
        "option-below-its-range",
        lambda c: ["evaluate", "--workdir", str(c.tmp / "wd"), "--max-users", "0"],
        2,
        r"Invalid value for '--max-users': .*greater than or equal to 1 \(see `.* evaluate --help`\)",
    ),
    Case("missing-option", lambda c: ["similar"], 2, r"Missing option '--movie'"),
    # an id option is plain decimal digits: click's int() took "1_000" for user 1000 and "+5" for 5
    Case(
        "recommend-user-with-an-underscore",
        lambda c: _with_model(c, "recommend", "--user", "1_000"),
        2,
        r"Invalid value for '--user': expected a whole number in plain digits, like 42 or -7, got '1_000' "
        r"\(see `.* recommend --help`\)",
    ),
    Case(
        "predict-movie-with-a-plus",
        lambda c: _with_model(c, "predict", "--user", c.first_user(), "--movie", "+5"),
        2,
        r"Invalid value for '--movie': expected a whole number in plain digits, like 42 or -7, got '\+5'",
    ),
    Case(
        "similar-other-digits", lambda c: _with_model(c, "similar", "--movie", "\u00b2"), 2, r"no movie title contains"
    ),
    # a setting is named as the user gave it: the flag, or the config file and its key (many keys have no flag)
    Case(
        "config-row-decay-negative",
        lambda c: _config(c, {"row_decay": -1}),
        2,
        r"--config: .*cfg\.json: row_decay: must be >= 0, got -1",
    ),
    Case(
        "config-movie-clusters-huge",
        lambda c: _config(c, {"movie_clusters": 10**11}),
        2,
        r"--config: .*cfg\.json: movie_clusters: 100000000000 is out of range",
    ),
    Case(
        "config-unknown-preset",
        lambda c: _config(c, {"preset": "nope"}),
        2,
        r"--config: .*cfg\.json: preset must be one of seed, default, got 'nope'",
    ),
    Case(
        "config-negatives-on-the-seed-preset",
        lambda c: _config(c, {"preset": "seed", "negatives": 8}),
        2,
        r"--config: .*cfg\.json: negatives: needs a model with the watch output",
    ),
    # sizes within int32 that this data or machine cannot train: refused before anything is allocated or written
    Case(
        "train-embedding-dim-beyond-memory",
        lambda c: _train_flags(c, "--embedding-dim", "100000000"),
        2,
        r"--embedding-dim: 100,000,000 makes a model of [\d,]+ parameters, .* GiB to train, more than this machine",
    ),
    Case(
        "config-movie-clusters-beyond-the-movies",
        lambda c: _config(c, {"movie_clusters": 1_000_000_000}),
        2,
        r"--config: .*cfg\.json: movie_clusters: 1000000000 is more clusters than the [\d,]+ movies with training",
    ),
    Case("train-dropout-flag", lambda c: _train_flags(c, "--dropout", "1.5"), 2, r"--dropout: must be in \[0, 1\)"),
    Case(
        "tune-seed-negative",
        lambda c: ["tune", "--data", str(c.data), "--workdir", str(c.tmp / "wd"), "--trials", "1", "--seed", "-1"],
        2,
        r"--seed: must be a whole number in 0\.\.4294967295, got -1",
    ),
    Case(
        "synthetic-users-1e20",
        lambda c: ["prepare", "--synthetic", "--users", str(10**20), "--out", str(c.tmp / "out")],
        2,
        r"--users must be a whole number in 1\.\.",
    ),
    Case(
        "prepare-seed-huge",
        lambda c: ["prepare", "--synthetic", "--seed", str(2**40), "--out", str(c.tmp / "out")],
        2,
        r"--seed must be a whole number in 0\.\.",
    ),
    Case("recbole-timestamps-1e30", _recbole_huge_times, 2, r"x\.inter, line 2: .*timestamp"),
    # 9. resume and prepared data
    Case(
        "resume-run-json-without-data",
        _resume_case(lambda r: edit_json(r / "run.json", lambda m: _del(m, "data"))),
        2,
        r"run\.json is damaged \('data' is missing\)",
    ),
    Case("resume-checkpoint-without-history", _resume_case(_drop_history), 2, r"no complete checkpoint to resume"),
    Case(
        "resume-with-other-settings",
        _resume_with_other_settings,
        2,
        r"--resume continues with the settings in .*run\.json; drop --config: .*cfg\.toml: row_decay, "
        r"--config: .*cfg\.toml: lr, --dropout \(only --epochs may change\)$",
    ),
    Case(
        "prepared-movie-index-out-of-range",
        _prepared_case(lambda d: edit_ratings(d, "movie_idx", lambda v: np.where(np.arange(len(v)) == 3, 400, v))),
        2,
        r"movie_idx spans 0\.\.400 but",
    ),
    Case(
        "prepared-negative-user-index",
        _prepared_case(lambda d: edit_ratings(d, "user_idx", lambda v: np.where(np.arange(len(v)) == 0, -1, v))),
        2,
        r"user_idx spans -1\.\.",
    ),
    Case(
        "prepared-vocab-without-genres",
        _prepared_case(lambda d: edit_json(d / "vocab.json", lambda v: _del(v, "genres"))),
        2,
        r"vocab\.json lacks 'genres'",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, synthetic_prepared: Path, request: pytest.FixtureRequest) -> None:
    if case.needs_perms and not PERMS_OK:
        pytest.skip(PERMS_WHY)
    (tmp_path / "systmp").mkdir()
    ctx = Ctx(tmp_path, synthetic_prepared, lambda: request.getfixturevalue("tiny_run"))
    args = case.build(ctx)
    before = snapshot(tmp_path)
    data_before = snapshot(synthetic_prepared)
    out = run_cli(args, tmp_path, limits=case.limits or (NO_DAC if case.needs_perms else None))
    assert_one_error_line(out, case.code, case.pattern)
    assert changed(before, snapshot(tmp_path)) == set(case.may_change)
    assert snapshot(synthetic_prepared) == data_before


def test_the_generic_csv_flags_suggested_for_ml_csv_without_timestamps_read_it(tmp_path: Path) -> None:
    """The advice is a command that works: run with the flags the error suggests, the same folder prepares."""
    (tmp_path / "systmp").mkdir()
    folder = ml_csv_folder(tmp_path / "ml")
    (folder / "ratings.csv").write_text(NO_TIMES)
    out = run_cli(["prepare", str(folder), "--out", str(tmp_path / "data")], tmp_path)
    line = assert_one_error_line(out, 2, r"pass the generic CSV layout: (--format csv .*) \(")
    flags = re.search(r"layout: (--format csv .*?) \(", line).group(1).split()  # type: ignore[union-attr]
    out = run_cli(["prepare", str(folder), *flags, "--out", str(tmp_path / "data"), "--json"], tmp_path)
    assert out.code == 0, out.stderr
    from embedrec.data import load_prepared

    data = load_prepared(tmp_path / "data")
    assert len(data.rating) == 40 and data.n_movies == 11 and (data.timestamp == 0).all()


def test_the_delimiter_flags_suggested_for_tsv_ratings_beside_csv_movies_read_both(tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    args = _tsv_and_csv(Ctx(tmp_path, tmp_path, lambda: tmp_path)) + ["--out", str(tmp_path / "data")]
    line = assert_one_error_line(run_cli(args, tmp_path), 2, r"pass (--delimiter .*)$")
    flags = [{"'\\t'": "\t"}.get(f, f) for f in re.search(r"pass (--delimiter .*)$", line).group(1).split()]  # type: ignore[union-attr]
    out = run_cli([*args, *flags, "--json"], tmp_path)
    assert out.code == 0, out.stderr
    from embedrec.data import load_prepared

    data = load_prepared(tmp_path / "data")
    assert len(data.rating) == 40 and list(data.movies["title"][:2]) == ["Movie 1", "Movie 2"]


# ------------------------------------------------------------------------------------- faults with more to check
def test_full_disk_during_prepare_keeps_the_previous_data_and_other_files(tmp_path: Path, small_disk: Path) -> None:
    """A real ENOSPC: the 1 MiB disk holds an earlier prepared data set and a user's file; a bigger prepare fails."""
    (tmp_path / "systmp").mkdir()
    first = run_cli(
        [
            "prepare",
            "--synthetic",
            "--users",
            "50",
            "--movies",
            "60",
            "--ratings",
            "500",
            "--out",
            str(small_disk / "data"),
        ],
        tmp_path,
    )
    assert first.code == 0, first.stderr
    (small_disk / "notes.txt").write_text("the user's own file\n")
    before = snapshot(tmp_path)
    out = run_cli(
        [
            "prepare",
            "--synthetic",
            "--users",
            "3000",
            "--movies",
            "4000",
            "--ratings",
            "400000",
            "--out",
            str(small_disk / "data"),
        ],
        tmp_path,
    )
    assert_one_error_line(
        out,
        74,
        r"small-disk/data: no space left on the disk: free some space .*partial output "
        "was removed",
    )
    assert changed(before, snapshot(tmp_path)) == set()


def test_sigterm_during_prepare_leaves_no_temp_folder(tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    first = run_cli(
        [
            "prepare",
            "--synthetic",
            "--users",
            "50",
            "--movies",
            "60",
            "--ratings",
            "500",
            "--out",
            str(tmp_path / "data"),
        ],
        tmp_path,
    )
    assert first.code == 0, first.stderr
    before = snapshot(tmp_path)
    proc = subprocess.Popen(
        EMBEDREC
        + [
            "prepare",
            "--synthetic",
            "--users",
            "20000",
            "--movies",
            "20000",
            "--ratings",
            "3000000",
            "--out",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        env=corpus_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not any(p.name.startswith(".data.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None, "prepare finished before its temp folder was seen; make it bigger"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert_one_error_line(Outcome(proc.returncode, stdout, stderr), 143, r"terminated by SIGTERM")
    assert changed(before, snapshot(tmp_path)) == set()


def test_next_prepare_sweeps_only_dead_writers_temp_folders(tmp_path: Path) -> None:
    """What a kill -9 left (the pid is gone) goes; a live writer's, and names embedrec did not write, stay."""
    (tmp_path / "systmp").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".data.tmp-{dead.pid}-0123abcd"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "ratings.parquet").write_bytes(b"half")
    live = tmp_path / f".data.tmp-{os.getppid()}-89abcdef"
    live.mkdir()
    foreign = [tmp_path / ".data.tmp-notapid", tmp_path / "data.tmp-1-0123abcd", tmp_path / f".other.tmp-{dead.pid}"]
    for p in foreign:
        p.write_text("keep me\n")
    src = tmp_path / "systmp" / f"embedrec-src-{dead.pid}-xyz"
    src.mkdir()
    before = snapshot(tmp_path)
    out = run_cli(
        ["prepare", str(zip_of(tmp_path / "ml.zip", ml_csv_members())), "--out", str(tmp_path / "data")], tmp_path
    )
    assert out.code == 0, out.stderr
    gone = {k for k in changed(before, snapshot(tmp_path)) if k not in snapshot(tmp_path)}
    assert gone == {stale.name, f"{stale.name}/sub", f"{stale.name}/sub/ratings.parquet", f"systmp/{src.name}"}
    assert live.is_dir() and all(p.is_file() for p in foreign)


def test_an_interrupted_replace_gets_the_previous_data_back(tmp_path: Path) -> None:
    """A kill between moving the old data set aside and renaming the new one in: the next run restores it first."""
    (tmp_path / "systmp").mkdir()
    args = [
        "prepare",
        "--synthetic",
        "--users",
        "50",
        "--movies",
        "60",
        "--ratings",
        "500",
        "--out",
        str(tmp_path / "data"),
    ]
    assert run_cli(args, tmp_path).code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".data.old-{dead.pid}-0123abcd"
    os.replace(tmp_path / "data", aside)
    from embedrec.tempfiles import sweep_stale

    assert sweep_stale(tmp_path, "data") == [tmp_path / "data"]
    assert (tmp_path / "data" / "summary.json").is_file() and not aside.exists()


# ------------------------------------------------------------------------------------------ downloads (md5)
class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _download(server: _Server, tmp_path: Path, *flags: str) -> Outcome:
    env_url = f"http://127.0.0.1:{server.server_address[1]}/ml"
    args = ["download", "ml-latest-small", "--cache", str(tmp_path / "cache"), *flags]
    proc = subprocess.run(
        EMBEDREC + args,
        cwd=tmp_path,
        env={**corpus_env(tmp_path), "EMBEDREC_DOWNLOAD_URL": env_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("md5", [None, b"<html>maintenance</html>"], ids=["md5-missing", "md5-garbled"])
def test_unverifiable_download_warns_loudly_and_strict_refuses(
    server: _Server, tmp_path: Path, md5: bytes | None
) -> None:
    (tmp_path / "systmp").mkdir()
    server.files["/ml/ml-latest-small.zip"] = zip_of(tmp_path / "src.zip", ml_csv_members()).read_bytes()
    (tmp_path / "src.zip").unlink()
    if md5 is not None:
        server.files["/ml/ml-latest-small.zip.md5"] = md5
    before = snapshot(tmp_path)
    strict = _download(server, tmp_path, "--strict")
    assert_one_error_line(strict, 2, r"cannot verify .*ml-latest-small\.zip: .*--strict refuses an unverified")
    assert {k for k in changed(before, snapshot(tmp_path))} == {"cache", "cache/ml-latest-small.zip.part"}
    loose = _download(server, tmp_path)
    assert loose.code == 0, loose.stderr
    warning = [line for line in loose.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and re.match(
        r"warning: NOT VERIFIED: .*ml-latest-small\.zip\.md5 (gave HTTP 404|holds "
        r"no md5)",
        warning[0],
    ), warning
    assert (tmp_path / "cache" / "ml-latest-small" / "ratings.csv").is_file()


def test_corrupt_download_is_dropped_from_the_cache(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    body = corrupt_deflate_zip(tmp_path / "src.zip").read_bytes()
    (tmp_path / "src.zip").unlink()
    server.files["/ml/ml-latest-small.zip"] = body
    server.files["/ml/ml-latest-small.zip.md5"] = hashlib.md5(body).hexdigest().encode()
    before = snapshot(tmp_path)
    out = _download(server, tmp_path)
    assert_one_error_line(out, 2, r"ratings\.csv is damaged .*damaged archive was deleted from the cache")
    assert changed(before, snapshot(tmp_path)) == {"cache"}  # the folder remains, empty: no archive, no temp


def test_bomb_download_extracts_nothing(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    body = bomb_zip(tmp_path / "src.zip").read_bytes()
    (tmp_path / "src.zip").unlink()
    server.files["/ml/ml-latest-small.zip"] = body
    server.files["/ml/ml-latest-small.zip.md5"] = hashlib.md5(body).hexdigest().encode()
    out = _download(server, tmp_path)
    assert_one_error_line(out, 2, r"compression ratio .*zip bomb")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []


def test_download_force_keeps_the_users_files_in_the_extracted_folder(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    body = zip_of(tmp_path / "src.zip", ml_csv_members()).read_bytes()
    (tmp_path / "src.zip").unlink()
    server.files["/ml/ml-latest-small.zip"] = body
    server.files["/ml/ml-latest-small.zip.md5"] = hashlib.md5(body).hexdigest().encode()
    assert _download(server, tmp_path).code == 0
    (tmp_path / "cache" / "ml-latest-small" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    out = _download(server, tmp_path, "--force")
    assert_one_error_line(
        out,
        2,
        r"cache/ml-latest-small holds files embedrec did not write \(notes\.txt\): .*move them \(or the folder\) "
        r"elsewhere, then run `embedrec download ml-latest-small` again \(--force does not delete them either\)$",
    )
    assert changed(before, snapshot(tmp_path)) == set()


# ------------------------------------------------------------------------------- values that now work correctly
def test_one_synthetic_movie_gives_finite_ratings(tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    out = run_cli(
        [
            "prepare",
            "--synthetic",
            "--users",
            "50",
            "--movies",
            "1",
            "--ratings",
            "10",
            "--out",
            str(tmp_path / "data"),
            "--json",
        ],
        tmp_path,
    )
    assert out.code == 0, out.stderr
    from embedrec.data import load_prepared

    data = load_prepared(tmp_path / "data")
    assert len(data.rating) == 10 and np.isfinite(data.rating).all() and data.n_movies == 1


def test_recbole_timestamps_beyond_int64_are_dropped_as_bad_not_wrapped(tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    folder = recbole_folder(tmp_path / "rb", times=["1e30", "-1e30"] + [str(900_000_000 + i) for i in range(18)])
    out = run_cli(["prepare", str(folder), "--out", str(tmp_path / "data"), "--json"], tmp_path)
    assert out.code == 0, out.stderr
    from embedrec.data import load_prepared

    data = load_prepared(tmp_path / "data")
    assert data.summary["dropped"]["bad_timestamp"] == 2
    assert data.timestamp.min() >= 900_000_000


def test_utf8_u_item_titles_are_not_mojibake(tmp_path: Path) -> None:
    (tmp_path / "systmp").mkdir()
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(
        "".join(f"{u}\t{m}\t{(u + m) % 5 + 1}\t{880000000 + u * 10 + m}\n" for u in range(1, 6) for m in range(1, 4))
    )
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    titles = ["Amélie (2001)", "Léon (1994)", "Crouching Tiger (2000)"]
    (folder / "u.item").write_text(
        "".join(f"{m}|{t}|01-Jan-2001||http://x|{flags}\n" for m, t in enumerate(titles, start=1)), encoding="utf-8"
    )
    out = run_cli(["prepare", str(folder), "--out", str(tmp_path / "data"), "--json"], tmp_path)
    assert out.code == 0, out.stderr
    from embedrec.data import load_prepared

    assert list(load_prepared(tmp_path / "data").movies["title"]) == ["Amélie", "Léon", "Crouching Tiger"]


@pytest.mark.parametrize("jax_modules_imported", [1, 30, 120, 250])
def test_sigterm_while_training_starts_ends_the_process_cleanly(
    synthetic_prepared: Path, tmp_path: Path, jax_modules_imported: int
) -> None:
    """SIGTERM while one thread imports JAX and the other reads the data (the first seconds of ``train``): one line,
    exit 143, no run folder, no hang. The signal is sent when the import log (``PYTHONPROFILEIMPORTTIME``) shows
    that many JAX modules imported, so it lands inside the concurrent imports whatever the machine's speed: raised
    inside the main thread's own import, it once left Python's import locks held (a hang) or a module half
    imported (a wrong "unreadable Parquet file" error)."""
    (tmp_path / "systmp").mkdir()
    env = {**corpus_env(tmp_path), "PYTHONPROFILEIMPORTTIME": "1"}
    args = ["train", "--data", str(synthetic_prepared), "--workdir", str(tmp_path / "wd"), "--epochs", "2", "-q"]
    proc = subprocess.Popen(
        EMBEDREC + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen, head = 0, []
    for line in proc.stderr:
        head.append(line)
        seen += bool(re.search(r"\| +jax[._]", line))
        if seen >= jax_modules_imported:
            break
    assert seen == jax_modules_imported, f"train imported only {seen} JAX modules"
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"train hung after SIGTERM at the {jax_modules_imported}th JAX module imported")
    stderr = "".join(line for line in head + stderr.splitlines(keepends=True) if not line.startswith("import time:"))
    assert_one_error_line(Outcome(proc.returncode, stdout, stderr), 143, r"terminated by SIGTERM")
    assert not any((tmp_path / "wd" / "models").glob("*")), "a run folder was left behind"


def test_a_damaged_timestamp_column_of_a_temporal_split_is_refused_before_training(tmp_path: Path) -> None:
    """The timestamps are read on their own (a random split never needs them), but a time-based split's ranking
    choice does, after training: the column is read with the ratings, so a damaged one stops the run at once (one
    line, exit 2) instead of after every epoch, leaving no half-written run folder."""
    import pyarrow.parquet as pq

    (tmp_path / "systmp").mkdir()
    data = tmp_path / "data"
    prep = ["prepare", "--synthetic", "--users", "200", "--movies", "150", "--ratings", "6000", "--split", "temporal"]
    assert run_cli([*prep, "--out", str(data)], tmp_path).code == 0
    ratings = data / "ratings.parquet"
    meta = pq.ParquetFile(ratings).metadata
    names = [meta.row_group(0).column(i).path_in_schema for i in range(meta.num_columns)]
    column = meta.row_group(0).column(names.index("timestamp"))
    start = column.dictionary_page_offset or column.data_page_offset
    raw = bytearray(ratings.read_bytes())
    raw[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    ratings.write_bytes(bytes(raw))
    out = run_cli(["train", "--data", str(data), "--workdir", str(tmp_path / "wd"), "--epochs", "2", "-q"], tmp_path)
    assert_one_error_line(out, 2, r"ratings\.parquet|unreadable Parquet")
    assert not (tmp_path / "wd" / "models").exists() or not any((tmp_path / "wd" / "models").iterdir())
