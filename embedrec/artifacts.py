"""The only code that reads or writes model folders (training runs); checkpoints are :mod:`embedrec.checkpoints`.

A run folder::

    model.json            schema_version, model/train configs, data shape, data fingerprint, metrics, scoring choice
    weights.safetensors   tables and dense layers by name (see WEIGHT NAMES), plus the per-movie genre inputs
    users.parquet         user_idx -> raw user_id   (copied from the prepared data: the model's vocabulary)
    movies.parquet        movie_idx -> raw movie_id, title, year, genres, ...
    vocab.json            genre vocabularies
    history.json          one record per epoch
    learning_curve.png    train / val curves
    checkpoints/          see embedrec.checkpoints

Weight names: ``user_embedding``, ``movie_embedding``, ``genre_embedding``, optional ``user_bias``, ``movie_bias``,
``watch_bias`` (each (n, 1)), ``head.layers.{i}.kernel`` / ``.bias`` for the hidden Dense layers, ``head.out.kernel``
/ ``head.out.bias``, and the inputs ``genre_idx`` (n_movies, G) int32 and ``genre_w`` (n_movies, G) float32;
optionally ``popularity_prior`` (n_movies, 1), the per-movie term of the ranking score (schema 2; see
:mod:`embedrec.scoring`), and ``movie_train_count`` (n_movies, 1), each movie's number of training ratings (a
movie without any has an embedding that was never trained: ``similar`` neither answers for it nor lists it; folders
written before it existed load without it, and readers that predate it ignore it).

Schema versions: 2 adds the popularity prior (``"gamma"`` in ``model.json``'s ``"ranking"`` and the
``popularity_prior`` weight). Folders of schema 1 still load (gamma 0, no prior); a reader of schema 1 refuses a
schema 2 folder instead of ranking it without its prior.

Loading needs only numpy and pyarrow: :func:`load_model` never imports JAX or pandas, memory-maps the weights
(:func:`map_arrays`) and keeps the movie table as Arrow, so the recommender's fast path starts quickly. No pickle
anywhere: JSON, safetensors and Parquet only.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedrec.config import (
    DataShape,
    ModelConfig,
    TrainConfig,
    data_shape_from_dict,
    model_config_from_dict,
    to_dict,
    train_config_from_dict,
)
from embedrec.errors import ArtifactError, ConfigError
from embedrec.tempfiles import removed_on_failure, sweep_stale, temp_sibling
from embedrec.workdir import LATEST_FILE, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from embedrec.history import UserHistories

SCHEMA_VERSION = 3
# schema 1: no popularity prior in the ranking; 2: no user_history (model) / history_samples (train) settings, and
# so never the history_embedding / user_history_vector weights (they load with user_history off)
READABLE_SCHEMAS = (1, 2, 3)
OPTIONAL_WEIGHTS = ("popularity_prior", "movie_train_count")
MODEL_KIND = "embedrec-model"
VOCAB_FILES = ("users.parquet", "movies.parquet", "vocab.json")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays to a safetensors file atomically (temp file, fsync, rename)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    with removed_on_failure(temp_sibling(path), target=path) as tmp:
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        except OSError as exc:
            exc.filename = exc.filename or str(path)
            raise
        except Exception as exc:  # safetensors reports a failed write (disk full) as its own error type
            code = re.search(r"(?:os error |code: )(\d+)", str(exc))  # "I/O error: File too large (os error 27)"
            raise OSError(int(code.group(1)) if code else errno.EIO, f"writing failed ({exc})", str(path)) from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the model folder is incomplete; retrain") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{path} is unreadable ({exc}): the file is corrupt; retrain") from None


SAFETENSORS_DTYPES = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "I16": "<i2",
    "I32": "<i4",
    "I64": "<i8",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
}


def map_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file as read-only views of one memory map of it; ArtifactError when it is missing
    or not a safetensors file.

    ``safetensors.numpy.load_file`` reads the whole file and copies every tensor out of it: 0.15 s of every
    ``recommend --user`` at full scale (a 100 MB model, most of it the user table, of which one row is used). A map
    costs nothing until a page is read. The format is a little-endian u64 header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the bytes; every entry is checked against the file before use.
    Model folders are replaced whole (temp file + rename), never rewritten in place, so the mapped file cannot
    change under a reader."""

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{path} is unreadable ({problem}): the file is corrupt; retrain")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            n_header = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n_header <= size - 8:
                raise bad("no safetensors header")
            header = json.loads(fh.read(n_header))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: the model folder is incomplete; retrain") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    n_data = size - 8 - n_header
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n_header) if n_data else np.empty(0, np.uint8)
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(int(n) for n in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name!r} has no valid dtype, shape and data_offsets") from None
        fits = min(shape, default=0) >= 0 and 0 <= start <= end <= n_data
        if not fits or end - start != dtype.itemsize * math.prod(shape):
            raise bad(f"tensor {name!r} does not fit its bytes")
        arrays[name] = np.ndarray(shape, dtype=dtype, buffer=data, offset=start)
    return arrays


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (NaN and Inf become null, which every parser accepts); numpy scalars and arrays allowed."""
    return json.dumps(_finite(obj), indent=indent, default=_json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.floating):
        return _finite(float(obj))
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the folder is corrupt") from None


# ---------------------------------------------------------------------------------------------------------------
def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``run.json`` (written when training starts), checked for what ``--resume`` reads."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ArtifactError(
            f"{run_dir} is not a training run (no run.json): pass the folder `embedrec train` "
            "made, or start a new run without --resume"
        )
    meta = read_json(path)
    problems = []
    if not isinstance(meta, dict):
        problems.append("it is not a JSON object")
    else:
        for key in ("model", "train", "data"):
            if not isinstance(meta.get(key), dict):
                problems.append(f"{key!r} is missing")
        data = meta.get("data")
        if isinstance(data, dict) and not isinstance(data.get("path"), str):
            problems.append("'data' lacks the data folder's 'path'")
    if problems:
        raise ArtifactError(
            f"{path} is damaged ({'; '.join(problems)}): --resume cannot continue this run; start a new one"
        )
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ModelArtifact:
    """A trained model as numpy arrays plus everything needed to use it with raw ids.

    ``movie_table`` is ``movies.parquet`` as a pyarrow Table (row i is movie_idx i); :attr:`movies` is the same as a
    pandas DataFrame, converted on first use: one user's recommendations list ten rows of the table and never
    import pandas (half a second of a one-shot ``recommend --user``)."""

    path: Path
    model: ModelConfig
    train: TrainConfig
    shape: DataShape
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    user_ids: np.ndarray
    movie_ids: np.ndarray
    movie_table: Any  # pyarrow.Table
    genre_vocab: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("data", {}).get("fingerprint", ""))

    @cached_property
    def movies(self) -> pd.DataFrame:
        """movie_idx, movie_id, title, year, genres, ... one row per movie in index order."""
        from embedrec.data.store import table_frame

        return table_frame(self.movie_table)

    @property
    def hidden_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(kernel (in, out), bias (out,)) of each hidden Dense layer, in order."""
        out = []
        i = 0
        while f"head.layers.{i}.kernel" in self.weights:
            out.append((self.weights[f"head.layers.{i}.kernel"], self.weights[f"head.layers.{i}.bias"]))
            i += 1
        return out

    def to_flax(self) -> Any:
        """Rebuild the Flax module with these weights (imports JAX)."""
        from flax import nnx

        from embedrec.model import EmbeddingConcat

        module = EmbeddingConcat(self.model, self.shape, rngs=nnx.Rngs(0))
        import jax.numpy as jnp

        module.set_tables(
            {
                k: jnp.asarray(v)
                for k, v in self.weights.items()
                if k.endswith("_embedding") or k.endswith("_bias") and not k.startswith("head.")
            }
        )
        _, head_state = nnx.split(module.head)
        flat = dict(nnx.to_flat_state(head_state))
        for path, var in flat.items():
            key = "head." + ".".join(str(p) for p in path)
            if key not in self.weights:
                raise ArtifactError(f"{self.path}: weights lack {key}; the folder is from another version")
            var.set_value(jnp.asarray(self.weights[key]))
        nnx.update(module.head, nnx.from_flat_state(flat))
        return module


