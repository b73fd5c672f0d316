"""Helpers of the distributed tests: real ``embedrec`` processes joined over JAX's distributed runtime (gloo on CPU,
localhost), each seeing one CPU device (``JAX_NUM_CPU_DEVICES=1``), so that two processes form the same two-device
mesh as one process with two forced devices."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import numpy as np
from cli import EMBEDREC, cli_env

COMMON = ["--preset", "default", "--batch-size", "1024", "--patience", "0", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# the run's shared compilation cache (tests/conftest.py) is the one JAX setting the processes inherit
COMPILATION_CACHE = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def cluster_env(devices: int, *, cluster_process: bool) -> dict[str, str]:
    env = {k: v for k, v in cli_env().items() if not k.startswith(("JAX_", "XLA_")) or k in COMPILATION_CACHE}
    if cluster_process:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    else:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def train_process(args: list[str], *, devices: int = 1, cluster_process: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        EMBEDREC + ["train", *args],
        env=cluster_env(devices, cluster_process=cluster_process),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cluster_processes(
    data: Path, outs: list[Path], workdirs: list[Path], extra: list[list[str]]
) -> list[subprocess.Popen]:
    port = free_port()
    return [
        train_process(
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


def weights(run: Path) -> dict[str, np.ndarray]:
    from embedrec.artifacts import load_arrays

    return load_arrays(run / "weights.safetensors")


def latest_checkpoint(run: Path) -> str | None:
    marker = run / "checkpoints" / "LATEST"
    return marker.read_text().strip() if marker.is_file() else None
