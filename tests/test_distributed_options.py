"""`--distributed` options and the cross-process check of settings: one clear line, on every process."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli import EMBEDREC
from cluster import cluster_env, cluster_processes, free_port, train_process

from embedrec.errors import ConfigError

pytestmark = pytest.mark.slow


def test_processes_started_with_different_settings_fail_alike_naming_the_difference(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    outs, wds = [tmp_path / "a", tmp_path / "b"], [tmp_path / "wa", tmp_path / "wb"]
    procs = cluster_processes(synthetic_prepared, outs, wds, [["--epochs", "1"], ["--epochs", "1", "--lr", "0.01"]])
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
        (  # process 0 alone: JAX would abort it (SIGABRT and a C++ stack) when its peer never registers
            ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "3", "--process-id", "0"]
            + ["--join-timeout", "2"],
            "process 1, 2 of 3 did not join",
        ),
    ],
)
def test_bad_cluster_options_are_one_line_before_anything_starts(tmp_path: Path, args: list[str], needle: str) -> None:
    done = subprocess.run(
        EMBEDREC + ["train", "--workdir", str(tmp_path), "--distributed", *args],
        env=cluster_env(1, cluster_process=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_processes_started_with_other_process_counts_or_one_id_twice_are_refused_on_every_process(
    tmp_path: Path,
) -> None:
    def start(port: int, process_id: int, num_processes: int, wd: str) -> subprocess.Popen[str]:
        return train_process(
            ["--workdir", str(tmp_path / wd), "--distributed"]
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num_processes)]
            + ["--process-id", str(process_id), "--join-timeout", "60"],
            cluster_process=True,
        )

    for peers, needle in (
        ([(1, 3)], "process 1 was started with --num-processes 3, process 0 with 2"),
        ([(1, 3), (1, 3)], "two processes were started with --process-id 1"),
    ):
        port = free_port()
        procs = [start(port, 0, 2 if len(peers) == 1 else 3, "w0")]
        procs += [start(port, pid, n if len(peers) == 1 else 3, f"w{i + 1}") for i, (pid, n) in enumerate(peers)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 2, err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0], err
    assert list(tmp_path.iterdir()) == []


def _connect(port: int) -> socket.socket:
    for _ in range(100):  # until process 0 listens
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens at port {port}")


def test_a_peer_killed_during_the_roll_call_and_started_again_takes_its_place() -> None:
    """Before: the second process 1 was refused as a duplicate --process-id and the whole cluster failed."""
    from embedrec.distributed import _answer_the_roll, _call_the_roll

    port = free_port()
    outcome: dict[str, object] = {}

    def process(process_id: int) -> None:
        address = f"127.0.0.1:{port}"
        try:
            if process_id == 0:
                outcome["0"] = _call_the_roll(address, 3, 20)
            else:
                outcome[str(process_id)] = _answer_the_roll(address, process_id, 3, 20)
        except ConfigError as exc:
            outcome[str(process_id)] = exc

    threads = [threading.Thread(target=process, args=(0,))]
    threads[0].start()
    first = _connect(port)  # the first process 1 says who it is, then dies while process 2 is not there yet
    first.sendall(b"embedrec-join 1 1 3\n")
    time.sleep(1.5)  # process 0 has taken it in
    first.close()
    threads += [threading.Thread(target=process, args=(i,)) for i in (1, 2)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(outcome.get(str(i)), int) for i in range(3)), outcome


def test_a_port_in_use_is_named_once() -> None:
    from embedrec.distributed import _call_the_roll

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            _call_the_roll(f"127.0.0.1:{port}", 2, 2)
    message = str(caught.value)
    assert message.endswith("(Address already in use); choose a free port"), message


def test_ctrl_c_while_process_0_waits_for_its_peers_ends_it_at_once(tmp_path: Path) -> None:
    """Before: train's "checkpoint at the end of this block" handler took the Ctrl-C and the process waited on
    until --join-timeout."""
    port = free_port()
    proc = train_process(
        ["--workdir", str(tmp_path), "--distributed"]
        + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"]
        + ["--join-timeout", "120"],
        cluster_process=True,
    )
    try:
        with _connect(port) as probe:  # the roll call is open; a stray line is dropped
            probe.sendall(b"hello\n")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted", err
    assert list(tmp_path.iterdir()) == []
