"""The examples in examples/ run as a user would run them, and print what they promise.

The shell walk-through downloads MovieLens latest-small; GroupLens is not reachable from CI, so a local HTTP server
serves a small synthetic archive in the same layout (with its ``.md5``), and ``EMBEDREC_DOWNLOAD_URL`` points there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 300  # each example takes seconds; this only stops a hang


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment without EMBEDREC_* settings, with this interpreter's scripts on PATH.

    ``COLUMNS`` fixes the width of the CLI's tables (rich uses 80 when not on a terminal, too narrow for evaluate).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDREC_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["COLUMNS"] = "120"
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def make_ml_latest_small(folder: Path) -> Path:
    """A small ``ml-latest-small.zip`` (synthetic ratings, GroupLens layout) holding Toy Story and Toy Story 2.

    Like the real release, "toy story" then matches two titles, and the walk-through's ``similar --movie "toy story"``
    must still pick the exact one.
    """
    from embedrec.data.synthetic import generate, write_ml_latest

    ratings, movies = generate(n_users=150, n_movies=200, n_ratings=8_000, seed=0)
    most_rated = ratings["movieId"].value_counts().index
    movies.loc[movies["movieId"] == most_rated[0], "title"] = "Toy Story (1995)"
    movies.loc[movies["movieId"] == most_rated[1], "title"] = "Toy Story 2 (1999)"
    src = write_ml_latest(folder / "src" / "ml-latest-small", ratings, movies)
    archive = folder / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ratings.csv", "movies.csv"):
            zf.write(src / name, f"ml-latest-small/{name}")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    (folder / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {digest}\n")
    return archive


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def movielens_url(tmp_path: Path) -> Iterator[str]:
    """Base URL of a local server holding ``ml-latest-small.zip`` and its ``.md5``, like files.grouplens.org."""
    site = tmp_path / "site"
    make_ml_latest_small(site / "movielens")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow
def test_python_api_example(tmp_path: Path) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "python_api.py"), str(tmp_path / "work")], _env(), tmp_path)
    out = proc.stdout
    assert "prepared 20,000 ratings" in out
    assert "test split" in out and "NDCG@10" in out
    assert "top 10 for user 1:" in out
    assert "movies similar to" in out and "similarity" in out
    assert "top 10 for a new user" in out
    assert (tmp_path / "work" / "models" / "example" / "model.json").is_file()
    assert (tmp_path / "work" / "models" / "latest").is_file()


@pytest.mark.slow
def test_movielens_walkthrough(tmp_path: Path, movielens_url: str) -> None:
    workdir = tmp_path / "work"
    env = _env(EMBEDREC_DOWNLOAD_URL=movielens_url, EMBEDREC_WORKDIR=str(workdir), TRAIN_FLAGS="--epochs 2")
    proc = _run(["bash", str(EXAMPLES / "movielens_walkthrough.sh")], env, tmp_path)
    out = proc.stdout
    for step in range(1, 8):
        assert f"==> {step}. " in out, f"step {step} missing:\n{out}"
    assert "checksum verified" in " ".join(out.split())
    assert (workdir / "downloads" / "ml-latest-small" / "ratings.csv").is_file()
    assert (workdir / "data" / "summary.json").is_file()
    assert (workdir / "models" / "latest").is_file()
    evaluate = out.split("==> 4. ")[1].split("==> 5. ")[0]
    assert "ndcg@10" in evaluate and "vs the user + movie bias baseline" in evaluate, evaluate
    # recommend --user 1 renders a ten-row table of titles; similar resolves "toy story" and lists its neighbours
    recommend = out.split("==> 5. ")[1].split("==> 6. ")[0]
    assert "Top 10 for user 1" in recommend and "title" in recommend and "│ 10 │" in recommend, recommend
    similar = out.split("==> 6. ")[1].split("==> 7. ")[0]
    assert "Nearest to Toy Story" in similar and "similarity" in similar and "│ 10 │" in similar, similar
    assert "parameters" in out.split("==> 7. ")[1]


def _readme_python_api() -> str:
    """The README's "Python API" snippet, as a user would copy it."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_python_api_snippet_runs_as_written(tmp_path: Path) -> None:
    """The snippet runs unchanged in a fresh folder, and what its comments promise holds."""
    snippet = _readme_python_api()
    columns = snippet.split("# DataFrame: ", 1)[1].split("\n", 1)[0].split(", ")
    check = (
        "\nimport json\n"
        "print(json.dumps({'columns': list(rec.recommend(42, k=10).columns), "
        "'similar': len(rec.similar(int(rec.movie_ids[0]), k=10)), "
        "'latest': (Path('work') / 'models' / 'latest').is_file()}))\n"
    )
    proc = _run([sys.executable, "-c", snippet + check], _env(), tmp_path)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["columns"] == columns
    assert found["similar"] == 10
    assert found["latest"]
