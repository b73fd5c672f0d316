"""The console entry point ends the process without the interpreter's teardown (~1 s after a training run), and
must still exit as ``sys.exit`` would: the same status, the exit handlers run, the streams flushed, and the normal
exit whenever another thread is still working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli import EMBEDREC, run_cli


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    prelude = (
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "from embedrec.cli import exit_without_teardown\n"
        f"out = Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
        "sys.stdout.write('buffered, no newline')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_the_status_the_handlers_and_the_streams_survive_the_fast_exit(tmp_path: Path) -> None:
    done = _run("exit_without_teardown(3)", tmp_path)
    assert done.returncode == 3
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert _run("exit_without_teardown(None)", tmp_path).returncode == 0


def test_a_thread_still_working_or_a_message_takes_the_normal_exit(tmp_path: Path) -> None:
    worker = (
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    (out / 'late').write_text('written')\n"
        "threading.Thread(target=late).start()\n"
        "exit_without_teardown(4)\n"
    )
    done = _run(worker, tmp_path)
    assert done.returncode == 4
    assert (tmp_path / "late").read_text() == "written"  # the normal exit waited for the thread
    assert (tmp_path / "atexit").read_text() == "ran"
    message = _run("exit_without_teardown('no such run folder')", tmp_path)
    assert message.returncode == 1 and "no such run folder" in message.stderr


def test_the_command_line_exits_with_its_status_through_the_entry_point(tmp_path: Path) -> None:
    bad = run_cli(["train", "--data", tmp_path / "missing"], tmp_path, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and str(tmp_path / "missing") in bad.stderr
    ok = run_cli(["--help"], tmp_path, timeout=60)
    assert ok.returncode == 0 and "train" in ok.stdout


def _planted_workdir(synthetic_prepared: Path, wd: Path) -> tuple[Path, int]:
    """A work folder as `embedrec prepare` + `embedrec train` leave it (a planted model: serving needs no training),
    and a user id it knows."""
    import shutil

    from planted import write_planted_model

    from embedrec.data import load_prepared
    from embedrec.workdir import data_dir, models_dir, set_latest_run

    shutil.copytree(synthetic_prepared, data_dir(wd))
    prepared = load_prepared(data_dir(wd))
    set_latest_run(wd, write_planted_model(prepared, models_dir(wd) / "run-1"))
    return wd, int(prepared.user_ids[4])


def test_output_that_the_disk_refuses_at_the_exit_fails_the_command(synthetic_prepared: Path, tmp_path: Path) -> None:
    """A CSV on stdout sits in Python's buffer until the exit (no PYTHONUNBUFFERED, as in a user's shell): when that
    last write fails (a full disk), the command must not report success with its output lost."""
    import os

    workdir, user = _planted_workdir(synthetic_prepared, tmp_path / "wd")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    args = [*EMBEDREC, "recommend", "--user", str(user), "--workdir", str(workdir)]
    csv_args = [*args, "--format", "csv", "-k", "3"]
    written = subprocess.run(csv_args, capture_output=True, text=True, timeout=120, env=env)
    assert written.returncode == 0 and len(written.stdout.splitlines()) == 4  # the header and three movies
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (a device whose every write fails with ENOSPC)")
    with open("/dev/full", "w") as full:
        lost = subprocess.run(csv_args, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert lost.returncode == 74, lost.stderr  # a fault of the machine, as when the write fails inside the command
    assert "No space left on device" in lost.stderr and "stdout" in lost.stderr and "incomplete" in lost.stderr
    assert "Traceback" not in lost.stderr and "Exception ignored" not in lost.stderr


def test_a_command_started_without_stdout_writes_its_file_and_exits_0(synthetic_prepared: Path, tmp_path: Path) -> None:
    """A batch job started with stdout closed (`embedrec ... >&-`, some schedulers): Python's sys.stdout is None,
    and a command whose output is a file must still end as it did before the fast exit: 0, without a traceback."""
    import os

    workdir, _ = _planted_workdir(synthetic_prepared, tmp_path / "wd")
    out = tmp_path / "recs.csv"
    args = [*EMBEDREC, "recommend", "--all-users", "--output", str(out)]
    done = subprocess.run(
        [*args, "--workdir", str(workdir), "-k", "2"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509  (the child starts without fd 1)
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "wrote top 2" in done.stderr
    assert len(out.read_text().splitlines()) > 2