def head_weights(head_state: Any) -> dict[str, np.ndarray]:
    """Flatten the Head's NNX state to ``head.layers.0.kernel``-style names."""
    from flax import nnx

    return {
        "head." + ".".join(str(p) for p in path): np.asarray(var[...]) for path, var in nnx.to_flat_state(head_state)
    }


def save_model(
    run_dir: Path,
    *,
    module: Any,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    shape: DataShape,
    genre_idx: np.ndarray,
    genre_w: np.ndarray,
    prepared: Any,
    history: list[dict[str, Any]],
    extra_meta: dict[str, Any] | None = None,
    extra_weights: dict[str, np.ndarray] | None = None,
    vocabulary_written: bool = False,
    histories: UserHistories | None = None,
) -> Path:
    """Write a complete model folder (weights last-but-one, model.json last, each atomically).

    ``extra_weights`` are arrays beside the network's (the :data:`OPTIONAL_WEIGHTS`, e.g. the popularity prior).
    ``vocabulary_written``: the caller has already written :func:`write_model_vocabulary` into ``run_dir``.
    ``histories``: the train split's :class:`~embedrec.history.UserHistories` when the caller has them (training
    does), for a model with ``user_history``; else they are built from ``prepared``."""
    from flax import nnx

    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: np.asarray(v) for k, v in module.tables().items()}
    weights.update(head_weights(nnx.state(module.head)))
    weights["genre_idx"] = np.asarray(genre_idx, dtype=np.int32)
    weights["genre_w"] = np.asarray(genre_w, dtype=np.float32)
    if "history_embedding" in weights:  # the served history part of every user vector (embedrec.history)
        from embedrec.history import UserHistories

        histories = histories if histories is not None else UserHistories.of_prepared(prepared)
        weights["user_history_vector"] = histories.means(weights["history_embedding"])
    weights.update({k: np.asarray(v, dtype=np.float32) for k, v in (extra_weights or {}).items()})
    if not vocabulary_written:
        write_model_vocabulary(run_dir, prepared)
    save_arrays(run_dir / "weights.safetensors", weights)
    write_json(run_dir / "history.json", history)
    summary = dict(prepared.summary)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": MODEL_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": to_dict(model_cfg),
        "train": to_dict(train_cfg),
        "shape": to_dict(shape),
        "n_params": int(module.n_params()),
        "data": {
            "path": str(Path(prepared.path).resolve()),
            "fingerprint": prepared.fingerprint,
            "format": summary.get("format"),
            "source": summary.get("source"),
            "n_ratings": summary.get("n_ratings"),
            "n_train": summary.get("n_train"),
        },
        **(extra_meta or {}),
    }
    write_json(run_dir / "model.json", meta)
    return run_dir


