"""Typed records for behaviour data: items, interactions, histories and time windows.

Records are plain frozen dataclasses so they are cheap, hashable and easy to build in tests.
Loaders in :mod:`personalens.data` produce a :class:`Dataset`; everything downstream reads these types only.
"""

from __future__ import annotations

import copyreg
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from personalens.errors import DataError


def _mappingproxy(data: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(data)


def _reduce_mappingproxy(proxy: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mappingproxy, (dict(proxy),)


# Items keep their fields in read-only mapping proxies; registering how to pickle one makes datasets picklable (a
# distributed build sends the dataset to its workers).
copyreg.pickle(MappingProxyType, _reduce_mappingproxy)


@dataclass(frozen=True, slots=True)
class Item:
    """Something a user can interact with: a movie, a CD, a product, a review target.

    ``fields`` holds named text fields (genres, description, brand, …) in a stable order.
    """

    item_id: str
    title: str = ""
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def text(self, keys: Sequence[str] | None = None, *, max_chars: int | None = None) -> str:
        """One line of text describing the item: the title, then the chosen fields as ``key: value``."""
        parts = [self.title] if self.title else []
        for key in keys if keys is not None else list(self.fields):
            value = self.fields.get(key, "")
            if value:
                parts.append(f"{key}: {value}")
        out = "; ".join(parts) if parts else self.item_id
        if max_chars is not None and len(out) > max_chars:
            out = out[: max_chars - 1].rstrip() + "…"
        return out


@dataclass(frozen=True, slots=True)
class Interaction:
    """One behaviour: ``user_id`` did something with ``item_id``.

    ``rating`` is the explicit score on the dataset's scale, when there is one. ``label`` is a like (True) or
    dislike (False) when the data gives one or it was derived from the rating. ``timestamp`` is Unix seconds
    (float) or ``None`` when the data has only an order. ``text`` is the user's own text (a review), if any.
    """

    user_id: str
    item_id: str
    rating: float | None = None
    label: bool | None = None
    timestamp: float | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A user's interactions in chronological order (ties keep their input order)."""

    user_id: str
    interactions: tuple[Interaction, ...]

    def __len__(self) -> int:
        return len(self.interactions)

    def __iter__(self) -> Iterator[Interaction]:
        return iter(self.interactions)

    @property
    def item_ids(self) -> list[str]:
        return [x.item_id for x in self.interactions]

    def split_last(self, n: int = 1) -> tuple[History, tuple[Interaction, ...]]:
        """Leave-last-``n``-out: the history before the held-out tail, and the tail.

        Nothing of the tail leaks."""
        if n < 0 or n >= len(self.interactions):
            raise ValueError(f"cannot hold out {n} of {len(self.interactions)} interactions")
        head = self.interactions[: len(self.interactions) - n]
        return History(self.user_id, head), self.interactions[len(self.interactions) - n :]

    def windows(self, size: int, *, drop_last_partial: bool = True) -> list[Window]:
        """Consecutive non-overlapping windows of ``size`` interactions, oldest first."""
        if size <= 0:
            raise ValueError("window size must be positive")
        out = []
        for index, start in enumerate(range(0, len(self.interactions), size)):
            chunk = self.interactions[start : start + size]
            if len(chunk) < size and drop_last_partial:
                break
            out.append(Window(self.user_id, index, chunk))
        return out


@dataclass(frozen=True, slots=True)
class Window:
    """A block of consecutive interactions of one user, numbered from 0 (oldest)."""

    user_id: str
    index: int
    interactions: tuple[Interaction, ...]

    def __len__(self) -> int:
        return len(self.interactions)


@dataclass(slots=True)
class Dataset:
    """Items and interactions of one source, with per-user histories built on demand.

    ``rating_scale`` is ``(low, high, step)`` when ratings exist, e.g. ``(0.5, 5.0, 0.5)`` for MovieLens.
    """

    name: str
    items: dict[str, Item]
    interactions: list[Interaction]
    rating_scale: tuple[float, float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _by_user: dict[str, list[Interaction]] | None = field(default=None, repr=False)

    def _index(self) -> dict[str, list[Interaction]]:
        if self._by_user is None:
            by_user: dict[str, list[Interaction]] = {}
            for x in self.interactions:
                by_user.setdefault(x.user_id, []).append(x)
            for rows in by_user.values():
                if all(r.timestamp is not None for r in rows):
                    rows.sort(key=lambda r: r.timestamp)  # type: ignore[arg-type,return-value]
            self._by_user = by_user
        return self._by_user

    @property
    def users(self) -> list[str]:
        return list(self._index())

    def history(self, user_id: str) -> History:
        """The chronological history of ``user_id``. Raises :class:`DataError` for an unknown user."""
        rows = self._index().get(str(user_id))
        if rows is None:
            raise DataError(f"unknown user {user_id!r} in dataset {self.name!r}", field="user_id")
        if not rows:
            raise DataError(f"user {user_id!r} has an empty history in dataset {self.name!r}", field="user_id")
        return History(str(user_id), tuple(rows))

    def histories(self, *, min_length: int = 1) -> Iterator[History]:
        for user_id, rows in self._index().items():
            if len(rows) >= min_length:
                yield History(user_id, tuple(rows))

    def item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise DataError(f"unknown item {item_id!r} in dataset {self.name!r}", field="item_id") from None

    def with_labels(self, *, like_above: float, dislike_below: float) -> Dataset:
        """A copy whose interactions carry ``label`` from the rating: like if > like_above, dislike if
        < dislike_below, dropped otherwise (PersonaX drops 3 on a 1–5 scale with
        like_above=dislike_below=3)."""
        kept = []
        for x in self.interactions:
            if x.rating is None:
                kept.append(x)
            elif x.rating > like_above:
                kept.append(_replace(x, label=True))
            elif x.rating < dislike_below:
                kept.append(_replace(x, label=False))
        return Dataset(self.name, self.items, kept, self.rating_scale, dict(self.meta))


def _replace(x: Interaction, **changes: Any) -> Interaction:
    values = {name: getattr(x, name) for name in Interaction.__slots__}
    values.update(changes)
    return Interaction(**values)


def freeze_fields(pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    """An immutable, ordered mapping for :attr:`Item.fields`, skipping empty values."""
    return MappingProxyType({k: v for k, v in pairs if v})
