"""`embedrec train --distributed`: a killed run resumes on another process count and ends as one process with two
devices; a Ctrl-C on one process stops all; only process 0 writes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from cluster import COMMON, cluster_processes, latest_checkpoint, train_process, weights

pytestmark = pytest.mark.slow


def test_a_killed_two_process_run_resumes_on_one_process_and_ends_as_one_process_with_two_devices(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    epochs = ["--epochs", "4"]
    reference = train_process(
        ["--data", str(synthetic_prepared), "--out", str(tmp_path / "ref"), "--workdir", str(tmp_path), *COMMON]
        + epochs,
        devices=2,
    )
    run, other_out, other_wd = tmp_path / "run", tmp_path / "p1-run", tmp_path / "p1-work"
    procs = cluster_processes(synthetic_prepared, [run, other_out], [tmp_path, other_wd], [epochs, epochs])
    deadline = time.monotonic() + 300
    while latest_checkpoint(run) is None and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.02)
    killed_at = latest_checkpoint(run)
    procs[1].send_signal(signal.SIGKILL)  # one process dies mid-run; the other cannot go on without it
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
    assert killed_at is not None and killed_at < "epoch-0004", (killed_at, procs[0].returncode)
    assert not (run / "model.json").exists()
    # process 1 wrote nothing: not its --out, not its work folder
    assert not other_out.exists() and not other_wd.exists()

    # the checkpoint written by two processes resumes in one process (on two devices)
    resumed = train_process(["--out", str(run), "--workdir", str(tmp_path), "--resume", "--quiet"], devices=2)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    ref_out, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err

    mine, theirs = weights(run), weights(tmp_path / "ref")
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_ctrl_c_on_one_process_stops_both_then_both_resume_and_only_process_0_writes(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    run, other_out, other_wd = tmp_path / "run", tmp_path / "p1-run", tmp_path / "p1-work"
    procs = cluster_processes(synthetic_prepared, [run, other_out], [tmp_path, other_wd], [["--epochs", "8"]] * 2)
    deadline = time.monotonic() + 300
    while latest_checkpoint(run) is None and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGINT)  # Ctrl-C in process 1's terminal only
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 130, err  # both stopped at the same block, with process 0's checkpoint
    assert latest_checkpoint(run) is not None and not (run / "model.json").exists()
    assert "--resume" in results[0][1]

    procs = cluster_processes(synthetic_prepared, [run, run], [tmp_path, other_wd], [["--resume"]] * 2)
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert (run / "model.json").is_file() and (tmp_path / "models" / "latest").read_text().strip() == str(run)
    assert str(run) in results[1][0]  # process 1 reports the run folder process 0 wrote
    # process 1 wrote nothing at any point: not its --out, not its work folder
    assert not other_out.exists() and not other_wd.exists()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
