"""The explorer's page and JSON endpoints through FastAPI's TestClient (scripted LLM, hashed embedder): users, the
2-D map, the timeline, the word diff, the reports directory (read-only, no path traversal), keys and tenants."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from _explorer_helpers import EDIT_NEW, EDIT_OLD, make_explorer_app, make_reports, populate
from _service_helpers import auth, behaviours
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from personalens.cli import app as cli_app
from personalens.data.records import Item, freeze_fields
from personalens.embed.testing import HashEmbedder
from personalens.llm.testing import ScriptedChatModel
from personalens.service import ServiceConfig, create_app
from personalens.store import PersonaStore


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One populated data directory for the module; every test works on its own copy."""
    data_dir = tmp_path_factory.mktemp("explorer-template")
    return data_dir, populate(data_dir)


@pytest.fixture
def env(template, tmp_path) -> Iterator[tuple[TestClient, dict[str, str], Path]]:
    source, keys = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    reports = make_reports(tmp_path / "reports")
    with TestClient(make_explorer_app(data_dir, reports)) as client:
        yield client, keys, data_dir


def get(client: TestClient, url: str, key: str, **params: Any) -> Any:
    return client.get(url, params=params or None, headers=auth(key))


# ---------------------------------------------------------------- the page


def test_the_page_is_public_and_needs_nothing_from_outside(env):
    client, _, _ = env
    page = client.get("/explorer")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert '<script src="/explorer/static/explorer.js"' in page.text and "PersonaLens" in page.text
    js = client.get("/explorer/static/explorer.js")
    css = client.get("/explorer/static/explorer.css")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for text in (page.text, js.text, css.text):
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, never fetched
        assert "@import" not in text and "fonts." not in text
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline: the CSP forbids it
    assert "sessionStorage" in js.text and "Authorization" in js.text and "localStorage" not in js.text


@pytest.mark.parametrize("name", ["x.js", "index.html", "..%2Fexplorer.py", "explorer.js.map"])
def test_only_the_explorer_files_are_served(env, name):
    client, _, _ = env
    r = client.get(f"/explorer/static/{name}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_page_is_in_the_openapi_description_only_as_data_endpoints(env):
    client, _, _ = env
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/users",
        "/v1/users/{user}/map",
        "/v1/users/{user}/timeline",
        "/v1/users/{user}/diff/words",
        "/v1/reports",
        "/v1/reports/view",
        "/v1/reports/file",
    ):
        assert path in paths
    assert "/explorer" not in paths


NEW_ENDPOINTS = [
    "/v1/users",
    "/v1/users/alice/map",
    "/v1/users/alice/timeline",
    "/v1/users/alice/diff/words?a=1&b=2",
    "/v1/reports",
    "/v1/reports/view?name=toy",
    "/v1/reports/file?name=toy&path=fig3_ratio.png",
]


