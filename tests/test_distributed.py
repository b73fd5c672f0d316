"""`embedrec train --distributed`: real processes over JAX's distributed runtime (gloo on CPU, localhost).

Each process sees one CPU device (``JAX_NUM_CPU_DEVICES=1``), so two processes form the same two-device mesh as one
process with two forced devices, and must train the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

COMMON = ["--preset", "default", "--batch-size", "1024", "--patience", "0", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(devices: int, *, cluster_process: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    if cluster_process:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    else:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _train(args: list[str], *, devices: int = 1, cluster_process: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "embedrec.cli", "train", *args],
        env=_env(devices, cluster_process=cluster_process),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _processes(data: Path, outs: list[Path], workdirs: list[Path], extra: list[list[str]]) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        _train(
            [
                "--data",
                str(data),
                "--out",
                str(out),
                "--workdir",
                str(wd),
                *COMMON,
                *more,
                "--distributed",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(len(outs)),
                "--process-id",
                str(i),
                "--join-timeout",
                "60",
            ],
            cluster_process=True,
        )
        for i, (out, wd, more) in enumerate(zip(outs, workdirs, extra))
    ]


def _weights(run: Path) -> dict[str, np.ndarray]:
    from embedrec.artifacts import load_arrays

    return load_arrays(run / "weights.safetensors")


def _latest_checkpoint(run: Path) -> str | None:
    marker = run / "checkpoints" / "LATEST"
    return marker.read_text().strip() if marker.is_file() else None


def test_a_killed_two_process_run_resumes_on_one_process_and_ends_as_one_process_with_two_devices(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    epochs = ["--epochs", "4"]
    reference = _train(
        ["--data", str(synthetic_prepared), "--out", str(tmp_path / "ref"), "--workdir", str(tmp_path), *COMMON]
        + epochs,
        devices=2,
    )
    run, other_out, other_wd = tmp_path / "run", tmp_path / "p1-run", tmp_path / "p1-work"
    procs = _processes(synthetic_prepared, [run, other_out], [tmp_path, other_wd], [epochs, epochs])
    deadline = time.monotonic() + 300
    while _latest_checkpoint(run) is None and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.02)
    killed_at = _latest_checkpoint(run)
    procs[1].send_signal(signal.SIGKILL)  # one process dies mid-run; the other cannot go on without it
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    assert killed_at is not None and killed_at < "epoch-0004", (killed_at, procs[0].returncode)
    assert not (run / "model.json").exists()
    # process 1 wrote nothing: not its --out, not its work folder
    assert not other_out.exists() and not other_wd.exists()

    # the checkpoint written by two processes resumes in one process (on two devices)
    resumed = _train(["--out", str(run), "--workdir", str(tmp_path), "--resume", "--quiet"], devices=2)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    ref_out, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err

    mine, theirs = _weights(run), _weights(tmp_path / "ref")
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_ctrl_c_on_one_process_stops_both_then_both_resume_and_only_process_0_writes(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    run, other_out, other_wd = tmp_path / "run", tmp_path / "p1-run", tmp_path / "p1-work"
    procs = _processes(synthetic_prepared, [run, other_out], [tmp_path, other_wd], [["--epochs", "8"]] * 2)
    deadline = time.monotonic() + 300
    while _latest_checkpoint(run) is None and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGINT)  # Ctrl-C in process 1's terminal only
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 130, err  # both stopped at the same block, with process 0's checkpoint
    assert _latest_checkpoint(run) is not None and not (run / "model.json").exists()
    assert "--resume" in results[0][1]

    procs = _processes(synthetic_prepared, [run, run], [tmp_path, other_wd], [["--resume"]] * 2)
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert (run / "model.json").is_file() and (tmp_path / "models" / "latest").read_text().strip() == str(run)
    assert str(run) in results[1][0]  # process 1 reports the run folder process 0 wrote
    # process 1 wrote nothing at any point: not its --out, not its work folder
    assert not other_out.exists() and not other_wd.exists()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))


def test_processes_started_with_different_settings_fail_alike_naming_the_difference(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    outs, wds = [tmp_path / "a", tmp_path / "b"], [tmp_path / "wa", tmp_path / "wb"]
    procs = _processes(synthetic_prepared, outs, wds, [["--epochs", "1"], ["--epochs", "1", "--lr", "0.01"]])
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "process 1 differs from process 0" in lines[0] and "lr (0.01 vs 0.003)" in lines[0], lines[0]
    assert not any(p.exists() for p in [*outs, *wds])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "2"], "give all of"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2: must be 0..1"),
        (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "--num-processes 0"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1", "--join-timeout", "2"],
            "nothing listens at --coordinator 127.0.0.1:1 after 2 s",
        ),
    ],
)
def test_bad_cluster_options_are_one_line_before_anything_starts(tmp_path: Path, args: list[str], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "embedrec.cli", "train", "--workdir", str(tmp_path), "--distributed", *args],
        env=_env(1, cluster_process=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_distributed_search_trains_every_trial_on_both_processes_and_process_0_keeps_the_study(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    port = _free_port()
    workdirs = [tmp_path / "w0", tmp_path / "w1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "embedrec.cli", "tune", "--data", str(synthetic_prepared), "--workdir", str(wd)]
            + ["--trials", "2", "--max-epochs", "2", "--json", "--distributed", "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i), "--join-timeout", "60"],
            env=_env(1, cluster_process=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, wd in enumerate(workdirs)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in results]
    assert reports[0] == reports[1]  # process 1 ends with process 0's outcome
    assert reports[0]["trials"]["complete"] == 2
    assert (workdirs[0] / "tuned.toml").is_file() and (workdirs[0] / "tune" / "study.db").is_file()
    assert not workdirs[1].exists()  # process 1 wrote nothing
