"""End-to-end demos behind ``personalens demo`` (the PersonaX flow) and ``personalens predict`` (one persona from a
history, then held-out ratings predicted from it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from personalens.data import ColumnMap, Dataset, load_movielens, load_table
from personalens.evaluation.metrics import roc_auc
from personalens.jobs import BuildReport, PersonaXBuilder
from personalens.llm.base import ChatModel, Usage
from personalens.prediction import RatingPrediction, predict_ratings
from personalens.profiling import Persona, summarize_history
from personalens.retrieval import PersonaIndex


def bundled_demo_file() -> Path:
    """The invented demo user shipped with the package (one CSV row per rating)."""
    return Path(str(resources.files("personalens") / "_assets" / "demo" / "demo_user.csv"))


@dataclass(slots=True)
class DemoResult:
    user_id: str
    history_size: int
    persona: Persona
    predictions: list[tuple[str, float, float]]  # (title, actual rating, expected predicted rating)
    auc: float | None
    usage: Usage
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "history_size": self.history_size,
            "persona": self.persona.text,
            "persona_leaked_titles": list(self.persona.leaked_titles),
            "predictions": [{"title": t, "actual": a, "predicted": round(p, 3)} for t, a, p in self.predictions],
            "auc_liked_vs_disliked": self.auc,
            "usage": self.usage.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def run_rating_demo(
    model: ChatModel,
    dataset: Dataset,
    user_id: str,
    *,
    holdout: int = 8,
    max_history: int = 40,
    predict_scale: tuple[float, float, float] = (1, 5, 1),
    on_item: Callable[[int, RatingPrediction], None] | None = None,
) -> DemoResult:
    """Hold out the user's last ``holdout`` ratings, profile the rest, predict the held-out ratings.

    The held-out items never reach the persona prompt. AUC compares items rated above the scale's middle with items
    rated below it, when both kinds are held out. Predictions use ``predict_scale`` (whole stars by default: one
    scoring request per item); AUC only needs their order.
    """
    started = time.perf_counter()
    history, held_out = dataset.history(user_id).split_last(holdout)
    persona = summarize_history(model, history.interactions, dataset.items, max_items=max_history)
    items = [dataset.item(x.item_id) for x in held_out]
    scale = dataset.rating_scale or (1.0, 5.0, 1.0)
    predictions, usage = predict_ratings(model, persona.text, items, scale=predict_scale, on_item=on_item)
    middle = (scale[0] + scale[1]) / 2
    labels = [x.rating > middle for x in held_out if x.rating is not None and x.rating != middle]
    scores = [
        p.expected for x, p in zip(held_out, predictions, strict=True) if x.rating is not None and x.rating != middle
    ]
    auc = roc_auc(labels, scores) if len(set(labels)) == 2 else None
    rows = [
        (dataset.item(x.item_id).title, float(x.rating or 0.0), p.expected)
        for x, p in zip(held_out, predictions, strict=True)
    ]
    return DemoResult(user_id, len(history), persona, rows, auc, persona.usage + usage, time.perf_counter() - started)


def load_demo_dataset(directory: Path | None = None) -> Dataset:
    """A MovieLens directory when given, else the bundled demo user."""
    if directory is not None:
        return load_movielens(directory)
    columns = ColumnMap(
        user="user", item="item", rating="rating", timestamp="timestamp", title="title", item_fields=("genres",)
    )
    return load_table(bundled_demo_file(), columns=columns, name="demo", rating_scale=(1.0, 5.0, 1.0))


@dataclass(slots=True)
class PersonaXDemoRow:
    user_id: str
    target_title: str
    actual: float | None
    cluster: int
    cosine: float
    persona: str
    predicted: float
    n_personas: int

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "target": self.target_title,
            "actual_rating": self.actual,
            "retrieved_cluster": self.cluster,
            "cosine": round(self.cosine, 4),
            "persona": self.persona,
            "predicted_rating": round(self.predicted, 3),
            "personas_stored": self.n_personas,
        }


def run_personax_demo(
    builder: PersonaXBuilder,
    dataset: Dataset,
    user_ids: Sequence[str],
) -> tuple[BuildReport, list[PersonaXDemoRow]]:
    """The PersonaX flow on a few users: build every user's personas offline with their last interaction held out,
    then, for that held-out target, retrieve the persona whose cluster centroid is nearest (no LLM call) and
    predict the target's rating from it by probability scoring."""
    if builder.config.holdout < 1:
        raise ValueError("the demo needs holdout >= 1 so the target is not in the build")
    report = builder.run(dataset, user_ids)
    fields = builder.config.item_fields
    index = PersonaIndex(embedder_id=builder.embedder.model_id)
    rows = []
    for outcome in report.outcomes:
        if outcome.status == "failed":
            continue
        persona_set = builder.store.current(outcome.user_id)
        if persona_set is None:
            continue
        index.add(persona_set)
        target = dataset.history(outcome.user_id).interactions[-builder.config.holdout]
        item = dataset.item(target.item_id)
        found = index.retrieve(outcome.user_id, builder.embedder.embed([item.text(fields)])[0], k=1)[0]
        predictions, _ = predict_ratings(builder.model, found.text, [item], item_fields=fields)
        rows.append(
            PersonaXDemoRow(
                outcome.user_id,
                item.title,
                target.rating,
                found.cluster,
                float(found.score),
                found.text,
                predictions[0].expected,
                len(persona_set.personas),
            )
        )
    return report, rows
