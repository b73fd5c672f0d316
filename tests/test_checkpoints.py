"""Checkpoints: crash-safe folders, and the train state they hold coming back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.checkpoints import CheckpointDir, best_weights_of, checkpoint_arrays, flatten_tree, restore_tree
from embedrec.errors import ArtifactError


def test_checkpoint_survives_a_crash_mid_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = CheckpointDir(tmp_path / "ck")
    ckpt.save({"w": np.arange(3.0)}, {"epoch": 1, "step": 10})
    import embedrec.artifacts as artifacts

    real_write_json = artifacts.write_json

    def crash(path: Path, obj) -> None:  # dies after the arrays are written, before meta.json
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"w": np.arange(3.0) * 2}, {"epoch": 2, "step": 10})
    monkeypatch.setattr(artifacts, "write_json", real_write_json)
    arrays, meta = ckpt.load()
    assert meta["epoch"] == 1
    np.testing.assert_array_equal(arrays["w"], np.arange(3.0))
    # a damaged newest checkpoint (truncated arrays) falls back to the previous complete one
    ckpt.save({"w": np.arange(3.0) * 3}, {"epoch": 3, "step": 10})
    newest = tmp_path / "ck" / "epoch-0003-s000010" / "arrays.safetensors"
    newest.write_bytes(newest.read_bytes()[:20])
    arrays, meta = ckpt.load()
    assert meta["epoch"] == 1


def test_a_train_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from embedrec.config import DataShape, ModelConfig
    from embedrec.model import EmbeddingConcat
    from embedrec.sparse_adam import head_optimizer
    from embedrec.step import init_state

    shape = DataShape(n_users=5, n_movies=7, n_genres=3, rating_min=1.0, rating_max=5.0)
    model = EmbeddingConcat(
        ModelConfig(embedding_dim=4, hidden=(8,), watch_head=True, biases=True), shape, rngs=nnx.Rngs(0)
    )
    _, _, state = init_state(model, head_optimizer(), genre_table=True)
    state["count"] = jnp.int32(17)  # a scalar: safetensors stores it as shape (1,)
    best = flatten_tree({"w": jnp.arange(3.0)}, "")
    ckpt = CheckpointDir(tmp_path / "ck")
    ckpt.save(checkpoint_arrays(state, best), {"epoch": 2, "step": 5})
    arrays, meta = ckpt.load()
    assert (meta["epoch"], meta["step"], meta["complete"]) == (2, 5, True)
    _, _, template = init_state(model, head_optimizer(), genre_table=True)
    restored = restore_tree(template, arrays, "state")
    import jax

    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(restored["count"]) == 17
    np.testing.assert_array_equal(best_weights_of(arrays)["['w']"], np.arange(3.0))
    assert best_weights_of(checkpoint_arrays(state, None)) is None


def test_a_checkpoint_of_another_model_is_refused_by_name() -> None:
    import jax.numpy as jnp

    arrays = flatten_tree({"a": jnp.zeros((2, 3))}, "state")
    with pytest.raises(ArtifactError, match=r"missing state\['b'\]"):
        restore_tree({"b": jnp.zeros(2)}, arrays, "state")
    with pytest.raises(ArtifactError, match=r"shape \(2, 3\), the model needs \(4, 3\)"):
        restore_tree({"a": jnp.zeros((4, 3))}, arrays, "state")
