"""Train/validation/test splits and k-fold cross-validation that stay put when cases are added.

Each case is placed by a hash of ``(seed, case_id)`` -- a number ``u`` in ``[0, 1)`` -- rather than by
shuffling the list. The same seed gives the same split on any machine and in any input order, and a new
case never moves an existing one (a shuffle would reshuffle everything). The price: split sizes follow
the fractions on average, not exactly (34 cases at ``val_fraction=0.2`` give about 7 +- 2 validation
cases). Two small-dataset guarantees are applied on top, and only they can move a case when others
arrive: at least one validation case when ``val_fraction > 0`` and there are at least 2 cases, at least
one training case; and in k-fold every fold has a validation case when there are at least ``k`` cases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from medunet.data.datalist import Case
from medunet.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Cases for training, validation and (held-out) testing, each in input order."""

    train: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    def ids(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` case ids, e.g. to log or save."""
        return {name: [c.case_id for c in getattr(self, name)] for name in ("train", "val", "test")}


def case_hash(case_id: str, seed: int = 0) -> float:
    """A uniform number in ``[0, 1)`` fixed by ``(seed, case_id)``: where the case falls in a split."""
    digest = hashlib.sha256(f"{seed}\0{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_unique(cases: Sequence[Case]) -> None:
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(None, f"duplicate case id {dup!r}: splits need unique case ids")


def split_cases(
    cases: Sequence[Case], *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Split ``cases`` into train/val/test by hashed position (see the module docstring).

    A case with hash ``u`` goes to test when ``u < test_fraction``, to validation when
    ``u < test_fraction + val_fraction``, else to training.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ConfigError(
            None,
            f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}",
        )
    _check_unique(cases)
    u = {c.case_id: case_hash(c.case_id, seed) for c in cases}
    where = {
        cid: "test" if x < test_fraction else "val" if x < test_fraction + val_fraction else "train"
        for cid, x in u.items()
    }
    trains = [cid for cid, w in where.items() if w == "train"]
    if val_fraction > 0 and len(cases) >= 2 and "val" not in where.values() and trains:
        # The training case nearest the validation band moves (deterministic; undone once a case
        # lands in validation on its own).
        where[min(trains, key=lambda cid: u[cid])] = "val"
    if cases and "train" not in where.values():
        vals = [cid for cid, w in where.items() if w == "val"] or list(where)
        where[max(vals, key=lambda cid: u[cid])] = "train"
    return Split(
        train=[c for c in cases if where[c.case_id] == "train"],
        val=[c for c in cases if where[c.case_id] == "val"],
        test=[c for c in cases if where[c.case_id] == "test"],
    )


def fold_assignment(cases: Sequence[Case], k: int, seed: int = 0) -> dict[str, int]:
    """``{case_id: fold}`` for k-fold cross-validation: fold ``floor(u * k)`` of the case hash ``u``.

    When there are at least ``k`` cases and a fold is empty, the case nearest that fold's hash band is
    moved into it from the largest fold, so every fold validates on something.
    """
    if k < 2:
        raise ConfigError(None, f"k-fold needs k >= 2, got {k}")
    _check_unique(cases)
    u = {c.case_id: case_hash(c.case_id, seed) for c in cases}
    fold = {cid: min(int(x * k), k - 1) for cid, x in u.items()}
    if len(cases) >= k:
        for empty in range(k):
            if empty in fold.values():
                continue
            sizes = {f: sum(1 for v in fold.values() if v == f) for f in range(k)}
            donor = max(range(k), key=lambda f: (sizes[f], -f))
            centre = (empty + 0.5) / k
            mover = min((cid for cid, f in fold.items() if f == donor), key=lambda cid: abs(u[cid] - centre))
            fold[mover] = empty
    return fold


def kfold(cases: Sequence[Case], k: int, fold: int, seed: int = 0) -> Split:
    """Fold ``fold`` of ``k``: its cases are the validation set, all others train (no test set).

    Over ``fold = 0..k-1`` every case is validated exactly once.
    """
    if not 0 <= fold < k:
        raise ConfigError(None, f"fold must be in 0..{k - 1}, got {fold}")
    assignment = fold_assignment(cases, k, seed)
    return Split(
        train=[c for c in cases if assignment[c.case_id] != fold],
        val=[c for c in cases if assignment[c.case_id] == fold],
    )


__all__ = ["Split", "case_hash", "fold_assignment", "kfold", "split_cases"]
