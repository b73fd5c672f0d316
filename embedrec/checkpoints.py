"""Checkpoints of a training run: the folder format (crash-safe) and the train state they hold.

Synopsis::

    ckpt = CheckpointDir(run_dir / "checkpoints")
    ckpt.save(checkpoint_arrays(state, best_weights), {"epoch": 3, "step": 120, ...})
    arrays, meta = ckpt.load()                                   # None when there is no complete checkpoint
    state = restore_tree(state, arrays, "state")                  # into a template of the right shapes

A checkpoint is ``arrays.safetensors`` (the train state under ``state…`` keys, the best epoch's weights under
``best…``) plus ``meta.json`` (position, history, early-stopping record, data fingerprint). Files are written with
:mod:`embedrec.artifacts`' atomic writers; nothing here is pickled.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedrec import artifacts
from embedrec.errors import ArtifactError
from embedrec.tempfiles import name_target
from embedrec.workdir import atomic_write_text

STATE_PREFIX, BEST_PREFIX = "state", "best"


class Checkpointer(Protocol):
    """Where the training loop's checkpoints go (:class:`CheckpointDir` on disk)."""

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None: ...
    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None: ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointDir:
    """Per-epoch checkpoints that survive a crash mid-save.

    Each save writes ``checkpoints/.tmp-*/`` completely (arrays, then meta.json, each fsynced), renames it to
    ``epoch-NNNN-sSSSSS``, and only then points ``LATEST`` at it (atomic replace). A kill at any moment leaves either
    the previous LATEST or the new one, both complete. :meth:`load` falls back to the newest complete folder when
    LATEST is missing or names a damaged one. The two newest checkpoints are kept.
    """

    def __init__(self, root: Path, keep: int = 2, *, required: dict[str, tuple[type, ...]] | None = None) -> None:
        self.root = root
        self.keep = keep
        self.required = required or {}  # meta keys (and types) a checkpoint must have to be loaded

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{int(meta['epoch']):04d}-s{int(meta['step']):06d}"
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            tmp.mkdir()
            artifacts.save_arrays(tmp / "arrays.safetensors", arrays)
            artifacts.write_json(
                tmp / "meta.json", {"schema_version": artifacts.SCHEMA_VERSION, "complete": True, **meta}
            )
            _fsync_dir(tmp)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            name_target(exc, tmp, self.root)
            raise
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        atomic_write_text(self.root / "LATEST", name + "\n")
        self._prune(keep_name=name)

    def _complete(self) -> list[Path]:
        found = [
            p for p in self.root.glob("epoch-*") if (p / "meta.json").is_file() and (p / "arrays.safetensors").is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def _prune(self, keep_name: str) -> None:
        for p in self._complete()[: -self.keep]:
            if p.name != keep_name:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The newest complete checkpoint as (arrays, meta), or None when there is none."""
        if not self.root.is_dir():
            return None
        candidates = list(reversed(self._complete()))
        marker = self.root / "LATEST"
        if marker.is_file():
            named = self.root / marker.read_text(encoding="utf-8").strip()
            if named in candidates:
                candidates.remove(named)
                candidates.insert(0, named)
        for folder in candidates:
            try:
                meta = artifacts.read_json(folder / "meta.json")
                if not checkpoint_meta_ok(meta, self.required):
                    continue
                if "best_rmse" in meta and meta["best_rmse"] is None:  # strict JSON stored the initial inf as null
                    meta = {**meta, "best_rmse": math.inf}
                return artifacts.load_arrays(folder / "arrays.safetensors"), meta
            except ArtifactError:
                continue
        return None


class ReadOnlyCheckpoints:
    """A checkpoint folder read (to resume) but never written: every process of a distributed run but process 0,
    which alone writes the run folder."""

    def __init__(self, inner: Checkpointer) -> None:
        self.inner = inner

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        return None

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        return self.inner.load()


class BackgroundSaves:
    """A checkpointer whose saves are written by a background thread while training goes on.

    :meth:`save` copies the arrays into host memory first (the device buffers are reused by the next steps), so a
    checkpoint holds the state of the call; writing the copy (hundreds of MB at full MovieLens scale, fsynced) then
    overlaps the next epoch. Saves are written one at a time, in order; a save first waits for the previous one, so
    at most one copy is held. An error of a save (a full disk, a permission) is raised by the next :meth:`save` or
    by :meth:`wait`, which the training loop calls before it returns: its last checkpoint is on disk by then. The
    crash safety is :class:`CheckpointDir`'s: a kill mid-write leaves the previous checkpoint.
    """

    def __init__(self, inner: Checkpointer) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self.inner = inner
        self._writes = not isinstance(inner, ReadOnlyCheckpoints)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="embedrec-checkpoint")
        self._pending: Future[None] | None = None

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if not self._writes:
            return
        self.wait()
        copied = {name: np.array(value, copy=True) for name, value in arrays.items()}
        self._pending = self._thread.submit(self.inner.save, copied, meta)

    def wait(self) -> None:
        """Return once every save is written; raise the error of one that failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        self.wait()
        return self.inner.load()

    def close(self) -> None:
        """:meth:`wait`, then stop the thread."""
        try:
            self.wait()
        finally:
            self._thread.shutdown(wait=True)


# what resuming a training run reads from a checkpoint's meta.json (train.py writes these). train.py also writes
# best_ndcg, kept_ndcg and kept_rmse (epoch selection with rmse_slack); they are optional, so a checkpoint written
# before them still resumes (missing or null reads as the initial -inf / inf)
RESUME_KEYS: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "step": (int,),
    "history": (list,),
    "best_rmse": (int, float, type(None)),
    "best_epoch": (int,),
    "bad_epochs": (int,),
    "fingerprint": (str,),
}


