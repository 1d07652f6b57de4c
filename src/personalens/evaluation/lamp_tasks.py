"""LaMP tasks as the agent sees them: the answer space, the episodic memories a profile gives, past questions for
test-time alignment, the text to search memory with, and the official metrics.

* LaMP-1 (citation choice): answers ``[1]``/``[2]``; memories are the user's papers (title → abstract); alignment
  questions pair one of the user's papers with another of their titles against a title from another example.
* LaMP-2M (movie tags, LaMP's 15 tags) and LaMP-2N (news categories, LaMP's own 15): the label list is read from
  the question when it carries one in brackets (``[a, b, …]``), else the task's default; memories are
  (description/article → tag/category).
* LaMP-3 (product rating): ratings 1–5; memories are (review text → score).

Metrics follow the LaMP evaluation: accuracy and macro-F1 over the task's whole label list (an unreadable answer
matches no label), MAE and RMSE for ratings where an unreadable answer counts as the rating farthest from the truth
(1 or 5) — the official rule; ``unparsable="drop"`` leaves such answers out instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from personalens.agent.alignment import AlignmentExample
from personalens.agent.loop import AnswerSpace
from personalens.data.lamp import LampExample, LampProfileEntry
from personalens.data.lamp_builders import LAMP2M_TAGS, TAG_SYNONYMS
from personalens.errors import DataError
from personalens.evaluation.metrics import accuracy, macro_f1, mae, rmse
from personalens.store.models import MemoryRecord

LAMP2N_CATEGORIES = (
    "travel",
    "education",
    "parents",
    "style & beauty",
    "entertainment",
    "food & drink",
    "science & technology",
    "business",
    "sports",
    "healthy living",
    "women",
    "politics",
    "crime",
    "culture & arts",
    "religion",
)

_BRACKETS = re.compile(r"\[([^\[\]]{3,2000})\]")


def task_number(task: str | None) -> str:
    """``"LaMP_2M"``, ``"lamp-3"``, ``"2N"`` → ``"2M"``, ``"3"``, ``"2N"``; a bare ``"2"`` means LaMP-2M."""
    if not task:
        raise DataError("the LaMP task is unknown: set data.task or use an outputs file that names it")
    text = task.strip().upper().replace("LAMP", "").strip("-_ ")
    text = {"2": "2M"}.get(text, text)
    if text not in ("1", "2M", "2N", "3"):
        raise DataError(f"unsupported LaMP task {task!r}: PersonaAgent evaluates LaMP-1, 2M, 2N and 3")
    return text


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _after_marker(text: str, markers: Sequence[str]) -> str | None:
    lowered = text.lower()
    best = -1
    for marker in markers:
        at = lowered.rfind(marker)
        if at >= 0:
            best = max(best, at + len(marker))
    return text[best:].strip() if best >= 0 else None


@dataclass(frozen=True, slots=True)
class LampTask:
    number: str
    max_chars: int = 600  # memory query text is clipped to this (keeps prompts within a small context)

    @property
    def name(self) -> str:
        return f"LaMP-{self.number}"

    @property
    def is_rating(self) -> bool:
        return self.number == "3"

    def default_labels(self) -> tuple[str, ...]:
        return {"1": ("[1]", "[2]"), "2M": LAMP2M_TAGS, "2N": LAMP2N_CATEGORIES}.get(self.number, ())

    def labels_in(self, text: str) -> tuple[str, ...] | None:
        """A label list given in the question itself, e.g. ``tags: [sci-fi, comedy, …]``."""
        if self.number not in ("2M", "2N"):
            return None
        for m in _BRACKETS.finditer(text):
            parts = [p.strip().strip("'\"") for p in m.group(1).split(",")]
            parts = [p for p in parts if p]
            if len(parts) >= 2 and all(len(p) <= 40 for p in parts):
                return tuple(parts)
        return None

    def space(self, example: LampExample | None = None) -> AnswerSpace:
        if self.is_rating:
            return AnswerSpace.of_rating(1, 5, 1)
        labels = (self.labels_in(example.input) if example is not None else None) or self.default_labels()
        # LaMP-2M's tags are read with the spelling variants the task was built with ("science fiction" is sci-fi)
        return AnswerSpace.of_labels(labels, TAG_SYNONYMS if self.number == "2M" else None)

    def label_list(self, examples: Sequence[LampExample]) -> tuple[str, ...]:
        """All labels of the task for macro-F1: the default list plus any a question names."""
        labels = list(self.default_labels())
        for ex in examples:
            for label in self.labels_in(ex.input) or ():
                if label not in labels:
                    labels.append(label)
        return tuple(labels)

    def search_query(self, text: str) -> str:
        """The part of a question worth searching memory with (the review, description or article)."""
        if self.number == "1":
            m = re.search(r"title\s+\"([^\"]+)\"", text, re.IGNORECASE)
            return m.group(1) if m else text
        markers = {"3": ("review:",), "2M": ("description:",), "2N": ("article:",)}[self.number]
        found = _after_marker(text, markers)
        return _clip(found if found else text, self.max_chars)

    # ---------------------------------------------------------------- memories
    def _query_response(self, entry: LampProfileEntry) -> tuple[str, str]:
        def need(key: str) -> str:
            value = entry.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{self.name} profile entry {entry.id!r} has no {key!r}", field=f"profile.{key}")
            return str(value).strip()

        if self.number == "3":
            return need("text"), need("score")
        if self.number == "2M":
            return need("description"), need("tag")
        if self.number == "2N":
            return need("text"), need("category")
        title = need("title")
        return title, str(entry.get("abstract") or title).strip()

    def memory_records(self, example: LampExample) -> list[MemoryRecord]:
        """The example's profile as episodic memory (time from the entry's date; the entry's other fields as
        metadata). Memory ids are the profile ids, made unique within the example."""
        records = []
        seen: dict[str, int] = {}
        for entry in example.profile:
            query, response = self._query_response(entry)
            n = seen.get(entry.id, 0)
            seen[entry.id] = n + 1
            mid = entry.id if n == 0 else f"{entry.id}#{n}"
            meta: dict[str, Any] = {
                k: v for k, v in entry.fields.items() if k not in ("text", "description") and _jsonable(v)
            }
            records.append(
                MemoryRecord(
                    mid,
                    _clip(query, self.max_chars),
                    _clip(response, 400),
                    entry.date.timestamp() if entry.date else None,
                    None,
                    meta,
                )
            )
        return records

    # ---------------------------------------------------------------- alignment batches
    def question_for(self, record: MemoryRecord, labels: Sequence[str] = ()) -> str:
        """A past interaction asked again as a question of this task (for simulated answers)."""
        if self.number == "3":
            return f"What score from 1 to 5 did the user give the product in this review? review: {record.query}"
        if self.number == "2M":
            tags = ", ".join(labels or LAMP2M_TAGS)
            return f"Which one tag among [{tags}] would the user give this movie? description: {record.query}"
        if self.number == "2N":
            cats = ", ".join(labels or LAMP2N_CATEGORIES)
            return f"Which one category among [{cats}] fits this article? article: {record.query}"
        return f'Which paper title is by the author of "{record.query}"? Answer with [1] or [2].'

    def alignment_batch(
        self, records: Sequence[MemoryRecord], n: int, labels: Sequence[str] = (), *, other_titles: Sequence[str] = ()
    ) -> list[AlignmentExample]:
        """The latest ``n`` interactions (oldest first) as alignment examples. LaMP-1 needs ``other_titles`` from
        other users for its negative choice and at least two own papers."""
        # undated entries count as the oldest; ties keep profile order
        ordered = [
            r
            for _, r in sorted(
                enumerate(records), key=lambda t: (t[1].timestamp is not None, t[1].timestamp or 0.0, t[0])
            )
        ]
        latest = ordered[-n:] if n > 0 else []
        out = []
        for i, r in enumerate(latest):
            if self.number == "1":
                own = [x for x in ordered if x.memory_id != r.memory_id]
                if not own or not other_titles:
                    continue
                positive = own[(len(own) - 1 - i) % len(own)].query
                negative = other_titles[i % len(other_titles)]
                first_pos = i % 2 == 0
                a, b = (positive, negative) if first_pos else (negative, positive)
                question = (
                    f'For an author who has written the paper with the title "{r.query}", which reference is '
                    f'related? [1]: "{a}" [2]: "{b}"'
                )
                out.append(AlignmentExample(r.memory_id, question, "[1]" if first_pos else "[2]", r.timestamp, r.query))
            else:
                out.append(
                    AlignmentExample(r.memory_id, self.question_for(r, labels), r.response, r.timestamp, r.query)
                )
        return out


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def get_task(task: str | None) -> LampTask:
    return LampTask(task_number(task))


# ---------------------------------------------------------------- metrics


def rating_value(answer: str | None) -> float | None:
    if answer is None:
        return None
    m = re.fullmatch(r"\s*([1-5](?:\.0+)?)\s*", str(answer))
    return float(m.group(1)) if m else None


def official_rating(answer: str | None, gold: float) -> float:
    """LaMP-3's rule: a number is taken as given; anything else counts as the scale end farthest from the truth."""
    value = rating_value(answer)
    if value is not None:
        return value
    return 1.0 if abs(1 - gold) > abs(5 - gold) else 5.0