def write_model_vocabulary(run_dir: Path, prepared: Any) -> None:
    """The id maps of a model folder (``users.parquet``, ``movies.parquet``, ``vocab.json``), from the data in memory
    (what was trained on), never copied from the data folder a prepare may have replaced.

    Nothing in them depends on the training outcome, so training writes them while it chooses the ranking: at full
    MovieLens scale they take 1-1.8 s, mostly waiting on the disk (0.3 s of CPU)."""
    from embedrec.data.store import write_vocabulary

    run_dir.mkdir(parents=True, exist_ok=True)
    write_vocabulary(
        run_dir,
        user_ids=prepared.user_ids,
        movies=prepared.movies,
        genres=prepared.genres,
        genre_strings=prepared.genre_strings,
    )


def validate_model_meta(meta: Any, path: Path) -> tuple[ModelConfig, TrainConfig, DataShape]:
    """Check a ``model.json`` (read from ``path``) and return its configs; ArtifactError naming the problem.

    A model folder may have been edited by hand, copied half, or written by another program: its schema, the types
    of every setting and the ranking choice are checked here, once, so that nothing later meets a list where a table
    belongs or a string where a number does.
    """

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{path} is not a valid embedrec model ({problem}): retrain, or pass another --model")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found a {type(meta).__name__}")
    if meta.get("kind") != MODEL_KIND:
        raise ArtifactError(f"{path} is not an embedrec model")
    if meta.get("schema_version") not in READABLE_SCHEMAS:
        raise ArtifactError(
            f"{path.parent} has model schema {meta.get('schema_version')}, this embedrec reads "
            f"{SCHEMA_VERSION}: retrain with this version"
        )
    for key in ("model", "train", "shape"):
        if not isinstance(meta.get(key), dict):
            found = "missing" if key not in meta else f"a {type(meta[key]).__name__}"
            raise bad(f"{key!r} must be a table of settings, found {found}")
    try:
        model_cfg = model_config_from_dict(meta["model"])
        train_cfg = train_config_from_dict(meta["train"])
        shape = data_shape_from_dict(meta["shape"])
    except ConfigError as exc:
        raise bad(str(exc)) from None
    ranking = meta.get("ranking", {"score": "rating"})
    if ranking is None:
        ranking = {}
    if not isinstance(ranking, dict) or ranking.get("score", "rating") not in ("rating", "blend"):
        raise bad(f"'ranking' must be {{'score': 'rating' or 'blend', ...}}, found {ranking!r}")
    for name in ("beta", "gamma"):
        value = ranking.get(name, 0.0)
        if ranking.get("score") == "blend" and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise bad(f"the ranking blend's {name} must be a finite number, found {value!r}")
    data = meta.get("data", {})
    if not isinstance(data, dict):
        raise bad(f"'data' must be a table, found a {type(data).__name__}")
    return model_cfg, train_cfg, shape


