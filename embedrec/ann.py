"""An approximate first stage for catalogues of millions: the watch output's retrieval through an HNSW index.

The two-stage ranking (:meth:`embedrec.scoring.Scorer.rank`) retrieves each user's candidates by the watch side
``u . (m + genres) + side_m`` (the watch bias, plus gamma x the popularity prior when the ranking adds it), exactly,
as one matrix product over every movie. That is cheap at MovieLens's 86,000 movies; at millions of items it is
the whole cost. :class:`WatchIndex` answers the same question from a `usearch <https://github.com/unum-cloud/usearch>`_
HNSW graph (the optional extra ``pip install 'embedrec[ann]'``), and the network then re-ranks the candidates as
before, so only the retrieval is approximate.

Maximum inner product is turned into nearest neighbours by the standard augmentation (Bachrach et al., 2014): an
item ``x = [m + genres, side]`` becomes ``[x, sqrt(M^2 - |x|^2)]`` with ``M`` the largest ``|x|``, a query
``[u, 1, 0]``, so that the squared distance is ``|u|^2 + 1 + M^2 - 2 (u . x)``: the nearest items are the ones with
the largest watch-side score. The scores handed on are recomputed exactly for the items found. Seen movies cannot be
excluded inside the graph, so each user asks for ``n`` plus the number of movies they have seen, and those are
dropped afterwards. The graph is built single-threaded in a fixed order, so the same model gives the same index
and the same answers. numpy and usearch only: no JAX here.

Building the graph takes about 20 s per 100,000 movies on one core, so an index of the whole catalogue is kept in a
cache folder (the model folder's ``ann/``): a file named by a digest of the vectors it was built from and its
settings (and usearch's version), written atomically (a temporary name, then a rename, so two commands building it
at once each leave a whole file), memory-mapped by the next command. A damaged or unreadable file is rebuilt; a
folder that cannot be written to only means the index is built again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.errors import ConfigError

if TYPE_CHECKING:
    from embedrec.metrics import ItemSets

CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 128
"""HNSW settings: edges per node, the beam width while building and while searching (at least the count asked for:
usearch widens it to ``count``). Measured by ``benchmarks/ann.py``; see the README."""

EXTRA_HINT = "pip install 'embedrec[ann]'"


def _index_class() -> Any:
    # pyarrow first: usearch's compiled module, loaded before pyarrow's libraries, binds symbols that pyarrow's C++
    # then resolves to it, and pyarrow's error messages come out cut ("In CSV column #" and nothing after it), which
    # embedrec reads to name a bad file's line; loaded after pyarrow, both are whole (tests/test_ann.py checks)
    import pyarrow  # noqa: F401

    try:
        from usearch.index import Index
    except ImportError:
        raise ConfigError(f"--ann needs the optional usearch library: {EXTRA_HINT}") from None
    return Index


def require() -> None:
    """Refuse, with the one-line ConfigError that says how to install it, when the optional extra (usearch) is
    missing: what ``--ann`` checks before it loads a model."""
    _index_class()


def available() -> bool:
    """Whether the optional extra (usearch) is installed."""
    try:
        require()
    except ConfigError:
        return False
    return True


def _digest(vectors: np.ndarray, settings: dict[str, Any]) -> str:
    """A name for an index file: what its graph was built from, and how."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"shape": list(vectors.shape), **settings}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return h.hexdigest()


def _restore(path: Path, index_class: Any, *, size: int, ndim: int) -> Any:
    """The index saved at ``path``, memory-mapped; None when there is none or it is not a whole one of this shape."""
    if not path.is_file():
        return None
    try:
        index = index_class.restore(str(path), view=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if index is None or len(index) != size or index.ndim != ndim:
        return None
    return index


def _save(index: Any, path: Path) -> bool:
    """Write ``index`` to ``path`` atomically; False (and nothing left behind) when the folder refuses."""
    from embedrec.tempfiles import removed_on_failure, sweep_stale, temp_sibling

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path.parent, path.name)  # what a killed writer left
        tmp = temp_sibling(path)
        with removed_on_failure(tmp):
            index.save(str(tmp))
            os.replace(tmp, path)
    except (OSError, RuntimeError):
        return False
    return True


