"""The approximate first stage (``--ann``, embedrec.ann): it finds what the exact product finds, leaves seen and
filtered-out movies out, hands on exact scores, gives the same answers every time, and is refused cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from planted import prepared, trained  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from embedrec import ann
from embedrec.ann import WatchIndex
from embedrec.metrics import ItemSets, top_k

if not ann.available():  # imports usearch the way embedrec does (after pyarrow: see the last test)
    pytest.skip("the optional extra embedrec[ann] (usearch) is not installed", allow_module_level=True)


def _catalogue(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items with some shared structure (as trained embeddings have), their side biases, and 40 user rows."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((4, d)).astype(np.float32)
    item = (rng.standard_normal((n, 4)) @ basis * 0.3 + rng.standard_normal((n, d)) * 0.3).astype(np.float32)
    side = (rng.standard_normal(n) * 0.5).astype(np.float32)
    emb = (rng.standard_normal((40, 4)) @ basis + rng.standard_normal((40, d)) * 0.3).astype(np.float32)
    return item, side, emb


def test_the_index_finds_the_exact_top_movies_with_their_exact_scores_and_skips_the_seen() -> None:
    item, side, emb = _catalogue(5_000)
    exact_scores = emb @ item.T + side
    seen = ItemSets.from_lists([list(top_k(exact_scores[i : i + 1], 3)[0]) for i in range(len(emb))], n_items=5_000)
    index = WatchIndex(item, side)
    first, watch = index.search(emb, 20, seen=seen)
    masked = exact_scores.copy()
    rows, cols = seen.coordinates()
    masked[rows, cols] = -np.inf
    exact = top_k(masked, 20)
    recall = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(first, exact)])
    assert recall >= 0.99
    for i in range(len(emb)):
        assert not np.isin(first[i], seen.indices[seen.indptr[i] : seen.indptr[i + 1]]).any()
    valid = first >= 0
    assert valid.all()
    np.testing.assert_allclose(watch, np.take_along_axis(exact_scores, first, axis=1), rtol=1e-5, atol=1e-5)
    assert (np.diff(watch, axis=1) <= 0).all()  # best first
    # built in one thread in a fixed order: the same graph, so the same answers
    again, _ = WatchIndex(item, side).search(emb, 20, seen=seen)
    np.testing.assert_array_equal(first, again)


def test_the_index_is_kept_in_its_cache_folder_and_a_damaged_or_unwritable_one_is_built_again(tmp_path: Path) -> None:
    item, side, emb = _catalogue(2_000)
    cache = tmp_path / "model" / "ann"
    built = WatchIndex(item, side, cache=cache)
    assert built.source == "built and cached"
    (saved,) = cache.iterdir()  # one whole file, no temporary left
    assert saved.name.startswith("watch-") and saved.suffix == ".usearch"
    first, _ = built.search(emb, 30)
    again = WatchIndex(item, side, cache=cache)
    assert again.source == "cached"
    np.testing.assert_array_equal(again.search(emb, 30)[0], first)
    # other vectors (another model, another watch side) are another file
    assert WatchIndex(item, side + 0.5, cache=cache).source == "built and cached" and len(list(cache.iterdir())) == 2
    saved.write_bytes(saved.read_bytes()[:100])  # a damaged file: rebuilt, the same answers
    rebuilt = WatchIndex(item, side, cache=cache)
    assert rebuilt.source == "built and cached"
    np.testing.assert_array_equal(rebuilt.search(emb, 30)[0], first)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unkept = WatchIndex(item, side, cache=blocked / "ann")  # the cache cannot be made: built, answers the same
    assert unkept.source == "built" and blocked.read_text() == "not a folder"
    np.testing.assert_array_equal(unkept.search(emb, 30)[0], first)


def test_a_pool_of_some_movies_answers_in_pool_positions_and_a_short_pool_pads() -> None:
    item, side, emb = _catalogue(300)
    movies = np.arange(0, 300, 3)  # the pool: every third movie
    position = np.full(300, -1, np.int64)
    position[movies] = np.arange(len(movies))
    seen = ItemSets.from_lists([[0, 1, 3]] * len(emb), n_items=300)  # 1 is outside the pool; 0 and 3 are in it
    first, watch = WatchIndex(item[movies], side[movies]).search(emb, len(movies), seen=seen, position=position)
    assert (first[:, -2:] == -1).all() and np.isneginf(watch[:, -2:]).all()  # 100 pool movies, 2 of them seen
    found = first[:, :-2]
    assert (found >= 0).all() and not np.isin(movies[found], [0, 3]).any()
    assert all(len(set(row)) == len(row) for row in found)


def test_the_scorer_ranks_through_the_index_as_through_the_product(trained: Path, prepared) -> None:  # noqa: F811
    from embedrec.artifacts import load_model
    from embedrec.scoring import Scorer

    scorer = Scorer.from_artifact(load_model(trained))
    users = np.arange(min(scorer.n_users, 60))
    is_train = prepared.split == 0
    seen_all = ItemSets.from_pairs(
        prepared.user_idx[is_train], prepared.movie_idx[is_train], n_rows=scorer.n_users, n_items=scorer.n_movies
    )
    emb, bias = scorer.user_rows(users)
    n = max(1, scorer.n_movies // 10)  # few enough candidates for the two-stage path (PAIR_COST)
    exact = scorer.rank(emb, bias, 10, seen=seen_all.take(users), candidates=n)
    scorer.ann = True
    approx = scorer.rank(emb, bias, 10, seen=seen_all.take(users), candidates=n)
    assert list(scorer.every_movie._indexes) == [scorer.ranking.gamma]  # the first stage went through an index
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx.movie_idx, exact.movie_idx)])
    assert same >= 0.99
    both = approx.movie_idx == exact.movie_idx
    np.testing.assert_allclose(approx.score[both], exact.score[both], rtol=1e-5)


def test_the_cli_takes_ann_and_refuses_it_beside_exhaustive(trained: Path, prepared) -> None:  # noqa: F811
    import json

    from embedrec.cli import app

    runner = CliRunner()
    args = ["recommend", "--model", str(trained), "--data", str(prepared.path), "--user", "1", "--format", "json"]
    args += ["--candidates", "40"]  # few enough for the two-stage path on this small catalogue

    def listed(output: str) -> list[int]:
        return [r["movieId"] for r in json.loads(output)]

    approx = runner.invoke(app, [*args, "--ann"])
    assert approx.exit_code == 0, approx.output
    exact = runner.invoke(app, args)
    assert exact.exit_code == 0, exact.output
    assert len(set(listed(approx.output)) & set(listed(exact.output))) >= 9
    evaluated = runner.invoke(
        app,
        ["evaluate", "--model", str(trained), "--data", str(prepared.path), "--ann", "--candidates", "40"]
        + ["--max-users", "30", "--no-baselines", "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "approximate HNSW index (--ann)" in json.loads(evaluated.stdout)["scoring"]
    both = runner.invoke(app, [*args, "--ann", "--exhaustive"])
    assert both.exit_code == 2 and "--ann and --exhaustive" in both.output


def test_serve_with_ann_builds_the_index_before_serving_and_workers_inherit_it(trained: Path, prepared) -> None:  # noqa: F811
    import json

    from embedrec.serve.app import SETTINGS_ENV, ServeSettings, settings_to_env
    from embedrec.serve.state import ModelSource, load_served_model

    source = ModelSource(model=trained, data=Path(prepared.path), ann=True)
    served = load_served_model(source)
    scorer = served.rec.scorer
    assert scorer.ann and list(scorer.every_movie._indexes) == [scorer.ranking.gamma]  # built while loading
    assert any(p.suffix == ".usearch" for p in (trained / "ann").iterdir())
    user = int(served.rec.user_ids[3])
    served.rec.candidates = max(1, len(served.rec.movie_ids) // 10)  # the two-stage path on this small catalogue
    approx = served.rec.rank_user(user, k=10)
    scorer.ann = False
    exact = served.rec.rank_user(user, k=10)
    assert len(set(approx.movie_idx[0]) & set(exact.movie_idx[0])) >= 9
    payload = json.loads(settings_to_env(ServeSettings(source=source))[SETTINGS_ENV])
    assert payload["ann"] is True  # each worker process rebuilds its ModelSource from this


def test_loading_the_index_library_leaves_pyarrows_error_messages_whole(tmp_path: Path) -> None:
    """usearch loaded before pyarrow cuts pyarrow's error messages short ("In CSV column #"), and embedrec reads
    them to name a bad file's line: in a fresh process, embedrec's way of loading usearch must leave them whole."""
    import subprocess
    import sys

    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating\n1,2,4\n1,3,abc\n")
    code = (
        "from pathlib import Path\n"
        "from embedrec import ann\n"
        "assert ann.available()\n"
        "from embedrec.data import PrepareConfig, prepare\n"
        f"prepare(Path({str(bad)!r}), out=Path({str(tmp_path / 'out')!r}), config=PrepareConfig(format='csv'))\n"
    )
    from cli import cli_env

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env())
    assert out.returncode != 0 and "line 3: column 'rating' has 'abc'" in out.stderr, out.stderr[-500:]
