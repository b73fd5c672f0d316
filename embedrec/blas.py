"""BLAS thread control for the numpy serving path: one BLAS thread per worker, and the worker count.

Synopsis::

    from embedrec.blas import single_threaded_blas, available_cpus
    with single_threaded_blas():
        scores = scorer.score_users(users, workers=available_cpus())

The scorer's matrix products are small ((movies, 64) x (64, 16)); OpenBLAS's own threads cost more than they save
there (measured 6x slower on 2 busy cores), so serving runs one BLAS thread and parallelises over users instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@functools.cache
def _openblas_thread_fns() -> tuple[Any, Any] | None:
    """numpy's bundled OpenBLAS get/set-threads functions, or None when numpy uses another BLAS; looked up once
    (the file search and library load cost ~0.5 ms, more than a served request's whole ranking)."""
    libs_dir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libs_dir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (
            ("scipy_openblas", "64_"),
            ("scipy_openblas", ""),
            ("openblas", "64_"),
            ("openblas", ""),
        ):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with one BLAS thread, restoring the previous count after (a no-op with another BLAS)."""
    fns = _openblas_thread_fns()
    if fns is None:
        yield
        return
    get, set_ = fns
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)


def each_in_threads(fn: Callable[[T], None], items: Sequence[T], workers: int) -> None:
    """``fn(item)`` for every item, in up to ``workers`` threads with one BLAS thread each (numpy releases the GIL in
    its large operations); in this thread, BLAS as it is, when one thread is all there is to use."""
    threads = min(workers, len(items))
    if threads <= 1:
        for item in items:
            fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))


def set_blas_threads(n: int) -> None:
    """Give OpenBLAS ``n`` threads for the whole process from now on (a no-op with another BLAS).

    A server that answers requests in parallel wants 1: every BLAS call of a request is small, and with OpenBLAS's
    own threads one user's (64 x 25,448) retrieval product took 3x longer on 2 busy cores (measured). The calls
    outside :func:`single_threaded_blas` (similar movies, predict) are covered too.
    """
    fns = _openblas_thread_fns()
    if fns is not None:
        fns[1](max(1, int(n)))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
