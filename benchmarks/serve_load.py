"""How many requests a second does ``embedrec serve`` answer, and how fast, at the original's scale?

Usage::

    python benchmarks/serve_load.py [--cache DIR] [--workers 1] [--requests 400] [--json]
    python benchmarks/serve_load.py --scale full     # MovieLens-25M-like: 280,000 users, 86,000 movies

Builds (and caches under ``--cache``) a synthetic data set and a ``default``-preset model folder with freshly
initialised weights, exactly as ``benchmarks/recommend_speed.py`` does (serving speed does not depend on the weight
values; the ranking is ``watch + 0.5 x rating``, which runs the whole MLP over every movie: the slowest one). Then it
starts ``embedrec serve`` on a free loopback port in its own process and drives it with a bounded async httpx load
generator: for each endpoint and each number of concurrent clients (1, 8, 32), a fixed number of requests, each
client sending its next request when the previous one is answered. Reports requests/s, p50 and p99 latency, the
error count, the CPU milliseconds per request of the server (all its processes) and of this load generator, and the
load average, per row; the header names the worker count. On a shared machine read the CPU columns: they survive
other jobs, requests/s and latencies do not.

Targets (seed scale, 2 cores): ``GET /recommend`` at 32 clients >= 300 requests/s with p99 <= 100 ms; fold-in
``POST /recommend`` p99 <= 200 ms; no errors. The load generator runs on the same cores as the server, so the numbers
are a lower bound; on a machine shared with other work they are lower still.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCALES = {
    "seed": {"n_users": 20_510, "n_movies": 25_448, "n_ratings": 2_000_000},
    "full": {"n_users": 280_000, "n_movies": 86_000, "n_ratings": 27_000_000},
}
CONCURRENCY = (1, 8, 32)


def ensure_model(cache: Path, scale: str) -> tuple[Path, Path]:
    """(data folder, model folder): the synthetic data set and an initialised default-preset model, cached."""
    import recommend_speed

    if scale == "seed":
        data = recommend_speed.ensure_data(cache)
    else:
        from embedrec.data import prepare_synthetic

        data = cache / "serve-load-full" / "data"
        if not (data / "summary.json").is_file():
            prepare_synthetic(out=data, seed=0, **SCALES["full"])
    model = recommend_speed.ensure_model(
        data, cache / ("" if scale == "seed" else "serve-load-full"), "default", {"score": "blend", "beta": 0.5}
    )
    return data, model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, data: Path, workers: int, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = open(log, "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedrec.cli",
            "serve",
            "--model",
            str(model),
            "--data",
            str(data),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not start within 600 s; see {log}")


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server process and its worker processes so far (Linux /proc; else NaN).

    CPU per request is the number that survives a busy machine: on idle cores, throughput is at most
    cores / (CPU seconds per request) and lower when the GIL serialises the Python part."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return own(pid) + sum(own(int(c)) for c in children)
    except (OSError, ValueError):
        return float("nan")


async def drive(
    url: str, make_request: Any, *, clients: int, total: int, pid: int, client_lib: str = "httpx"
) -> dict[str, Any]:
    """``clients`` tasks share ``total`` requests; each sends its next one when the previous is answered.

    ``client_lib``: ``httpx`` (the project's test client) or ``aiohttp`` (a leaner client: on a 2-core machine the load
    generator shares the cores with the server, and httpx costs about as much CPU per request as the server does).
    """
    latencies: list[float] = []
    errors: list[str] = []
    remaining = [total]
    async with _Client(url, clients, client_lib) as client:

        async def one_client(seed: int) -> None:
            rng = random.Random(seed)
            while remaining[0] > 0:
                remaining[0] -= 1
                method, path, kwargs = make_request(rng)
                t0 = time.perf_counter()
                try:
                    status, text = await client.request(method, path, kwargs)
                    if status != 200:
                        errors.append(f"{status} {text[:120]}")
                except Exception as exc:  # a transport error of either library counts as a failed request
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - t0)

        for warm in range(min(clients, 4)):  # connections and first-use caches, outside the clock
            method, path, kwargs = make_request(random.Random(-warm))
            await client.request(method, path, kwargs)
        t0 = time.perf_counter()
        cpu0, client0 = server_cpu_s(pid), time.process_time()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
        cpu, client_cpu = server_cpu_s(pid) - cpu0, time.process_time() - client0
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": len(ms) / wall,
        "server_cpu_ms": 1000 * cpu / max(1, len(ms)),
        "client_cpu_ms": 1000 * client_cpu / max(1, len(ms)),
        "load1": os.getloadavg()[0],
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
    }


class _Client:
    """One keep-alive connection per concurrent client, through httpx or aiohttp: ``(status, text)`` per request."""

    def __init__(self, url: str, clients: int, lib: str) -> None:
        self.url, self.clients, self.lib = url, clients, lib
        self.session: Any = None

    async def __aenter__(self) -> _Client:
        if self.lib == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.clients)
            self.session = aiohttp.ClientSession(
                base_url=self.url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            )
        else:
            import httpx

            limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
            self.session = httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.lib == "aiohttp":
            await self.session.close()
        else:
            await self.session.aclose()

    async def request(self, method: str, path: str, kwargs: dict[str, Any]) -> tuple[int, str]:
        if self.lib == "aiohttp":
            async with self.session.request(method, path, **kwargs) as res:
                return res.status, await res.text()
        res = await self.session.request(method, path, **kwargs)
        return res.status_code, res.text


def request_makers(data: Path) -> dict[str, tuple[Any, float]]:
    """Per endpoint: a function (rng) -> (method, path, httpx kwargs), and its share of ``--requests``."""
    from embedrec.data import load_prepared

    prepared = load_prepared(data)
    users = prepared.user_ids
    counts = __import__("numpy").bincount(prepared.movie_idx, minlength=prepared.n_movies)
    rated = prepared.movie_ids[counts >= 20]  # movies a new user plausibly rates

    def recommend(rng: random.Random) -> tuple[str, str, dict]:
        return "GET", "/recommend", {"params": {"user": int(users[rng.randrange(len(users))]), "k": 10}}

    def fold_in(rng: random.Random) -> tuple[str, str, dict]:
        picks = rng.sample(range(len(rated)), 20)
        body = {
            "ratings": [{"movieId": int(rated[i]), "rating": float(rng.choice([2, 3, 4, 4, 5, 5]))} for i in picks],
            "k": 10,
        }
        return "POST", "/recommend", {"json": body}

    def similar(rng: random.Random) -> tuple[str, str, dict]:
        return (
            "GET",
            "/similar",
            {"params": {"movie": int(prepared.movie_ids[rng.randrange(prepared.n_movies)]), "k": 10}},
        )

    def predict(rng: random.Random) -> tuple[str, str, dict]:
        return (
            "GET",
            "/predict",
            {
                "params": {
                    "user": int(users[rng.randrange(len(users))]),
                    "movie": int(prepared.movie_ids[rng.randrange(prepared.n_movies)]),
                }
            },
        )

    return {
        "GET /recommend": (recommend, 1.0),
        "POST /recommend (fold-in, 20 ratings)": (fold_in, 0.25),
        "GET /similar": (similar, 0.5),
        "GET /predict": (predict, 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedrec" / "bench")
    parser.add_argument("--scale", choices=sorted(SCALES), default="seed")
    parser.add_argument("--workers", type=int, default=1, help="embedrec serve --workers")
    parser.add_argument(
        "--requests",
        type=int,
        default=400,
        help="requests per GET /recommend row (fold-in: a quarter, the others: half)",
    )
    parser.add_argument("--only", default=None, help="run only endpoints whose name contains this")
    parser.add_argument(
        "--client",
        choices=("httpx", "aiohttp"),
        default="httpx",
        help="load generator's HTTP client (aiohttp: less CPU per request; pip install -e .[bench])",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data, model = ensure_model(args.cache, args.scale)
    makers = request_makers(data)
    setup_s = time.perf_counter() - t0
    log = args.cache / f"serve-load-{args.scale}.log"
    proc, url = start_server(model, data, args.workers, log)
    startup_s = time.perf_counter() - t0 - setup_s
    rows = []
    try:
        for name, (maker, share) in makers.items():
            if args.only and args.only not in name:
                continue
            for clients in CONCURRENCY:
                row = asyncio.run(
                    drive(
                        url,
                        maker,
                        clients=clients,
                        total=max(clients, int(args.requests * share)),
                        pid=proc.pid,
                        client_lib=args.client,
                    )
                )
                rows.append({"endpoint": name, **row})
                if not args.json:
                    print(
                        f"{name:<40} {clients:>3} clients  {row['rps']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                        f"p99 {row['p99_ms']:6.1f} ms  server CPU {row['server_cpu_ms']:5.1f} ms/req  "
                        f"client CPU {row['client_cpu_ms']:4.1f} ms/req  load {row['load1']:4.1f}  "
                        f"errors {row['errors']}",
                        flush=True,
                    )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    result = {
        "scale": args.scale,
        **SCALES[args.scale],
        "workers": args.workers,
        "client": args.client,
        "cpus": os.cpu_count(),
        "load1": os.getloadavg()[0],
        "setup_s": setup_s,
        "server_start_s": startup_s,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"\n{args.scale} scale ({SCALES[args.scale]['n_users']:,} users, {SCALES[args.scale]['n_movies']:,} movies), "
        f"--workers {args.workers}, --client {args.client}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; server started in {startup_s:.1f} s\n"
    )
    print(
        "| endpoint | clients | requests/s | p50 ms | p99 ms | server CPU ms/request | client CPU ms/request | "
        "load average | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['clients']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['server_cpu_ms']:.1f} | {r['client_cpu_ms']:.1f} | {r['load1']:.1f} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