def checkpoint_meta_ok(meta: Any, required: dict[str, tuple[type, ...]]) -> bool:
    """A checkpoint's meta.json is complete and has every ``required`` key with its type (else the folder is
    skipped like a damaged one, and an older complete checkpoint is used)."""
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        return False
    for key, types in required.items():
        value = meta.get(key)
        if key not in meta or isinstance(value, bool) or not isinstance(value, types):
            return False
        if isinstance(value, int) and value < 0:
            return False
    history = meta.get("history", [])
    return not isinstance(history, list) or all(isinstance(h, dict) for h in history)


def flatten_tree(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """A pytree's leaves as numpy arrays keyed by ``prefix`` + their path (``state['head']...``)."""
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def restore_tree(template: Any, arrays: Mapping[str, np.ndarray], prefix: str, *, on_device: bool = True) -> Any:
    """The pytree ``template`` with its leaves read from ``arrays`` (written by :func:`flatten_tree`): JAX arrays, or
    with ``on_device=False`` host arrays of the template's dtypes (for a caller that works on the host next).

    Raises ArtifactError naming the key when an entry is missing or has another shape (other model or data).
    """
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        key = prefix + jax.tree_util.keystr(path)
        if key not in arrays:
            raise ArtifactError(f"checkpoint is missing {key}: it was written by a different model; retrain")
        value = arrays[key]
        if value.size == 1 and np.ndim(leaf) == 0:  # safetensors stores scalars as shape (1,)
            value = value.reshape(())
        if tuple(value.shape) != tuple(np.shape(leaf)):
            raise ArtifactError(
                f"checkpoint entry {key} has shape {value.shape}, the model needs {np.shape(leaf)}:"
                " the data or settings changed since it was written; retrain or pass the same --data"
            )
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out.append(jnp.asarray(value, dtype=dtype) if on_device else np.asarray(value, dtype=dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def checkpoint_arrays(state: Any, best_weights: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """What a checkpoint stores: the whole train state, and the best epoch's weights when there are any."""
    arrays = flatten_tree(state, STATE_PREFIX)
    if best_weights is not None:
        arrays.update({BEST_PREFIX + k: v for k, v in best_weights.items()})
    return arrays


def best_weights_of(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The best epoch's weights in a checkpoint (as :func:`flatten_tree` of them with no prefix), or None."""
    best = {k[len(BEST_PREFIX) :]: v for k, v in arrays.items() if k.startswith(BEST_PREFIX)}
    return best or None
