"""The persona explorer: a web page served by the service (``GET /explorer``, public HTML, CSS and JavaScript from
the package, no CDN) and the JSON endpoints it reads, all under ``/v1`` and all behind the tenant's API key like the
rest of the API (the page asks for the key and keeps it in the tab's ``sessionStorage``).

Views: a user's behaviours in 2-D with clusters, centroids, the selected sub-sequences and each cluster's persona
(``GET /v1/users/{user}/map``); which persona retrieval picks for a typed target item (the existing
``GET /v1/users/{user}/persona``); the versions as a timeline (``GET /v1/users/{user}/timeline``) with a word-level
diff of any two (``GET /v1/users/{user}/diff/words``) and roll back (the existing ``POST .../rollback``); and the
evaluation reports under ``ServiceConfig.reports_dir`` (``GET /v1/reports``, ``/v1/reports/view``,
``/v1/reports/file``), off unless that directory is configured. Reports are dataset-level results, the same for
every tenant: any valid key reads them.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from personalens.errors import PersonaLensError
from personalens.service import schemas as s
from personalens.service.errors import ApiError, not_found
from personalens.service.explorer_data import behaviour_map, persona_set_word_diff, timeline_entry
from personalens.service.reports import ReportLibrary, ReportNotFound
from personalens.service.routes import ERRORS, State, TenantDep, UserPath
from personalens.store import PersonaSet

log = logging.getLogger("personalens.service")

page = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/v1", responses=ERRORS, tags=["explorer"])

STATIC_FILES = {"explorer.js": "text/javascript; charset=utf-8", "explorer.css": "text/css; charset=utf-8"}
MAX_TIMELINE = 500
Version = Annotated[int, Query(ge=1, description="A version number.")]

# The page loads only its own script and style sheet; images of reports come as blob: URLs fetched with the key.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


# ---------------------------------------------------------------- response bodies


class UserSummary(BaseModel):
    user: str
    behaviours: int = Field(description="Ingested behaviours.")
    has_personas: bool


class UsersOut(BaseModel):
    total: int = Field(description="Users matching the filter (before paging).")
    users: list[UserSummary]


class MapPoint(BaseModel):
    item_id: str
    title: str
    text: str = Field(description="The item text that was embedded.")
    x: float | None
    y: float | None
    cluster: int | None
    assigned_by: Literal["selected", "nearest", "none"]
    similarity: float | None = Field(description="Cosine to the assigned cluster's centroid.")
    selected: bool = Field(description="In a cluster's selected sub-sequence (Persona.selected_item_ids).")
    rating: float | None
    liked: bool | None = Field(description="Counted as liked by the build's rule (None: not a build).")
    behaviours: int = Field(description="Behaviours with this item (the point shows the latest).")


class Point2D(BaseModel):
    x: float | None
    y: float | None


class MapCluster(BaseModel):
    cluster: int
    text: str
    words: int
    cluster_size: int
    budget: int
    selected_item_ids: list[str]
    members: int = Field(description="Behaviours on the map assigned to this cluster.")
    centroid: Point2D | None


class MapTarget(BaseModel):
    text: str
    x: float | None
    y: float | None
    cluster: int
    similarities: list[s.Similarity]


class MapOut(BaseModel):
    user: str
    version: int
    embedder_id: str
    same_space: bool
    warning: str | None
    projection: str
    explained_variance: list[float | None]
    assignment: str
    item_fields: list[str]
    truncated: bool
    clusters: list[MapCluster]
    points: list[MapPoint]
    target: MapTarget | None


class TimelineErrors(BaseModel):
    metric: str
    before: dict[str, float | None] | None
    after: dict[str, float | None] | None


class TimelineVersion(BaseModel):
    version: int
    parent_version: int | None
    creator: str
    method: str
    note: str
    created_at: float
    config_hash: str
    embedder_id: str
    is_current: bool
    kind: Literal["build", "refinement", "alignment", "rollback", "manual", "other"]
    label: str
    n_personas: int
    clusters: list[int]
    words: int
    errors: TimelineErrors | None = Field(description="Errors before and after, when the version records them.")
    step: dict[str, Any] = Field(description="Strategy, round, window, committed, rewards, gate (when recorded).")
    config: dict[str, Any] = Field(description="The version's configuration, flattened to dotted keys.")


class TimelineOut(BaseModel):
    user: str
    current: int | None
    truncated: bool
    versions: list[TimelineVersion]


class DiffOpOut(BaseModel):
    op: Literal["equal", "insert", "delete"]
    text: str


class ClusterDiff(BaseModel):
    cluster: int
    status: Literal["changed", "unchanged", "added", "removed"]
    inserted_words: int
    deleted_words: int
    ops: list[DiffOpOut]


class DiffSide(BaseModel):
    version: int
    creator: str
    method: str
    note: str
    kind: str


class WordDiffOut(BaseModel):
    user: str
    from_: DiffSide = Field(alias="from")
    to: DiffSide
    inserted_words: int
    deleted_words: int
    clusters: list[ClusterDiff]


class ReportSummary(BaseModel):
    name: str
    title: str
    markdown: str
    images: list[str]
    modified: float


class ReportsOut(BaseModel):
    enabled: bool = Field(description="False when the service has no reports directory configured.")
    reports: list[ReportSummary]


class ReportOut(ReportSummary):
    html: str = Field(description="The Markdown rendered to HTML (escaped; images as data-report-file tags).")


# ---------------------------------------------------------------- the page


def _static(name: str) -> bytes:
    return (resources.files("personalens.service") / "_explorer" / name).read_bytes()


@page.get("/explorer", response_class=HTMLResponse)
def explorer_page(state: State) -> HTMLResponse:
    text = _static("index.html").decode("utf-8").replace("{{title}}", html.escape(state.config.title))
    return HTMLResponse(
        text,
        headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


@page.get("/explorer/static/{name}")
def explorer_static(name: Annotated[str, Path(max_length=64)]) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise not_found("file")
    return Response(
        _static(name), media_type=media_type, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    )


# ---------------------------------------------------------------- users and maps


@api.get("/users", summary="The tenant's users (with personas, ingested behaviours or both), sorted by id")
def list_users(
    tenant: TenantDep,
    q: Annotated[str | None, Query(max_length=200, description="Only ids containing this (any case).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=1 << 31)] = 0,
) -> UsersOut:
    counts = dict(tenant.db.user_behaviour_counts())
    with_personas = set(tenant.store.users())
    names = sorted(with_personas | counts.keys())
    if q:
        needle = q.lower()
        names = [n for n in names if needle in n.lower()]
    return UsersOut(
        total=len(names),
        users=[
            UserSummary(user=n, behaviours=counts.get(n, 0), has_personas=n in with_personas)
            for n in names[offset : offset + limit]
        ],
    )


def _version(tenant: TenantDep, user: str, version: int | None) -> PersonaSet:
    if version is None:
        persona_set = tenant.store.current(user)
        if persona_set is None:
            raise not_found()
        return persona_set
    persona_set = tenant.store.get(user, version)
    if persona_set is None:
        raise not_found("user or version")
    return persona_set


@api.get(
    "/users/{user}/map",
    summary="The user's behaviours in 2-D with clusters, centroids, selected items and personas (PCA, no LLM call)",
)
def user_map(
    user: UserPath,
    tenant: TenantDep,
    state: State,
    version: Annotated[int | None, Query(ge=1, description="A version (default: the current one).")] = None,
    item: Annotated[
        str | None, Query(min_length=1, max_length=2000, description="A target item to place on the map.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000, description="Most items embedded (selected ones first).")] = 2000,
) -> MapOut:
    persona_set = _version(tenant, user, version)
    try:
        embedder = state.embedder.get()
    except PersonaLensError as exc:
        log.error("the embedder cannot be built: %s", exc)
        raise ApiError(503, "embedder_unavailable", "the embedder is not available; try again later") from None
    data = behaviour_map(persona_set, tenant.db.behaviours(user), embedder, target=item, limit=limit)
    return MapOut.model_validate(data)


# ---------------------------------------------------------------- versions


@api.get("/users/{user}/timeline", summary="Every version with what made it and, when recorded, errors before/after")
def timeline(user: UserPath, tenant: TenantDep) -> TimelineOut:
    rows = tenant.store.versions(user)
    if not rows:
        raise not_found()
    shown = rows[-MAX_TIMELINE:]
    versions = []
    current = None
    for info in rows:
        if info.is_current:
            current = info.version
    for info in shown:
        persona_set = tenant.store.get(user, info.version)
        if persona_set is not None:
            versions.append(TimelineVersion.model_validate(timeline_entry(persona_set, is_current=info.is_current)))
    return TimelineOut(user=user, current=current, truncated=len(rows) > len(shown), versions=versions)


@api.get("/users/{user}/diff/words", summary="A word-level diff of the persona texts of two versions")
def word_diff(
    user: UserPath,
    tenant: TenantDep,
    a: Annotated[int, Query(ge=1, description="The version to compare from.")],
    b: Annotated[int, Query(ge=1, description="The version to compare to.")],
) -> WordDiffOut:
    old, new = tenant.store.get(user, a), tenant.store.get(user, b)
    if old is None or new is None:
        raise not_found("user or version")
    return WordDiffOut.model_validate(persona_set_word_diff(old, new))


# ---------------------------------------------------------------- reports


def _library(state: State) -> ReportLibrary | None:
    root = state.config.reports_dir
    return None if root is None else ReportLibrary(root)


def _summary(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "title": info.title,
        "markdown": info.markdown,
        "images": list(info.images),
        "modified": info.modified,
    }


@api.get("/reports", summary="The evaluation reports under the service's reports directory (read-only)")
def list_reports(_tenant: TenantDep, state: State) -> ReportsOut:
    library = _library(state)
    if library is None:
        return ReportsOut(enabled=False, reports=[])
    return ReportsOut(enabled=True, reports=[ReportSummary(**_summary(r)) for r in library.list()])


ReportName = Annotated[str, Query(min_length=1, max_length=1000, description="The report folder, e.g. ml50-llm.")]


@api.get("/reports/view", summary="One report: its Markdown rendered to HTML and the images next to it")
def view_report(name: ReportName, _tenant: TenantDep, state: State) -> ReportOut:
    library = _library(state)
    if library is None:
        raise not_found("report")
    try:
        info, rendered = library.read(name)
    except ReportNotFound:
        raise not_found("report") from None
    return ReportOut(**_summary(info), html=rendered)


@api.get(
    "/reports/file",
    summary="An image of a report (PNG, SVG, JPEG, GIF, WebP)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The image."}},
)
def report_file(
    name: ReportName,
    path: Annotated[str, Query(min_length=1, max_length=1000, description="The file, relative to the report.")],
    _tenant: TenantDep,
    state: State,
) -> FileResponse:
    library = _library(state)
    if library is None:
        raise not_found("file")
    try:
        target, media_type = library.file(name, path)
    except ReportNotFound:
        raise not_found("file") from None
    return FileResponse(
        target,
        media_type=media_type,
        headers={
            "Content-Security-Policy": FILE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


__all__ = ["api", "page"]