def expected_weight_shapes(model_cfg: ModelConfig, shape: DataShape) -> dict[str, tuple[int, ...]]:
    """Every weight a model with these settings has, and its shape (``genre_idx``/``genre_w`` width is free: -1)."""
    d = model_cfg.embedding_dim
    out: dict[str, tuple[int, ...]] = {
        "user_embedding": (shape.n_users, d),
        "movie_embedding": (shape.n_movies, d),
        "genre_embedding": (shape.n_genres, d),
        "genre_idx": (shape.n_movies, -1),
        "genre_w": (shape.n_movies, -1),
    }
    if model_cfg.biases:
        out.update(user_bias=(shape.n_users, 1), movie_bias=(shape.n_movies, 1))
    if model_cfg.watch_head:
        out["watch_bias"] = (shape.n_movies, 1)
    if model_cfg.user_history:
        out.update(history_embedding=(shape.n_movies, d), user_history_vector=(shape.n_users, d))
    sizes = (3 * d, *model_cfg.hidden)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"head.layers.{i}.kernel"] = (a, b)
        out[f"head.layers.{i}.bias"] = (b,)
    out["head.out.kernel"] = (sizes[-1], 1)
    out["head.out.bias"] = (1,)
    return out


def validate_model_weights(
    weights: dict[str, np.ndarray], model_cfg: ModelConfig, shape: DataShape, path: Path
) -> None:
    """Check the weights of ``path`` against the settings in model.json: names, shapes, dtypes, finite values, and
    genre inputs that index the genre table. A wrong shape would otherwise broadcast or crash deep in scoring, and a
    NaN weight would rank movies silently at random."""

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{path} does not match model.json ({problem}): the folder is damaged; retrain")

    expected = expected_weight_shapes(model_cfg, shape)
    lacking = [name for name in expected if name not in weights]
    if lacking:
        raise ArtifactError(f"{path} lacks {', '.join(lacking)}: the folder is damaged; retrain")
    for name, want in expected.items():
        got = tuple(weights[name].shape)
        if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got)):
            shown = "x".join("G" if w == -1 else str(w) for w in want)
            raise bad(f"{name} is {'x'.join(map(str, got)) or 'a scalar'}, expected {shown}")
    if weights["genre_idx"].shape != weights["genre_w"].shape:
        raise bad(f"genre_idx {weights['genre_idx'].shape} and genre_w {weights['genre_w'].shape} differ")
    gi = weights["genre_idx"]
    if not np.issubdtype(gi.dtype, np.integer):
        raise bad(f"genre_idx holds {gi.dtype}, expected integers")
    if gi.size and (int(gi.min()) < 0 or int(gi.max()) >= shape.n_genres):
        raise bad(f"genre_idx spans {int(gi.min())}..{int(gi.max())}, outside the {shape.n_genres} genre rows")
    for name in OPTIONAL_WEIGHTS:
        if name in weights:
            expected[name] = (shape.n_movies, 1)
            if tuple(weights[name].shape) != expected[name]:
                raise bad(f"{name} is {'x'.join(map(str, weights[name].shape))}, expected {shape.n_movies}x1")
    for name in expected:
        arr = weights[name]
        if name == "genre_idx":
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            raise bad(f"{name} holds {arr.dtype}, expected floats")
        if not np.isfinite(arr).all():
            raise bad(f"{name} holds NaN or infinite values")


_RUN_HINT = "a run folder that `embedrec train` made (under <workdir>/models; train prints its path)"


