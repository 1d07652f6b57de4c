"""Request and response bodies (pydantic v2). Requests refuse unknown fields, so a typo is a 422 naming the field
rather than a silently ignored option."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

UserId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
ShortText = Annotated[str, Field(max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class Behaviour(_Strict):
    """One interaction of the user with an item."""

    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        None, description="Client-chosen id; a behaviour whose event_id is already stored for the user is skipped."
    )
    item_id: Annotated[str, Field(min_length=1, max_length=200)]
    title: ShortText = ""
    fields: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=dict, max_length=32, description='Named item fields, e.g. {"genres": "Sci-Fi|Thriller"}.'
    )
    text: Annotated[str, Field(max_length=8000)] | None = Field(None, description="The user's own text (a review).")
    rating: Annotated[float, Field(ge=-1e6, le=1e6)] | None = None
    label: bool | None = Field(None, description="Like (true) or dislike (false), when there is no rating.")
    timestamp: Annotated[float, Field(ge=0, le=1e11)] | None = Field(None, description="Unix seconds.")

    _check_rating = field_validator("rating", "timestamp")(_finite)


class BehavioursIn(_Strict):
    behaviours: list[Behaviour] = Field(min_length=1)


class BehavioursOut(BaseModel):
    user: str
    added: int
    duplicates: int
    total: int


class BuildOptions(_Strict):
    """PersonaX build settings (see ``personalens build``)."""

    method: Literal["summarize", "reflect"] = "summarize"
    clusters: Annotated[int, Field(ge=1, le=64)] | None = Field(None, description="Target cluster count m.")
    alpha: Annotated[float, Field(ge=1.0, le=3.0)] = 1.06
    ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    linkage: Literal["complete", "ward"] = "complete"
    max_words: Annotated[int, Field(ge=20, le=400)] = 100
    domain: Annotated[str, Field(min_length=1, max_length=64)] = "movies"
    item_fields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["genres"], max_length=16
    )
    like_above: float = 3.0
    dislike_below: float = 3.0
    rating_scale: tuple[float, float, float] = (1.0, 5.0, 1.0)


class RefineOptions(_Strict):
    """DeePer refinement settings (see ``personalens refine --data``): windows of ``window`` rated behaviours."""

    window: Annotated[int, Field(ge=1, le=200)] = 10
    strategy: Literal["refine", "slide_regen", "full_regen", "inc_update", "hier_merge"] = "refine"
    verified: bool = False
    candidates: Annotated[int, Field(ge=1, le=8)] = 4
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    rounds: Annotated[int, Field(ge=1, le=100)] | None = None
    initial: Literal["window", "current"] = "window"
    min_words: Annotated[int, Field(ge=1, le=1000)] = 200
    max_words: Annotated[int, Field(ge=20, le=1000)] = 320
    predictor: Literal["probability", "structured"] = "probability"
    domain: Annotated[str, Field(min_length=1, max_length=64)] = "movies"
    item_fields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["genres"], max_length=16
    )
    rating_scale: tuple[float, float, float] = (1.0, 5.0, 1.0)


class BuildJobIn(_Strict):
    kind: Literal["build"]
    users: list[UserId] = Field(min_length=1)
    options: BuildOptions = Field(default_factory=lambda: BuildOptions.model_validate({}))


class RefineJobIn(_Strict):
    kind: Literal["refine"]
    users: list[UserId] = Field(min_length=1)
    options: RefineOptions = Field(default_factory=lambda: RefineOptions.model_validate({}))


JobIn = Annotated[BuildJobIn | RefineJobIn, Field(discriminator="kind")]


class JobUser(BaseModel):
    user: str
    status: str
    error: str | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed", "stopped", "interrupted"]
    options: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict[str, int]
    usage: dict[str, Any] | None = None
    seconds: float | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    users: list[JobUser]


class JobsOut(BaseModel):
    jobs: list[JobOut]


class Similarity(BaseModel):
    cluster: int
    score: float


class PersonaOut(BaseModel):
    cluster: int
    text: str
    score: float
    matched: str


class RetrievalOut(BaseModel):
    user: str
    version: int
    item: str
    persona: PersonaOut
    similarities: list[Similarity] = Field(description="Cosine of the target item to every cluster persona.")


class VersionOut(BaseModel):
    version: int
    parent_version: int | None
    creator: str
    method: str
    config_hash: str
    created_at: float
    n_personas: int
    is_current: bool
    note: str


class VersionsOut(BaseModel):
    user: str
    versions: list[VersionOut]


class StoredPersona(BaseModel):
    cluster: int
    text: str
    cluster_size: int
    budget: int
    selected_item_ids: list[str]
    meta: dict[str, Any]


class PersonaSetOut(BaseModel):
    user: str
    version: int
    parent_version: int | None
    creator: str
    method: str
    config_hash: str
    embedder_id: str
    created_at: float
    note: str
    is_current: bool
    personas: list[StoredPersona]


class RollbackIn(_Strict):
    version: Annotated[int, Field(ge=1)]


class RollbackOut(BaseModel):
    user: str
    version: int
    copied_from: int


class ChatIn(_Strict):
    message: Annotated[str, Field(min_length=1, max_length=8000)]
    max_tokens: Annotated[int, Field(ge=1, le=2048)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0


class ChatOut(BaseModel):
    user: str
    answer: str
    version: int
    cluster: int
    model: str
    usage: dict[str, Any]
    steps: list[dict[str, Any]] = []
    memories: list[str] = []


class MemoryIn(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    query: Annotated[str, Field(min_length=1, max_length=8000)]
    response: Annotated[str, Field(min_length=1, max_length=8000)]
    timestamp: Annotated[float, Field(ge=0, le=1e11)] | None = None
    session: Annotated[str, Field(max_length=200)] | None = None
    metadata: dict[str, str | int | float | bool | None] | None = None


class MemoriesIn(_Strict):
    memories: Annotated[list[MemoryIn], Field(min_length=1, max_length=1000)]


class MemoriesOut(BaseModel):
    user: str
    added: int
    total: int


class MemoryListOut(BaseModel):
    user: str
    total: int
    memories: list[MemoryIn]


class DeleteOut(BaseModel):
    user: str
    deleted: dict[str, int]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorDetail
