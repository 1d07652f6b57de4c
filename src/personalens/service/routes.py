"""The HTTP endpoints. Every ``/v1`` route resolves the caller's tenant from the API key first and then only ever
touches that tenant's resources; a user or job of another tenant is therefore indistinguishable from one that does
not exist (404)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse

from personalens.errors import PersonaLensError, StoreError
from personalens.retrieval import DimensionMismatchError, UnknownUserError
from personalens.service import schemas as s
from personalens.service.chat import agent_reply
from personalens.service.errors import ApiError, not_found
from personalens.service.jobs import QueueFull
from personalens.service.state import ServiceState, service_state
from personalens.service.tenantdb import BehaviourRow
from personalens.service.tenants import Tenant
from personalens.store import PersonaSet

log = logging.getLogger("personalens.service")

State = Annotated[ServiceState, Depends(service_state)]
UserPath = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="User id.")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": s.ErrorOut, "description": "Missing or unknown API key."},
    404: {"model": s.ErrorOut, "description": "No such user (or job) for this tenant."},
    422: {"model": s.ErrorOut, "description": "Invalid request; `details` lists each field path."},
}


def _api_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def current_tenant(request: Request, state: State) -> Tenant:
    """The tenant whose API key came with the request (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    name = state.keys.authenticate(_api_key(request))
    if name is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or unknown API key",
            headers={"WWW-Authenticate": 'Bearer realm="personalens"'},
        )
    try:
        return state.tenants.get(name)
    except PersonaLensError as exc:
        log.error("tenant %s: cannot open its stores: %s", name, exc)
        raise ApiError(503, "store_unavailable", "the tenant's store cannot be opened; try again later") from None


TenantDep = Annotated[Tenant, Depends(current_tenant)]

public = APIRouter()
v1 = APIRouter(prefix="/v1", responses=ERRORS)


# ---------------------------------------------------------------- probes and docs


