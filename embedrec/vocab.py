"""Raw ids <-> dense indices for one kind of thing (users or movies): the one lookup data, serving and CLI share.

Synopsis::

    from embedrec.vocab import Vocabulary
    users = Vocabulary(np.array([3, 7, 42]), kind="user", owner="the model")
    users.index(42)                        # 2; UnknownIdError "user 5 is not known to the model (3 users)" for 5
    users.indices([42, 5, "7", 4.5])       # int32 [2, -1, 1, -1]: -1 for unknown or non-integral ids
    42 in users, len(users), users.ids     # True, 3, the sorted raw ids (int64)

Indices follow the sorted raw ids (see :mod:`embedrec.data.encode`), so a vocabulary is its sorted id array and
nothing else. numpy only: ``embedrec.data`` uses it and never imports JAX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedrec.data.encode import lookup_ids
from embedrec.errors import UnknownIdError


class Vocabulary:
    """The sorted raw ids of one kind (``"user"``, ``"movie"``); an id's index is its position.

    ``owner`` names what holds the vocabulary ("the model", "the prepared data") in the error for an unknown id.
    """

    def __init__(self, ids: np.ndarray, *, kind: str, owner: str) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        if self.ids.ndim != 1 or (len(self.ids) > 1 and not np.all(np.diff(self.ids) > 0)):
            raise ValueError(f"{kind} ids must be a strictly increasing 1-d array")
        self.kind = kind
        self.owner = owner

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw_id: Any) -> bool:
        return np.ndim(raw_id) == 0 and int(self.indices([raw_id])[0]) >= 0

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} {self.kind}s of {self.owner})"

    def indices(self, raw_ids: Any) -> np.ndarray:
        """int32 index of each raw id (any array-like), -1 for unknown or non-integral ids."""
        return lookup_ids(self.ids, raw_ids)

    def index(self, raw_id: int) -> int:
        """The index of one raw id; :class:`UnknownIdError` naming it when unknown (or not one id: a list)."""
        if np.ndim(raw_id) != 0:
            raise UnknownIdError(f"{self.kind} {raw_id!r} is not one {self.kind} id: pass a single id")
        idx = int(self.indices([raw_id])[0])
        if idx < 0:
            span = f", ids {int(self.ids[0])}..{int(self.ids[-1])}" if len(self) else ""
            raise UnknownIdError(
                f"{self.kind} {raw_id} is not known to {self.owner} ({len(self):,} {self.kind}s{span})"
            )
        return idx

    def require_all(self, raw_ids: Any) -> np.ndarray:
        """Indices of every raw id; :class:`UnknownIdError` counting the unknown ones and naming the first."""
        idx = self.indices(raw_ids)
        if (idx < 0).any():
            bad = np.asarray(raw_ids).ravel()[idx.ravel() < 0]
            raise UnknownIdError(f"{bad.size} {self.kind} id(s) not known to {self.owner}, e.g. {bad[0]}")
        return idx
