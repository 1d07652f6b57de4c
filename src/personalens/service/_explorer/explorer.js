// PersonaLens persona explorer: a small hand-written front end over the service's /v1 JSON API.
// Every request carries the tenant's API key (Authorization: Bearer KEY), kept in this tab's sessionStorage only.
// The page builds every element with createElement/textContent; the one exception is a report's HTML, which the
// server renders from Markdown with all text escaped.
"use strict";

(function () {
  const KEY_STORAGE = "personalens.explorer.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  ];
  const W = 640;
  const H = 470;
  const MARGIN = 34;

  const state = {
    key: null,
    user: null,
    users: [],
    view: "map",
    map: null,
    mapVersion: null, // null: the current version
    timeline: null,
    activeCluster: null,
    reportBlobs: [],
    report: null,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children || []) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    return node;
  }

  function colour(cluster) {
    if (cluster === null || cluster === undefined) return "#9aa5b4";
    return PALETTE[((cluster % PALETTE.length) + PALETTE.length) % PALETTE.length];
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  function when(seconds) {
    const d = new Date(seconds * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function setStatus(message, kind) {
    const node = $("status");
    node.textContent = message || "";
    node.className = kind || "";
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options) {
    if (!state.key) throw new ApiError(401, "unauthorized", "enter an API key first");
    const opts = options || {};
    const headers = { Authorization: "Bearer " + state.key, Accept: "application/json" };
    const init = { method: opts.method || "GET", headers, cache: "no-store", credentials: "omit" };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const response = await fetch(path, init);
    if (opts.raw && response.ok) return response;
    let data = null;
    try {
      data = await response.json();
    } catch (_err) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401) {
        const message = "The API key was refused; enter a valid key.";
        forgetKey(message);
        throw new ApiError(401, error.code || "unauthorized", message);
      }
      throw new ApiError(response.status, error.code || "error", error.message || response.statusText);
    }
    return data;
  }

  function q(params) {
    const parts = [];
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== "") parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
    }
    return parts.length ? "?" + parts.join("&") : "";
  }

  const userPath = (user) => "/v1/users/" + encodeURIComponent(user);

  function report(err) {
    console.error(err);
    setStatus(err.message || String(err), "error");
  }

  // ------------------------------------------------------------------ key and users

  function forgetKey(message) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    setStatus(message || "Key forgotten.", message ? "error" : "");
  }

  async function useKey(key) {
    state.key = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    $("api-key").placeholder = "key in use (stored for this tab only)";
    setStatus("Loading users…");
    await loadUsers();
    setStatus("Key accepted.", "ok");
    if (state.view === "reports") await loadReports();
  }

  async function loadUsers() {
    const filter = $("user-filter").value.trim();
    const data = await api("/v1/users" + q({ q: filter, limit: 1000 }));
    state.users = data.users;
    const select = $("user-select");
    select.textContent = "";
    for (const u of data.users) {
      const label = u.user + (u.has_personas ? "" : " (no personas)") + " · " + u.behaviours;
      const option = el("option", { value: u.user, text: label, "data-personas": u.has_personas ? "1" : "0" });
      if (u.user === state.user) option.selected = true;
      select.append(option);
    }
    const shown = data.users.length < data.total ? `${data.users.length} of ${data.total}` : `${data.total}`;
    $("user-count").textContent = `${shown} users (id · behaviours)`;
  }

  async function pickUser(user) {
    state.user = user;
    state.mapVersion = null;
    state.activeCluster = null;
    $("retrieval").textContent = "";
    $("diff").textContent = "";
    $("diff-a").textContent = ""; // the compare pickers start again from the new user's parent → current
    $("diff-b").textContent = "";
    const tasks = [loadMap()];
    if (state.view === "versions") tasks.push(loadTimeline());
    else state.timeline = null;
    await Promise.all(tasks);
  }

  // ------------------------------------------------------------------ the map

  async function loadMap(target) {
    if (!state.user) return;
    const map = $("map");
    map.setAttribute("data-state", "loading");
    try {
      state.map = await api(userPath(state.user) + "/map" + q({ version: state.mapVersion, item: target }));
    } catch (err) {
      state.map = null;
      map.textContent = "";
      map.setAttribute("data-state", "error");
      $("map-title").textContent = state.user + ": " + err.message;
      $("personas").textContent = "";
      $("legend").textContent = "";
      $("map-note").textContent = "";
      if (err.status !== 404) report(err);
      return;
    }
    drawMap();
    drawPersonas();
  }

  function drawMap() {
    const data = state.map;
    const map = $("map");
    map.textContent = "";
    const version = data.version;
    const nPoints = data.points.length;
    $("map-title").textContent =
      `${data.user} · version ${version}` + (state.mapVersion ? "" : " (current)") +
      ` · ${nPoints} items · ${data.clusters.length} clusters`;
    const coords = [];
    for (const p of data.points) if (p.x !== null && p.y !== null) coords.push([p.x, p.y]);
    for (const c of data.clusters) if (c.centroid) coords.push([c.centroid.x, c.centroid.y]);
    if (data.target && data.target.x !== null) coords.push([data.target.x, data.target.y]);
    let [minX, maxX, minY, maxY] = [-1, 1, -1, 1];
    if (coords.length) {
      minX = Math.min(...coords.map((c) => c[0]));
      maxX = Math.max(...coords.map((c) => c[0]));
      minY = Math.min(...coords.map((c) => c[1]));
      maxY = Math.max(...coords.map((c) => c[1]));
    }
    const spanX = Math.max(maxX - minX, 1e-6);
    const spanY = Math.max(maxY - minY, 1e-6);
    const scale = Math.min((W - 2 * MARGIN) / spanX, (H - 2 * MARGIN) / spanY); // same scale on both axes
    const cx = (minX + maxX) / 2;
    const cy = (minY + maxY) / 2;
    const sx = (x) => W / 2 + (x - cx) * scale;
    const sy = (y) => H / 2 - (y - cy) * scale;

    map.append(svg("rect", { class: "frame", x: 1, y: 1, width: W - 2, height: H - 2 }));
    const ev = data.explained_variance || [];
    const pct = (v) => (v === null || v === undefined ? "" : ` (${Math.round(v * 100)}% of variance)`);
    const xLabel = svg("text", { class: "axis-label", x: W / 2, y: H - 8, "text-anchor": "middle" });
    xLabel.textContent = "PC 1" + pct(ev[0]);
    const yLabel = svg("text", {
      class: "axis-label", x: 12, y: H / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${H / 2})`,
    });
    yLabel.textContent = "PC 2" + pct(ev[1]);
    map.append(xLabel, yLabel);

    const order = data.points.map((p, i) => i).sort((a, b) => Number(data.points[a].selected) - Number(data.points[b].selected));
    const layer = svg("g", { class: "points" });
    for (const i of order) {
      const p = data.points[i];
      if (p.x === null || p.y === null) continue;
      const c = colour(p.cluster);
      const attrs = {
        class: "pt" + (p.selected ? " selected" : ""),
        cx: sx(p.x).toFixed(2),
        cy: sy(p.y).toFixed(2),
        r: p.selected ? 6.5 : 4.5,
        fill: c,
        "fill-opacity": p.selected ? 1 : 0.18,
        stroke: p.selected ? "#111" : c,
        "stroke-width": p.selected ? 1.3 : 1.4,
        "data-index": i,
        "data-cluster": p.cluster === null ? "" : p.cluster,
        "data-item": p.item_id,
      };
      if (p.liked === false) attrs["stroke-dasharray"] = "2 2";
      const dot = svg("circle", attrs);
      dot.addEventListener("mouseenter", (e) => showTooltip(e, p, dot));
      dot.addEventListener("mousemove", (e) => moveTooltip(e));
      dot.addEventListener("mouseleave", () => hideTooltip(dot));
      layer.append(dot);
    }
    map.append(layer);

    const marks = svg("g", { class: "centroids" });
    for (const c of data.clusters) {
      if (!c.centroid) continue;
      const x = sx(c.centroid.x);
      const y = sy(c.centroid.y);
      const d = `M${x - 8},${y - 8}L${x + 8},${y + 8}M${x - 8},${y + 8}L${x + 8},${y - 8}`;
      const g = svg("g", { class: "centroid", "data-cluster": c.cluster });
      g.append(svg("path", { d, stroke: "#111", "stroke-width": 6, "stroke-linecap": "round" }));
      g.append(svg("path", { d, stroke: colour(c.cluster), "stroke-width": 3.2, "stroke-linecap": "round" }));
      const title = svg("title");
      title.textContent = `centroid of cluster ${c.cluster}`;
      g.append(title);
      marks.append(g);
    }
    map.append(marks);

    if (data.target && data.target.x !== null) {
      const x = sx(data.target.x);
      const y = sy(data.target.y);
      const g = svg("g", { class: "target-marker", "data-cluster": data.target.cluster });
      g.append(svg("path", {
        d: `M${x},${y - 10}L${x + 10},${y}L${x},${y + 10}L${x - 10},${y}Z`,
        fill: "#fff", stroke: "#111", "stroke-width": 2.5,
      }));
      g.append(svg("circle", { cx: x, cy: y, r: 3.5, fill: colour(data.target.cluster) }));
      const label = svg("text", { class: "target-label", x: x + 13, y: y + 4 });
      label.textContent = "target";
      g.append(label);
      map.append(g);
    }
    map.setAttribute("data-state", "ready");
    map.setAttribute("data-version", version);
    map.setAttribute("data-points", nPoints);
    applyClusterFocus();
    drawLegend();
    const notes = [];
    notes.push(`Projection: PCA of the item embeddings (${data.item_fields.join(", ") || "title"}); ` +
      `cluster: ${data.assignment}.`);
    if (data.truncated) notes.push("Only part of a long history is shown (selected items first, then the latest).");
    if (data.warning) notes.push(data.warning);
    $("map-note").textContent = notes.join(" ");
  }

  function drawLegend() {
    const legend = $("legend");
    legend.textContent = "";
    for (const c of state.map.clusters) {
      const sw = el("span", { className: "swatch" });
      sw.style.background = colour(c.cluster);
      legend.append(el("span", {}, [sw, `cluster ${c.cluster} (${c.members} on map, budget ${c.budget})`]));
    }
    legend.append(el("span", {}, [el("span", { className: "sym", text: "●" }), "selected (sub-sequence)"]));
    legend.append(el("span", {}, [el("span", { className: "sym", text: "○" }), "not selected"]));
    if (state.map.points.some((p) => p.liked === false)) {
      legend.append(el("span", {}, [el("span", { className: "sym", text: "◌" }), "dashed: not liked (left out of the build)"]));
    }
    legend.append(el("span", {}, [el("span", { className: "sym", text: "✕" }), "centroid"]));
    legend.append(el("span", {}, [el("span", { className: "sym", text: "◇" }), "target item"]));
  }

  function showTooltip(event, p, dot) {
    dot.classList.add("hover");
    const tip = $("tooltip");
    tip.textContent = "";
    tip.append(el("div", { className: "tt-title", text: p.title || p.item_id }));
    tip.append(el("div", { text: p.text }));
    const bits = [`cluster ${p.cluster === null ? "–" : p.cluster}`];
    if (p.assigned_by === "nearest") bits.push(`nearest centroid, cos ${fmt(p.similarity, 2)}`);
    if (p.selected) bits.push("selected");
    if (p.rating !== null) bits.push(`rating ${p.rating}`);
    if (p.liked === false) bits.push("not liked (left out of the build)");
    if (p.behaviours > 1) bits.push(`${p.behaviours} behaviours`);
    tip.append(el("div", { text: bits.join(" · ") }));
    tip.hidden = false;
    tip.setAttribute("data-item", p.item_id);
    moveTooltip(event);
  }

  function moveTooltip(event) {
    const tip = $("tooltip");
    const box = tip.parentElement.getBoundingClientRect();
    tip.style.left = Math.min(event.clientX - box.left + 14, box.width - 260) + "px";
    tip.style.top = event.clientY - box.top + 14 + "px";
  }

  function hideTooltip(dot) {
    dot.classList.remove("hover");
    $("tooltip").hidden = true;
  }

  function applyClusterFocus() {
    const active = state.activeCluster;
    for (const node of document.querySelectorAll("#map .pt, #map .centroid")) {
      const c = node.getAttribute("data-cluster");
      node.classList.toggle("dim", active !== null && c !== String(active));
    }
    for (const card of document.querySelectorAll(".persona-card")) {
      card.classList.toggle("active", card.getAttribute("data-cluster") === String(active));
    }
  }

  function drawPersonas() {
    const box = $("personas");
    box.textContent = "";
    const titles = {};
    for (const p of state.map.points) titles[p.item_id] = p.title || p.item_id;
    for (const c of state.map.clusters) {
      const card = el("div", { className: "persona-card", "data-cluster": c.cluster });
      card.style.borderLeftColor = colour(c.cluster);
      card.append(el("h4", { text: `Cluster ${c.cluster}` }));
      card.append(el("div", {
        className: "stats",
        text: `${c.cluster_size} behaviours in the build · budget ${c.budget} · ` +
          `${c.selected_item_ids.length} selected · ${c.words} words`,
      }));
      card.append(el("p", { className: "persona-text", text: c.text }));
      if (c.selected_item_ids.length) {
        const list = el("ul");
        for (const id of c.selected_item_ids.slice(0, 12)) list.append(el("li", { text: titles[id] || id }));
        if (c.selected_item_ids.length > 12) list.append(el("li", { text: `… ${c.selected_item_ids.length - 12} more` }));
        card.append(el("div", { className: "stats", text: "Selected sub-sequence:" }), list);
      }
      card.addEventListener("click", () => {
        state.activeCluster = state.activeCluster === c.cluster ? null : c.cluster;
        applyClusterFocus();
      });
      box.append(card);
    }
  }

  // ------------------------------------------------------------------ retrieval

  async function retrieve(item) {
    if (!state.user) return setStatus("Pick a user first.", "error");
    const out = $("retrieval");
    out.textContent = "";
    out.removeAttribute("data-cluster");
    let found;
    try {
      found = await api(userPath(state.user) + "/persona" + q({ item }));
    } catch (err) {
      out.append(el("p", { className: "empty", text: err.message }));
      return;
    }
    const best = found.persona;
    const head = el("div", { className: "picked-persona" });
    head.style.borderLeftColor = colour(best.cluster);
    head.append(el("div", { text: `Picked: cluster ${best.cluster} (cosine ${fmt(best.score)}, version ${found.version})` }));
    head.append(el("p", { className: "persona-text", text: best.text }));
    out.append(head);
    out.append(el("div", { className: "note", text: "Similarity of the item to each cluster:" }));
    const scores = found.similarities.map((s) => s.score);
    const top = Math.max(...scores.map((s) => Math.abs(s)), 1e-9);
    for (const s of found.similarities) {
      const fill = el("div", { className: "bar-fill" });
      fill.style.width = Math.max(0, (s.score / top) * 100).toFixed(1) + "%";
      fill.style.background = colour(s.cluster);
      const row = el("div", { className: "bar-row" + (s.cluster === best.cluster ? " picked" : ""), "data-cluster": s.cluster }, [
        el("span", { className: "bar-label", text: `cluster ${s.cluster}` }),
        el("span", { className: "bar-track" }, [fill]),
        el("span", { className: "bar-value", text: fmt(s.score) }),
      ]);
      out.append(row);
    }
    out.setAttribute("data-cluster", best.cluster);
    state.activeCluster = best.cluster;
    if (state.mapVersion === null || (state.map && state.map.version === found.version)) {
      await loadMap(item); // place the target on the map
    } else {
      applyClusterFocus();
    }
  }

  // ------------------------------------------------------------------ versions

  async function loadTimeline() {
    if (!state.user) return;
    const list = $("timeline");
    list.setAttribute("data-state", "loading");
    try {
      state.timeline = await api(userPath(state.user) + "/timeline");
    } catch (err) {
      state.timeline = null;
      list.textContent = "";
      list.setAttribute("data-state", "error");
      $("versions-title").textContent = state.user + ": " + err.message;
      if (err.status !== 404) report(err);
      return;
    }
    drawTimeline();
  }

  function errorsTable(errors) {
    const table = el("table", { className: "errors" });
    table.append(el("tr", {}, [
      el("th", { text: errors.metric }), el("th", { text: "before" }), el("th", { text: "after" }), el("th", { text: "Δ" }),
    ]));
    for (const name of ["previous", "current", "future"]) {
      const before = errors.before ? errors.before[name] : null;
      const after = errors.after ? errors.after[name] : null;
      if (before === null && after === null) continue;
      const delta = before !== null && after !== null ? after - before : null;
      const cls = delta === null || Math.abs(delta) < 1e-9 ? "" : delta < 0 ? "better" : "worse";
      table.append(el("tr", {}, [
        el("td", { text: `${name} window` }),
        el("td", { text: fmt(before) }),
        el("td", { text: fmt(after) }),
        el("td", { className: cls, text: delta === null ? "–" : (delta > 0 ? "+" : "") + fmt(delta) }),
      ]));
    }
    return table;
  }

  function drawTimeline() {
    const data = state.timeline;
    const list = $("timeline");
    list.textContent = "";
    $("versions-title").textContent =
      `${data.user} · ${data.versions.length} versions` + (data.current ? ` · current: v${data.current}` : "");
    for (const v of data.versions.slice().reverse()) {
      const node = el("li", {
        className: `version-node kind-${v.kind}` + (v.is_current ? " current" : ""),
        "data-version": v.version,
      });
      const head = el("div", { className: "version-head" }, [
        el("span", { className: "vnum", text: `v${v.version}` }),
        el("span", { className: `badge kind-${v.kind}`, text: v.kind }),
        el("span", { text: v.label !== v.kind ? v.label : "" }),
        v.is_current ? el("span", { className: "badge current", text: "current" }) : null,
        v.step && v.step.committed === false ? el("span", { className: "badge not-committed", text: "not committed" }) : null,
      ]);
      node.append(head);
      const parent = v.parent_version ? ` · from v${v.parent_version}` : "";
      node.append(el("div", {
        className: "version-meta",
        text: `${when(v.created_at)} · ${v.creator} · ${v.method}${parent} · ${v.n_personas} persona(s), ${v.words} words`,
      }));
      if (v.note) node.append(el("div", { className: "version-note", text: v.note }));
      if (v.errors) node.append(errorsTable(v.errors));
      const step = v.step || {};
      const extras = [];
      if (step.rewards && step.rewards.r_total !== undefined) extras.push(`reward r_total ${fmt(step.rewards.r_total)}`);
      if (step.gate && step.gate.reason) extras.push(`gate: ${step.gate.reason}`);
      if (step.error) extras.push(`error: ${step.error}`);
      if (extras.length) node.append(el("div", { className: "version-meta", text: extras.join(" · ") }));
      if (Array.isArray(step.feedback) && step.feedback.length) {
        // a test-time alignment step: the textual feedback it was rewritten from, and what it did not carry over
        const fb = el("details", { className: "config feedback" }, [
          el("summary", { text: `alignment feedback (${step.feedback.length})` }),
        ]);
        const items = el("ol");
        for (const f of step.feedback) items.append(el("li", { text: String(f) }));
        fb.append(items);
        if (Array.isArray(step.dropped) && step.dropped.length) {
          const kept = Array.isArray(step.restored) ? step.restored.length : 0;
          fb.append(el("div", { className: "version-meta", text: `not carried over by the rewrite: ${step.dropped.length}, written back: ${kept}` }));
        }
        node.append(fb);
      }
      const cfg = el("details", { className: "config" }, [el("summary", { text: `configuration ${v.config_hash.slice(0, 12)}` })]);
      const table = el("table");
      for (const [k, value] of Object.entries(v.config)) {
        table.append(el("tr", {}, [el("td", { text: k }), el("td", { text: JSON.stringify(value) })]));
      }
      cfg.append(table);
      node.append(cfg);
      const actions = el("div", { className: "version-actions" });
      const show = el("button", { type: "button", className: "secondary show-map", text: "Show on map" });
      show.addEventListener("click", () => {
        state.mapVersion = v.is_current ? null : v.version;
        switchView("map");
      });
      actions.append(show);
      if (!v.is_current) {
        const back = el("button", {
          type: "button", className: "rollback-btn", "data-version": v.version, text: `Roll back to v${v.version}`,
        });
        back.addEventListener("click", () => rollback(v.version).catch(report));
        actions.append(back);
      }
      node.append(actions);
      list.append(node);
    }
    list.setAttribute("data-state", "ready");
    fillCompare();
  }

  function fillCompare() {
    const versions = state.timeline.versions;
    const a = $("diff-a");
    const b = $("diff-b");
    const keepA = a.value;
    const keepB = b.value;
    a.textContent = "";
    b.textContent = "";
    for (const v of versions) {
      const label = `v${v.version} · ${v.label}` + (v.is_current ? " (current)" : "");
      a.append(el("option", { value: v.version, text: label }));
      b.append(el("option", { value: v.version, text: label }));
    }
    const current = versions.find((v) => v.is_current) || versions[versions.length - 1];
    const parent = current && current.parent_version ? current.parent_version : null;
    const older = versions.length > 1 ? versions[versions.length - 2].version : current.version;
    a.value = keepA && versions.some((v) => String(v.version) === keepA) ? keepA : String(parent || older);
    b.value = keepB && versions.some((v) => String(v.version) === keepB) ? keepB : String(current.version);
  }

  async function compare(a, b) {
    const out = $("diff");
    out.textContent = "";
    out.removeAttribute("data-state");
    const data = await api(userPath(state.user) + "/diff/words" + q({ a, b }));
    out.append(el("div", {
      className: "diff-summary",
      text: `v${data.from.version} (${data.from.kind}) → v${data.to.version} (${data.to.kind}): ` +
        `+${data.inserted_words} words inserted, −${data.deleted_words} words deleted`,
    }));
    for (const c of data.clusters) {
      const block = el("div", { className: "diff-cluster", "data-cluster": c.cluster });
      block.append(el("h4", { text: `Cluster ${c.cluster} — ${c.status} (+${c.inserted_words} −${c.deleted_words})` }));
      const text = el("p", { className: "diff-text" });
      for (const op of c.ops) {
        if (op.op === "insert") text.append(el("ins", { text: op.text }));
        else if (op.op === "delete") text.append(el("del", { text: op.text }));
        else text.append(document.createTextNode(op.text));
      }
      block.append(text);
      out.append(block);
    }
    out.setAttribute("data-state", "ready");
  }

  async function rollback(version) {
    const result = await api(userPath(state.user) + "/rollback", { method: "POST", body: { version } });
    setStatus(`Rolled back: v${result.version} is now current (a copy of v${result.copied_from}).`, "ok");
    $("diff").textContent = "";
    $("diff-a").value = "";
    $("diff-b").value = "";
    state.mapVersion = null;
    await loadTimeline();
    await loadMap();
  }

  // ------------------------------------------------------------------ reports

  function dropReportBlobs() {
    for (const url of state.reportBlobs) URL.revokeObjectURL(url);
    state.reportBlobs = [];
  }

  async function loadReports() {
    const list = $("report-list");
    list.textContent = "";
    const data = await api("/v1/reports");
    if (!data.enabled) {
      list.append(el("p", {
        className: "empty",
        text: "This service has no reports directory: start it with `personalens serve --reports-dir DIR`.",
      }));
      return;
    }
    if (!data.reports.length) {
      list.append(el("p", { className: "empty", text: "No report folders (results.md or report.md) found." }));
      return;
    }
    for (const r of data.reports) {
      const button = el("button", { type: "button", className: "secondary", "data-name": r.name, text: r.name });
      button.title = r.title;
      button.addEventListener("click", () => openReport(r.name).catch(report));
      list.append(button);
    }
    list.setAttribute("data-state", "ready");
  }

  async function reportImage(name, file) {
    const response = await api("/v1/reports/file" + q({ name, path: file }), { raw: true });
    const url = URL.createObjectURL(await response.blob());
    state.reportBlobs.push(url);
    return url;
  }

  async function openReport(name) {
    const article = $("report");
    article.removeAttribute("data-state");
    const data = await api("/v1/reports/view" + q({ name }));
    dropReportBlobs();
    state.report = name;
    for (const b of document.querySelectorAll("#report-list button")) {
      b.classList.toggle("active", b.getAttribute("data-name") === name);
    }
    // Server-rendered from Markdown: every text escaped, only the renderer's own tags (see service/reports.py).
    article.innerHTML = data.html;
    article.setAttribute("data-name", name);
    const referenced = new Set();
    const loads = [];
    for (const img of article.querySelectorAll("img[data-report-file]")) {
      const file = img.getAttribute("data-report-file");
      referenced.add(file);
      loads.push(reportImage(name, file).then((url) => { img.src = url; }));
    }
    const rest = data.images.filter((f) => !referenced.has(f));
    if (rest.length) {
      const figures = el("div", { className: "figures" });
      article.append(el("h3", { text: "Other figures in this folder" }), figures);
      for (const file of rest) {
        const img = el("img", { alt: file, "data-report-file": file, className: "report-img" });
        figures.append(img);
        loads.push(reportImage(name, file).then((url) => { img.src = url; }));
      }
    }
    await Promise.all(loads);
    article.setAttribute("data-state", "ready");
  }

  // ------------------------------------------------------------------ views and wiring

  async function switchView(view) {
    if (view !== state.view && !$("status").classList.contains("error")) setStatus("");
    state.view = view;
    document.body.className = "view-" + view;
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.getAttribute("data-view") === view);
    for (const name of ["map", "versions", "reports"]) $("view-" + name).hidden = name !== view;
    if (!state.key) return;
    if (view === "map" && state.user) await loadMap();
    if (view === "versions" && state.user) await loadTimeline();
    if (view === "reports") await loadReports();
  }

  function wire() {
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return setStatus("Enter an API key.", "error");
      useKey(key).catch(report);
    });
    $("key-forget").addEventListener("click", () => {
      forgetKey();
      state.user = null;
      $("user-select").textContent = "";
      $("user-count").textContent = "";
    });
    let filterTimer = null;
    $("user-filter").addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => loadUsers().catch(report), 200);
    });
    $("user-select").addEventListener("change", (e) => {
      if (e.target.value) pickUser(e.target.value).catch(report);
    });
    $("retrieve-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const item = $("target-item").value.trim();
      if (item) retrieve(item).catch(report);
    });
    $("compare-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (state.user) compare($("diff-a").value, $("diff-b").value).catch(report);
    });
    for (const b of document.querySelectorAll("#tabs button")) {
      b.addEventListener("click", () => switchView(b.getAttribute("data-view")).catch(report));
    }
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) useKey(saved).catch(report);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
