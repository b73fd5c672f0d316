"""Vocabulary: raw id <-> index, owned once and shared by the prepared data and the recommender."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedrec.errors import UnknownIdError
from embedrec.vocab import Vocabulary


def test_index_and_indices_follow_the_sorted_ids() -> None:
    users = Vocabulary(np.array([3, 7, 42]), kind="user", owner="the model")
    assert users.index(42) == 2 and len(users) == 3
    assert users.indices([42, 5, "7", 4.5, "abc", 7.0]).tolist() == [2, -1, 1, -1, -1, 1]
    assert 7 in users and 8 not in users
    with pytest.raises(UnknownIdError, match=r"user 5 is not known to the model \(3 users, ids 3..42\)"):
        users.index(5)
    assert users.require_all([3, 42]).tolist() == [0, 2]
    with pytest.raises(UnknownIdError, match="2 user id\\(s\\) not known to the model, e.g. 9"):
        users.require_all([3, 9, 10])


def test_ids_beyond_float_precision_are_looked_up_exactly() -> None:
    big = 2**53  # 9007199254740992: float64 cannot tell it from 2**53 + 1
    users = Vocabulary(np.array([1, big]), kind="user", owner="the model")
    assert users.indices([str(big + 1), str(big), big + 1, np.int64(big)]).tolist() == [-1, 1, -1, 1]
    texts = np.array([str(big + 1), " 1 ", "1.0", "1e0", "1_0", "+1"], dtype=object)
    assert users.indices(texts).tolist() == [-1, 0, -1, -1, -1, -1]  # text is an id in plain decimal digits only
    assert users.indices([1.0, np.float32(1), "1"]).tolist() == [0, 0, 0]  # a whole float is still its integer


def test_unsorted_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        Vocabulary(np.array([3, 1]), kind="movie", owner="the model")


def test_prepared_data_and_recommender_share_it(synthetic_prepared: Path, tmp_path: Path) -> None:
    from planted import write_planted_model

    from embedrec.artifacts import load_model
    from embedrec.data import load_prepared
    from embedrec.recommender import Recommender

    prepared = load_prepared(synthetic_prepared)
    rec = Recommender(load_model(write_planted_model(prepared, tmp_path / "m")), prepared)
    for vocab_a, vocab_b in ((prepared.user_vocab, rec.user_vocab), (prepared.movie_vocab, rec.movie_vocab)):
        assert isinstance(vocab_a, Vocabulary) and isinstance(vocab_b, Vocabulary)
        np.testing.assert_array_equal(vocab_a.ids, vocab_b.ids)
    with pytest.raises(UnknownIdError, match="not known to the prepared data"):
        prepared.user_vocab.index(10**9)
