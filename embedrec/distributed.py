"""Training across processes and hosts on JAX's own distributed runtime (``jax.distributed``: gloo on CPU, NCCL on
GPU): joining the cluster, agreeing on what is trained, and deciding who writes.

Synopsis::

    from embedrec.distributed import Cluster, join, agree
    join(Cluster("host0:1234", num_processes=2, process_id=0))   # before any other JAX computation
    agree({"settings": ..., "fingerprint": ...})                  # the same on every process, or one clear error
    if is_writer(): ...                                           # process 0 alone writes the run folder

Every process runs the same training loop on its own share of each batch (see :mod:`embedrec.train`); XLA inserts
the collectives. What this module adds is what a user needs around that: a join that fails with one line instead of
a hang or an assertion from inside JAX, a comparison of settings and data fingerprints that names the first
difference, one writer, and a common exit code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from embedrec.errors import ConfigError, EmbedrecError

__all__ = ["Cluster", "agree", "as_error", "any_process", "exchange_text", "is_writer", "join", "joined"]

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_JOINED: dict[str, Any] = {}


@dataclass(frozen=True)
class Cluster:
    """Where the coordinator listens and who this process is. All three unset: read them from the cluster
    environment that ``jax.distributed`` detects (SLURM, Open MPI, Kubernetes, and ``JAX_COORDINATOR_ADDRESS``)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300

    def check(self) -> None:
        """One line per bad option, before anything starts."""
        import os

        given = [v is not None for v in (self.coordinator, self.num_processes, self.process_id)]
        from_environment = any(
            k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri")
        )
        if any(given) and not all(given) and not from_environment:
            raise ConfigError(
                "--distributed: give all of --coordinator HOST:PORT, --num-processes N and --process-id I, or none "
                "of them inside a cluster that sets them (SLURM, JAX_COORDINATOR_ADDRESS ...)"
            )
        if self.coordinator is not None:
            match = _ADDRESS.match(self.coordinator)
            if not match or not 0 < int(match.group(2)) < 65536:
                raise ConfigError(f"--coordinator {self.coordinator!r}: expected HOST:PORT, like host0:12345")
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"--num-processes {self.num_processes}: must be at least 1")
        if self.process_id is not None and self.num_processes is not None:
            if not 0 <= self.process_id < self.num_processes:
                raise ConfigError(
                    f"--process-id {self.process_id}: must be 0..{self.num_processes - 1} for --num-processes "
                    f"{self.num_processes}"
                )
        if self.timeout_s < 1:
            raise ConfigError(f"--join-timeout {self.timeout_s}: must be at least 1 second")


def join(cluster: Cluster) -> tuple[int, int]:
    """Join the cluster (once per process); (process index, process count).

    Must run before any JAX computation. A coordinator that cannot be reached, or a cluster environment that is not
    there, is one :class:`ConfigError` line, not JAX's traceback.
    """
    cluster.check()
    import jax

    if "count" not in _JOINED:
        timeout_s = cluster.timeout_s
        address, n, me = cluster.coordinator, cluster.num_processes, cluster.process_id
        if address is not None and n is not None and n > 1 and me is not None:
            # a roll call before JAX's own join: JAX ends a process whose peers never come (see _wait_for_coordinator)
            with _ctrl_c_stops():
                if me == 0:
                    timeout_s = _call_the_roll(address, n, timeout_s)
                else:
                    timeout_s = _answer_the_roll(address, me, n, timeout_s)
                    timeout_s = _wait_for_coordinator(address, timeout_s)
        try:
            jax.distributed.initialize(
                coordinator_address=cluster.coordinator,
                num_processes=cluster.num_processes,
                process_id=cluster.process_id,
                initialization_timeout=timeout_s,
            )
        except ValueError as exc:  # no coordinator given and none found in the environment
            raise ConfigError(
                f"--distributed: no cluster found in the environment ({exc}); pass --coordinator HOST:PORT "
                "--num-processes N --process-id I"
            ) from None
        except RuntimeError as exc:
            if "should only be called once" in str(exc):  # initialised by the caller (a Python program)
                pass
            else:
                where = cluster.coordinator or "the coordinator"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"--distributed: could not join {where} within {cluster.timeout_s} s ({first[:200]}); start "
                    "every process with the same --coordinator and --num-processes, process 0 among them"
                ) from None
        _JOINED["count"] = jax.process_count()
        if jax.process_count() > 1:
            with _stdout_silenced():  # gloo announces its connections on stdout, which `--json` output owns
                any_process(False)  # the first collective opens the connections
    return jax.process_index(), jax.process_count()


