"""Window bookkeeping for dynamic persona modelling: a user's behaviour as consecutive rated windows W0, W1, ….

Round t (t ≥ 1) updates S_{t-1} → S_t with window W_t; its previous window is W_{t-1} and its future window W_{t+1}.
A user with windows W0..Wn therefore has rounds 1..n−1 with a future window (and round n without one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personalens.data.deeper import DeeperRound, DeeperTrainUser, deeper_rating_scale
from personalens.data.records import Dataset, History, Window
from personalens.errors import DataError
from personalens.refinement.prompts import RatedItem


@dataclass(frozen=True, slots=True)
class RoundWindows:
    """The windows one update round sees. ``future`` is ``None`` for the last round."""

    round: int
    previous: tuple[RatedItem, ...]
    current: tuple[RatedItem, ...]
    future: tuple[RatedItem, ...] | None


@dataclass(frozen=True, slots=True)
class UserWindows:
    """One user's rated windows, oldest first, with the domain and its rating scale (read from the data)."""

    user_id: str
    domain: str
    scale: tuple[float, float, float]
    windows: tuple[tuple[RatedItem, ...], ...]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.windows) < 2:
            raise ValueError(f"user {self.user_id!r}: dynamic modelling needs at least 2 windows")
        if any(not w for w in self.windows):
            raise ValueError(f"user {self.user_id!r}: empty window")

    @property
    def n_rounds(self) -> int:
        """Rounds that have a future window to evaluate on."""
        return len(self.windows) - 2

    def round(self, t: int) -> RoundWindows:
        if not 1 <= t <= len(self.windows) - 1:
            raise ValueError(f"round {t} out of range 1..{len(self.windows) - 1}")
        future = self.windows[t + 1] if t + 1 < len(self.windows) else None
        return RoundWindows(t, self.windows[t - 1], self.windows[t], future)

    def up_to(self, t: int) -> tuple[tuple[RatedItem, ...], ...]:
        """W0..Wt: what has been observed when round t updates (never beyond)."""
        return self.windows[: t + 1]


def _rated(window: Window) -> tuple[RatedItem, ...]:
    return tuple(RatedItem(x.item_id, float(x.rating or 0.0)) for x in window.interactions)


def windows_from_deeper(rounds: Sequence[DeeperRound]) -> list[UserWindows]:
    """Assemble W0..Wn per user from DeePer's round files (round k holds W_{k-1}, W_k, W_{k+1}), checking that the
    windows the rounds share agree. Users missing a round in the middle are reported, not patched."""
    by_user: dict[str, dict[int, tuple[RatedItem, ...]]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for r in rounds:
        windows = by_user.setdefault(r.user_id, {})
        meta[r.user_id] = (r.item_type, r.dataset_name)
        for w in r.windows:
            rated = _rated(w)
            if w.index in windows and windows[w.index] != rated:
                raise DataError(
                    f"user {r.user_id!r}: window {w.index} differs between rounds (round {r.iteration})",
                    field=f"I{w.index}",
                )
            windows[w.index] = rated
    out = []
    for user_id, windows in by_user.items():
        indices = sorted(windows)
        if indices != list(range(indices[0], indices[0] + len(indices))) or indices[0] != 0:
            raise DataError(f"user {user_id!r}: windows {indices} are not consecutive from 0", field="iteration")
        item_type, dataset_name = meta[user_id]
        scale = deeper_rating_scale(dataset_name)
        if scale is None:
            raise DataError(f"unknown rating scale for DeePer domain {dataset_name!r}", field="dataset_name")
        low, high, step = scale
        domain = item_type.replace("_", " ")  # "movies_and_TV" reads as "movies and TV" in the prompts
        out.append(UserWindows(user_id, domain, (low, high, step), tuple(windows[i] for i in indices), dataset_name))
    return out


def windows_from_train_users(users: Sequence[DeeperTrainUser]) -> list[UserWindows]:
    """DeePer's training users (``train_users.csv``, windows_0..windows_n) as rated windows."""
    out = []
    for u in users:
        scale = deeper_rating_scale(u.dataset_name)
        if scale is None:
            raise DataError(f"unknown rating scale for DeePer domain {u.dataset_name!r}", field="dataset_name")
        low, high, step = scale
        windows = tuple(_rated(w) for w in u.windows)
        out.append(UserWindows(u.user_id, u.item_type.replace("_", " "), (low, high, step), windows, u.dataset_name))
    return out


def windows_from_history(
    dataset: Dataset,
    history: History,
    *,
    size: int = 10,
    item_fields: Sequence[str] | None = None,
    domain: str = "items",
) -> UserWindows:
    """Consecutive windows of ``size`` rated interactions from a time-ordered history (a trailing partial window is
    dropped). The scale is the dataset's; interactions without a rating are skipped."""
    if dataset.rating_scale is None:
        raise DataError(f"dataset {dataset.name!r} has no rating scale; dynamic modelling predicts ratings")
    rated = [x for x in history if x.rating is not None]
    chunks = [rated[i : i + size] for i in range(0, len(rated) - size + 1, size)]
    windows = tuple(
        tuple(RatedItem(dataset.item(x.item_id).text(item_fields), float(x.rating or 0)) for x in chunk)
        for chunk in chunks
    )
    low, high, step = dataset.rating_scale
    return UserWindows(history.user_id, domain, (low, high, step), windows, dataset.name)


__all__ = [
    "RoundWindows",
    "UserWindows",
    "windows_from_deeper",
    "windows_from_history",
    "windows_from_train_users",
]
