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
/ ``head.out.bias``, and the inputs ``genre_idx`` (n_movies, G) int32 and ``genre_w`` (n_movies, G) float32.

Loading needs only numpy, safetensors and pyarrow: :func:`load_model` never imports JAX, so the recommender's fast path
starts quickly. No pickle anywhere: JSON, safetensors and Parquet only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from embedrec.errors import ArtifactError
from embedrec.workdir import atomic_write_text

SCHEMA_VERSION = 1
MODEL_KIND = "embedrec-model"
VOCAB_FILES = ("users.parquet", "movies.parquet", "vocab.json")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays to a safetensors file atomically (temp file, fsync, rename)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
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
# Model folders
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ModelArtifact:
    """A trained model as numpy arrays plus everything needed to use it with raw ids."""

    path: Path
    model: ModelConfig
    train: TrainConfig
    shape: DataShape
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    user_ids: np.ndarray
    movies: Any  # pandas.DataFrame
    genre_vocab: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("data", {}).get("fingerprint", ""))

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

        module.set_tables({k: jnp.asarray(v) for k, v in self.weights.items()
                           if k.endswith("_embedding") or k.endswith("_bias") and not k.startswith("head.")})
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

    return {"head." + ".".join(str(p) for p in path): np.asarray(var[...])
            for path, var in nnx.to_flat_state(head_state)}


def save_model(run_dir: Path, *, module: Any, model_cfg: ModelConfig, train_cfg: TrainConfig, shape: DataShape,
               genre_idx: np.ndarray, genre_w: np.ndarray, prepared: Any, history: list[dict[str, Any]],
               extra_meta: dict[str, Any] | None = None) -> Path:
    """Write a complete model folder (weights last-but-one, model.json last, each atomically)."""
    from flax import nnx

    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: np.asarray(v) for k, v in module.tables().items()}
    weights.update(head_weights(nnx.state(module.head)))
    weights["genre_idx"] = np.asarray(genre_idx, dtype=np.int32)
    weights["genre_w"] = np.asarray(genre_w, dtype=np.float32)
    for name in VOCAB_FILES:
        src = Path(prepared.path) / name
        if src.is_file():
            tmp = run_dir / f".{name}.tmp-{os.getpid()}"
            shutil.copyfile(src, tmp)
            os.replace(tmp, run_dir / name)
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
        "data": {"path": str(Path(prepared.path).resolve()), "fingerprint": prepared.fingerprint,
                 "format": summary.get("format"), "source": summary.get("source"),
                 "n_ratings": summary.get("n_ratings"), "n_train": summary.get("n_train")},
        **(extra_meta or {}),
    }
    write_json(run_dir / "model.json", meta)
    return run_dir


def load_model(run_dir: Path) -> ModelArtifact:
    """Read a model folder written by :func:`save_model`; clear ArtifactError when it is missing or damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"model folder {run_dir} does not exist: run `embedrec train`, or pass --model DIR")
    meta = read_json(run_dir / "model.json")
    if meta.get("kind") != MODEL_KIND:
        raise ArtifactError(f"{run_dir / 'model.json'} is not an embedrec model")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{run_dir} has model schema {meta.get('schema_version')}, this embedrec reads "
                            f"{SCHEMA_VERSION}: retrain with this version")
    weights = load_arrays(run_dir / "weights.safetensors")
    needed = ["user_embedding", "movie_embedding", "genre_embedding", "head.out.kernel", "genre_idx", "genre_w"]
    if meta.get("model", {}).get("biases"):
        needed += ["user_bias", "movie_bias"]
    if meta.get("model", {}).get("watch_head"):
        needed += ["watch_bias"]
    lacking = [name for name in needed if name not in weights]
    if lacking:
        raise ArtifactError(f"{run_dir / 'weights.safetensors'} lacks {', '.join(lacking)}: the folder is damaged; "
                            "retrain")
    import pyarrow.parquet as pq

    from embedrec.data.store import movies_frame

    try:
        users = pq.read_table(run_dir / "users.parquet").to_pandas()
        movies = movies_frame(pq.read_table(run_dir / "movies.parquet").to_pandas())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}: vocabulary files are missing or corrupt ({exc}); retrain") from None
    vocab = read_json(run_dir / "vocab.json") if (run_dir / "vocab.json").is_file() else {}
    users = users.sort_values("user_idx")
    movies = movies.sort_values("movie_idx").reset_index(drop=True)
    return ModelArtifact(
        path=run_dir,
        model=model_config_from_dict(meta["model"]),
        train=train_config_from_dict(meta["train"]),
        shape=data_shape_from_dict(meta["shape"]),
        weights=weights,
        meta=meta,
        user_ids=users["user_id"].to_numpy(np.int64),
        movies=movies,
        genre_vocab=vocab,
    )