@contextmanager
def _ctrl_c_stops() -> Iterator[None]:
    """Ctrl-C ends the process at once (KeyboardInterrupt) while it waits for its peers.

    ``embedrec train`` and ``tune`` turn a first Ctrl-C into "stop at the next checkpoint", which would leave a
    process waiting at the roll call until ``--join-timeout`` (300 s by default): before the join there is nothing to
    save, so Python's own handler is put back for the wait.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """File descriptor 1 to /dev/null for the block (what native libraries print there, not only Python)."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_ROLL_CALL = "embedrec-join 1"  # the roll call's greeting: protocol name and version


def _call_the_roll(address: str, n: int, timeout_s: int) -> int:
    """Process 0: wait at the coordinator's port until processes 1..n-1 have said who they are; the seconds left.

    JAX's coordination service aborts process 0 (a fatal log and SIGABRT, which Python cannot catch) when a peer
    never registers, so process 0 first holds its own roll call on the same port: a missing process, a duplicate
    ``--process-id`` or another ``--num-processes`` is one line on every process that came. The port is closed
    before anyone is told to go on, so that a peer's next connection reaches JAX's service, not this one.
    """
    import os
    import socket
    import time

    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as exc:  # create_server's strerror also names the address: the errno's text alone
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(
            f"--distributed: cannot listen at port {port} of --coordinator {address} ({reason}); choose a free port"
        ) from None
    present: dict[int, socket.socket] = {}
    try:
        with server:
            server.settimeout(0.5)
            while True:
                for gone in [pid for pid, conn in present.items() if not _still_there(conn)]:
                    present.pop(gone).close()  # stopped or restarted while waiting: its place is free again
                if len(present) == n - 1:
                    break
                if time.monotonic() >= deadline:
                    missing = ", ".join(str(i) for i in range(1, n) if i not in present)
                    raise ConfigError(
                        f"--distributed: process {missing} of {n} did not join --coordinator {address} within "
                        f"{timeout_s} s; start every process with the same --coordinator and --num-processes {n} "
                        "(or raise --join-timeout)"
                    )
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                who = _greeting(conn)
                if who is None:  # not an embedrec process (a port probe, a stray client): not ours to answer
                    conn.close()
                    continue
                pid, their_n = who
                if pid in present and not _still_there(present[pid]):
                    present.pop(pid).close()  # the same process started again: the earlier one is gone
                problem = None
                if their_n != n:
                    problem = f"process {pid} was started with --num-processes {their_n}, process 0 with {n}"
                elif pid in present:
                    problem = f"two processes were started with --process-id {pid}"
                elif not 0 < pid < n:
                    problem = f"a process was started with --process-id {pid}, not one of 1..{n - 1}"
                if problem is not None:
                    for refused in (conn, *present.values()):  # everyone who came hears why the cluster failed
                        try:
                            _send_line(refused, f"refused {problem}")
                        except OSError:
                            pass
                    conn.close()
                    raise ConfigError(
                        f"--distributed: {problem}; start every process with the same --coordinator and "
                        f"--num-processes {n} and its own --process-id 0..{n - 1}"
                    )
                present[pid] = conn
        for conn in present.values():  # the roll-call port is closed: the next connection reaches JAX's service
            _send_line(conn, "go")
        for conn in present.values():  # the peer closes first (so this side keeps no TIME_WAIT on the port)
            conn.settimeout(5)
            try:
                conn.recv(1)
            except OSError:
                pass
    finally:
        for conn in present.values():
            conn.close()
    return max(1, int(deadline - time.monotonic()))


def _answer_the_roll(address: str, process_id: int, n: int, timeout_s: int) -> int:
    """Processes 1..n-1: tell process 0's roll call who this is and wait for its go; the seconds left."""
    import time

    deadline = time.monotonic() + timeout_s
    with _connect(address, deadline, timeout_s) as conn:
        answer = ""
        try:
            _send_line(conn, f"{_ROLL_CALL} {process_id} {n}")
            conn.settimeout(max(1.0, deadline - time.monotonic()))
            answer = _read_line(conn)
        except OSError:
            pass
    if answer == "go":
        return max(1, int(deadline - time.monotonic()))
    if answer.startswith("refused "):
        raise ConfigError(f"--distributed: process 0 refused this process: {answer[len('refused ') :]}")
    raise ConfigError(
        f"--distributed: process 0 at --coordinator {address} did not let this process join within {timeout_s} s "
        "(it stopped, or it is already running with other processes); start all of them again"
    )


def _greeting(conn: Any) -> tuple[int, int] | None:
    """(process id, process count) from an embedrec peer's first line; None for anything else."""
    conn.settimeout(5)
    try:
        words = _read_line(conn).split()
    except OSError:
        return None
    if len(words) != 4 or " ".join(words[:2]) != _ROLL_CALL or not all(w.isdigit() for w in words[2:]):
        return None
    return int(words[2]), int(words[3])