@pytest.mark.parametrize("url", NEW_ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}])
def test_every_explorer_endpoint_needs_a_valid_key(env, url, headers):
    client, keys, _ = env
    r = client.get(url, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get(url, headers={"X-API-Key": keys["acme"]}).status_code == 200


# ---------------------------------------------------------------- users


def test_users_are_the_tenants_own(env):
    client, keys, _ = env
    client.post("/v1/users/carol/behaviours", json={"behaviours": behaviours("c")[:3]}, headers=auth(keys["acme"]))
    out = get(client, "/v1/users", keys["acme"]).json()
    assert out == {
        "total": 3,
        "users": [
            {"user": "alice", "behaviours": 15, "has_personas": True},
            {"user": "bob", "behaviours": 15, "has_personas": True},
            {"user": "carol", "behaviours": 3, "has_personas": False},
        ],
    }
    assert [u["user"] for u in get(client, "/v1/users", keys["acme"], q="OB").json()["users"]] == ["bob"]
    page = get(client, "/v1/users", keys["acme"], limit=1, offset=1).json()
    assert page["total"] == 3 and [u["user"] for u in page["users"]] == ["bob"]
    assert get(client, "/v1/users", keys["beta"]).json() == {"total": 0, "users": []}
    assert get(client, "/v1/users", keys["acme"], limit=0).status_code == 422


# ---------------------------------------------------------------- the map


def _item_vectors(embedder: HashEmbedder, points: list[dict[str, Any]], rows: dict[str, Any]) -> np.ndarray:
    texts = []
    for p in points:
        b = rows[p["item_id"]]
        texts.append(Item(b["item_id"], b["title"], freeze_fields(b["fields"].items())).text(("genres",)))
    return embedder.embed(texts)


def test_map_of_a_multi_persona_build(env):
    client, keys, data_dir = env
    r = get(client, "/v1/users/alice/map", keys["acme"], version=1)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == 1 and out["same_space"] and out["warning"] is None and not out["truncated"]
    assert len(out["points"]) == 15 and len(out["clusters"]) == 3
    with PersonaStore(data_dir / "acme" / "personas.sqlite") as store:
        stored = store.get("alice", 1)
    assert stored is not None
    selected = {i: p.cluster for p in stored.personas for i in p.selected_item_ids}
    assert {p["item_id"] for p in out["points"] if p["selected"]} == set(selected)
    # every point: its selecting cluster, else the nearest centroid by cosine, recomputed here independently
    rows = {b["item_id"]: b for b in behaviours("alice")}
    vectors = _item_vectors(HashEmbedder(32), out["points"], rows)
    centroids = stored.centroids() / np.linalg.norm(stored.centroids(), axis=1, keepdims=True)
    for point, vector in zip(out["points"], vectors, strict=True):
        if point["item_id"] in selected:
            assert (point["cluster"], point["assigned_by"]) == (selected[point["item_id"]], "selected")
        else:
            nearest = stored.personas[int(np.argmax(centroids @ vector))].cluster
            assert (point["cluster"], point["assigned_by"]) == (nearest, "nearest")
        assert point["liked"] == (point["rating"] > 3)
        assert point["text"].endswith(f"genres: {rows[point['item_id']]['fields']['genres']}")
    for cluster, persona in zip(out["clusters"], stored.personas, strict=True):
        assert cluster["text"] == persona.text and cluster["selected_item_ids"] == list(persona.selected_item_ids)
        assert cluster["centroid"] is not None and cluster["members"] == sum(
            p["cluster"] == persona.cluster for p in out["points"]
        )
    assert sum(out["explained_variance"]) <= 1.0 + 1e-9
    assert get(client, "/v1/users/alice/map", keys["acme"], version=1).json() == out  # deterministic


def test_map_places_a_target_where_retrieval_picks(env):
    client, keys, _ = env
    item = "Galaxy War; genres: space"
    out = get(client, "/v1/users/alice/map", keys["acme"], item=item).json()
    assert out["version"] == 2
    retrieval = get(client, "/v1/users/alice/persona", keys["acme"], item=item).json()
    assert out["target"]["cluster"] == retrieval["persona"]["cluster"]
    ours = {s["cluster"]: s["score"] for s in out["target"]["similarities"]}
    theirs = {s["cluster"]: s["score"] for s in retrieval["similarities"]}
    assert ours.keys() == theirs.keys() and all(abs(ours[c] - theirs[c]) < 1e-4 for c in ours)
    assert out["target"]["x"] is not None and "space" in retrieval["persona"]["text"]


def test_map_of_a_refinement_version_and_missing_ones(env):
    client, keys, _ = env
    out = get(client, "/v1/users/bob/map", keys["acme"]).json()
    assert out["version"] == 3 and len(out["clusters"]) == 1
    assert all(p["cluster"] == 0 and p["liked"] is None for p in out["points"])  # one persona, no build rule
    for url, params in [
        ("/v1/users/alice/map", {"version": 9}),
        ("/v1/users/nobody/map", {}),
        ("/v1/users/alice/map", {"version": 2**63}),
    ]:
        r = get(client, url, keys["acme"], **params)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    client.post("/v1/users/carol/behaviours", json={"behaviours": behaviours("c")[:3]}, headers=auth(keys["acme"]))
    assert get(client, "/v1/users/carol/map", keys["acme"]).status_code == 404  # behaviours, no personas yet
    assert get(client, "/v1/users/alice/map", keys["acme"], version=0).status_code == 422
    assert get(client, "/v1/users/alice/map", keys["acme"], limit=0).status_code == 422


def test_map_truncates_long_histories_keeping_the_selection(env):
    client, keys, _ = env
    out = get(client, "/v1/users/alice/map", keys["acme"], limit=6).json()
    assert out["truncated"] and len(out["points"]) == 6
    assert sum(p["selected"] for p in out["points"]) == 5


def test_map_from_another_embedding_space(template, tmp_path):
    source, keys = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    app = create_app(ServiceConfig(data_dir), model=ScriptedChatModel(["unused"]), embedder=HashEmbedder(16))
    with TestClient(app) as client:
        out = get(client, "/v1/users/alice/map", keys["acme"], item="space").json()
    assert not out["same_space"] and "hash-bow-32" in out["warning"] and out["target"] is None
    assert all(c["centroid"] is None for c in out["clusters"])
    assert {p["assigned_by"] for p in out["points"]} == {"selected", "none"}
    assert all(p["cluster"] is None for p in out["points"] if not p["selected"])


def test_map_without_an_embedder_is_503(template, tmp_path, monkeypatch):
    source, keys = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    import personalens.factory as factory
    from personalens.errors import BackendUnavailable

    def broken(_settings: Any) -> Any:
        raise BackendUnavailable("no embedder here")

    monkeypatch.setattr(factory, "build_embedder", broken)
    app = create_app(ServiceConfig(data_dir), model=ScriptedChatModel(["unused"]))
    with TestClient(app) as client:
        r = get(client, "/v1/users/alice/map", keys["acme"])
    assert r.status_code == 503 and r.json()["error"]["code"] == "embedder_unavailable"
    assert "no embedder here" not in r.text


# ---------------------------------------------------------------- versions


def test_timeline_tells_what_made_each_version(env):
    client, keys, data_dir = env
    alice = get(client, "/v1/users/alice/timeline", keys["acme"]).json()
    assert alice["current"] == 2 and not alice["truncated"]
    assert [(v["version"], v["kind"], v["is_current"]) for v in alice["versions"]] == [
        (1, "build", False),
        (2, "manual", True),
    ]
    build = alice["versions"][0]
    assert build["creator"] == "personax-build" and build["errors"] is None and build["n_personas"] == 3
    assert build["config"]["selector.threshold"] == 3 and "build.item_fields" in build["config"]
    assert alice["versions"][1]["note"] == "hand edit: sharper wording"

    bob = get(client, "/v1/users/bob/timeline", keys["acme"]).json()
    assert [(v["kind"], v["label"]) for v in bob["versions"]] == [
        ("refinement", "initial persona"),
        ("refinement", "round 1: refine"),
        ("refinement", "round 2: refine"),
    ]
    assert bob["versions"][0]["errors"] is None
    with PersonaStore(data_dir / "acme" / "personas.sqlite") as store:
        for v in bob["versions"][1:]:
            meta = store.get("bob", v["version"]).personas[0].meta  # type: ignore[union-attr]
            assert v["errors"]["metric"] == "MAE"
            for side, key in (("before", "mae_before"), ("after", "mae_after")):
                for window in ("previous", "current", "future"):
                    expected = meta[key][window]
                    got = v["errors"][side][window]
                    assert (got is None and expected is None) or abs(got - expected) < 1e-4
            assert v["step"]["committed"] is True and v["step"]["strategy"] == "refine"
            assert v["step"]["round"] == v["step"]["window"] and "r_total" in v["step"]["rewards"]

    client.post("/v1/users/alice/rollback", json={"version": 1}, headers=auth(keys["acme"]))
    again = get(client, "/v1/users/alice/timeline", keys["acme"]).json()
    assert again["current"] == 3 and again["versions"][-1]["kind"] == "rollback"
    assert again["versions"][-1]["parent_version"] == 1
    assert get(client, "/v1/users/nobody/timeline", keys["acme"]).status_code == 404


def test_word_diff_between_two_versions(env):
    client, keys, _ = env
    out = get(client, "/v1/users/alice/diff/words", keys["acme"], a=1, b=2).json()
    assert out["from"]["kind"] == "build" and out["to"]["kind"] == "manual"
    assert out["inserted_words"] == 9 and out["deleted_words"] == 3
    assert [c["status"] for c in out["clusters"]] == ["changed"] * 3
    first = out["clusters"][0]["ops"]
    assert {"op": "delete", "text": f"{EDIT_OLD} "} in first and {"op": "insert", "text": f"{EDIT_NEW} "} in first
    back = get(client, "/v1/users/alice/diff/words", keys["acme"], a=2, b=1).json()
    assert (back["inserted_words"], back["deleted_words"]) == (3, 9)
    same = get(client, "/v1/users/alice/diff/words", keys["acme"], a=1, b=1).json()
    assert same["inserted_words"] == same["deleted_words"] == 0
    assert {c["status"] for c in same["clusters"]} == {"unchanged"}
    for params in ({"a": 1, "b": 9}, {"a": 2**63, "b": 1}):
        r = get(client, "/v1/users/alice/diff/words", keys["acme"], **params)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = get(client, "/v1/users/alice/diff/words", keys["acme"], a="x", b=1)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["path"] == "query.a"


def test_rollback_from_the_explorer_changes_the_current_version(env):
    client, keys, data_dir = env
    r = client.post("/v1/users/alice/rollback", json={"version": 1}, headers=auth(keys["acme"]))
    assert r.json() == {"user": "alice", "version": 3, "copied_from": 1}
    assert get(client, "/v1/users/alice/map", keys["acme"]).json()["version"] == 3
    with PersonaStore(data_dir / "acme" / "personas.sqlite") as store:
        current, first = store.current("alice"), store.get("alice", 1)
        assert current is not None and first is not None and current.version == 3
        assert [p.text for p in current.personas] == [p.text for p in first.personas]


# ---------------------------------------------------------------- reports


def test_reports_are_off_by_default(template, tmp_path):
    source, keys = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    with TestClient(make_explorer_app(data_dir)) as client:
        assert get(client, "/v1/reports", keys["acme"]).json() == {"enabled": False, "reports": []}
        for url in ("/v1/reports/view?name=toy", "/v1/reports/file?name=toy&path=fig3_ratio.png"):
            r = get(client, url, keys["acme"])
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_reports_list_and_render(env):
    client, keys, _ = env
    listing = get(client, "/v1/reports", keys["beta"]).json()  # dataset-level: any tenant's key reads them
    assert listing["enabled"]
    assert [(r["name"], r["markdown"]) for r in listing["reports"]] == [
        ("nested/deeper", "report.md"),
        ("toy", "results.md"),
    ]
    toy = listing["reports"][1]
    assert toy["title"] == "Toy evaluation, 3 users" and toy["images"] == ["extra.svg", "fig3_ratio.png"]
    out = get(client, "/v1/reports/view", keys["acme"], name="toy").json()
    page = out["html"]
    assert "<table>" in page and '<th class="al-r">Ratio</th>' in page and "<strong>33.10</strong>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert '<img class="report-img" alt="fig3_ratio.png" data-report-file="fig3_ratio.png">' in page
    assert "../secret.png" not in page and "[image: outside]" in page
    image = get(client, "/v1/reports/file", keys["acme"], name="toy", path="fig3_ratio.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        image.headers["x-content-type-options"] == "nosniff" and "sandbox" in image.headers["content-security-policy"]
    )
    svg = get(client, "/v1/reports/file", keys["acme"], name="toy", path="extra.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")


BAD_NAMES = [
    "../toy",
    "toy/..",
    "/toy",
    "toy/../toy",
    ".hidden",
    "./toy",
    "toy//",
    "toy\\..",
    "..",
    "%2e%2e",
    "x" * 2000,
]
BAD_FILES = [
    ("toy", "../secret.png"),
    ("toy", "../../etc/passwd"),
    ("toy", "/etc/passwd"),
    ("toy", "rows.jsonl"),
    ("toy", "results.md"),
    ("toy", "missing.png"),
    ("toy", ".hidden.png"),
    ("toy", "..\\secret.png"),
    ("nested", "deeper/report.md"),
    ("..", "secret.png"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_report_names_cannot_leave_the_reports_directory(env, name):
    client, keys, _ = env
    r = get(client, "/v1/reports/view", keys["acme"], name=name)
    assert r.status_code in (404, 422) and r.json()["error"]["code"] in ("not_found", "validation_error")


@pytest.mark.parametrize(("name", "path"), BAD_FILES)
def test_report_files_cannot_leave_their_report(env, name, path):
    client, keys, _ = env
    r = get(client, "/v1/reports/file", keys["acme"], name=name, path=path)
    assert r.status_code == 404 and r.json() == {
        "error": {"code": "not_found", "message": "no such file", "details": None}
    }


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_symlinks_out_of_the_reports_directory_are_refused(env, tmp_path):
    client, keys, _ = env
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.md").write_text("# Outside\n", encoding="utf-8")
    (outside / "leak.png").write_bytes((tmp_path / "reports" / "toy" / "fig3_ratio.png").read_bytes())
    (tmp_path / "reports" / "escape").symlink_to(outside, target_is_directory=True)
    (tmp_path / "reports" / "toy" / "leak.png").symlink_to(outside / "leak.png")
    assert get(client, "/v1/reports/view", keys["acme"], name="escape").status_code == 404
    assert get(client, "/v1/reports/file", keys["acme"], name="toy", path="leak.png").status_code == 404
    assert "leak.png" not in get(client, "/v1/reports", keys["acme"]).json()["reports"][-1]["images"]


# ---------------------------------------------------------------- the command line


def test_serve_takes_a_reports_directory(tmp_path, monkeypatch):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kwargs: seen.update(app=application))
    args = ["serve", "--data-dir", str(tmp_path), "--reports-dir", str(tmp_path / "reports")]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert seen["app"].state.service.config.reports_dir == tmp_path / "reports"
    assert CliRunner().invoke(cli_app, ["serve", "--data-dir", str(tmp_path)]).exit_code == 0
    assert seen["app"].state.service.config.reports_dir is None
