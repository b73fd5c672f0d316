"""`embedrec train --distributed`, one run through every hand-over: a Ctrl-C on one process stops both, the
checkpoint two processes wrote resumes on one process (two devices), a kill of that process loses nothing, two
processes finish the run, and the weights equal one uninterrupted process with two devices. Only process 0 writes.

One test rather than one per hand-over: each start of a cluster costs a JAX import, a gloo join and a compile on
every process, which on CI's two cores is most of the time. For the same reason the run has the ``user_history``
input on: its sampled histories are one more thing every process must draw alike, and everything the default
model trains is trained with it (the default's own step is held equal on one and two devices in test_train.py);
and learned movie clusters in the genres' place (``movie_clusters``), which every process learns and process 0's
are trained."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from subprocess import Popen

import numpy as np
import pytest
from cluster import COMMON, cluster_processes, latest_checkpoint, train_process, weights

pytestmark = pytest.mark.slow


def _wait_for_checkpoint(run: Path, proc: Popen, *, after: str | None) -> str | None:
    """Poll until the run's LATEST names a checkpoint other than ``after`` (or the process ends, or 5 minutes)."""
    deadline = time.monotonic() + 300
    while latest_checkpoint(run) in (None, after) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    return latest_checkpoint(run)


def test_a_run_stopped_resumed_and_killed_on_other_process_counts_ends_as_one_uninterrupted_process(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    config = tmp_path / "history.toml"
    config.write_text("user_history = true\nhistory_samples = 8\nmovie_clusters = 8\n")
    epochs = ["--epochs", "4", "--config", str(config)]
    reference = train_process(
        ["--data", str(synthetic_prepared), "--out", str(tmp_path / "ref"), "--workdir", str(tmp_path / "ref-work")]
        + [*COMMON, *epochs],
        devices=2,
    )
    run, other_out, other_wd = tmp_path / "run", tmp_path / "p1-run", tmp_path / "p1-work"

    # 1. two processes; Ctrl-C in process 1's terminal only stops both at the same block, with a checkpoint
    procs = cluster_processes(synthetic_prepared, [run, other_out], [tmp_path, other_wd], [epochs, epochs])
    _wait_for_checkpoint(run, procs[0], after=None)
    procs[1].send_signal(signal.SIGINT)
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 130, err
    stopped_at = latest_checkpoint(run)
    assert stopped_at is not None and not (run / "model.json").exists()
    assert "--resume" in results[0][1]

    # 2. the checkpoint two processes wrote resumes in one process (on two devices); a kill after its next
    # checkpoint loses nothing
    alone = train_process(["--out", str(run), "--workdir", str(tmp_path), "--resume", "--quiet"], devices=2)
    killed_at = _wait_for_checkpoint(run, alone, after=stopped_at)
    alone.send_signal(signal.SIGKILL)
    alone.communicate(timeout=60)
    assert killed_at is not None and stopped_at < killed_at < "epoch-0004", (stopped_at, killed_at, alone.returncode)
    assert not (run / "model.json").exists()

    # 3. two processes finish it; process 1 reports the folder process 0 wrote
    procs = cluster_processes(synthetic_prepared, [run, run], [tmp_path, other_wd], [["--resume"]] * 2)
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert (run / "model.json").is_file() and (tmp_path / "models" / "latest").read_text().strip() == str(run)
    assert str(run) in results[1][0]
    # process 1 wrote nothing at any point: not its --out, not its work folder
    assert not other_out.exists() and not other_wd.exists()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]

    ref_out, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err
    mine, theirs = weights(run), weights(tmp_path / "ref")
    assert "history_embedding" in mine and np.abs(mine["history_embedding"]).max() > 0
    assert mine["genre_idx"].shape[1] == 1 and 1 < len(np.unique(mine["genre_idx"])) <= 8  # the clusters, not genres
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_process_killed_mid_run_ends_the_other_with_one_line_and_keeps_the_checkpoint(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    """The survivor's next collective fails (gloo: connection reset): one error line and exit 74 at once, not a
    traceback and, 90 s later, JAX's abort at the shutdown barrier that waits for the lost process."""
    run = tmp_path / "run"
    epochs = ["--epochs", "200"]
    procs = cluster_processes(synthetic_prepared, [run, tmp_path / "p1"], [tmp_path, tmp_path / "w1"], [epochs] * 2)
    kept = _wait_for_checkpoint(run, procs[0], after=None)
    assert kept is not None, procs[0].communicate(timeout=60)[1]
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate(timeout=60)
    t0 = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 74, err
    assert time.monotonic() - t0 < 60, err  # before the coordination service's heartbeat timeout
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: another process of the distributed run stopped mid-run")
    assert f"{run / 'checkpoints'} is kept: start every process again with --resume" in lines[0]
    assert latest_checkpoint(run) is not None and not (run / "model.json").exists()
