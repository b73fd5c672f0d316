"""Rating and ranking metrics as pure numpy functions.

Synopsis::

    import numpy as np
    from embedrec.metrics import ItemSets, ranking_metrics, rmse, top_k

    rmse(np.array([4.0, 3.0]), np.array([3.5, 3.0]))              # 0.3535...
    scores = np.array([[0.9, 0.1, 0.5, 0.7]])
    seen = ItemSets.from_lists([[0]], n_items=4)                  # item 0 was rated in train
    topk = top_k(scores, 2, exclude=seen.mask(np.array([0])))     # [[3, 2]]
    relevant = ItemSets.from_lists([[2]], n_items=4)
    ranking_metrics(topk, relevant, ks=(2,))["ndcg@2"]            # 1 / log2(3) = 0.6309...

Definitions (one user; ``hits`` are the top-K positions holding a relevant item, ``R`` the relevant set):

- ``precision@K = |hits| / K`` (a short list still divides by K).
- ``recall@K = |hits| / |R|`` (not ``min(|R|, K)``: recall stays below 1 when ``|R| > K``, which is the usual
  definition and what published MovieLens tables report).
- ``ndcg@K``: binary gains, ``1 / log2(position + 1)`` discount with positions from 1; the ideal DCG puts
  ``min(|R|, K)`` relevant items first, so a perfect list scores 1.
- ``hr@K``: 1 if any hit, else 0.
- ``map@K``: sum over hit positions ``i`` of ``precision@i``, divided by ``min(|R|, K)``.
- ``coverage@K``: distinct items in any user's top-K divided by the catalogue size; a property of the whole list
  set, not a per-user mean.

The per-user metrics are means over users with at least one relevant item: a user with none has an undefined recall
and NDCG, and counting them as zero would punish a model for the split rather than its ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "hr", "map", "coverage")
"""Metric names in the order :func:`ranking_metrics` reports them, each keyed as ``f"{name}@{k}"``."""


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error, computed in float64 so that a million float32 ratings do not lose digits."""
    err = _errors(y_true, y_pred)
    return float(np.sqrt(np.mean(err * err)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error, in float64 like :func:`rmse`."""
    return float(np.mean(np.abs(_errors(y_true, y_pred))))


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot compute an error over zero ratings")
    return y_pred - y_true


@dataclass(frozen=True)
class ItemSets:
    """One set of item indices per row, stored as CSR (``indptr``, ``indices``), indices sorted and unique per row.

    This is the one representation of "which items belong to which user" used across evaluation: the train items
    to mask out of a ranking, the relevant test items to score it against, and the binary interaction matrix EASE
    is fitted on. CSR keeps 20M interactions in two flat arrays and lets a batch of rows become a dense mask with
    one fancy-indexed assignment.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr.size == 0 or self.indptr[0] != 0:
            raise ValueError("indptr must be a 1-D array starting at 0")
        if self.indptr[-1] != self.indices.size:
            raise ValueError(f"indptr ends at {self.indptr[-1]} but there are {self.indices.size} indices")

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, *, n_rows: int, n_items: int) -> ItemSets:
        """Group ``(row, item)`` pairs by row; duplicate pairs collapse to one, order of the input does not matter."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        items = np.asarray(items, dtype=np.int64).ravel()
        if rows.shape != items.shape:
            raise ValueError(f"{rows.size} rows but {items.size} items")
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise ValueError(f"row index out of range [0, {n_rows})")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"item index out of range [0, {n_items})")
        # sort, then drop repeats: numpy 2's np.unique is ~80x slower than np.sort on 2.5M int64 keys (5.8 s vs 0.07 s)
        keys = np.sort(rows * n_items + items)
        if keys.size > 1:
            keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        counts = np.bincount(keys // n_items, minlength=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr=indptr, indices=(keys % n_items).astype(np.int32), n_items=int(n_items))

    @classmethod
    def from_lists(cls, lists: Iterable[Sequence[int]], *, n_items: int) -> ItemSets:
        """Build from one list of item indices per row; meant for tests and small hand-made cases."""
        lists = [list(items) for items in lists]
        rows = np.repeat(np.arange(len(lists)), [len(items) for items in lists])
        items = np.fromiter((i for items in lists for i in items), dtype=np.int64, count=int(rows.size))
        return cls.from_pairs(rows, items, n_rows=len(lists), n_items=n_items)

    @property
    def n_rows(self) -> int:
        return int(self.indptr.size - 1)

    def lengths(self) -> np.ndarray:
        """Number of items in each row."""
        return np.diff(self.indptr)

    def take(self, rows: np.ndarray) -> ItemSets:
        """The sets of the given rows, in that order, as a new ``ItemSets``."""
        _, cols = self._gather(rows)
        lengths = self.lengths()[np.asarray(rows, dtype=np.int64)]
        indptr = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return ItemSets(indptr=indptr, indices=cols, n_items=self.n_items)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) of every member, row-major: what a dense mask would hold, without the dense matrix."""
        return np.repeat(np.arange(self.n_rows), self.lengths()), self.indices

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """A ``(len(rows), n_items)`` boolean matrix, True where the row's set holds the item."""
        flat_rows, cols = self._gather(rows)
        out = np.zeros((len(rows), self.n_items), dtype=bool)
        out[flat_rows, cols] = True
        return out

    def dense(self, rows: np.ndarray, *, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The binary interaction rows as a dense ``(len(rows), n_items)`` matrix of ``dtype``."""
        flat_rows, cols = self._gather(rows)
        out = np.zeros((len(rows), self.n_items), dtype=dtype)
        out[flat_rows, cols] = 1
        return out

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position within ``rows`` and item index of every member of the requested rows, without a Python loop."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        total = int(lengths.sum())
        flat_rows = np.repeat(np.arange(rows.size), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return flat_rows, self.indices[np.repeat(starts, lengths) + offsets]


def top_k(scores: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first, as an ``(n_rows, k)`` int32 matrix.

    ``exclude`` is a boolean matrix shaped like ``scores``; excluded items (a user's train ratings) are never
    returned. When a row has fewer than ``k`` eligible items the tail is padded with -1, which the ranking
    metrics treat as a miss: a user who has rated almost everything gets a short list, not seen items.
    ``argpartition`` finds the top ``k`` in linear time and only those ``k`` are sorted. Equal scores go to the
    lower index, at the cut and inside the list: exactly what a stable sort of the whole row lists, on every
    machine (``argpartition``'s own choice among equal scores depends on numpy's SIMD sort). NaN scores raise
    ``ValueError``: they mean the model is broken, and ranking them silently would hide that.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores = _checked_scores(scores)
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude has shape {exclude.shape} but scores have {scores.shape}")
        scores = np.where(exclude, -np.inf, scores)
    return _top_k_with_scores(scores, k)[0]


def top_k_of_sums(base: np.ndarray, offsets: Sequence[np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each offset, ``top_k(base + offset, k)`` (the sum stored in ``base``'s dtype) and the sums it lists
    (-inf where it lists -1), without forming any sum matrix: the same int32 matrices, entry for entry, ties
    included.

    ``base`` is ``(n_rows, n_items)``, each offset ``(n_items,)``: one per-item bias per ranking, such as training's
    blend choice, which ranks the watch logits of 2,000 users under 6 to 26 popularity biases and took most of
    its time in one full :func:`top_k` per bias (86,000 movies per user: add, NaN check, threshold, argpartition).

    Here the NaN check and a column maximum read ``base`` once for every offset. :func:`top_k` keeps a row's
    scores at or above a threshold read off a strided sample of the row; a column can hold such a score only if
    its maximum plus the offset reaches the lowest threshold of the rows (float rounding is monotonic, so this
    holds exactly), and at full scale most columns cannot (the larger the popularity weight, the fewer can).
    Only the columns that can are gathered (per block of :data:`_ROW_BLOCK` rows: one pass for every offset, then
    narrower copies) and compared, and the kept scores are selected exactly as :func:`top_k` selects them (the
    same packed matrix, hence the same ties). Offsets that are not finite, or not of ``base``'s dtype, and
    catalogues too narrow for :func:`top_k`'s sampled threshold, take :func:`top_k`'s own path.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    base = np.asarray(base)
    if base.ndim != 2:
        raise ValueError(f"scores must be 2-D (users, items), got shape {base.shape}")
    n_rows, n_items = base.shape
    offsets = [np.asarray(offset) for offset in offsets]
    for offset in offsets:
        if offset.shape != (n_items,):
            raise ValueError(f"an offset has shape {offset.shape}, expected ({n_items},)")
    kk = min(k, n_items)
    stride = _sample_stride(kk)
    floating = np.issubdtype(base.dtype, np.floating)

    def plain(offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = np.add(base, offset, out=np.empty_like(base)) if floating else base + offset
        return _top_k_with_scores(_checked_scores(sums), k)

    if not floating or n_rows == 0 or kk >= n_items or _too_narrow(n_items, kk, stride):
        return [plain(offset) for offset in offsets]
    sample_base = np.ascontiguousarray(base[:, ::stride])
    thresholds: dict[int, np.ndarray] = {}  # per offset of base's dtype and finite: each row's sampled threshold
    for i, offset in enumerate(offsets):
        if offset.dtype == base.dtype and np.isfinite(offset).all():
            thresholds[i] = _sample_threshold(sample_base + offset[::stride])
    found: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {i: [] for i in thresholds}
    for start in range(0, n_rows if thresholds else 0, _ROW_BLOCK):
        block = base[start : start + _ROW_BLOCK]
        cuts = {i: threshold[start : start + len(block)] for i, threshold in thresholds.items()}
        for i, (r, c, values) in _at_or_above(block, {i: offsets[i] for i in cuts}, cuts).items():
            found[i].append((r + start, c, values))
    out = []
    for i, offset in enumerate(offsets):
        if i not in thresholds:
            out.append(plain(offset))
            continue
        r, c, values = (np.concatenate(parts) for parts in zip(*found[i]))
        part, part_scores = _select_kept(
            r,
            c,
            values,
            np.isfinite(thresholds[i]),
            kk,
            lambda rows, offset=offset: np.add(base[rows], offset),  # type: ignore[misc]
        )
        out.append(_best_first(part, part_scores, k))
    return out


_ROW_BLOCK = 32
"""Rows :func:`top_k_of_sums` scans at a time: the columns a block of rows can reach are fewer than a whole
batch's (at full MovieLens scale, 15,000 of 86,000 for 32 users against 22,000 for 128), and its copies stay in
cache."""


def _at_or_above(
    block: np.ndarray, offsets: dict[int, np.ndarray], cuts: dict[int, np.ndarray]
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each offset, the (row, column, sum) of every sum ``block + offset`` at or above its row's cut (none in a
    row whose cut is not finite), row-major; ``ValueError`` if ``block`` holds a NaN.

    A column can hold such a sum only if its maximum plus the offset reaches the lowest finite cut (float rounding
    is monotonic, so this is exact); one gather copies the columns any offset can use, and each offset reads that
    copy (or a narrower copy of it)."""
    column_max = np.max(block, axis=0)
    if np.isnan(column_max).any():
        raise ValueError("scores contain NaN")
    reach = {}
    for i, offset in offsets.items():
        finite = np.isfinite(cuts[i])
        reach[i] = column_max + offset >= (cuts[i][finite].min() if finite.any() else np.inf)
    in_union = np.logical_or.reduce(list(reach.values()))
    union = np.flatnonzero(in_union)
    union_block = np.take(block, union, axis=1)
    union_at = np.cumsum(in_union) - 1  # column -> its column in union_block
    out = {}
    for i, offset in offsets.items():
        cols = np.flatnonzero(reach[i])
        if 2 * cols.size > union.size:  # most of the union: compare it all rather than copy again
            cols = union
            kept = union_block + offset[union]
        else:
            kept = np.take(union_block, union_at[cols], axis=1)
            kept += offset[cols]
        cut = np.where(np.isfinite(cuts[i]), cuts[i], np.nan)  # NaN: no sum is at or above it
        flat = np.flatnonzero(kept >= cut[:, None])
        r, at = np.divmod(flat, max(1, cols.size))
        out[i] = (r, cols[at], kept.ravel()[flat])
    return out


def _checked_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a 2-D float array; ``ValueError`` for another shape or a NaN."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users, items), got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if scores.size and np.isnan(np.max(scores)):  # max propagates NaN, and reads the matrix once without a mask
        raise ValueError("scores contain NaN")
    return scores


def _top_k_with_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of checked scores, with the scores it lists (-inf where it lists -1)."""
    n_rows, n_items = scores.shape
    kk = min(k, n_items)
    if kk >= n_items:
        return _best_first(np.broadcast_to(np.arange(n_items), (n_rows, n_items)), scores, k)
    if _too_narrow(n_items, kk, _sample_stride(kk)):
        return _top_k_narrow(scores, kk, k)
    return _best_first(*_largest_unsorted(scores, kk), k)


def _top_k_narrow(scores: np.ndarray, kk: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_top_k_with_scores` of rows too narrow for the sampled threshold (``kk < n_items``), found by value
    where that is the same thing.

    ``np.partition`` gives each row's ``kk``-th largest score three times faster than ``argpartition`` gives
    positions (float32, numpy 2's vectorised selection), and a row with exactly ``kk`` scores at or above it has
    one set of ``kk`` positions, whatever order they come in. Rows with a tie at the cut, or with -inf listed,
    take :func:`_top_positions`. Training's blend choice ranks 500 candidates per user under 5 betas for each of
    6 to 26 sides this way."""
    n_rows, n_items = scores.shape
    kth = np.partition(scores, n_items - kk, axis=1)[:, n_items - kk]
    at_least = scores >= kth[:, None]
    clean = (np.count_nonzero(at_least, axis=1) == kk) & (kth > -np.inf)
    rows = np.flatnonzero(clean)
    out = np.full((n_rows, k), -1, dtype=np.int32)
    listed = np.full((n_rows, k), -np.inf, dtype=scores.dtype)
    if rows.size:
        part = np.nonzero(at_least[rows])[1].reshape(rows.size, kk)
        out[rows], listed[rows] = _best_first(part, _take_in_rows(scores[rows], part), k)
    redo = np.flatnonzero(~clean)
    if redo.size:
        part = _top_positions(scores[redo], kk)
        out[redo], listed[redo] = _best_first(part, _take_in_rows(scores[redo], part), k)
    return out, listed


def _top_positions(scores: np.ndarray, kk: int) -> np.ndarray:
    """Positions of each row's ``kk`` largest scores (``kk < n_items``), unordered; where the ``kk``-th score is
    tied, the lowest positions among the tied, as a stable sort of the row takes them.

    ``argpartition`` decides ties by its own order, which depends on the machine (numpy's SIMD sorts differ by
    CPU): a test that passed on one machine listed two equal float32 scores the other way round on another.
    Rows with more than ``kk`` scores at or above the cut (rare with real-valued scores) are sorted whole."""
    n_items = scores.shape[1]
    part = np.argpartition(scores, n_items - kk, axis=1)[:, n_items - kk :]
    kth = _take_in_rows(scores, part[:, :1])  # argpartition leaves the kk-th largest at the cut
    tied = np.flatnonzero((kth[:, 0] > -np.inf) & (np.count_nonzero(scores >= kth, axis=1) > kk))
    if tied.size:
        part[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :kk]
    return part


def _best_first(part: np.ndarray, part_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k`'s result from each row's largest ``kk`` items (any order) and their scores: sorted best
    first (equal scores by item index), -inf entries and the tail past ``kk`` as -1; and the sorted scores (-inf
    where -1)."""
    n_rows, kk = part.shape
    items, scores = _sorted_best_first(part, part_scores)
    out = np.full((n_rows, k), -1, dtype=np.int32)
    listed = np.full((n_rows, k), -np.inf, dtype=part_scores.dtype)
    listed[:, :kk] = scores
    out[:, :kk] = items
    out[listed == -np.inf] = -1
    return out, listed


def _sorted_best_first(items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``items`` and ``scores`` (2-D, NaN-free; items non-negative, below 2**31) sorted by descending
    score, equal scores by ascending item. For float32, one plain sort of int64 keys, the score's order in the high
    half and the item in the low half, read back from the sorted keys (under half the time of numpy's stable float
    sort on (128, 500), six times per batch of training's blend choice); other dtypes take ``np.lexsort``."""
    items = np.asarray(items)
    if scores.dtype != np.float32 or scores.ndim != 2 or scores.shape[1] == 0:
        order = np.lexsort((items, -scores), axis=-1)
        return _take_in_rows(items, order), _take_in_rows(scores, order)
    bits = (scores + np.float32(0.0)).view(np.int32).astype(np.int64)  # + 0: -0.0 ties with 0.0, as in a sort
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # orders like the float, as a signed integer (an involution)
    keys = (~ascending << 32) | items.astype(np.int64)  # descending score, then item
    keys.sort(axis=1)
    ascending = ~(keys >> 32)
    bits = ascending ^ ((ascending >> 31) & 0x7FFFFFFF)
    return keys & 0xFFFFFFFF, bits.astype(np.int32).view(np.float32)


def _take_in_rows(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(values, positions, axis=1)`` for 2-D arrays: one flat ``np.take`` where ``values`` is
    contiguous, 2.5x faster on (128, 500), which top_k's callers here index thousands of times per blend choice."""
    if not values.flags.c_contiguous or values.shape[1] == 0:
        return np.take_along_axis(values, positions, axis=1)
    return np.take(values.reshape(-1), positions + np.arange(0, values.size, values.shape[1])[:, None])


_SAMPLE_RANK = 48
"""The rank within the sample that sets the threshold: enough sampled values above it that the count of scores
above it in the whole row varies by ~15%, so it is rarely short of ``k``."""


def _sample_stride(kk: int) -> int:
    """Every how many scores :func:`_largest_unsorted` samples: about 3 x ``kk`` of a row, and at least ~400, lie
    at or above the sample's threshold (small k: every 8th score, cheap to pack)."""
    return max(8, (3 * kk) // _SAMPLE_RANK)


def _too_narrow(n_items: int, kk: int, stride: int) -> bool:
    """Whether a row is too narrow for the sampled threshold to save anything over a plain selection."""
    return n_items < 8 * _SAMPLE_RANK * stride or n_items < 12 * kk


def _sample_threshold(sample: np.ndarray) -> np.ndarray:
    """Each row's ``_SAMPLE_RANK``-th largest sampled score."""
    j = min(_SAMPLE_RANK, sample.shape[1])
    return np.partition(sample, sample.shape[1] - j, axis=1)[:, sample.shape[1] - j]


def _largest_unsorted(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``kk`` largest scores of each row (unordered), ``kk < n_items``: the set
    ``argpartition(scores, n - kk)[:, n - kk:]`` gives, found faster in a wide row; and their scores.

    A full ``argpartition`` over 86,000 movies per user dominated two-stage ranking at full MovieLens scale. Instead,
    a threshold per row is read off a strided sample of the row (its ``_SAMPLE_RANK``-th largest value, the stride
    chosen so that about 3 x ``kk`` scores of the row, and at least ~400, lie at or above it), the scores at or above
    it are packed into a narrow matrix, and ``argpartition`` runs over that. Every score above the threshold is kept,
    so when a row has at least ``kk`` of them its top ``kk`` is exactly the row's (ties at the ``kk``-th score to the
    lowest columns, as the packed row keeps column order); the rare row with fewer (or with a non-finite
    threshold: a row of mostly excluded items) goes through :func:`_top_positions` whole.
    """
    n_rows, n_items = scores.shape
    stride = _sample_stride(kk)
    threshold = _sample_threshold(np.ascontiguousarray(scores[:, ::stride]))
    flat = np.flatnonzero(scores >= threshold[:, None])  # ~3 x kk per row; 2-D nonzero is 5x slower
    r, c = np.divmod(flat, n_items)
    return _select_kept(r, c, np.take(scores, flat), np.isfinite(threshold), kk, lambda rows: scores[rows])


def _select_kept(
    r: np.ndarray,
    c: np.ndarray,
    values: np.ndarray,
    finite: np.ndarray,
    kk: int,
    full_rows: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kk`` largest positions of each row (unordered) and their scores, from the scores kept at or above its
    sampled threshold: (row, column, score) in row-major order, each row's kept scores complete. Rows with at
    least ``kk`` kept and a finite threshold are packed (-inf padding) and partitioned; the others
    (``full_rows(rows)``: their whole score rows) are partitioned whole."""
    n_rows = finite.size
    counts = np.bincount(r, minlength=n_rows)
    fast = (counts >= kk) & finite
    out = np.empty((n_rows, kk), dtype=np.intp)
    out_scores = np.empty((n_rows, kk), dtype=values.dtype)
    slow = np.flatnonzero(~fast)
    if slow.size:
        rows_scores = full_rows(slow)
        out[slow] = _top_positions(rows_scores, kk)
        out_scores[slow] = _take_in_rows(rows_scores, out[slow])
        keep = fast[r]
        r, c, values = r[keep], c[keep], values[keep]
    rows = np.flatnonzero(fast)
    if rows.size:
        n = counts[rows]
        width = int(n.max())
        # flat positions throughout: 1-D fancy indexing is several times faster than (row, column) pairs; the
        # i-th kept score, the j-th of packed row p, goes to p * width + j = i + (p * width - kept before the row)
        shift = np.zeros(n_rows, dtype=np.intp)
        shift[rows] = np.arange(rows.size) * width - (np.cumsum(n) - n)
        dest = np.arange(r.size) + shift[r]
        packed = np.full(rows.size * width, -np.inf, dtype=values.dtype)
        packed[dest] = values
        cols = np.zeros(rows.size * width, dtype=np.intp)
        cols[dest] = c
        packed = packed.reshape(rows.size, width)
        chosen = _top_positions(packed, kk)
        out[rows] = _take_in_rows(cols.reshape(rows.size, width), chosen)
        out_scores[rows] = _take_in_rows(packed, chosen)
    return out, out_scores


def ndcg_per_user(topk: np.ndarray, relevant: ItemSets, *, k: int) -> np.ndarray:
    """NDCG@``k`` of each user with a relevant item, in row order (float64): the values whose mean is
    :func:`ranking_metrics`' ``ndcg@k``, for paired comparisons of two rankings of the same users."""
    topk = _check_topk(topk, relevant)
    hits, n_rel, _ = _hits(topk, relevant, _check_ks([k], max_k=topk.shape[1]))
    return _ndcg_rows(hits[:, :k], n_rel, k)


def _check_topk(topk: np.ndarray, relevant: ItemSets) -> np.ndarray:
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[0] != relevant.n_rows:
        raise ValueError(f"topk has shape {topk.shape} but there are {relevant.n_rows} relevant sets")
    return topk


def _hits(topk: np.ndarray, relevant: ItemSets, ks: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits (n, max(ks)) bool, relevant counts (n,) float64, the top lists (n, max(ks)) int64) of the n users
    with a relevant item."""
    n_rel_all = relevant.lengths()
    users = np.flatnonzero(n_rel_all > 0)
    if users.size == 0:
        raise ValueError("no user has a relevant item; ranking metrics are undefined")
    topk = topk[users, : max(ks)].astype(np.int64)
    relevant = relevant.take(users)
    n_rel = n_rel_all[users].astype(np.float64)
    n_items = relevant.n_items
    rel_keys = np.repeat(np.arange(users.size, dtype=np.int64), relevant.lengths()) * n_items + relevant.indices
    cand_keys = np.arange(users.size, dtype=np.int64)[:, None] * n_items + topk
    pos = np.minimum(np.searchsorted(rel_keys, cand_keys), rel_keys.size - 1)
    return (rel_keys[pos] == cand_keys) & (topk >= 0), n_rel, topk


def _ndcg_rows(h: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.minimum(n_rel, k).astype(np.int64)
    return np.asarray((h @ discount) / np.cumsum(discount)[ideal - 1], dtype=np.float64)


def ranking_metrics(topk: np.ndarray, relevant: ItemSets, *, ks: Sequence[int]) -> dict[str, float]:
    """Precision, recall, NDCG, HR, MAP and coverage at each ``k`` in ``ks`` (see the module docstring).

    ``topk`` is an ``(n_users, K)`` matrix of item indices, best first (-1 pads a short list), with
    ``K >= max(ks)``; row ``u`` is scored against ``relevant`` row ``u``. Users whose relevant set is empty are
    skipped, for the metrics and for coverage alike. Keys are ``f"{name}@{k}"`` for the names in
    :data:`RANKING_METRICS`, e.g. ``"ndcg@10"``. Everything is vectorised over users: membership of every
    ``(user, item)`` in the relevant sets is one ``searchsorted`` over sorted ``user * n_items + item`` keys.
    """
    topk = _check_topk(topk, relevant)
    ks = _check_ks(ks, max_k=topk.shape[1])
    hits, n_rel, topk = _hits(topk, relevant, ks)
    n_items = relevant.n_items
    cum_hits = np.cumsum(hits, axis=1)
    precision_at_i = cum_hits / np.arange(1, max(ks) + 1)
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = cum_hits[:, k - 1]
        ideal = np.minimum(n_rel, k).astype(np.int64)
        shown = topk[:, :k]
        out[f"precision@{k}"] = float(np.mean(n_hits / k))
        out[f"recall@{k}"] = float(np.mean(n_hits / n_rel))
        out[f"ndcg@{k}"] = float(np.mean(_ndcg_rows(h, n_rel, k)))
        out[f"hr@{k}"] = float(np.mean(n_hits > 0))
        out[f"map@{k}"] = float(np.mean((precision_at_i[:, :k] * h).sum(axis=1) / ideal))
        listed = np.zeros(n_items, dtype=bool)  # a flag per item: np.unique over 2.5M entries took seconds
        listed[shown[shown >= 0]] = True
        out[f"coverage@{k}"] = float(np.count_nonzero(listed) / n_items)
    return out


def _check_ks(ks: Sequence[int], *, max_k: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty")
    if min(ks) < 1:
        raise ValueError(f"every k must be at least 1, got {ks}")
    if max(ks) > max_k:
        raise ValueError(f"k={max(ks)} is larger than the {max_k} ranked items given")
    return sorted(set(ks))