def lamp_metrics(
    task: LampTask,
    golds: Sequence[str],
    preds: Sequence[str | None],
    *,
    labels: Sequence[str] = (),
    unparsable: Literal["official", "drop"] = "official",
    expectations: Sequence[float | None] = (),
) -> dict[str, float]:
    """Accuracy and macro-F1 (classification) or MAE and RMSE (LaMP-3), plus the share of unreadable answers.
    For ratings with probability scoring, ``expectations`` adds the MAE/RMSE of the expected rating."""
    n = len(golds)
    if n == 0 or len(preds) != n:
        raise ValueError("golds and preds must be non-empty and of the same length")
    if task.is_rating:
        g = [float(x) for x in golds]
        values = [rating_value(p) for p in preds]
        bad = sum(v is None for v in values)
        if unparsable == "drop":
            pairs = [(a, b) for a, b in zip(g, values, strict=True) if b is not None]
            if not pairs:
                return {"mae": float("nan"), "rmse": float("nan"), "unparsable": bad / n, "n": float(n)}
            gt, pv = [a for a, _ in pairs], [b for _, b in pairs]
        else:
            gt, pv = g, [official_rating(p, y) for p, y in zip(preds, g, strict=True)]
        out = {"mae": mae(gt, pv), "rmse": rmse(gt, pv), "unparsable": bad / n, "n": float(n)}
        exp = [(a, e) for a, e in zip(g, expectations, strict=False) if e is not None]
        if exp and len(exp) == n:
            out["mae_expected"] = mae([a for a, _ in exp], [e for _, e in exp])
            out["rmse_expected"] = rmse([a for a, _ in exp], [e for _, e in exp])
        return out
    label_list = list(labels) or list(task.default_labels())
    cleaned = [p if p in label_list else "\u0000unparsable" for p in preds]
    bad = sum(p not in label_list for p in preds)
    return {
        "accuracy": accuracy(list(golds), cleaned),
        "f1": macro_f1(list(golds), cleaned, labels=label_list),
        "unparsable": bad / n,
        "n": float(n),
    }