def check_model_folder(path: Path) -> Path:
    """``path`` if it is a model folder (one holding ``model.json``); else an ArtifactError saying what the path is
    instead (missing, a file, a work or models folder, another folder) and what to pass. Every command that takes a
    model folder (``--model``, ``info RUN``) checks it here, so they all say the same."""
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), os.path.lexists(path)
    except OSError:  # e.g. a component longer than the file system allows
        is_dir, exists = False, False
    if not exists:
        raise ArtifactError(f"model folder {path} does not exist: pass {_RUN_HINT}, or run `embedrec train`")
    if not is_dir:
        if (path.parent / "model.json").is_file():  # run/model.json or run/weights.safetensors
            raise ArtifactError(f"{path} is a file, not a model folder: pass the folder that holds it, {path.parent}")
        raise ArtifactError(f"{path} is a file, not a model folder: pass {_RUN_HINT}")
    if not (path / "model.json").is_file():
        if (path / "run.json").is_file():
            instead = f"its training has not finished: resume it with `embedrec train --resume --out {path}`"
        elif (path / LATEST_FILE).is_file():
            instead = f"it is a models folder: pass one of its runs, or --workdir {path.parent} for the latest"
        elif (path / "models" / LATEST_FILE).is_file():
            instead = f"it looks like a work folder: pass --workdir {path} for its latest run"
        else:
            instead = f"pass {_RUN_HINT}"
        raise ArtifactError(f"{path} is not a model folder (it has no model.json): {instead}")
    return path


def load_model(run_dir: Path) -> ModelArtifact:
    """Read a model folder written by :func:`save_model`; clear ArtifactError when it is missing or damaged."""
    run_dir = check_model_folder(run_dir)
    meta = read_json(run_dir / "model.json")
    model_cfg, train_cfg, shape = validate_model_meta(meta, run_dir / "model.json")
    weights = map_arrays(run_dir / "weights.safetensors")
    validate_model_weights(weights, model_cfg, shape, run_dir / "weights.safetensors")
    from embedrec.data.store import int_column, read_table

    try:
        users = read_table(run_dir / "users.parquet")
        movies = read_table(run_dir / "movies.parquet")
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}: vocabulary files are missing or corrupt ({exc}); retrain") from None
    vocab = read_json(run_dir / "vocab.json") if (run_dir / "vocab.json").is_file() else {}
    if not isinstance(vocab, dict):
        raise ArtifactError(f"{run_dir / 'vocab.json'} is not a JSON object: the folder is damaged; retrain")
    for table, file, cols in (
        (users, "users.parquet", ("user_idx", "user_id")),
        (movies, "movies.parquet", ("movie_idx", "movie_id", "title")),
    ):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise ArtifactError(f"{run_dir / file} lacks column {', '.join(missing)}: the folder is damaged; retrain")
    try:
        user_ids = int_column(users, "user_id")[_index_order(int_column(users, "user_idx"))]
        order = _index_order(int_column(movies, "movie_idx"))
        if not isinstance(order, slice):
            movies = movies.take(order)
        movie_ids = int_column(movies, "movie_id")
    except ValueError as exc:
        raise ArtifactError(f"{run_dir}: vocabulary files are damaged ({exc}); retrain") from None
    shape = data_shape_from_dict(meta["shape"])
    _check_vocabulary_fits(run_dir, weights, shape, n_users=len(user_ids), n_movies=len(movie_ids))
    return ModelArtifact(
        path=run_dir,
        model=model_cfg,
        train=train_cfg,
        shape=shape,
        weights=weights,
        meta=meta,
        user_ids=user_ids,
        movie_ids=movie_ids,
        movie_table=movies,
        genre_vocab=vocab,
    )


def _index_order(idx: np.ndarray) -> np.ndarray | slice:
    """The row order that sorts a table by its index column: ``slice(None)`` when it is sorted already (as
    :func:`~embedrec.data.store.write_vocabulary` writes it), so that the usual folder costs no sort."""
    if len(idx) == 0 or np.all(idx[1:] > idx[:-1]):
        return slice(None)
    return np.argsort(idx, kind="stable")


def _check_vocabulary_fits(
    run_dir: Path, weights: dict[str, np.ndarray], shape: DataShape, *, n_users: int, n_movies: int
) -> None:
    """The id maps beside the weights must be the ones they were trained with: one embedding row per user and per
    movie. A mismatch (a vocabulary from another data set) would map ids to the wrong rows and answer silently
    wrong, so the folder is refused."""
    rows = {
        "user_embedding": (n_users, shape.n_users, "users.parquet"),
        "movie_embedding": (n_movies, shape.n_movies, "movies.parquet"),
    }
    for table, (n_vocab, n_shape, file) in rows.items():
        n_rows = int(weights[table].shape[0]) if weights[table].ndim == 2 else -1
        if not n_rows == n_vocab == n_shape:
            raise ArtifactError(
                f"{run_dir}: {file} lists {n_vocab:,} ids but {table} has {n_rows:,} rows "
                f"(model.json says {n_shape:,}): the vocabulary does not belong to these weights; "
                "retrain"
            )
