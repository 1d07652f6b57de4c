"""``personalens eval lamp CONFIG``: PersonaAgent against its baselines and ablations on a LaMP task (the paper's
Tables 2 and 3), plus the test-time scaling study (batch size n, iterations E, retrieved memories K).

Reads only the official LaMP JSON format (``load_lamp``); the LaMP-like tasks built from Amazon reviews and HetRec
tags come in that format too (``personalens data lamp-like``). Each example is one user: its profile becomes the
episodic memory in a run-local persona store (``agent.sqlite``, which also keeps every persona version the agents
write, alignment feedback included). Rows go to ``rows.jsonl`` keyed by (method, example, settings digest): a rerun
continues where it stopped, and changing a method's settings makes new rows instead of mixing old ones in.

Method names: ``history`` (no LLM: the user's most frequent earlier answer), ``prompt``, ``icl``, ``rag-K``,
``pag-K``, ``react``, ``membank``, ``personaagent``, ``no-alignment``, ``no-persona``, ``no-memory``, ``no-action``;
a scaling variant is ``personaagent[n=5]``, ``personaagent[E=2]``, ``personaagent[k=8]`` (or several,
``personaagent[n=5,E=2]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from personalens.agent.agent import AgentConfig, PersonaAgent
from personalens.agent.alignment import AlignmentConfig
from personalens.agent.baselines import (
    Case,
    history_majority,
    in_context,
    memory_bank,
    profile_augmented,
    prompt_only,
    react,
    retrieval_augmented,
)
from personalens.agent.loop import LABEL_READING_VERSION, PROTOCOL_VERSION, AgentAnswer, LoopConfig
from personalens.agent.memory import EpisodicMemory, summarise_memory
from personalens.agent.protocol import tool_keyword
from personalens.agent.tools import MemorySearchTool, Tool, ToolBox, WikiLookup, WikipediaTool
from personalens.data.lamp import LampExample, load_lamp
from personalens.embed.base import Embedder
from personalens.errors import ConfigError, PersonaLensError
from personalens.evaluation.lamp_tasks import LampTask, get_task, lamp_metrics, official_rating
from personalens.evaluation.metrics import paired_bootstrap, standard_error
from personalens.llm.base import ChatModel, Usage
from personalens.store import PersonaStore

ROWS_FILE = "rows.jsonl"
TRACES_FILE = "traces.jsonl"  # every step of every answer; quotes the task's data, so kept out of version control
BASELINES = ("prompt", "icl", "rag-1", "rag-4", "pag-4", "react", "membank")
AGENT_VARIANTS = ("personaagent", "no-alignment", "no-persona", "no-memory", "no-action")
DEFAULT_METHODS = (*BASELINES, *AGENT_VARIANTS)
_SCALING = re.compile(r"^personaagent\[(.+)\]$")


@dataclass(frozen=True, slots=True)
class LampRunConfig:
    name: str
    questions: str
    outputs: str | None = None
    task: str | None = None
    max_examples: int = 50
    sample: str = "first"  # first | random
    min_profile: int = 4
    seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS
    icl_demos: int = 4
    unparsable: str = "official"
    wikipedia_url: str | None = None
    wikipedia_pages: str | None = None
    # agent
    k: int = 4
    max_steps: int = 4
    step_max_tokens: int = 128
    batch_size: int = 3
    iterations: int = 1
    persona_max_words: int = 250
    semantic_max_words: int = 150
    semantic_max_events: int = 40
    feedback_max_tokens: int = 160
    tool_protocol: str = "auto"
    answer_scoring: str = "probability"
    membank_strength_days: float = 365.0
    # scaling study
    scaling_batch_sizes: tuple[int, ...] = ()
    scaling_iterations: tuple[int, ...] = ()
    scaling_k: tuple[int, ...] = ()
    source: str = field(default="<config>", compare=False)

    def all_methods(self) -> list[str]:
        out = list(self.methods)
        for n in self.scaling_batch_sizes:
            out.append(f"personaagent[n={n}]")
        for e in self.scaling_iterations:
            out.append(f"personaagent[E={e}]")
        for k in self.scaling_k:
            out.append(f"personaagent[k={k}]")
        return list(dict.fromkeys(out))

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            k=self.k,
            semantic_max_words=self.semantic_max_words,
            semantic_max_events=self.semantic_max_events,
            loop=self.loop_config(),
            alignment=AlignmentConfig(
                batch_size=self.batch_size,
                iterations=self.iterations,
                max_words=self.persona_max_words,
                feedback_max_tokens=self.feedback_max_tokens,
            ),
        )

    def loop_config(self) -> LoopConfig:
        return LoopConfig(
            max_steps=self.max_steps,
            step_max_tokens=self.step_max_tokens,
            tool_protocol=self.tool_protocol,  # type: ignore[arg-type]
            answer_scoring=self.answer_scoring,  # type: ignore[arg-type]
        )


def _check_method(name: str) -> None:
    if name in ("history", "prompt", "icl", "react", "membank") or name in AGENT_VARIANTS:
        return
    if re.fullmatch(r"(rag|pag)-[1-9]\d*", name):
        return
    m = _SCALING.match(name)
    if m:
        scaling_overrides(m.group(1))
        return
    raise ValueError(f"unknown method {name!r}")


def scaling_overrides(spec: str) -> dict[str, int]:
    """``"n=5,E=2,k=8"`` → ``{"batch_size": 5, "iterations": 2, "k": 8}``."""
    keys = {"n": "batch_size", "e": "iterations", "k": "k"}
    out: dict[str, int] = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        name = keys.get(key.strip().lower())
        if name is None or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"bad scaling setting {part!r}: use n=<int>, E=<int> or k=<int>")
        out[name] = int(value)
    return out


def load_lamp_config(path: str | Path) -> LampRunConfig:
    from personalens.evaluation.experiment import read_experiment_file

    path = Path(path)
    return parse_lamp_config(read_experiment_file(path), source=str(path), base=path.parent)


def parse_lamp_config(raw: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None) -> LampRunConfig:
    from personalens.evaluation.experiment import check_sections

    sections = {
        "": {"name", "seed", "methods", "data", "agent", "tools", "baselines", "scaling", "metrics"},
        "data": {"questions", "outputs", "task", "max_examples", "sample", "min_profile"},
        "agent": {
            "k",
            "max_steps",
            "step_max_tokens",
            "batch_size",
            "iterations",
            "persona_max_words",
            "semantic_max_words",
            "semantic_max_events",
            "feedback_max_tokens",
            "tool_protocol",
            "answer_scoring",
        },
        "tools": {"wikipedia_url", "wikipedia_pages"},
        "baselines": {"icl_demos", "membank_strength_days"},
        "scaling": {"batch_sizes", "iterations", "k"},
        "metrics": {"unparsable"},
    }
    check_sections(raw, sections, source=source)
    data = dict(raw.get("data", {}))
    if "questions" not in data:
        raise ConfigError(f"{source}: [data] questions is required (a LaMP questions JSON file)")

    def resolve(value: Any) -> str | None:
        if value in (None, ""):
            return None
        p = Path(str(value))
        if base is not None and not p.is_absolute():
            p = (base / p).resolve()
        return str(p)

    values: dict[str, Any] = {
        "questions": resolve(data.pop("questions")),
        "outputs": resolve(data.pop("outputs", None)),
        **data,
        **raw.get("agent", {}),
        **raw.get("baselines", {}),
        **raw.get("metrics", {}),
    }
    tools = raw.get("tools", {})
    values["wikipedia_url"] = tools.get("wikipedia_url") or None
    values["wikipedia_pages"] = resolve(tools.get("wikipedia_pages"))
    scaling = raw.get("scaling", {})
    values["scaling_batch_sizes"] = tuple(scaling.get("batch_sizes", ()))
    values["scaling_iterations"] = tuple(scaling.get("iterations", ()))
    values["scaling_k"] = tuple(scaling.get("k", ()))
    if "methods" in raw:
        values["methods"] = tuple(raw["methods"])
    try:
        config = LampRunConfig(
            name=str(raw.get("name") or Path(source).stem), seed=int(raw.get("seed", 0)), source=source, **values
        )
        for m in config.all_methods():
            _check_method(m)
        config.agent_config()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if config.sample not in ("first", "random"):
        raise ConfigError(f"{source}: [data] sample must be first or random")
    if config.unparsable not in ("official", "drop"):
        raise ConfigError(f"{source}: [metrics] unparsable must be official or drop")
    if config.max_examples < 1 or config.min_profile < 1:
        raise ConfigError(f"{source}: [data] max_examples and min_profile must be >= 1")
    return config


@dataclass(slots=True)
class LampSummary:
    rows_written: int = 0
    rows_skipped: int = 0
    examples: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0


def select_examples(examples: Sequence[LampExample], config: LampRunConfig) -> list[LampExample]:
    """Examples with a gold answer and at least ``min_profile`` profile entries; the first ``max_examples`` in file
    order, or a seeded random sample whose order does not depend on ``max_examples`` (a larger run extends a
    smaller one)."""
    eligible = [e for e in examples if e.output is not None and len(e.profile) >= config.min_profile]
    if config.sample == "random":
        eligible = sorted(eligible, key=lambda e: e.id)
        random.Random(config.seed).shuffle(eligible)
    return eligible[: config.max_examples]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a killed run: that row is redone
    return rows


class LampEvaluation:
    """Runs a :class:`LampRunConfig` into ``out_dir``. ``wikipedia`` overrides the config's lookup (tests)."""

    def __init__(
        self,
        config: LampRunConfig,
        out_dir: str | Path,
        *,
        model: ChatModel,
        embedder: Embedder,
        wikipedia: WikiLookup | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        limit: int | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.model = model
        self.embedder = embedder
        self._wikipedia = wikipedia
        self.on_event = on_event or (lambda kind, payload: None)
        self.limit = limit

    # ------------------------------------------------------------ set-up
    def load(self) -> tuple[LampTask, list[LampExample], list[LampExample]]:
        examples = load_lamp(self.config.questions, self.config.outputs)
        task = get_task(self.config.task or next((e.task for e in examples if e.task), None))
        chosen = select_examples(examples, self.config)
        if not chosen:
            raise ConfigError(
                f"{self.config.source}: no example has a gold answer and >= {self.config.min_profile} profile entries"
            )
        return task, chosen, examples

    @contextlib.contextmanager
    def _wiki(self) -> Iterator[WikiLookup | None]:
        if self._wikipedia is not None:
            yield self._wikipedia
            return
        if self.config.wikipedia_pages:
            from personalens.agent.wikipedia import WikipediaClient
            from personalens.agent.wikiserver import RecordedWikipedia

            with RecordedWikipedia(self.config.wikipedia_pages) as server:
                yield WikipediaClient(server.base_url)
            return
        if self.config.wikipedia_url:
            from personalens.agent.wikipedia import WikipediaClient

            yield WikipediaClient(self.config.wikipedia_url)
            return
        yield None

    def method_digest(self, method: str, task: LampTask) -> str:
        cfg = self.config
        base = {
            "method": method,
            "task": task.number,
            "model": self.model.model_id,
            "embedder": self.embedder.model_id,
            "questions": cfg.questions,
            "loop": asdict(cfg.loop_config()),
            "wikipedia": bool(cfg.wikipedia_pages or cfg.wikipedia_url or self._wikipedia),
            "protocol": PROTOCOL_VERSION,
        }
        if not task.is_rating:
            base["label_reading"] = LABEL_READING_VERSION
        keyword = tool_keyword(task.space().answer_words())
        is_agent = method in AGENT_VARIANTS or method.startswith("personaagent")
        uses_tools = method == "react" or (is_agent and self._agent_config(method).use_actions)
        if uses_tools and keyword != "Action":  # rows written with the "Action" keyword keep their digests
            base["tool_keyword"] = keyword
        if method == "icl":
            base["demos"] = cfg.icl_demos
        if method == "membank":
            base["strength"] = cfg.membank_strength_days
        if method in AGENT_VARIANTS or method.startswith("personaagent") or method in ("pag-4", "membank"):
            base["agent"] = asdict(self._agent_config(method))
        return _digest(base)

    def _agent_config(self, method: str) -> AgentConfig:
        cfg = self.config.agent_config()
        m = _SCALING.match(method)
        if m:
            o = scaling_overrides(m.group(1))
            cfg = replace(
                cfg,
                k=o.get("k", cfg.k),
                alignment=replace(
                    cfg.alignment,
                    batch_size=o.get("batch_size", cfg.alignment.batch_size),
                    iterations=o.get("iterations", cfg.alignment.iterations),
                ),
            )
        if method == "no-persona":
            cfg = replace(cfg, use_persona=False)
        elif method == "no-memory":
            cfg = replace(cfg, use_memory=False)
        elif method == "no-action":
            cfg = replace(cfg, use_actions=False)
        return cfg

    # ------------------------------------------------------------ run
    def run(self) -> LampSummary:
        started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        task, examples, everything = self.load()
        if task.number == "1" and "history" in self.config.all_methods():
            raise ConfigError(
                f"{self.config.source}: 'history' needs past answers from the same label set; LaMP-1 has none"
            )
        rows_path = self.out_dir / ROWS_FILE
        done = {(r["method"], r["example"], r["digest"]) for r in read_rows(rows_path)}
        methods = self.config.all_methods()
        digests = {m: self.method_digest(m, task) for m in methods}
        stamp = {
            **asdict(self.config),
            "task": task.name,
            "model": self.model.model_id,
            "labels": list(task.label_list(everything)),
            "methods_all": methods,
            "digests": digests,
            "example_ids": [e.id for e in examples],
        }
        (self.out_dir / "config.json").write_text(json.dumps(stamp, indent=2))
        summary = LampSummary(examples=len(examples))
        todo = [(ex, m) for ex in examples for m in methods if (m, ex.id, digests[m]) not in done]
        summary.rows_skipped = len(examples) * len(methods) - len(todo)
        if self.limit is not None:
            todo = todo[: self.limit]
        self.on_event("start", {"total": len(todo), "examples": len(examples), "methods": methods})
        other_titles = [e.get("title") for ex in everything for e in ex.profile if e.get("title")]
        traces_path = self.out_dir / TRACES_FILE
        with (
            PersonaStore(self.out_dir / "agent.sqlite") as store,
            self._wiki() as wiki,
            rows_path.open("a") as sink,
            traces_path.open("a") as trace_sink,
        ):
            loaded: set[str] = set()
            for ex, method in todo:
                key = f"{method}/{ex.id}"
                try:
                    memory = EpisodicMemory(store, self.embedder, ex.id)
                    if ex.id not in loaded:
                        memory.add(task.memory_records(ex))
                        loaded.add(ex.id)
                    t0 = time.perf_counter()
                    answer, extra = self._predict(method, task, ex, everything, store, memory, wiki, other_titles)
                    seconds = time.perf_counter() - t0
                except PersonaLensError as exc:
                    summary.failures[key] = str(exc)
                    self.on_event("failed", {"method": method, "example": ex.id, "error": str(exc)})
                    continue
                row = self._row(task, ex, method, digests[method], answer, extra, seconds)
                # the trace quotes the data (reviews, descriptions): it goes to its own file, the rows stay data-free
                trace = {"method": method, "example": ex.id, "digest": digests[method], "trace": row.pop("trace")}
                trace_sink.write(json.dumps(trace, ensure_ascii=False) + "\n")
                trace_sink.flush()
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                summary.rows_written += 1
                summary.usage = summary.usage + answer.usage + extra.pop("_usage", Usage())
                self.on_event("row", {"method": method, "example": ex.id, "correct": row.get("correct")})
        summary.seconds = time.perf_counter() - started
        return summary

    def _row(
        self,
        task: LampTask,
        ex: LampExample,
        method: str,
        digest: str,
        answer: AgentAnswer,
        extra: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        gold = str(ex.output).strip()
        usage = answer.usage + extra.get("_usage", Usage())
        steps = [{"kind": st.kind, "tool": st.tool, "ok": st.ok} for st in answer.steps]
        row: dict[str, Any] = {
            "method": method,
            "example": ex.id,
            "digest": digest,
            "task": task.name,
            "gold": gold,
            "pred": answer.answer,
            "parsed": answer.parsed,
            "scores": answer.scores,
            "expectation": answer.expectation,
            "usage": usage.to_dict(),
            "seconds": round(seconds, 3),
            "tools": answer.tools_used,
            "forced_search": answer.forced_memory_search,
            "invalid_steps": sum(1 for s in answer.steps if s.kind == "invalid"),
            "steps": len(answer.steps),
            "memories": [h.record.memory_id for h in answer.memory_hits],
            "requests": usage.calls + usage.cache_hits + int(extra.get("_reused_requests", 0)),
            "step_kinds": [{k: v for k, v in st.items() if v is not None} for st in steps],
            "trace": [_clip_step(st.to_dict()) for st in answer.steps],
            **{k: v for k, v in extra.items() if not k.startswith("_")},
        }
        if task.is_rating:
            row["abs_error"] = abs(official_rating(answer.answer if answer.parsed else None, float(gold)) - float(gold))
        else:
            row["correct"] = answer.parsed and answer.answer == gold
        return row

    def _predict(
        self,
        method: str,
        task: LampTask,
        ex: LampExample,
        everything: Sequence[LampExample],
        store: PersonaStore,
        memory: EpisodicMemory,
        wiki: WikiLookup | None,
        other_titles: Sequence[str],
    ) -> tuple[AgentAnswer, dict[str, Any]]:
        cfg = self.config
        loop = cfg.loop_config()
        case = Case(ex.input, task.space(ex), task.search_query(ex.input))
        if method == "history":
            return history_majority(task.memory_records(ex), case.space), {}
        if method == "prompt":
            return prompt_only(self.model, case, config=loop), {}
        if method == "icl":
            return in_context(self.model, case, self._demos(task, ex, everything), config=loop), {}
        if method.startswith("rag-"):
            return retrieval_augmented(self.model, case, memory, int(method[4:]), config=loop), {}
        if method.startswith("pag-") or method == "membank":
            semantic = summarise_memory(
                self.model,
                memory.all(),
                task=task.name,
                max_words=cfg.semantic_max_words,
                max_events=cfg.semantic_max_events,
            )
            extra = {"_usage": semantic.usage}
            if method == "membank":
                answer = memory_bank(
                    self.model,
                    case,
                    memory,
                    cfg.k,
                    semantic.text,
                    strength_days=cfg.membank_strength_days,
                    config=loop,
                )
                return answer, extra
            return profile_augmented(self.model, case, memory, int(method[4:]), semantic.text, config=loop), extra
        if method == "react":
            tools: list[Tool] = [MemorySearchTool(memory, k=cfg.k)]
            if wiki is not None:
                tools.append(WikipediaTool(wiki))
            return react(self.model, case, ToolBox(tuple(tools)), config=loop), {}
        return self._agent(method, task, ex, store, wiki, other_titles, case)

    def _agent(
        self,
        method: str,
        task: LampTask,
        ex: LampExample,
        store: PersonaStore,
        wiki: WikiLookup | None,
        other_titles: Sequence[str],
        case: Case,
    ) -> tuple[AgentAnswer, dict[str, Any]]:
        config = self._agent_config(method)
        # personas are kept per method *and* settings digest: any setting can change what alignment simulates and so
        # the persona it writes (a resumed run finds its own; prompts that did not change come from the response
        # cache, so building again under new settings costs only what really changed)
        variant = f"{method}@{self.method_digest(method, task)}"
        agent = PersonaAgent(
            self.model, self.embedder, store, ex.id, config=config, wikipedia=wiki, task=task.name, variant=variant
        )
        used = Usage()
        extra: dict[str, Any] = {}
        if config.use_persona:
            before = agent.persona()
            init = agent.initialise()
            if before is None:
                used = used + Usage.from_dict(init.meta.get("usage"))
            else:
                # a persona kept from an earlier, stopped run of the same settings is not built again; the row
                # still counts the requests that built it, so every row of a method has the same meaning
                reused = agent.recorded_usage(before.version)
                extra["_reused_requests"] = reused.calls + reused.cache_hits
                extra["persona_reused"] = True
            align = method not in ("no-alignment",)
            if align and init.method == "agent-init":
                labels = case.space.labels
                records = agent.memory.all()
                own_titles = {r.query for r in records}
                others = [t for t in other_titles if t not in own_titles][:50]
                batch = task.alignment_batch(records, config.alignment.batch_size, labels, other_titles=others)
                if batch:
                    result = agent.align(batch, space=case.space)
                    used = used + result.usage
                    extra["alignment"] = [
                        {
                            "iteration": s.iteration,
                            "correct": sum(1 for x in s.simulated if x["correct"]),
                            "of": len(s.simulated),
                            "dropped": len(s.dropped),
                            "restored": len(s.restored),
                            "words": len(s.persona_after.split()),
                            "error": s.error,
                        }
                        for s in result.steps
                    ]
            current = agent.persona()
            extra["persona_version"] = current.version if current else None
            extra["persona_words"] = len(current.profile.split()) if current else 0
        answer = agent.answer(case.question, space=case.space, search_query=case.search_query)
        extra["_usage"] = used
        return answer, extra

    def _demos(self, task: LampTask, ex: LampExample, everything: Sequence[LampExample]) -> list[tuple[str, str]]:
        """ICL demonstrations: solved questions from other examples' profiles, the same for a given example id."""
        rng = random.Random(f"{self.config.seed}:{ex.id}")
        others = [e for e in everything if e.id != ex.id and e.profile]
        demos: list[tuple[str, str]] = []
        labels = task.space(ex).labels
        for other in rng.sample(others, min(len(others), self.config.icl_demos)):
            record = rng.choice(task.memory_records(other))
            if task.number == "1":
                continue  # a citation choice cannot be rebuilt from one profile entry
            demos.append((task.question_for(record, labels), record.response))
        return demos


def _clip_step(step: dict[str, Any], limit: int = 400) -> dict[str, Any]:
    return {k: (v[:limit] + "…" if isinstance(v, str) and len(v) > limit else v) for k, v in step.items()}


# ---------------------------------------------------------------- report

LABELS = {
    "history": "History (no LLM)",
    "prompt": "Prompt",
    "icl": "ICL",
    "react": "ReAct",
    "membank": "MemBank",
    "personaagent": "PersonaAgent",
    "no-alignment": "w/o alignment",
    "no-persona": "w/o persona",
    "no-memory": "w/o memory",
    "no-action": "w/o action",
}


def method_label(m: str) -> str:
    if m in LABELS:
        return LABELS[m]
    if m.startswith("rag-") or m.startswith("pag-"):
        return m[:3].upper() + "-" + m[4:]
    return m.replace("personaagent", "PersonaAgent")


def _by_count(values: Iterable[str]) -> dict[str, int]:
    """How often each value occurs, most frequent first (ties in alphabetical order, so reports are stable)."""
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def summarise_rows(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """Per-method metrics over the examples every reported method has finished (so columns compare alike)."""
    task = get_task(str(config.get("task")))
    by_method: dict[str, dict[str, Mapping[str, Any]]] = {}
    digests = config.get("digests") or {}
    wanted = set(config.get("example_ids") or ())
    for r in rows:
        if digests and digests.get(r["method"]) != r.get("digest"):
            continue  # made with other settings (or a method no longer configured)
        if wanted and r["example"] not in wanted:
            continue
        by_method.setdefault(r["method"], {})[r["example"]] = r  # the last row for a key wins
    methods = [m for m in config.get("methods_all", []) if m in by_method] or sorted(by_method)
    common = set.intersection(*(set(by_method[m]) for m in methods)) if methods else set()
    examples = sorted(common)
    labels = tuple(config.get("labels") or task.default_labels())
    out: dict[str, Any] = {"task": task.name, "examples": len(examples), "methods": {}}
    if not examples:
        return out
    ref = "personaagent" if "personaagent" in methods else None
    if not task.is_rating:
        out["gold_counts"] = _by_count(str(by_method[methods[0]][e]["gold"]) for e in examples)
    for m in methods:
        rs = [by_method[m][e] for e in examples]
        metrics = lamp_metrics(
            task,
            [r["gold"] for r in rs],
            [r["pred"] if r.get("parsed", True) else None for r in rs],
            labels=labels,
            unparsable=str(config.get("unparsable", "official")),  # type: ignore[arg-type]
            expectations=[r.get("expectation") for r in rs],
        )
        # requests the method needs (answers another method already got from the same prompt come from the
        # response cache: they count here, but not in the tokens and seconds actually spent)
        calls = sum(r.get("requests", r["usage"]["calls"] + r["usage"].get("cache_hits", 0)) for r in rs) / len(rs)
        tokens = sum(r["usage"]["total_tokens"] for r in rs) / len(rs)
        seconds = sum(r["seconds"] for r in rs) / len(rs)
        entry: dict[str, Any] = {
            "metrics": metrics,
            "calls_per_example": calls,
            "tokens_per_example": tokens,
            "seconds_per_example": seconds,
            "forced_search_share": sum(1 for r in rs if r.get("forced_search")) / len(rs),
        }
        if not task.is_rating:
            # which answers the method gives and which of them are right: a method that never gives a frequent gold
            # answer, or gives one answer far more often than the users do, shows here and not in the accuracy
            read = [r for r in rs if r.get("parsed", True) and r.get("pred") is not None]
            entry["answers"] = _by_count(str(r["pred"]) for r in read)
            entry["hits"] = _by_count(str(r["pred"]) for r in read if r["correct"])
        key = "abs_error" if task.is_rating else "correct"
        per_example = [float(r[key]) for r in rs]
        entry["primary_se"] = standard_error(per_example)
        if ref is not None and m != ref:
            a = [float(by_method[ref][e][key]) for e in examples]
            b = [float(by_method[m][e][key]) for e in examples]
            if len(a) >= 2:
                entry["vs_personaagent"] = paired_bootstrap(a, b, seed=0)
        out["methods"][m] = entry
    return out


SCALING_AXES = (
    ("n", "batch_size", "alignment batch n"),
    ("E", "iterations", "alignment iterations E"),
    ("k", "k", "retrieved memories k"),
)


def scaling_points(summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The scaling study as one series per axis (``"n"``, ``"E"``, ``"k"``): points sorted by the setting, each
    ``{"value", "method", "metrics", "primary_se", "vs_default"}``. PersonaAgent with the run's own settings is the
    point at the default value of every axis (``vs_default`` is None there). Only single-axis variants count
    (``personaagent[n=5]``, not ``personaagent[n=5,E=2]``); an axis without variants is left out."""
    methods: Mapping[str, Any] = summary.get("methods") or {}
    out: dict[str, list[dict[str, Any]]] = {}
    for axis, field_name, _ in SCALING_AXES:
        points = []
        for m, entry in methods.items():
            match = _SCALING.match(m)
            if not match:
                continue
            overrides = scaling_overrides(match.group(1))
            if list(overrides) != [field_name]:
                continue
            points.append(
                {
                    "value": overrides[field_name],
                    "method": m,
                    "metrics": entry["metrics"],
                    "primary_se": entry.get("primary_se"),
                    "vs_default": entry.get("vs_personaagent"),
                }
            )
        if not points:
            continue
        default = methods.get("personaagent")
        default_value = config.get(field_name)
        if default is not None and isinstance(default_value, int):
            if all(p["value"] != default_value for p in points):
                points.append(
                    {
                        "value": default_value,
                        "method": "personaagent",
                        "metrics": default["metrics"],
                        "primary_se": default.get("primary_se"),
                        "vs_default": None,
                    }
                )
        out[axis] = sorted(points, key=lambda p: p["value"])
    return out


def plot_lamp_scaling(summary: Mapping[str, Any], config: Mapping[str, Any], path: str | Path) -> Path | None:
    """The paper's Figure 3 layout: one panel per scaling axis (n, E, k), the setting on x and each metric of the
    task (MAE and RMSE, or accuracy and F1) on y, the main metric with ± one standard error, the run's default
    setting marked. Writes a PNG at ``path``; returns None when matplotlib is missing or nothing was scaled."""
    series = scaling_points(summary, config)
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from personalens.plotting import save_png

    task = get_task(str(summary["task"]))
    keys = ("mae", "rmse") if task.is_rating else ("accuracy", "f1")
    names = {"mae": "MAE (lower is better)", "rmse": "RMSE", "accuracy": "accuracy (higher is better)", "f1": "F1"}
    titles = {axis: title for axis, _, title in SCALING_AXES}
    fields = {axis: field_name for axis, field_name, _ in SCALING_AXES}
    fig, axes = plt.subplots(
        1, len(series), figsize=(0.6 + 4.0 * len(series), 3.6), layout="constrained", squeeze=False
    )
    try:
        for ax, (axis, points) in zip(axes[0], series.items(), strict=True):
            xs = [p["value"] for p in points]
            main = [p["metrics"].get(keys[0]) for p in points]
            errs = [p["primary_se"] or 0.0 for p in points]
            ax.errorbar(xs, main, yerr=errs, marker="o", capsize=3, color="tab:blue", label=f"{names[keys[0]]} ± 1 SE")
            ax.plot(
                xs, [p["metrics"].get(keys[1]) for p in points], marker="s", color="tab:orange", label=names[keys[1]]
            )
            default = config.get(fields[axis])
            if default in xs:
                ax.axvline(default, color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(xs)
            ax.set_xlabel(titles[axis])
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize="small")
        fig.suptitle(f"PersonaAgent test-time scaling, {task.name} ({summary['examples']} examples; dotted: default)")
        return save_png(fig, Path(path))
    finally:
        plt.close(fig)


def _neg(x: float) -> str:
    """``-x`` signed to three decimals, without a negative zero."""
    return f"{-x + 0.0:+.3f}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_lamp_report(summary: Mapping[str, Any], config: Mapping[str, Any], *, plot: str | None = None) -> str:
    """The report in Markdown; ``plot`` is the scaling figure's path relative to the report, when one was drawn."""
    task = get_task(str(summary["task"]))
    methods: dict[str, Any] = summary["methods"]
    keys = ("mae", "rmse") if task.is_rating else ("accuracy", "f1")
    arrows = {"mae": "MAE ↓", "rmse": "RMSE ↓", "accuracy": "Acc. ↑", "f1": "F1 ↑"}
    lines = [
        f"# {config.get('name', 'LaMP evaluation')}",
        "",
        f"Task {task.name}; {summary['examples']} examples (users) finished by every method; model "
        f"`{config.get('model', '?')}`. Answers are read from the model's probabilities over the allowed answers.",
        "",
    ]
    main = [m for m in ("history", *BASELINES, "personaagent") if m in methods] + [
        m for m in methods if (m.startswith("rag-") or m.startswith("pag-")) and m not in BASELINES
    ]
    if main:
        lines += ["## Table 2 layout: PersonaAgent and baselines", ""]
        lines.append("| Metric | " + " | ".join(method_label(m) for m in main) + " |")
        lines.append("|---|" + "---:|" * len(main))
        for k in (*keys, "unparsable"):
            label = arrows.get(k, "unreadable share")
            lines.append(f"| {label} | " + " | ".join(_fmt(methods[m]["metrics"].get(k)) for m in main) + " |")
        if task.is_rating and all("mae_expected" in methods[m]["metrics"] for m in main):
            lines.append(
                "| MAE of the expected rating | "
                + " | ".join(_fmt(methods[m]["metrics"]["mae_expected"]) for m in main)
                + " |"
            )
        lines.append("")
    ablations = [m for m in AGENT_VARIANTS if m in methods]
    if ablations:
        lines += ["## Table 3 layout: ablations", ""]
        lines.append("| Variant | " + " | ".join(arrows[k] for k in keys) + " | requests / example | s / example |")
        lines.append("|---|" + "---:|" * (len(keys) + 2))
        for m in ablations:
            e = methods[m]
            lines.append(
                f"| {method_label(m)} | "
                + " | ".join(_fmt(e["metrics"].get(k)) for k in keys)
                + f" | {e['calls_per_example']:.1f} | {e['seconds_per_example']:.1f} |"
            )
        lines.append("")
    scaling = [m for m in methods if _SCALING.match(m)]
    if scaling:
        lines += [
            "## Test-time scaling (n = alignment batch, E = iterations, k = memories)",
            "",
            "One setting changed at a time; the other settings and the unmarked row are the run's defaults "
            f"(n = {config.get('batch_size')}, E = {config.get('iterations')}, k = {config.get('k')}). "
            "Δ is the change against the default (paired bootstrap over examples).",
            "",
        ]
        if plot is not None:
            lines += [f"![test-time scaling]({plot})", ""]
        lines.append(
            "| Setting | "
            + " | ".join(arrows[k] for k in keys)
            + f" | Δ {arrows[keys[0]].split()[0]} vs default | 95 % CI | p | requests / example |"
        )
        lines.append("|---|" + "---:|" * len(keys) + "---:|---|---:|---:|")
        in_series = set()
        for axis, points in scaling_points(summary, config).items():
            for p in points:
                in_series.add(p["method"])
                e = methods[p["method"]]
                c = p["vs_default"]
                # vs_personaagent is PersonaAgent minus the variant; the table shows the variant minus the default
                delta = (
                    ["", "", ""]
                    if c is None
                    else [
                        _neg(c["mean_diff"]),
                        f"[{_neg(c['ci_high'])}, {_neg(c['ci_low'])}]",
                        f"{c['p_value']:.3f}",
                    ]
                )
                label = f"{axis} = {p['value']}" + (" (default)" if c is None else "")
                cells = [label, *(_fmt(p["metrics"].get(k)) for k in keys), *delta, f"{e['calls_per_example']:.1f}"]
                lines.append("| " + " | ".join(cells) + " |")
        for m in scaling:
            if m in in_series:
                continue
            e = methods[m]
            lines.append(
                f"| {m[len('personaagent') :]} | "
                + " | ".join(_fmt(e["metrics"].get(k)) for k in keys)
                + f" | | | | {e['calls_per_example']:.1f} |"
            )
        lines.append("")
    compared = [m for m in methods if "vs_personaagent" in methods[m]]
    if compared:
        what = "absolute error (negative: PersonaAgent errs less)" if task.is_rating else "accuracy"
        lines += [
            "## PersonaAgent minus each method (paired bootstrap over examples)",
            "",
            f"Difference in {what}; 95 % interval and two-sided p.",
            "",
            "| Method | difference | 95 % CI | p |",
            "|---|---:|---|---:|",
        ]
        for m in compared:
            c = methods[m]["vs_personaagent"]
            lines.append(
                f"| {method_label(m)} | {c['mean_diff']:+.3f} | [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | "
                f"{c['p_value']:.3f} |"
            )
        lines.append("")
    if "gold_counts" in summary and all("answers" in e for e in methods.values()):
        lines += _answer_table(summary["gold_counts"], methods)
    lines += [
        "## Cost per example",
        "",
        "LLM requests the method makes; tokens and seconds actually spent in this run (a request whose exact prompt "
        "another method already sent is answered from the response cache and costs neither).",
        "",
        "| Method | LLM requests | tokens spent | seconds spent |",
        "|---|---:|---:|---:|",
    ]
    for m, e in methods.items():
        lines.append(
            f"| {method_label(m)} | {e['calls_per_example']:.1f} | {e['tokens_per_example']:.0f} | "
            f"{e['seconds_per_example']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


def _answer_table(gold: Mapping[str, int], methods: Mapping[str, Any]) -> list[str]:
    """Per allowed answer: how often it is the gold answer, and how often each method gives it (right ones in
    brackets). Answers that are neither gold nor given by any method are left out; unreadable answers are not
    counted."""
    given: dict[str, int] = dict(gold)
    for e in methods.values():
        for a, n in e["answers"].items():
            given[a] = given.get(a, 0) + n
    order = sorted(given, key=lambda a: (-gold.get(a, 0), -given[a], a))
    lines = [
        "## Answers given, per label",
        "",
        "How often each label is the gold answer and how often each method gives it; in brackets, how many of those "
        "answers are right.",
        "",
        "| Label | gold | " + " | ".join(method_label(m) for m in methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for a in order:
        cells = []
        for e in methods.values():
            n = e["answers"].get(a, 0)
            cells.append(f"{n} ({e['hits'].get(a, 0)})" if n else "0")
        lines.append(f"| {a} | {gold.get(a, 0)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def write_lamp_report(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    config = json.loads((out / "config.json").read_text())
    rows = read_rows(out / ROWS_FILE)
    summary = summarise_rows(rows, config)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = out / "report.md"
    paths = {"markdown": md, "json": out / "summary.json"}
    if not summary.get("methods"):
        md.write_text("# No finished rows yet\n")
        return paths
    plot = plot_lamp_scaling(summary, config, out / "scaling.png")
    if plot is not None:
        paths["scaling_plot"] = plot
    md.write_text(render_lamp_report(summary, config, plot=None if plot is None else plot.name))
    return paths