@public.get("/healthz", tags=["probes"], summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public.get(
    "/readyz",
    tags=["probes"],
    summary="Ready to serve: keys readable, every tenant's stores open, a model configured",
    responses={503: {"model": s.ErrorOut, "description": "Not ready; `details.reasons` says why."}},
)
def readyz(state: State) -> Any:
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    if state.keys.error:
        reasons.append(f"keys file: {state.keys.error}")
    tenants = state.keys.tenants()
    checks["tenants"] = len(tenants)
    for name in tenants:
        try:
            state.tenants.get(name)
        except PersonaLensError as exc:
            reasons.append(f"tenant {name}: {exc}")
    try:
        if state.model.built:
            checks["model"] = describe_model(state)
        else:
            backend = state.config.settings.llm.resolved_backend()
            checks["model"] = f"{backend} (loaded on first use)"
    except PersonaLensError as exc:
        reasons.append(f"model: {exc}")
    if not state.runner.alive():
        reasons.append("the job worker is not running")
    if reasons:
        raise ApiError(503, "not_ready", "the service is not ready", {"reasons": reasons, "checks": checks})
    return {"status": "ready", "checks": checks}


def describe_model(state: ServiceState) -> str:
    model = state.model.peek()
    return "not loaded" if model is None else model.model_id


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
code,pre{{background:#f4f4f4;padding:.1rem .3rem}}h2{{margin-top:2rem}}.m{{font-weight:bold;display:inline-block;
width:4.5rem}}</style></head><body>
<h1>{title} API</h1>
<p>The full OpenAPI 3 description is at <a href="/openapi.json"><code>/openapi.json</code></a> (load it into any
OpenAPI viewer). Authenticate with <code>Authorization: Bearer KEY</code> or <code>X-API-Key: KEY</code>; errors are
<code>{{"error": {{"code", "message", "details"}}}}</code>. This page needs no network access.</p>
<div id="routes">Loading /openapi.json …</div>
<script>
fetch("/openapi.json").then(r => r.json()).then(spec => {{
  const out = document.getElementById("routes"); out.textContent = "";
  for (const [path, ops] of Object.entries(spec.paths)) {{
    for (const [method, op] of Object.entries(ops)) {{
      const p = document.createElement("p");
      const m = document.createElement("span"); m.className = "m"; m.textContent = method.toUpperCase();
      const c = document.createElement("code"); c.textContent = path;
      p.append(m, c, document.createTextNode(" — " + (op.summary || "")));
      out.append(p);
    }}
  }}
}});
</script></body></html>"""


@public.get("/docs", include_in_schema=False, response_class=HTMLResponse)
def docs(state: State) -> HTMLResponse:
    return HTMLResponse(DOCS_PAGE.format(title=state.config.title))


# ---------------------------------------------------------------- helpers


def _current(tenant: Tenant, user: str) -> PersonaSet:
    persona_set = tenant.store.current(user)
    if persona_set is None:
        raise not_found()
    return persona_set


def _stored_persona_set(persona_set: PersonaSet, is_current: bool) -> s.PersonaSetOut:
    return s.PersonaSetOut(
        user=persona_set.user_id,
        version=persona_set.version,
        parent_version=persona_set.parent_version,
        creator=persona_set.creator,
        method=persona_set.method,
        config_hash=persona_set.config_hash,
        embedder_id=persona_set.embedder_id,
        created_at=persona_set.created_at,
        note=persona_set.note,
        is_current=is_current,
        personas=[
            s.StoredPersona(
                cluster=p.cluster,
                text=p.text,
                cluster_size=p.cluster_size,
                budget=p.budget,
                selected_item_ids=list(p.selected_item_ids),
                meta=p.meta,
            )
            for p in persona_set.personas
        ],
    )


# ---------------------------------------------------------------- behaviours


@v1.post(
    "/users/{user}/behaviours",
    tags=["behaviours"],
    summary="Append behaviours to the user's log (idempotent per event_id)",
    responses={413: {"model": s.ErrorOut, "description": "Body too large."}},
)
def ingest(user: UserPath, body: s.BehavioursIn, tenant: TenantDep, state: State) -> s.BehavioursOut:
    limit = state.config.max_behaviours
    if len(body.behaviours) > limit:
        raise ApiError(
            422,
            "validation_error",
            f"invalid request: body.behaviours: at most {limit} behaviours per request",
            [
                {
                    "path": "body.behaviours",
                    "loc": ["body", "behaviours"],
                    "message": f"at most {limit} behaviours per request, got {len(body.behaviours)}",
                    "type": "too_long",
                }
            ],
        )
    rows = [
        BehaviourRow(user, b.event_id, b.item_id, b.title, dict(b.fields), b.text, b.rating, b.label, b.timestamp)
        for b in body.behaviours
    ]
    added, duplicates = tenant.db.append_behaviours(user, rows)
    return s.BehavioursOut(user=user, added=added, duplicates=duplicates, total=tenant.db.count_behaviours(user))


# ---------------------------------------------------------------- jobs


@v1.post(
    "/jobs",
    tags=["jobs"],
    status_code=202,
    summary="Start a build or refine job over users' ingested behaviours",
    responses={503: {"model": s.ErrorOut, "description": "The job queue is full."}},
)
def start_job(body: Annotated[s.JobIn, Body()], tenant: TenantDep, state: State, response: Response) -> s.JobOut:
    users = list(dict.fromkeys(body.users))
    if len(users) > state.config.max_job_users:
        raise ApiError(
            422,
            "validation_error",
            f"invalid request: body.users: at most {state.config.max_job_users} users per job",
            [{"path": "body.users", "loc": ["body", "users"], "message": "too many users", "type": "too_long"}],
        )
    missing = [u for u in users if tenant.db.count_behaviours(u) == 0]
    if missing:
        raise ApiError(404, "not_found", "no behaviours for some users", {"users": missing})
    try:
        job_id = state.runner.submit(tenant, body.kind, users, body.options)
    except QueueFull as exc:
        raise ApiError(503, "queue_full", str(exc), headers={"Retry-After": "30"}) from None
    job = tenant.db.job(job_id)
    assert job is not None
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return s.JobOut(**job)


@v1.get("/jobs", tags=["jobs"], summary="The tenant's most recent jobs")
def list_jobs(tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> s.JobsOut:
    return s.JobsOut(jobs=[s.JobOut(**j) for j in tenant.db.jobs(limit=limit)])


@v1.get("/jobs/{job_id}", tags=["jobs"], summary="A job's status, progress, per-user outcome and usage")
def get_job(job_id: Annotated[str, Path(max_length=64)], tenant: TenantDep) -> s.JobOut:
    job = tenant.db.job(job_id)
    if job is None:
        raise not_found("job")
    return s.JobOut(**job)


# ---------------------------------------------------------------- retrieval


@v1.get(
    "/users/{user}/persona",
    tags=["personas"],
    summary="The user's persona that fits a target item (PersonaX retrieval, no LLM call)",
    responses={409: {"model": s.ErrorOut, "description": "The personas come from another embedding space."}},
)
def retrieve(
    user: UserPath,
    tenant: TenantDep,
    state: State,
    item: Annotated[str, Query(min_length=1, max_length=2000, description="The target item described as text.")],
    use: Annotated[Literal["centroid", "persona", "both"], Query()] = "centroid",
) -> s.RetrievalOut:
    try:
        embedder = state.embedder.get()
    except PersonaLensError as exc:
        log.error("the embedder cannot be built: %s", exc)
        raise ApiError(503, "embedder_unavailable", "the embedder is not available; try again later") from None
    if user not in tenant.index:
        persona_set = _current(tenant, user)
        if persona_set.embedder_id != embedder.model_id:
            raise ApiError(
                409,
                "embedder_mismatch",
                f"the personas were built with embedder {persona_set.embedder_id}, "
                f"the service uses {embedder.model_id}",
            )
        try:
            tenant.index.add(persona_set)
        except DimensionMismatchError as exc:
            raise ApiError(409, "embedder_mismatch", str(exc)) from None
    target = embedder.embed([item])[0]
    try:
        found = tenant.index.retrieve(user, target, k=1 << 16, use=use)
    except UnknownUserError:  # removed meanwhile (deleted, or a job just rewrote it)
        raise not_found() from None
    except (DimensionMismatchError, ValueError) as exc:
        raise ApiError(409, "retrieval_failed", str(exc)) from None
    best = found[0]
    return s.RetrievalOut(
        user=user,
        version=best.version,
        item=item,
        persona=s.PersonaOut(cluster=best.cluster, text=best.text, score=best.score, matched=best.matched),
        similarities=[s.Similarity(cluster=r.cluster, score=r.score) for r in sorted(found, key=lambda r: r.cluster)],
    )


# ---------------------------------------------------------------- versions


@v1.get("/users/{user}/versions", tags=["personas"], summary="Every stored version of the user's personas")
def versions(user: UserPath, tenant: TenantDep) -> s.VersionsOut:
    rows = tenant.store.versions(user)
    if not rows:
        raise not_found()
    return s.VersionsOut(user=user, versions=[s.VersionOut(**asdict(v)) for v in rows])


@v1.get("/users/{user}/versions/{version}", tags=["personas"], summary="One version of the user's personas")
def version(user: UserPath, version: Annotated[int, Path(ge=1)], tenant: TenantDep) -> s.PersonaSetOut:
    persona_set = tenant.store.get(user, version)
    if persona_set is None:
        raise not_found("user or version")
    current = tenant.store.current(user)
    return _stored_persona_set(persona_set, current is not None and current.version == version)


@v1.get("/users/{user}/diff", tags=["personas"], summary="What changed between two versions")
def diff(
    user: UserPath,
    tenant: TenantDep,
    a: Annotated[int, Query(ge=1, description="The older version.")],
    b: Annotated[int, Query(ge=1, description="The newer version.")],
) -> dict[str, Any]:
    if tenant.store.get(user, a) is None or tenant.store.get(user, b) is None:
        raise not_found("user or version")
    return tenant.store.diff(user, a, b).to_dict()


@v1.post("/users/{user}/rollback", tags=["personas"], summary="Make a new current version copying an earlier one")
def rollback(user: UserPath, body: s.RollbackIn, tenant: TenantDep) -> s.RollbackOut:
    if tenant.store.get(user, body.version) is None:
        raise not_found("user or version")
    try:
        copy = tenant.store.rollback(user, body.version, creator="service-rollback")
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    finally:
        tenant.index.remove(user)
    return s.RollbackOut(user=user, version=copy.version, copied_from=body.version)


# ---------------------------------------------------------------- chat


@v1.post(
    "/users/{user}/chat",
    tags=["agent"],
    summary="Chat with the user's agent (persona as system prompt, memory search and tools; the steps are returned)",
)
def chat(user: UserPath, body: s.ChatIn, tenant: TenantDep, state: State) -> s.ChatOut:
    persona_set = tenant.store.current(user)
    if persona_set is None and tenant.store.count_memories(user) == 0:
        raise not_found()
    wiki = None
    if state.config.wikipedia_url:
        from personalens.agent.wikipedia import WikipediaClient

        wiki = WikipediaClient(state.config.wikipedia_url)
    try:
        reply = agent_reply(
            state.model.get(),
            state.embedder.get(),
            tenant.store,
            user,
            persona_set,
            body.message,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            wikipedia=wiki,
        )
    except PersonaLensError as exc:
        log.warning("chat for a user of tenant %s failed: %s", tenant.name, exc)
        raise ApiError(503, "llm_unavailable", "the language model could not answer; try again later") from None
    return s.ChatOut(
        user=user,
        answer=reply.text,
        version=reply.version,
        cluster=reply.cluster,
        model=reply.model,
        usage=reply.usage.to_dict(),
        steps=reply.steps,
        memories=reply.memories,
    )


@v1.post("/users/{user}/memories", tags=["agent"], summary="Add episodic memories (idempotent by id)")
def add_memories(user: UserPath, body: s.MemoriesIn, tenant: TenantDep, state: State) -> s.MemoriesOut:
    from personalens.agent.memory import EpisodicMemory
    from personalens.store.models import MemoryRecord

    records = [
        MemoryRecord(m.id, m.query, m.response, m.timestamp, m.session, dict(m.metadata or {})) for m in body.memories
    ]
    try:
        added = EpisodicMemory(tenant.store, state.embedder.get(), user).add(records)
    except StoreError as exc:
        raise ApiError(422, "invalid_memories", str(exc)) from None
    return s.MemoriesOut(user=user, added=added, total=tenant.store.count_memories(user))


@v1.get("/users/{user}/memories", tags=["agent"], summary="The user's episodic memories, newest first")
def list_memories(
    user: UserPath, tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> s.MemoryListOut:
    total = tenant.store.count_memories(user)
    if total == 0 and not tenant.store.versions(user):
        raise not_found()
    records = tenant.store.memories(user, limit=limit, newest_first=True)
    return s.MemoryListOut(
        user=user,
        total=total,
        memories=[
            s.MemoryIn(
                id=r.memory_id,
                query=r.query,
                response=r.response,
                timestamp=r.timestamp,
                session=r.session,
                metadata=r.metadata or None,
            )
            for r in records
        ],
    )


# ---------------------------------------------------------------- delete


@v1.delete(
    "/users/{user}",
    tags=["users"],
    summary="Delete the user and all their data: personas, versions, behaviours, job records",
    responses={409: {"model": s.ErrorOut, "description": "A running job is writing this tenant's personas."}},
)
def delete_user(user: UserPath, tenant: TenantDep) -> s.DeleteOut:
    if not tenant.store.versions(user) and not tenant.db.has_user(user) and not tenant.store.count_memories(user):
        raise not_found()
    if not tenant.lock.acquire(timeout=30):
        raise ApiError(409, "busy", "a running job is writing this tenant's personas; try again when it finishes")
    try:
        persona_rows = tenant.store.delete_user(user)
        removed = tenant.db.delete_user(user)
        tenant.index.remove(user)
    finally:
        tenant.lock.release()
    return s.DeleteOut(user=user, deleted={"persona_rows": persona_rows, **removed})
