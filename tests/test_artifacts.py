"""Model folders: the memory-mapped weights read what safetensors wrote, and refuse a damaged file in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedrec.artifacts import load_arrays, map_arrays, save_arrays
from embedrec.errors import ArtifactError

ARRAYS = {
    "table": np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
    "doubles": np.linspace(-1, 1, 5),
    "index": np.array([[1, 2], [3, -4]], dtype=np.int32),
    "count": np.array([7], dtype=np.int64),
    "flags": np.array([True, False, True]),
    "half": np.array([0.5, 1.5], dtype=np.float16),
    "empty": np.zeros((0, 8), dtype=np.float32),
    "scalar": np.array(2.5, dtype=np.float32),
}


def test_mapped_arrays_equal_what_safetensors_reads_and_are_read_only(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_arrays(path, ARRAYS)
    mapped, read = map_arrays(path), load_arrays(path)
    assert mapped.keys() == read.keys() == ARRAYS.keys()
    for name, want in ARRAYS.items():
        got = mapped[name]
        assert got.dtype == read[name].dtype == want.dtype and got.shape == read[name].shape, name
        np.testing.assert_array_equal(got, read[name])
        assert not got.flags.writeable, name  # a model's weights are never changed in place
    with pytest.raises(ValueError):
        mapped["table"][0, 0] = 1.0


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda raw: raw[:-3], "does not fit its bytes"),
        (lambda raw: b"", "no safetensors header"),
        (lambda raw: b"not a safetensors file", "no safetensors header"),
        (lambda raw: (12).to_bytes(8, "little") + b"{not json!}" + b"\0" * 64, "header is not JSON"),
        (lambda raw: (2).to_bytes(8, "little") + b"[]" + b"\0" * 8, "not a JSON object"),
        (lambda raw: raw.replace(b'"F32"', b'"X32"'), "no valid dtype"),
    ],
)
def test_a_damaged_weights_file_is_one_clear_error(
    tmp_path: Path, damage: Callable[[bytes], bytes], words: str
) -> None:
    good = tmp_path / "good.safetensors"
    save_arrays(good, ARRAYS)
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ArtifactError, match=rf"weights.safetensors is unreadable \(.*{words}.*\): .*retrain"):
        map_arrays(bad)


def test_a_missing_weights_file_says_the_folder_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="weights.safetensors is missing: the model folder is incomplete"):
        map_arrays(tmp_path / "weights.safetensors")