class WatchIndex:
    """An HNSW index over one pool of movies under one watch side; :meth:`search` gives each user row's best
    unseen movies by ``emb . item + side``, approximately, with their exact scores."""

    def __init__(
        self,
        item: np.ndarray,
        side: np.ndarray,
        *,
        connectivity: int = CONNECTIVITY,
        expansion_add: int = EXPANSION_ADD,
        expansion_search: int = EXPANSION_SEARCH,
        cache: Path | None = None,
    ) -> None:
        """``item``: (n, d) the pool's watch vectors (movie + pooled genres); ``side``: (n,) their watch-side bias;
        ``cache``: a folder where the graph is looked for first and kept once built (None: built, not kept).
        ``source`` says which it was: "built", "built and cached", or "cached"."""
        index_class = _index_class()
        item = np.ascontiguousarray(item, dtype=np.float32)
        side = np.asarray(side, dtype=np.float32).reshape(-1)
        if item.ndim != 2 or side.shape != (len(item),):
            raise ValueError(f"item must be (n, d) and side (n,), got {item.shape} and {side.shape}")
        self.item, self.side = item, side
        self.size, d = item.shape
        x = np.concatenate([item, side[:, None]], axis=1)
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        lift = np.sqrt(np.maximum(sq.max(initial=0.0) - sq, 0.0)).astype(np.float32)
        vectors = np.ascontiguousarray(np.concatenate([x, lift[:, None]], axis=1))
        # one search at a time: a one-thread search uses the index's first search context, which two calls from
        # two threads (Scorer.rank's workers, the service's requests) would share
        self._search_lock = threading.Lock()
        import usearch

        settings = {"connectivity": connectivity, "expansion_add": expansion_add, "usearch": usearch.__version__}
        path = None if cache is None or not self.size else cache / f"watch-{_digest(vectors, settings)}.usearch"
        self.source = "built"
        cached = None if path is None else _restore(path, index_class, size=self.size, ndim=d + 2)
        if cached is not None:
            cached.expansion_search = expansion_search
            self.index, self.source = cached, "cached"
            return
        self.index = index_class(
            ndim=d + 2,
            metric="l2sq",
            dtype="f32",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        if self.size:
            # one thread, in key order: the same graph every time (several threads insert in a racing order)
            self.index.add(np.arange(self.size, dtype=np.uint64), vectors, threads=1)
        if path is not None and _save(self.index, path):
            self.source = "built and cached"

    def search(
        self, emb: np.ndarray, n: int, *, seen: ItemSets | None = None, position: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pool positions (B, n), -1 padding; their exact scores ``emb . item + side``, -inf at -1), best first.

        ``seen``: row i's seen movies (movie indices), left out; ``position`` maps a movie index to its pool
        position (-1: not in the pool), the identity when None."""
        emb = np.atleast_2d(np.asarray(emb, dtype=np.float32))
        b = len(emb)
        first = np.full((b, n), -1, np.int64)
        watch = np.full((b, n), -np.inf, np.float32)
        if b == 0 or self.size == 0 or n < 1:
            return first, watch
        seen_rows: list[np.ndarray] = [np.zeros(0, np.int64)] * b
        if seen is not None:
            for i in range(b):
                movies = seen.indices[seen.indptr[i] : seen.indptr[i + 1]].astype(np.int64)
                pos = movies if position is None else position[movies]
                seen_rows[i] = pos[pos >= 0]
        want = min(self.size, n + max((len(s) for s in seen_rows), default=0))
        query = np.zeros((b, emb.shape[1] + 2), np.float32)
        query[:, : emb.shape[1]] = emb
        query[:, emb.shape[1]] = 1.0
        with self._search_lock:
            found = self.index.search(query, want, exact=False, threads=1)
        keys = np.asarray(found.keys).reshape(b, -1)
        # one query row comes back as a single Matches (its keys all valid), several as BatchMatches with counts
        counts = np.asarray(found.counts).reshape(b) if hasattr(found, "counts") else np.array([keys.shape[1]])
        for i in range(b):
            got = keys[i, : counts[i]].astype(np.int64)
            if len(seen_rows[i]):
                got = got[~np.isin(got, seen_rows[i])]
            if not len(got):
                continue
            scores = self.item[got] @ emb[i] + self.side[got]
            order = np.argsort(-scores, kind="stable")[:n]
            first[i, : len(order)] = got[order]
            watch[i, : len(order)] = scores[order]
        return first, watch