def _still_there(conn: Any) -> bool:
    """Whether a peer that said who it is still holds its connection (it sends nothing more until told to go)."""
    import socket

    timeout = conn.gettimeout()
    conn.settimeout(0)  # a look, not a wait (with a timeout, Python would first wait for data)
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))  # a peer sends nothing more: b"" is its close
    except BlockingIOError:
        return True  # nothing to read and not closed: still waiting
    except OSError:
        return False
    finally:
        conn.settimeout(timeout)


def _send_line(conn: Any, text: str) -> None:
    conn.sendall(text.encode() + b"\n")


def _read_line(conn: Any, limit: int = 512) -> str:
    """One line of at most ``limit`` bytes ("" when the peer closed first)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _wait_for_coordinator(address: str, timeout_s: int) -> int:
    """Wait until something listens at the coordinator's address; the seconds left of ``timeout_s``.

    JAX's client ends the whole process (a fatal log and SIGABRT, which Python cannot catch) when it cannot register
    in time, so a process other than 0 first waits for process 0's service here, where a wrong address or a process
    0 that never started is one line.
    """
    import time

    deadline = time.monotonic() + timeout_s
    with _connect(address, deadline, timeout_s):
        return max(1, int(deadline - time.monotonic()))


def _connect(address: str, deadline: float, timeout_s: int) -> Any:
    """A TCP connection to the coordinator's address, tried every half second until ``deadline`` (a monotonic
    time); past it, one line saying nothing listens there."""
    import socket
    import time

    host, port = address.rsplit(":", 1)
    while True:
        try:
            return socket.create_connection((host.strip("[]"), int(port)), timeout=2)
        except OSError as exc:
            if time.monotonic() >= deadline:
                reason = exc.strerror or type(exc).__name__
                raise ConfigError(
                    f"--distributed: nothing listens at --coordinator {address} after {timeout_s} s ({reason}); "
                    "start process 0 with the same --coordinator, or check the host and port"
                ) from None
            time.sleep(0.5)


def joined() -> bool:
    """Whether this process is one of several in a JAX cluster (joined here or by the caller)."""
    if "count" in _JOINED:
        return bool(_JOINED["count"] > 1)
    import sys

    if "jax" not in sys.modules:
        return False
    import jax

    return jax.process_count() > 1


def is_writer() -> bool:
    """Process 0 writes the run folder, checkpoints and ``latest``; the others write nothing."""
    if not joined():
        return True
    import jax

    return jax.process_index() == 0


def exchange_text(text: str) -> list[str]:
    """Every process's ``text``, in process order (a collective: every process must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), dtype=np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    padded = np.zeros(int(lengths.max()) if len(lengths) else 0, dtype=np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [bytes(row[: int(n)]).decode() for row, n in zip(gathered, lengths)]


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a collective: every process must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def _differences(mine: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ, as ``key (this vs that)``, nested keys joined by dots."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{prefix}{key} ({json.dumps(a)} vs {json.dumps(b)})")
    return out


def as_error(exc: BaseException) -> EmbedrecError:
    """``exc`` as the one-line error every process of a run ends with (an OSError: its one line and exit code)."""
    if isinstance(exc, EmbedrecError):
        return exc
    if isinstance(exc, OSError):
        from embedrec.errors import os_error_message

        message, code = os_error_message(exc)
    else:
        message, code = f"stopped ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})", 1
    error = EmbedrecError(message)
    error.exit_code = code
    return error


def agree(facts: dict[str, Any] | EmbedrecError) -> None:
    """Check that every process trains the same thing, or fail on every process with the same line.

    ``facts`` (settings, data fingerprint, where a resume starts: JSON values) are compared with process 0's. A
    process that could not get that far passes its error instead, and every process then fails with it (so none is
    left waiting in a collective for a process that has already exited).
    """
    if isinstance(facts, EmbedrecError):
        text = json.dumps({"error": str(facts), "exit_code": facts.exit_code})
    else:
        text = json.dumps({"facts": facts}, sort_keys=True)
    everyone = [json.loads(t) for t in exchange_text(text)]
    for i, entry in enumerate(everyone):
        if "error" in entry:
            error = EmbedrecError(f"process {i}: {entry['error']}")
            error.exit_code = int(entry["exit_code"])
            raise error
    reference = everyone[0]["facts"]
    for i, entry in enumerate(everyone[1:], start=1):
        if entry["facts"] != reference:
            diff = _differences(entry["facts"], reference)
            digest = hashlib.sha256(json.dumps(entry["facts"], sort_keys=True).encode()).hexdigest()[:8]
            shown = "; ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
            raise ConfigError(
                f"process {i} differs from process 0 in {shown or 'its settings ' + digest} (process {i} vs "
                "process 0): start every process with the same options and the same prepared data"
            )
