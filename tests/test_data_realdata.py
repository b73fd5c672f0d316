"""Real MovieLens-100K (from the RecBole wheel): the counts everyone knows, and the ml-100k layout reads the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.data import PrepareConfig, load_prepared, prepare

pytestmark = pytest.mark.realdata


def test_ml100k_counts(ml100k_prepared: Path) -> None:
    d = load_prepared(ml100k_prepared)
    s = d.summary
    assert (s["format"], s["source"]) == ("recbole", "ml-100k")
    assert (s["n_ratings"], s["n_users"], s["n_movies"]) == (100_000, 943, 1_682)
    assert (s["rating_min"], s["rating_max"]) == (1.0, 5.0)
    assert abs(s["rating_mean"] - 3.52986) < 1e-4
    assert (s["n_train"], s["n_val"], s["n_test"]) == (70_000, 10_000, 20_000)
    assert sum(s["dropped"].values()) == 0
    assert s["n_genres"] == 18  # the 19 ml-100k flags less "unknown"
    assert np.bincount(d.user_idx).min() >= 20  # every ml-100k user rated at least 20 movies
    assert d.movies["title"].iloc[d.movie_vocab.index(50)] == "Star Wars"
    assert int(d.movies["year"].iloc[d.movie_vocab.index(50)]) == 1977


def test_ml100k_written_as_u_data_reads_identically(ml100k_dir: Path, ml100k_prepared: Path, tmp_path: Path) -> None:
    """Rewrite the RecBole files in the original u.data / u.item layout: same encoded data, same fingerprint."""
    from embedrec.data.layouts import ML100K_GENRES

    src = tmp_path / "ml-100k"
    src.mkdir()
    inter = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    (src / "u.data").write_text("".join(line + "\n" for line in inter))
    lines = []
    for row in (ml100k_dir / "ml-100k.item").read_text().splitlines()[1:]:
        mid, title, year, cls = row.split("\t")
        genres = cls.split(" ")
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        title = f"{title} ({year})" if year.isdigit() else title
        lines.append(f"{mid}|{title}|||url|{flags}\n")
    (src / "u.item").write_bytes("".join(lines).encode("latin-1"))
    s = prepare(src, out=tmp_path / "out", config=PrepareConfig(seed=42))
    assert s["format"] == "ml-100k"
    assert s["fingerprint"] == load_prepared(ml100k_prepared).fingerprint
