"""``embedrec serve`` as a client sees it: a real server in a subprocess on a free loopback port, a real trained model.

Covers every endpoint, every error class, the API key, reload under load (no failed request while the model swaps, a
damaged model refused), graceful shutdown on SIGTERM, and the HTML page driven by headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cli import EMBEDREC, cli_env, run_cli

KEY = "test-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".test-artifacts"


# ---------------------------------------------------------------------------------------------------------------
# A trained work folder and a server process
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`embedrec prepare` + `embedrec train` (one epoch): a real model, its data, and models/latest."""
    from embedrec.runs import train_run
    from embedrec.workdir import data_dir

    wd = tmp_path_factory.mktemp("serve-wd")
    shutil.copytree(synthetic_prepared, data_dir(wd))
    train_run(data_dir(wd), workdir=wd, out=wd / "models" / "run-1", overrides={"epochs": 1})
    return wd


@pytest.fixture(scope="module")
def ids(workdir: Path) -> dict:
    from embedrec.recommender import Recommender

    rec = Recommender.load(workdir / "models" / "run-1", workdir / "data")
    users = rec.user_ids
    return {
        "user": int(users[4]),
        "movie": int(rec.movie_ids[0]),
        "movies": rec.movie_ids,
        "rec": rec,
        "unknown_user": int(users.max()) + 1000,
        "unknown_movie": int(rec.movie_ids.max()) + 1000,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# uvicorn re-raises SIGTERM after its graceful shutdown (-15); a SIGTERM that arrives before uvicorn installs its
# handler is embedrec's own documented exit code 143
CLEAN_STOP = (-signal.SIGTERM, 143)


class Server:
    """``python -m embedrec.cli serve ...`` on a free loopback port; :meth:`stop` sends SIGTERM and waits."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [*EMBEDREC, "serve", "--port", str(self.port), *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(env),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not answer /healthz within 120 s:\n{self.output()}")

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; returns the exit status (uvicorn re-raises SIGTERM after its graceful shutdown, so a
        clean stop is -SIGTERM with "Finished server process" in the log)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def server(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server("--workdir", str(workdir), "--no-access-log", log=tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def copy_run(workdir: Path, name: str, *, damage: str | None = None) -> Path:
    """A new run folder made from run-1 and recorded as latest; ``damage``: "nan" weights or "missing" weights."""
    from embedrec.artifacts import load_arrays, save_arrays
    from embedrec.workdir import set_latest_run

    run = workdir / "models" / name
    shutil.copytree(workdir / "models" / "run-1", run)
    if damage == "nan":
        weights = load_arrays(run / "weights.safetensors")
        weights["user_embedding"] = np.full_like(weights["user_embedding"], np.nan)
        save_arrays(run / "weights.safetensors", weights)
    elif damage == "missing":
        (run / "weights.safetensors").unlink()
    set_latest_run(workdir, run)
    return run


def assert_clean_error(res: httpx.Response, status: int, words: str) -> None:
    """One JSON line naming the problem; never a traceback or a path on this machine."""
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert words.lower() in body["detail"].lower(), body["detail"]
    assert "Traceback" not in res.text and "/tmp" not in res.text and str(ROOT) not in res.text, res.text


# ---------------------------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------------------------
def test_the_served_fast_path_equals_the_library_tables(workdir: Path, ids: dict) -> None:
    """What the endpoints precompute at load (every user's seen index, the movies' fields) and the array methods
    they call give exactly what the library's table methods give through the one-user scan."""
    from embedrec.serve.app import movie_records
    from embedrec.serve.state import ModelSource, load_served_model

    served = load_served_model(ModelSource(workdir=workdir))
    fresh = ids["rec"]  # not indexed: recommend() scans the ratings for one user
    assert served.rec._seen is not None and fresh._seen is None
    counts = np.array([fresh.seen_mask(u).sum() for u in range(len(fresh.user_ids))])
    for u in [int(np.argmax(counts)), int(np.argmin(counts)), 4, len(fresh.user_ids) - 1]:
        indexed = served.rec.seen_of(u)
        assert indexed.indices.tolist() == np.flatnonzero(fresh.seen_mask(u)).tolist()
        assert indexed.indices.tolist() == fresh.seen_of(u).indices.tolist()
        user = int(fresh.user_ids[u])
        for options in ({}, {"genre": "Comedy", "min_ratings": 0}, {"filter_seen": False, "k": 30}):
            ranked = served.rec.rank_user(user, **options)
            got = served.movie_records(ranked.movie_idx[0], score=ranked.score[0], rating=ranked.rating[0])
            assert got == movie_records(fresh.recommend(user, **options), "score", "rating")
    top, score = served.rec.rank_popular(k=7, genre="Drama")
    cold = served.movie_records(top, score=score, rating=np.full(len(top), np.nan))
    assert cold == movie_records(fresh.popular(k=7, genre="Drama"), "score", "rating")
    top, sims = served.rec.rank_similar(ids["movie"], k=5)
    assert served.movie_records(top, similarity=sims) == movie_records(fresh.similar(ids["movie"], k=5), "similarity")


def test_the_user_pages_ratings_come_from_the_index_and_equal_those_of_the_ratings(
    workdir: Path, tmp_path: Path
) -> None:
    """The service loads the data without reading a rating; a user's ratings (highest first, then by movie) come
    from the per-user index, and equal those of the rating arrays, which a folder prepared before the index kept
    the values still uses."""
    from embedrec.data.store import load_prepared
    from embedrec.serve.state import ModelSource, load_served_model
    from embedrec.workdir import data_dir

    served = load_served_model(ModelSource(workdir=workdir))
    assert served.prepared is not None and "ratings" not in served.prepared._read
    older = tmp_path / "older"
    shutil.copytree(data_dir(workdir), older)
    (older / "user_ratings_rating.npy").unlink()
    summary = json.loads((older / "summary.json").read_text())
    del summary["user_index"]["files"]["rating"]
    (older / "summary.json").write_text(json.dumps(summary))
    served_older = load_served_model(ModelSource(workdir=workdir, data=older))
    data = load_prepared(data_dir(workdir))
    for u in (0, 3, len(served.rec.user_ids) - 1):
        user = int(served.rec.user_ids[u])
        mine = np.flatnonzero(data.user_idx == u)
        order = np.lexsort((data.movie_idx[mine], -data.rating[mine]))
        movies, ratings = served.user_ratings(user)
        assert "ratings" not in served.prepared._read
        assert movies.tolist() == data.movie_idx[mine][order].tolist()
        assert ratings.tolist() == data.rating[mine][order].tolist()
        older_movies, older_ratings = served_older.user_ratings(user)
        assert older_movies.tolist() == movies.tolist() and older_ratings.tolist() == ratings.tolist()


def test_recommend_gives_what_the_library_gives_with_the_cli_field_names(client: httpx.Client, ids: dict) -> None:
    res = client.get("/recommend", params={"user": ids["user"], "k": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["userId"] == ids["user"] and body["coldStart"] is False
    recs = body["recommendations"]
    assert [set(r) for r in recs] == [{"movieId", "title", "year", "genres", "score", "rating"}] * 5
    expected = ids["rec"].recommend(ids["user"], k=5)
    assert [r["movieId"] for r in recs] == expected["movie_id"].tolist()
    assert np.allclose([r["score"] for r in recs], expected["score"], atol=1e-5)
    seen = ids["rec"].seen_mask(ids["rec"].user_vocab.index(ids["user"]))
    assert not seen[ids["rec"].movie_vocab.indices([r["movieId"] for r in recs])].any()


def test_recommend_filters_by_genre_and_can_include_seen(client: httpx.Client, ids: dict) -> None:
    res = client.get("/recommend", params={"user": ids["user"], "k": 5, "genre": "comedy", "min_ratings": 0})
    assert res.status_code == 200, res.text
    assert all("Comedy" in r["genres"].split("|") for r in res.json()["recommendations"])
    with_seen = client.get("/recommend", params={"user": ids["user"], "k": 20, "include_seen": "true"}).json()
    expected = ids["rec"].recommend(ids["user"], k=20, filter_seen=False)
    assert [r["movieId"] for r in with_seen["recommendations"]] == expected["movie_id"].tolist()


def test_an_unknown_user_gets_the_cold_start_list_marked_so(client: httpx.Client, ids: dict) -> None:
    body = client.get("/recommend", params={"user": ids["unknown_user"], "k": 4}).json()
    assert body["coldStart"] is True and "cold start" in body["ranking"]
    assert [r["movieId"] for r in body["recommendations"]] == ids["rec"].popular(k=4)["movie_id"].tolist()
    assert all(r["rating"] is None for r in body["recommendations"])


def test_fold_in_recommends_for_a_new_user_without_their_rated_movies(client: httpx.Client, ids: dict) -> None:
    rated = [int(m) for m in ids["movies"][:5]]
    body = {"ratings": [{"movieId": m, "rating": 5.0} for m in rated], "k": 10}
    res = client.post("/recommend", json=body)
    assert res.status_code == 200, res.text
    got = res.json()
    assert got["userId"] is None and got["coldStart"] is False
    movie_ids = [r["movieId"] for r in got["recommendations"]]
    assert len(movie_ids) == 10 and not set(movie_ids) & set(rated)
    rec = ids["rec"]
    expected = rec.recommend_for(rec.fold_in([(m, 5.0) for m in rated]), k=10)
    assert movie_ids == expected["movie_id"].tolist()


def test_similar_predict_and_search(client: httpx.Client, ids: dict) -> None:
    rec = ids["rec"]
    sim = client.get("/similar", params={"movie": ids["movie"], "k": 3}).json()
    assert sim["movieId"] == ids["movie"] and sim["title"] == rec.movies.iloc[0]["title"]
    assert [s["movieId"] for s in sim["similar"]] == rec.similar(ids["movie"], k=3)["movie_id"].tolist()
    assert set(sim["similar"][0]) == {"movieId", "title", "year", "genres", "similarity"}

    one = client.get("/predict", params={"user": ids["user"], "movie": ids["movie"]}).json()
    assert one["rating"] == pytest.approx(float(rec.predict([ids["user"]], [ids["movie"]])[0]), abs=1e-5)
    pairs = [
        {"userId": ids["user"], "movieId": ids["movie"]},
        {"userId": ids["unknown_user"], "movieId": ids["movie"]},
        {"userId": ids["user"], "movieId": ids["unknown_movie"]},
    ]
    many = client.post("/predict", json={"pairs": pairs}).json()
    assert [p["reason"] for p in many["predictions"]] == ["", "unknown user", "unknown movie"]
    assert many["predictions"][0]["rating"] == pytest.approx(one["rating"])
    assert many["predictions"][1]["rating"] is None and many["n_unknown"] == 2

    title = str(rec.movies.iloc[7]["title"])
    found = client.get("/movies", params={"q": title.upper()}).json()
    assert found["total"] >= 1 and found["movies"][0]["title"] == title
    assert client.get("/movies", params={"q": "zzzz-no-such-title"}).json() == {
        "query": "zzzz-no-such-title",
        "total": 0,
        "movies": [],
    }


def test_model_healthz_and_docs_describe_the_server(client: httpx.Client, workdir: Path) -> None:
    model = client.get("/model").json()
    meta = json.loads((workdir / "models" / "run-1" / "model.json").read_text())
    assert model["run"] == "run-1" and model["fingerprint"] == meta["data"]["fingerprint"]
    assert model["metrics"] == pytest.approx(meta["metrics"]) and model["data_loaded"] is True
    assert model["generation"] == 1 and model["n_users"] == 300
    assert str(workdir) not in json.dumps(model)
    assert client.get("/healthz").json() == {"status": "ok", "run": "run-1", "generation": 1}
    for path in ("/healthz", "/model", "/"):  # HEAD answers as GET does, without the body (health checkers send it)
        head, get = client.head(path), client.get(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    assert client.head("/admin/reload").status_code == 405  # a POST-only path stays POST-only
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://x.example"}).headers
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/similar", "/predict", "/movies", "/model", "/healthz", "/admin/reload"} <= set(paths)
    assert set(paths["/recommend"]) == {"get", "post"} and set(paths["/predict"]) == {"get", "post"}


def test_the_api_docs_load_everything_from_the_server_itself(client: httpx.Client) -> None:
    """/docs and /redoc reference no external URL (no CDN): every script, style and icon comes from this server."""
    import re

    for page in ("/docs", "/redoc"):
        res = client.get(page)
        assert res.status_code == 200 and "text/html" in res.headers["content-type"], res.text
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", res.text, re.I), res.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', res.text)
        assert any(a.endswith(".js") for a in assets), res.text
        for asset in assets:
            assert asset.startswith("/"), asset
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 1_000, asset
    assert '"validatorUrl": null' in client.get("/docs").text  # Swagger UI's validator badge calls out


def test_every_bad_request_gets_one_clear_json_line(client: httpx.Client, ids: dict) -> None:
    u, m = ids["user"], ids["movie"]
    assert_clean_error(client.get("/similar", params={"movie": ids["unknown_movie"]}), 404, "not known")
    assert_clean_error(client.get("/predict", params={"user": u, "movie": ids["unknown_movie"]}), 404, "unknown movie")
    assert_clean_error(
        client.post("/recommend", json={"ratings": [{"movieId": ids["unknown_movie"], "rating": 4}]}), 404, "not known"
    )
    json_type = {"content-type": "application/json"}
    for body in (
        b'{"pairs": [{"userId": 1, "movieId": 2}], "\xff": 1}',
        b'{"pairs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        assert_clean_error(client.post("/predict", content=body, headers=json_type), 422, "not valid JSON")
    form = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    sent = b'{"pairs": [{"userId": 1, "movieId": 2}]}'
    assert_clean_error(client.post("/predict", content=sent, headers=form), 422, "Content-Type: application/json")
    compressed = {**json_type, "content-encoding": "gzip"}
    assert_clean_error(client.post("/predict", content=b"\x1f\x8b\x08\x00", headers=compressed), 415, "uncompressed")
    # another JSON type is refused, not coerced: true is not the rating 1, "5" not user 5, "yes" not a yes
    rated = [{"movieId": m, "rating": 4}]
    assert_clean_error(client.post("/recommend", json={"ratings": [{"movieId": m, "rating": True}]}), 422, "rating")
    assert_clean_error(client.post("/recommend", json={"ratings": rated, "k": True}), 422, "k")
    assert_clean_error(client.post("/recommend", json={"ratings": rated, "include_seen": "yes"}), 422, "include_seen")
    assert_clean_error(client.post("/predict", json={"pairs": [{"userId": str(u), "movieId": m}]}), 422, "userId")
    for beyond_64_bits in (2**63, 10**23, -(2**63) - 1):  # an unknown movie, not a 500 from an int64 overflow
        body = {"ratings": [{"movieId": beyond_64_bits, "rating": 4}]}
        assert_clean_error(client.post("/recommend", json=body), 404, "not known")
    assert_clean_error(client.get("/recommend", params={"user": u, "k": 101}), 422, "k")
    assert_clean_error(client.get("/recommend", params={"user": u, "k": 0}), 422, "k")
    assert_clean_error(client.get("/recommend", params={"user": "abc"}), 422, "user")
    assert_clean_error(client.get("/recommend"), 422, "user")
    assert_clean_error(client.get("/recommend", params={"user": u, "genre": "Polka"}), 422, "unknown genre")
    assert_clean_error(client.get("/recommend", params={"user": u, "min_ratings": -1}), 422, "min_ratings")
    assert_clean_error(client.post("/recommend", json={"ratings": [{"movieId": m, "rating": 99}]}), 422, "range")
    assert_clean_error(client.post("/recommend", json={"ratings": []}), 422, "ratings")
    twice = {"ratings": [{"movieId": m, "rating": 4}, {"movieId": m, "rating": 2}]}
    assert_clean_error(client.post("/recommend", json=twice), 422, "rated twice (ratings[0] and ratings[1])")
    assert_clean_error(client.post("/recommend", json={"ratings": [{"movieId": m, "rating": 4}], "kk": 3}), 422, "kk")
    assert_clean_error(
        client.post("/recommend", content=b'{"ratings": [', headers={"content-type": "application/json"}),
        422,
        "not valid JSON",
    )
    assert_clean_error(client.post("/predict", json={"pairs": [{"userId": u, "movieId": m}] * 10_001}), 422, "pairs")
    assert_clean_error(client.get("/movies", params={"q": "  "}), 422, "title word")
    assert_clean_error(client.get("/movies"), 422, "q")
    huge = b'{"pairs": [' + b'{"userId": 1, "movieId": 1},' * 40_000 + b'{"userId": 1, "movieId": 1}]}'
    assert_clean_error(
        client.post("/predict", content=huge, headers={"content-type": "application/json"}), 413, "larger than"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming too
        yield b'{"pairs": ['
        for _ in range(40_000):
            yield b'{"userId": 1, "movieId": 1},'
        yield b'{"userId": 1, "movieId": 1}]}'

    assert_clean_error(
        client.post("/predict", content=chunks(), headers={"content-type": "application/json"}), 413, "larger than"
    )
    assert_clean_error(client.get("/no-such-endpoint"), 404, "not found")
    assert_clean_error(client.post("/admin/reload"), 403, "--api-key")


def test_ids_and_counts_in_the_url_are_plain_decimal_digits(client: httpx.Client, ids: dict) -> None:
    """pydantic's int parsing would read user=1_000 as user 1000 and +5, " 5" or 5.0 as 5: each is a 422 naming the
    parameter, like any other bad parameter; a negative id is an id (the cold-start list for an unknown one)."""
    u, m = ids["user"], ids["movie"]
    for bad in (f"{u:_}" if u >= 1000 else f"{u}_0", f"+{u}", f" {u}", f"{u} ", f"{u}.0", "1e3", "0x10", "\u0665", ""):
        for path, params, name in (
            ("/recommend", {"user": bad}, "user"),
            ("/recommend", {"user": u, "k": bad}, "k"),
            ("/recommend", {"user": u, "min_ratings": bad}, "min_ratings"),
            ("/similar", {"movie": bad}, "movie"),
            ("/predict", {"user": bad, "movie": m}, "user"),
            ("/predict", {"user": u, "movie": bad}, "movie"),
            ("/movies", {"q": "a", "limit": bad}, "limit"),
        ):
            res = client.get(path, params=params)
            assert_clean_error(res, 422, f"query {name}: expected a whole number in plain digits")
            assert repr(bad) in res.json()["detail"]
    assert_clean_error(client.get(f"/movie/+{m}"), 422, "path movie_id: expected a whole number in plain digits")
    assert client.get(f"/movie/{m}").status_code == 200
    page = client.get("/", params={"user": f"{u}_0"})
    assert page.status_code == 422 and "is not a user id" in page.text
    assert client.get("/recommend", params={"user": f"00{u}", "k": "03"}).json()["userId"] == u  # still decimal
    cold = client.get("/recommend", params={"user": "-7", "k": 2}).json()
    assert cold["userId"] == -7 and cold["coldStart"] is True


def test_the_server_process_never_loads_jax(server: Server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to list the server's loaded libraries")
    loaded = maps.read_text()
    assert "numpy" in loaded  # the check can see native libraries at all
    assert "jaxlib" not in loaded and "xla_extension" not in loaded


# ---------------------------------------------------------------------------------------------------------------
# Key, reload, shutdown
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def keyed_workdir(workdir: Path, tmp_path: Path) -> Path:
    """A private copy of the work folder, so reload tests can change `latest` without touching other tests."""
    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd, ignore=shutil.ignore_patterns("checkpoints"))
    from embedrec.workdir import set_latest_run

    set_latest_run(wd, wd / "models" / "run-1")
    return wd


def test_the_api_key_guards_every_endpoint_but_health_and_cors_allows_only_the_named_origin(
    keyed_workdir: Path, tmp_path: Path, ids: dict
) -> None:
    srv = Server(
        "--workdir",
        str(keyed_workdir),
        "--cors-origin",
        "http://shop.example",
        env={"EMBEDREC_API_KEY": KEY},
        log=tmp_path / "server.log",
    )
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            preflight = c.options(
                "/recommend",
                headers={
                    "Origin": "http://shop.example",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.headers["access-control-allow-origin"] == "http://shop.example"
            other = c.get("/healthz", headers={"Origin": "http://elsewhere.example"})
            assert "access-control-allow-origin" not in other.headers
            params = {"user": ids["user"], "k": 3}
            assert_clean_error(c.get("/recommend", params=params), 401, "API key")
            assert c.get("/recommend", params=params).headers["www-authenticate"] == "Bearer"
            assert_clean_error(
                c.get("/recommend", params=params, headers={"Authorization": "Bearer wrong"}), 401, "API key"
            )
            assert_clean_error(c.get("/model", headers={"Authorization": KEY}), 401, "API key")
            good = {"Authorization": f"Bearer {KEY}"}
            assert c.get("/recommend", params=params, headers=good).status_code == 200
            assert c.get("/healthz").status_code == 200
            assert_clean_error(c.post("/admin/reload"), 401, "API key")
            assert c.get("/").status_code == 401 and 'name="key"' in c.get("/").text  # the page asks for the key
            assert c.post("/login", data={"key": "wrong", "next": "/"}).status_code == 401
            login = c.post("/login", data={"key": KEY, "next": "/"}, follow_redirects=False)
            assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
            assert c.get("/", params={"user": ids["user"]}).status_code == 200  # the cookie now opens the page
    finally:
        assert srv.stop() in CLEAN_STOP


def test_reload_under_load_swaps_without_a_failed_request(keyed_workdir: Path, tmp_path: Path, ids: dict) -> None:
    srv = Server("--workdir", str(keyed_workdir), env={"EMBEDREC_API_KEY": KEY}, log=tmp_path / "server.log")
    auth = {"Authorization": f"Bearer {KEY}"}
    failures: list[str] = []
    runs_seen: set[str] = set()
    done = threading.Event()
    counts = [0]

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=30, headers=auth) as c:
            while not done.is_set():
                try:
                    if worker % 2:
                        res = c.get("/recommend", params={"user": ids["user"], "k": 10})
                    else:
                        res = c.post("/recommend", json={"ratings": [{"movieId": int(ids["movie"]), "rating": 4.5}]})
                    if res.status_code != 200 or len(res.json()["recommendations"]) != 10:
                        failures.append(f"{res.status_code} {res.text[:200]}")
                    runs_seen.add(c.get("/healthz").json()["run"])
                    counts[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        with httpx.Client(base_url=srv.url, timeout=60, headers=auth) as c:
            time.sleep(1)
            copy_run(keyed_workdir, "run-2")  # what `embedrec train` leaves: a new run recorded as latest
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while c.get("/model").json()["run"] != "run-2" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert c.get("/model").json()["generation"] == 2

            copy_run(keyed_workdir, "run-3")
            res = c.post("/admin/reload")
            assert res.status_code == 200 and res.json()["reloaded"] is True and res.json()["run"] == "run-3"
            assert res.json()["generation"] == 3

            copy_run(keyed_workdir, "run-nan", damage="nan")
            refused = c.post("/admin/reload")
            assert refused.status_code == 409 and refused.json()["reloaded"] is False, refused.text
            assert "NaN or infinite" in refused.json()["message"] and refused.json()["run"] == "run-3"
            copy_run(keyed_workdir, "run-broken", damage="missing")
            refused = c.post("/admin/reload")
            assert refused.status_code == 409 and "weights.safetensors" in refused.json()["message"]
            assert str(keyed_workdir) not in refused.text
            time.sleep(1)
            assert c.get("/model").json()["run"] == "run-3"
    finally:
        done.set()
        for t in threads:
            t.join(60)
        code = srv.stop()
    assert not failures, failures[:5]
    assert counts[0] > 20 and {"run-1", "run-2", "run-3"} <= runs_seen
    assert code in CLEAN_STOP and "Finished server process" in srv.output()
    assert "reload refused" in srv.output()


def test_sigterm_lets_requests_in_flight_finish(keyed_workdir: Path, tmp_path: Path, ids: dict) -> None:
    srv = Server("--workdir", str(keyed_workdir), log=tmp_path / "server.log")
    pairs = [{"userId": ids["user"], "movieId": int(m)} for m in np.resize(ids["movies"], 10_000)]
    body = json.dumps({"pairs": pairs}).encode()  # each answer takes 0.1-1 s of CPU; 24 at once take seconds
    results: list[object] = []
    n_requests = 24  # enough that some are still being answered when SIGTERM comes, even on a fast machine
    connected = threading.Barrier(n_requests + 1)

    def ask() -> None:
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                c.get("/healthz")  # the connection is open before the clock starts
                connected.wait(60)
                res = c.post("/predict", content=body, headers={"content-type": "application/json"})
                results.append(res.status_code if res.status_code != 200 else len(res.json()["predictions"]))
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=ask) for _ in range(n_requests)]
    for t in threads:
        t.start()
    connected.wait(60)
    time.sleep(0.5)  # every request is sent (300 kB each over loopback) and most are still being answered
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    try:  # the one SIGTERM above stops it: srv.stop() would send a second one into the shutdown on a slow machine
        srv.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    code = srv.stop()
    assert results == [10_000] * n_requests, results
    log = srv.output()
    assert code in CLEAN_STOP and "Finished server process" in log, (code, log[-3000:])
    assert "partial output" not in log  # serve writes nothing: a stop is not a failure to clean up after
    assert '"POST /predict HTTP/1.1" 200' in log.split("Shutting down", 1)[1]  # answered after SIGTERM arrived
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/healthz", timeout=2)


@pytest.mark.slow
def test_with_workers_sighup_rolls_them_to_the_new_model_and_keeps_them_on_a_refused_one(
    keyed_workdir: Path, tmp_path: Path
) -> None:
    srv = Server("--workdir", str(keyed_workdir), "--workers", "2", log=tmp_path / "server.log")
    try:
        # a new connection per request: an old worker closes its idle kept-alive connections as it stops, and a
        # request sent down one at that instant is the client's to retry (HTTP keep-alive's race, not the roll's).
        # What the roll owes is that every new connection is answered by some worker throughout.
        with httpx.Client(base_url=srv.url, timeout=30, headers={"Connection": "close"}) as c:
            deadline = time.monotonic() + 240
            old_pids: list[str] = []
            while len(old_pids) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)  # the server answers once one worker is up; the roll starts from both
                old_pids = re.findall(r"serving model run-1 \(pid (\d+)\)", srv.output())
            assert len(old_pids) == 2, srv.output()
            copy_run(keyed_workdir, "run-2")
            srv.proc.send_signal(signal.SIGHUP)  # to uvicorn's supervisor: replace the workers one at a time
            while srv.output().count("serving model run-2") < 2 and time.monotonic() < deadline:
                assert c.get("/healthz").status_code == 200  # some worker answers throughout
                time.sleep(0.5)
            # the last old worker stops only after the last new one is up and may answer until then: wait for both
            # old workers to finish (ten answers in a row from new ones do not show it: on a loaded machine a busy old
            # worker can miss ten accepts and answer the next request), every request still answered
            while time.monotonic() < deadline and not all(
                f"Finished server process [{pid}]" in srv.output() for pid in old_pids
            ):
                assert c.get("/healthz").status_code == 200
                time.sleep(0.2)
            assert {c.get("/healthz").json()["run"] for _ in range(10)} == {"run-2"}, srv.output()

            copy_run(keyed_workdir, "run-broken", damage="missing")
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 240
            while "aborting the restart" not in srv.output() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "aborting the restart" in srv.output() and "weights.safetensors is missing" in srv.output()
            assert {c.get("/healthz").json()["run"] for _ in range(10)} == {"run-2"}
    finally:
        srv.stop()


def test_a_missing_model_fails_at_start_with_one_line(tmp_path: Path) -> None:
    proc = run_cli(["serve", "--workdir", tmp_path / "empty"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "embedrec train" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# The page, in a real browser
# ---------------------------------------------------------------------------------------------------------------
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    for candidate in (os.environ.get("EMBEDREC_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; or set EMBEDREC_CHROMIUM)")
    return found


@pytest.mark.browser
def test_the_page_in_a_real_browser(server: Server, ids: dict, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    rec = ids["rec"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/")
            page.fill("#user", str(ids["user"]))
            page.click("button[type=submit]")
            page.wait_for_selector("#recommended tbody tr")
            rated_rows = page.locator("#rated tbody tr")
            assert rated_rows.count() == 10
            recommended = page.locator("#recommended tbody tr td:nth-child(2)").all_inner_texts()
            assert recommended == rec.recommend(ids["user"], k=10)["title"].astype(str).tolist()
            assert page.locator("#recommended tbody tr").first.locator("td.genres").inner_text().strip()
            page.screenshot(path=str(shots / "user.png"), full_page=True)

            first = recommended[0]
            page.click("#recommended tbody tr:first-child a")
            page.wait_for_selector("#similar tbody tr")
            assert page.locator("#movie-title").inner_text().startswith(first)
            assert page.locator("#similar tbody tr").count() == 10
            page.screenshot(path=str(shots / "similar.png"), full_page=True)

            page.goto(server.url + "/rate")
            selects = page.locator("#candidates select")
            assert selects.count() >= 5
            for i in range(4):
                selects.nth(i).select_option("5.0")
            page.click("#recommend-button")
            page.wait_for_selector("#recommended tbody tr")
            assert page.locator("#recommended tbody tr").count() == 10
            assert "For your 4 ratings" in page.content()
            page.screenshot(path=str(shots / "fold-in.png"), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in shots.iterdir():
        shutil.copyfile(shot, ARTIFACTS / f"serve-page-{shot.name}")
        assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_the_api_docs_render_in_a_browser_that_cannot_reach_the_internet(server: Server, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs the playwright package (pip install playwright)"
    )
    outside: list[str] = []

    def only_this_server(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(server.url + "/"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", only_this_server)
            page.goto(server.url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "embedrec" in page.locator(".swagger-ui .info .title").inner_text()
            page.wait_for_selector("#operations-default-recommend_recommend_get, .opblock-summary-path")
            assert "/recommend" in page.content()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
        finally:
            browser.close()
    assert outside == []
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "docs.png", ARTIFACTS / "serve-docs.png")


def test_help_lists_serve_and_imports_no_web_stack() -> None:
    code = (
        "import sys\n"
        "from embedrec.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette', 'numpy', 'jax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serve" in proc.stdout


def test_a_model_whose_users_rated_the_whole_catalogue_is_served(tmp_path: Path) -> None:
    """Two users who rated every movie (a tiny CSV): every seen-filtered list is empty, which the load check once
    took for damaged weights ("gives non-finite scores ... retrain")."""
    from planted import write_planted_model

    from embedrec.data import load_prepared
    from embedrec.data.config import PrepareConfig
    from embedrec.data.pipeline import prepare
    from embedrec.serve.state import ModelSource, load_served_model
    from embedrec.workdir import data_dir, models_dir, set_latest_run

    csv = tmp_path / "two-users.csv"
    csv.write_text(
        "userId,movieId,rating\n" + "".join(f"{u},{m},{1 + (u + m) % 5}\n" for u in (1, 2) for m in range(30))
    )
    movies = tmp_path / "movies.csv"  # genres: the planted model has a genre table
    movies.write_text(
        "movieId,title,genres\n"
        + "".join(f"{m},Movie {m} (1999),{'Drama' if m % 2 else 'Comedy'}\n" for m in range(30))
    )
    prepare(str(csv), out=data_dir(tmp_path), config=PrepareConfig(movies_file=str(movies)))
    prepared = load_prepared(data_dir(tmp_path))
    set_latest_run(tmp_path, write_planted_model(prepared, models_dir(tmp_path) / "run-1"))
    served = load_served_model(ModelSource(workdir=tmp_path))
    assert served.rec.recommend_many(prepared.user_ids, k=5, min_ratings=0).empty  # every movie was seen
    assert len(served.rec.recommend_many(prepared.user_ids, k=5, min_ratings=0, filter_seen=False)) == 10


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "is blank"),  # an empty $SECRET in EMBEDREC_API_KEY=$SECRET: refused, never an open server
        ("    ", "is blank"),
        ("ключключключключключ", "must be printable ASCII"),  # headers are Latin-1: it could never match
        ("short-key", "at least 16 characters"),
    ],
)
def test_an_api_key_that_cannot_guard_the_server_is_refused_before_it_starts(
    tmp_path: Path, key: str, message: str
) -> None:
    proc = subprocess.run(
        [*EMBEDREC, "serve", "--workdir", str(tmp_path / "none"), "--port", "9"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=cli_env({"EMBEDREC_API_KEY": key}),
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and message in line and "EMBEDREC_API_KEY" in line


def test_client_errors_name_paths_by_their_last_part_even_with_spaces() -> None:
    from embedrec.serve.state import redact_paths

    layout = "/srv/secret place/w/models"
    message = f"{layout}/bad run/weights.safetensors is unreadable; {layout}/latest names {layout}/gone"
    assert redact_paths(message) == "weights.safetensors is unreadable; latest names gone"
    assert redact_paths("/data/run1 is damaged: see /var/log/a.log") == "run1 is damaged: see a.log"
