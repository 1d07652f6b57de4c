"""Multi-round dynamic persona evaluation on DeePer's windows (behind ``personalens eval dynamic CONFIG``).

For every domain, a seeded sample of users, every strategy (and the verified variants asked for) runs the same
number of rounds from the same initial persona; one JSON line per (domain, user, method) goes to ``rows.jsonl`` as
soon as that user is done, so a killed run resumes where it stopped (and the LLM response cache makes the shared
initial personas and predictions free). ``summarise`` turns the rows into the paper's layouts: future-window MAE per
round (Figure 4), previous/current/future errors before and after round 1 (Table 1), persona length per round
(Table 2); ``write_dynamic_report`` writes them to results.json/results.md and, when matplotlib is installed,
draws Figure 4 and Table 2 as ``fig4_future_mae.png`` and ``table2_persona_words.png`` (``plot_dynamic``).

Example configuration::

    name = "DeePer windows, 3 domains"
    seed = 0
    [data]
    root = "../shared/data/deeper"
    domains = ["amazon_movies_and_TV", "amazon_clothing_shoes_and_jewelry", "food_com"]
    users_per_domain = 30
    rounds = 4
    [refine]
    strategies = ["refine", "slide_regen", "full_regen", "inc_update", "hier_merge"]
    verified = ["refine"]
    candidates = 4
    temperature = 0.8
    min_words = 200
    max_words = 320
    predictor = "probability"     # or "structured" (remote models without token probabilities)
    references = ["history-mean"] # rows without any LLM (the default; [] leaves them out)

``history-mean`` predicts every item with the mean of the user's ratings so far (W0..Wt), scored exactly like a
strategy (:func:`personalens.refinement.loop.history_mean_trace`): the floor a persona has to clear. It is drawn
dashed in Figure 4 and has no row in Table 2 (it has no text).
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalens._files import move_rows_aside, read_jsonl_rows
from personalens.data.deeper import load_deeper_iterations
from personalens.errors import ConfigError, PersonaLensError
from personalens.evaluation.metrics import standard_error
from personalens.llm.base import ChatModel, Usage
from personalens.profiling.summarize import repeated_trigram_share
from personalens.refinement.loop import (
    HISTORY_MEAN,
    NO_UPDATE,
    DynamicRefiner,
    Predictor,
    ProbabilityPredictor,
    RefineConfig,
    StructuredPredictor,
    UserTrace,
    history_mean_trace,
)
from personalens.refinement.strategies import STRATEGIES, PersonaWriter
from personalens.refinement.windows import UserWindows, windows_from_deeper

ROWS_FILE = "rows.jsonl"
# an update that keeps at least this much of the persona it replaced (word-sequence similarity) is a near copy
NEAR_COPY = 0.95
STALE_FILE = "stale.jsonl"
FIG4_FILE = "fig4_future_mae.png"
TABLE2_PLOT_FILE = "table2_persona_words.png"
# Plot key -> (file name, alt text in results.md); the keys are also the keys write_dynamic_report returns.
PLOT_FILES: dict[str, tuple[str, str]] = {
    "fig4": (FIG4_FILE, "Future-window MAE per round (Figure 4 layout)"),
    "table2_plot": (TABLE2_PLOT_FILE, "Persona length in words per round (Table 2 layout)"),
}
# Methods in this order (so each keeps its colour and marker in every subplot), any others after them alphabetically.
METHOD_ORDER = (
    "refine",
    "slide_regen",
    "full_regen",
    "inc_update",
    "hier_merge",
    "verified-refine",
    HISTORY_MEAN,
    NO_UPDATE,
)
REFERENCES = (HISTORY_MEAN,)  # rows computed from the ratings alone, no LLM (refinement.loop.history_mean_trace)


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    name: str
    root: str
    domains: tuple[str, ...]
    users_per_domain: int = 30
    rounds: int = 4
    strategies: tuple[str, ...] = STRATEGIES
    verified: tuple[str, ...] = ("refine",)
    candidates: int = 4
    temperature: float = 0.8
    min_words: int = 200
    max_words: int = 320
    repetition_penalty: float | None = None  # for every persona request (None: the backend's default, none)
    revised_only: bool = True  # keep only the profile under an answer's "revised profile" heading
    drop_naming: bool = True  # drop the sentences of an answer that name an item the prompt showed
    no_update: bool = True  # also run the control that keeps S0 for every round (RefineConfig(frozen=True))
    predictor: str = "probability"
    references: tuple[str, ...] = REFERENCES
    seed: int = 0
    source: str | None = None

    def methods(self) -> list[RefineConfig]:
        out = [RefineConfig(s) for s in self.strategies]  # type: ignore[arg-type]
        out += [
            RefineConfig(s, verified=True, candidates=self.candidates, temperature=self.temperature)  # type: ignore[arg-type]
            for s in self.verified
        ]
        if self.no_update:
            out.append(RefineConfig(frozen=True))
        return out


def load_dynamic_config(path: str | Path) -> DynamicConfig:
    from personalens.evaluation.experiment import read_experiment_file

    path = Path(path)
    return parse_dynamic_config(read_experiment_file(path), source=str(path), base=path.parent)


def parse_dynamic_config(raw: dict[str, Any], *, source: str = "<config>", base: Path | None = None) -> DynamicConfig:
    from personalens.evaluation.experiment import check_sections

    allowed = {"name", "seed", "data", "refine"}
    data_keys = {"root", "domains", "users_per_domain", "rounds"}
    refine_keys = {
        "strategies",
        "verified",
        "candidates",
        "temperature",
        "min_words",
        "max_words",
        "repetition_penalty",
        "revised_only",
        "drop_naming",
        "no_update",
        "predictor",
        "references",
    }
    check_sections(raw, {"": allowed, "data": data_keys, "refine": refine_keys}, source=source)
    data, refine = raw.get("data", {}), raw.get("refine", {})
    if "root" not in data or not data.get("domains"):
        raise ConfigError(f"{source}: [data] root and domains are required")
    root = Path(data["root"])
    if base is not None and not root.is_absolute():
        root = (base / root).resolve()
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in {**data, **refine}.items() if k != "root"
    }
    try:
        config = DynamicConfig(
            name=str(raw.get("name") or Path(source).stem),
            root=str(root),
            seed=int(raw.get("seed", 0)),
            source=source,
            **values,
        )
        config.methods()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(config.references) - set(REFERENCES))
    if unknown:
        raise ConfigError(f"{source}: [refine] references: unknown {unknown}; choose from {list(REFERENCES)}")
    if config.predictor not in ("probability", "structured"):
        raise ConfigError(f"{source}: [refine] predictor must be probability or structured")
    if config.rounds < 1 or config.users_per_domain < 1:
        raise ConfigError(f"{source}: [data] rounds and users_per_domain must be >= 1")
    for flag in ("revised_only", "drop_naming", "no_update"):
        if not isinstance(getattr(config, flag), bool):
            raise ConfigError(f"{source}: [refine] {flag} must be true or false")
    if config.repetition_penalty is not None and not config.repetition_penalty >= 1:
        raise ConfigError(f"{source}: [refine] repetition_penalty must be >= 1 (1: none)")
    return config


def sample_users(users: list[UserWindows], n: int, seed: int, rounds: int) -> list[UserWindows]:
    """Users with enough windows for ``rounds`` rounds plus a future window, in a seeded random order (of the sorted
    ids, so it does not depend on file order), first ``n``. The order does not depend on ``n``: a run that raises
    ``users_per_domain`` keeps every user of the smaller run and only adds more (finished rows are reused)."""
    eligible = sorted((u for u in users if len(u.windows) >= rounds + 2), key=lambda u: u.user_id)
    order = np.random.default_rng(seed).permutation(len(eligible))
    return [eligible[int(i)] for i in order[:n]]


@dataclass(slots=True)
class DynamicSummary:
    rows_written: int = 0
    rows_skipped: int = 0
    rows_stale: int = 0  # rows from an earlier configuration of a method, moved to stale.jsonl and redone
    failures: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0


class DynamicExperiment:
    def __init__(
        self,
        config: DynamicConfig,
        out_dir: str | Path,
        *,
        model: ChatModel,
        predictor: Predictor | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.model = model
        if predictor is None:
            predictor = ProbabilityPredictor(model) if config.predictor == "probability" else StructuredPredictor(model)
        self.predictor = predictor
        self.on_event = on_event or (lambda kind, payload: None)

    def users(self) -> dict[str, list[UserWindows]]:
        out = {}
        for domain in self.config.domains:
            wanted = range(1, self.config.rounds + 1)
            rounds = load_deeper_iterations(Path(self.config.root) / domain, iterations=wanted)
            out[domain] = sample_users(
                windows_from_deeper(rounds), self.config.users_per_domain, self.config.seed, self.config.rounds
            )
        return out

    def run(self) -> DynamicSummary:
        started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        rows_path = self.out_dir / ROWS_FILE
        summary = DynamicSummary()
        summary.rows_stale = self._retire_stale_rows(rows_path)
        rows = read_dynamic_rows(rows_path)
        done = {(r["domain"], r["user"], r["method"]) for r in rows}
        # every method of a user starts from one S0, written once and read back on a rerun from the user's rows of
        # the methods configured now (those match the current settings; a row of a method no longer configured may
        # hold an S0 of other writer settings)
        configured = {m.label for m in self.config.methods()}
        initial_of = {
            (r["domain"], r["user"]): r["initial"]
            for r in rows
            if r["method"] in configured and not r.get("reference") and r["initial"]
        }
        by_domain = self.users()
        total = sum(len(v) for v in by_domain.values()) * (len(self.config.methods()) + len(self.config.references))
        self.on_event("start", {"runs": total})
        # users interleaved across domains (the first of each domain, then the second, ...), so a run stopped part
        # way has covered every domain evenly
        width = max((len(v) for v in by_domain.values()), default=0)
        order = [(d, us[i]) for i in range(width) for d, us in by_domain.items() if i < len(us)]
        with rows_path.open("a", encoding="utf-8") as sink:
            for domain, user in order:
                for reference in self.config.references:  # no LLM: instant, so every user has it
                    if (domain, user.user_id, reference) in done:
                        summary.rows_skipped += 1
                    else:
                        trace = history_mean_trace(user, rounds=self.config.rounds)
                        row = _row(domain, reference, {"reference": reference}, trace, 0.0)
                        sink.write(json.dumps(row | {"reference": True}) + "\n")
                        sink.flush()
                        summary.rows_written += 1
                    self.on_event("run", {"domain": domain, "user": user.user_id, "method": reference})
                writer = PersonaWriter(
                    self.model,
                    domain=user.domain,
                    scale=user.scale,
                    min_words=self.config.min_words,
                    max_words=self.config.max_words,
                    repetition_penalty=self.config.repetition_penalty,
                    revised_only=self.config.revised_only,
                    drop_naming=self.config.drop_naming,
                )
                s0 = initial_of.get((domain, user.user_id))
                s0_usage = Usage()
                for method in self.config.methods():
                    key = (domain, user.user_id, method.label)
                    if key in done:
                        summary.rows_skipped += 1
                        self.on_event("run", {"domain": domain, "user": user.user_id, "method": method.label})
                        continue
                    refiner = DynamicRefiner(writer, self.predictor, method)
                    t0 = time.perf_counter()
                    try:
                        if s0 is None:
                            written = writer.initial(user.windows[0])
                            s0, s0_usage = written.text, written.usage
                            summary.usage = summary.usage + written.usage
                        trace = refiner.run(user, rounds=self.config.rounds, initial=s0)
                    except PersonaLensError as exc:
                        summary.failures["/".join(key)] = str(exc)
                        self.on_event("failed", {"domain": domain, "user": user.user_id, "error": str(exc)})
                        continue
                    row = _row(domain, method.label, refiner.describe(), trace, time.perf_counter() - t0)
                    # what writing the shared S0 cost, on the row of the method that asked for it first
                    row["initial_usage"], s0_usage = s0_usage.to_dict(), Usage()
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    summary.rows_written += 1
                    summary.usage = summary.usage + trace.usage
                    self.on_event("run", {"domain": domain, "user": user.user_id, "method": method.label})
        summary.seconds = time.perf_counter() - started
        return summary

    def _method_configs(self) -> dict[str, dict[str, Any]]:
        """Each method's configuration as its rows record it (user-independent: domain and scale are not in it)."""
        out: dict[str, dict[str, Any]] = {ref: {"reference": ref} for ref in self.config.references}
        for method in self.config.methods():
            writer = PersonaWriter(
                self.model,
                domain="items",
                scale=(1, 5, 1),
                min_words=self.config.min_words,
                max_words=self.config.max_words,
                repetition_penalty=self.config.repetition_penalty,
                revised_only=self.config.revised_only,
                drop_naming=self.config.drop_naming,
            )
            out[method.label] = DynamicRefiner(writer, self.predictor, method).describe()
        return out

    def _retire_stale_rows(self, rows_path: Path) -> int:
        """Move rows whose recorded configuration differs from their method's current one (a changed prompt, model,
        predictor or writer setting) to ``stale.jsonl``, so they are redone instead of mixed into the tables. Rows
        of methods no longer configured are kept as they are. The rows file is replaced atomically after the stale
        rows are safely appended, so a crash loses nothing."""
        rows = read_dynamic_rows(rows_path)
        if not rows:
            return 0
        wanted = self._method_configs()
        # a round trip through JSON, so tuples and lists compare as the rows store them
        wanted = json.loads(json.dumps(wanted))
        keep = [r for r in rows if r["method"] not in wanted or r.get("config") == wanted[r["method"]]]
        stale = [r for r in rows if r["method"] in wanted and r.get("config") != wanted[r["method"]]]
        if not stale:
            return 0
        move_rows_aside(rows_path, keep, stale, self.out_dir / STALE_FILE)
        self.on_event("stale", {"rows": len(stale), "file": str(self.out_dir / STALE_FILE)})
        return len(stale)


def _row(domain: str, method: str, config: dict[str, Any], trace: UserTrace, seconds: float) -> dict[str, Any]:
    return {
        "domain": domain,
        "user": trace.user_id,
        "method": method,
        "config": config,
        "initial": trace.initial,
        "initial_error": trace.initial_error,
        "rounds": [r.to_dict() for r in trace.rounds],
        "usage": trace.usage.to_dict(),
        "seconds": round(seconds, 2),
    }


def read_dynamic_rows(path: Path) -> list[dict[str, Any]]:
    """Rows written so far (a torn last line from a killed run is skipped: that run is redone)."""
    return read_jsonl_rows(path)[0]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Future-window MAE per round (round 0: S0 on W1), the round-1 error table, persona length per round, and the
    relative change of future MAE from round 0 to the last round, per domain and method, over the users that
    completed every method of their domain."""
    out: dict[str, Any] = {}
    # methods are compared on the same users: per domain, only users with a row for every method of that domain
    # (a run stopped part way through a user, or a user whose run failed for one method, is left out everywhere)
    methods_of: dict[str, set[str]] = {}
    users_of: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        methods_of.setdefault(r["domain"], set()).add(r["method"])
        users_of.setdefault((r["domain"], r["user"]), set()).add(r["method"])
    complete = {key for key, methods in users_of.items() if methods == methods_of[key[0]]}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if (r["domain"], r["user"]) in complete:
            groups.setdefault((r["domain"], r["method"]), []).append(r)
    for (domain, method), rs in sorted(groups.items()):
        n_rounds = min(len(r["rounds"]) for r in rs)
        future = [statistics.fmean(r["initial_error"] for r in rs)]
        words = [statistics.fmean(len(r["initial"].split()) for r in rs)]
        for t in range(n_rounds):
            future.append(statistics.fmean(r["rounds"][t]["mae_after"]["future"] for r in rs))
            words.append(statistics.fmean(r["rounds"][t]["persona_words"] for r in rs))
        first = [r["rounds"][0] for r in rs]
        table1 = {
            f"{when}_{w}": statistics.fmean(x[f"mae_{when}"][w] for x in first)
            for when in ("before", "after")
            for w in ("previous", "current", "future")
        }
        committed = [x["committed"] for r in rs for x in r["rounds"][:n_rounds]]
        kept_words = _kept_words(rs, n_rounds)
        quality = _persona_quality(rs, n_rounds)
        reference = any(r.get("reference") for r in rs)
        out.setdefault(domain, {})[method] = {
            "users": len(rs),
            "reference": reference,
            "future_mae_by_round": future,
            "change_pct": 100.0 * (future[-1] - future[0]) / future[0] if future[0] else None,
            "lowered": sum(r["rounds"][n_rounds - 1]["mae_after"]["future"] < r["initial_error"] for r in rs)
            if n_rounds
            else 0,
            # each user's last-round future MAE, for paired comparisons between methods
            "last_future_by_user": {r["user"]: r["rounds"][n_rounds - 1]["mae_after"]["future"] for r in rs}
            if n_rounds
            else {},
            "change_se": standard_error(
                [r["rounds"][n_rounds - 1]["mae_after"]["future"] - r["initial_error"] for r in rs]
            )
            if n_rounds
            else None,
            "round1": table1,
            "persona_words_by_round": None if reference else words,
            "committed_share": sum(committed) / len(committed) if committed else None,
            "unchanged_share": None
            if reference or not kept_words
            else sum(k == 1.0 for k in kept_words) / len(kept_words),
            "near_copy_share": None
            if reference or not kept_words
            else sum(k >= NEAR_COPY for k in kept_words) / len(kept_words),
            **({} if reference else quality),
            "llm_calls_per_user": statistics.fmean(r["usage"]["calls"] for r in rs),
            "tokens_per_user": statistics.fmean(r["usage"]["total_tokens"] for r in rs),
        }
    return out


def summarise_overall(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method over every domain of ``summarise``'s result: the domains and users it covers, the mean of the
    domains' relative changes of future MAE from S0 to the last round (each domain weighs the same, as the domains'
    rating scales differ), how many users ended with a lower future MAE than S0's, and, where the domain has the
    ``no-update`` control, the mean of the domains' relative differences of last-round future MAE against it (what
    updating bought on the same windows; the change from S0 also carries how hard the later windows are) and the
    same user by user: mean difference of last-round future MAE, its standard error, users lower and higher."""
    out: dict[str, dict[str, Any]] = {}
    for methods in summary.values():
        control = methods.get(NO_UPDATE)
        for method, m in methods.items():
            entry = out.setdefault(
                method, {"domains": 0, "users": 0, "lowered": 0, "changes": [], "vs": [], "paired": []}
            )
            entry["domains"] += 1
            entry["users"] += m["users"]
            entry["lowered"] += m.get("lowered", 0)
            if m.get("change_pct") is not None:
                entry["changes"].append(m["change_pct"])
            if control is not None and len(m["future_mae_by_round"]) == len(control["future_mae_by_round"]):
                last, frozen = m["future_mae_by_round"][-1], control["future_mae_by_round"][-1]
                if frozen:
                    entry["vs"].append(100.0 * (last - frozen) / frozen)
                mine, theirs = m.get("last_future_by_user", {}), control.get("last_future_by_user", {})
                entry["paired"] += [mine[u] - theirs[u] for u in sorted(mine) if u in theirs]
            entry["reference"] = m.get("reference", False)
    for entry in out.values():
        changes, versus, paired = entry.pop("changes"), entry.pop("vs"), entry.pop("paired")
        entry["mean_change_pct"] = statistics.fmean(changes) if changes else None
        entry["vs_no_update_pct"] = statistics.fmean(versus) if versus else None
        entry["vs_no_update_paired"] = (
            {
                "users": len(paired),
                "mean_diff": statistics.fmean(paired),
                "se": standard_error(paired),
                "lower": sum(d < 0 for d in paired),
                "higher": sum(d > 0 for d in paired),
            }
            if paired
            else None
        )
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["mean_change_pct"] is None, kv[1]["mean_change_pct"] or 0)))


def verified_against_plain(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each verified method (``verified-<strategy>``) against its plain strategy over every domain that ran both:
    what verifying cost (LLM calls and tokens per user, each the mean of the domains'), how many of its updates it
    committed, and what it bought, user by user: the mean difference of last-round future MAE (negative: verified
    is better), its standard error, and the users lower and higher."""
    out: dict[str, dict[str, Any]] = {}
    for methods in summary.values():
        for method, m in methods.items():
            plain = methods.get(method.removeprefix("verified-")) if method.startswith("verified-") else None
            if plain is None:
                continue
            entry = out.setdefault(method, {"plain": method.removeprefix("verified-"), "domains": [], "diffs": []})
            entry["domains"].append((m, plain))
            mine, theirs = m.get("last_future_by_user", {}), plain.get("last_future_by_user", {})
            entry["diffs"] += [mine[u] - theirs[u] for u in sorted(mine) if u in theirs]
    for entry in out.values():
        pairs, diffs = entry.pop("domains"), entry.pop("diffs")
        entry["calls_per_user"] = statistics.fmean(m["llm_calls_per_user"] for m, _ in pairs)
        entry["plain_calls_per_user"] = statistics.fmean(p["llm_calls_per_user"] for _, p in pairs)
        entry["tokens_per_user"] = statistics.fmean(m["tokens_per_user"] for m, _ in pairs)
        entry["plain_tokens_per_user"] = statistics.fmean(p["tokens_per_user"] for _, p in pairs)
        shares = [m["committed_share"] for m, _ in pairs if m.get("committed_share") is not None]
        entry["committed_share"] = statistics.fmean(shares) if shares else None
        entry["users"] = len(diffs)
        entry["mean_diff"] = statistics.fmean(diffs) if diffs else None
        entry["se"] = standard_error(diffs)
        entry["lower"] = sum(d < 0 for d in diffs)
        entry["higher"] = sum(d > 0 for d in diffs)
    return out


def _persona_quality(rows: Sequence[Mapping[str, Any]], n_rounds: int) -> dict[str, float | None]:
    """Over every persona version (S0 and each round's): the share under the writer's ``min_words`` (None when the
    rows do not record it) and the mean share of word trigrams a persona repeats from itself (0 for all-new wording;
    a persona padded with copies of its own sentences scores high). Over the updates that record the writer's flags
    (a verified update records its gate instead): the share whose persona names an item of the windows it saw, and
    the share whose answer was cut to the profile under its "revised profile" heading (None when not recorded)."""
    texts: list[str] = []
    short: list[bool] = []
    for r in rows:
        versions = [r.get("initial") or ""] + [x.get("persona") or "" for x in r["rounds"][:n_rounds]]
        versions = [v for v in versions if v]
        texts += versions
        minimum = (r.get("config") or {}).get("writer", {}).get("min_words")
        if isinstance(minimum, int):
            short += [len(v.split()) < minimum for v in versions]
    flags = [x["flags"] for r in rows for x in r["rounds"][:n_rounds] if x.get("flags")]
    leaked = [bool(f["leaked"]) for f in flags if "leaked" in f]
    cut = [f["cut_to_revision"] > 0 for f in flags if "cut_to_revision" in f]
    return {
        "short_share": sum(short) / len(short) if short and len(short) == len(texts) else None,
        "repeated_trigrams": statistics.fmean(repeated_trigram_share(v) for v in texts) if texts else None,
        "leaked_share": sum(leaked) / len(leaked) if leaked else None,
        "cut_share": sum(cut) / len(cut) if cut else None,
    }


def _kept_words(rows: Sequence[Mapping[str, Any]], n_rounds: int) -> list[float]:
    """Per committed update: how much of the persona it replaced the new one keeps, as the similarity of their word
    sequences (``difflib``'s ratio: 1.0 word for word, whitespace aside). A small model asked to update often copies
    the old persona back, whole or with a word or two changed. Empty when the rows carry no persona texts."""
    out: list[float] = []
    for r in rows:
        before = r.get("initial")
        for x in r["rounds"][:n_rounds]:
            text = x.get("persona")
            if text is None or before is None:
                return []
            if x["committed"]:
                old, new = before.split(), text.split()
                out.append(1.0 if old == new else difflib.SequenceMatcher(None, old, new, autojunk=False).ratio())
            before = text
    return out


__all__ = [
    "DynamicConfig",
    "DynamicExperiment",
    "DynamicSummary",
    "load_dynamic_config",
    "parse_dynamic_config",
    "plot_dynamic",
    "read_dynamic_rows",
    "render_dynamic_markdown",
    "sample_users",
    "summarise",
    "summarise_overall",
    "verified_against_plain",
    "write_dynamic_report",
]


def render_dynamic_markdown(out_dir: str | Path, *, plots: Mapping[str, Path] | None = None) -> str:
    """results.md for a dynamic run: the Figure 4 layout as a table (future MAE per round), the round-1 Table 1
    layout, persona length per round (Table 2) and what verified updates cost and kept. ``plots`` (as returned by
    ``plot_dynamic``) are linked under "## Plots"; left as None, the plot files already in ``out_dir`` are."""
    out_dir = Path(out_dir)
    if plots is None:
        plots = {key: out_dir / name for key, (name, _) in PLOT_FILES.items() if (out_dir / name).exists()}
    config = json.loads((out_dir / "config.json").read_text())
    rows = read_dynamic_rows(out_dir / ROWS_FILE)
    table = summarise(rows)
    lines = [f"# {config['name']}", "", f"Command: `personalens eval dynamic {config.get('source')}`", ""]
    lines.append(
        f"Domains: {', '.join(config['domains'])}; up to {config['users_per_domain']} users each; "
        f"{config['rounds']} rounds; {len(rows)} (user, method) runs completed; methods are averaged over the users "
        "that completed every method of their domain. MAE is on the domain's own scale; "
        "round 0 is the initial persona S0 predicting W1, round t the persona S_t predicting W_{t+1} (never seen "
        "by the update). committed: the share of updates kept (a verified update may keep the old persona); "
        "unchanged: the share of kept updates whose persona is word for word the one it replaced; near copies: the "
        f"share that keep at least {NEAR_COPY:.0%} of it (the similarity of the two word sequences), unchanged ones "
        "included. Every method of "
        "a user starts from the same S0, written once; LLM calls and tokens per user count each method's updates "
        "and scoring, not S0."
    )
    overall = summarise_overall(table)
    if overall:
        lines += [
            "",
            "## All domains",
            "",
            "Change of future-window MAE from S0 to the last round: the mean of the domains' changes (each domain "
            "weighs the same), and the users whose last persona predicts its future window better than S0 did; "
            "lowest change first. The later windows differ from the first, so part of a change is theirs: "
            "no-update keeps S0 for every round, and the last column is the mean of the domains' relative "
            "difference of last-round future MAE against it (negative: updating helped); paired: the same user by "
            "user (mean difference of MAE ± one standard error, and the users whose last persona did better or "
            "worse than S0 kept).",
            "",
            "| method | domains | users | mean change | users lowered | last round vs no-update | "
            "paired: MAE difference | lower / higher |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method, m in overall.items():
            change = f"{m['mean_change_pct']:+.1f}%" if m["mean_change_pct"] is not None else ""
            versus = f"{m['vs_no_update_pct']:+.1f}%" if m["vs_no_update_pct"] is not None else ""
            shown = f"{method} (no LLM)" if m.get("reference") else method
            pair = m["vs_no_update_paired"] if method != NO_UPDATE else None
            diff = counts = ""
            if pair is not None:
                diff = f"{pair['mean_diff']:+.3f}" + (f" ± {pair['se']:.3f}" if pair["se"] is not None else "")
                counts = f"{pair['lower']} / {pair['higher']}"
            lines.append(
                f"| {shown} | {m['domains']} | {m['users']} | {change} | {m['lowered']} of {m['users']} | {versus} "
                f"| {diff} | {counts} |"
            )
    verified = verified_against_plain(table)
    if verified:
        lines += [
            "",
            "## Verified updates against their plain strategy",
            "",
            "What verifying cost (LLM calls and tokens per user, the mean of the domains') and bought: the mean "
            "difference of last-round future MAE against the plain strategy, user by user (negative: verified is "
            "better; ± one standard error), and the users it did better and worse for.",
            "",
            "| method | against | users | LLM calls / user | tokens / user | committed | future MAE difference | "
            "lower / higher |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method, v in verified.items():
            diff = "" if v["mean_diff"] is None else f"{v['mean_diff']:+.3f}"
            diff += f" ± {v['se']:.3f}" if v["se"] is not None else ""
            share = f"{100 * v['committed_share']:.0f}%" if v["committed_share"] is not None else ""
            calls = f"{v['calls_per_user']:.0f} vs {v['plain_calls_per_user']:.0f}"
            tokens = f"{v['tokens_per_user']:.0f} vs {v['plain_tokens_per_user']:.0f}"
            lines.append(
                f"| {method} | {v['plain']} | {v['users']} | {calls} | {tokens} | {share} | {diff} "
                f"| {v['lower']} / {v['higher']} |"
            )
    linked = [(PLOT_FILES[key][1], path) for key, path in plots.items() if key in PLOT_FILES]
    if linked:
        lines += ["", "## Plots"]
        for alt, path in linked:
            lines += ["", f"![{alt}]({path.name})"]
    for domain, methods in table.items():
        n = max(len(m["future_mae_by_round"]) for m in methods.values())
        lines += ["", f"## {domain}", "", "### Future-window MAE per round (Figure 4 layout)", ""]
        lines.append(
            "| method | users | "
            + " | ".join(f"round {t}" for t in range(n))
            + " | change | committed | unchanged | near copies |"
        )
        lines.append("|---|---:|" + "---:|" * n + "---:|---:|---:|---:|")
        for method, m in methods.items():
            cells = " | ".join(f"{v:.3f}" for v in m["future_mae_by_round"])
            change = f"{m['change_pct']:+.1f}%" if m["change_pct"] is not None else ""
            if m.get("change_se") is not None:
                change += f" (± {m['change_se']:.3f} MAE)"
            share = f"{100 * m['committed_share']:.0f}%" if m["committed_share"] is not None else ""
            same = f"{100 * m['unchanged_share']:.0f}%" if m.get("unchanged_share") is not None else ""
            near = f"{100 * m['near_copy_share']:.0f}%" if m.get("near_copy_share") is not None else ""
            lines.append(f"| {_shown(method, m)} | {m['users']} | {cells} | {change} | {share} | {same} | {near} |")
        lines += ["", "### Round 1: MAE before → after the update (Table 1 layout)", ""]
        lines.append("| method | previous | current | future | LLM calls / user | tokens / user |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for method, m in methods.items():
            r1 = m["round1"]
            cells = " | ".join(
                f"{r1[f'before_{w}']:.3f} → {r1[f'after_{w}']:.3f}" for w in ("previous", "current", "future")
            )
            lines.append(
                f"| {_shown(method, m)} | {cells} | {m['llm_calls_per_user']:.0f} | {m['tokens_per_user']:.0f} |"
            )
        lines += ["", "### Persona length in words per round (Table 2 layout)", ""]
        lines.append(
            "Over every persona version: under min_words: the share shorter than the writer's minimum; "
            "repeated trigrams: the mean share of a persona's word trigrams that repeat an earlier one in it. "
            "Over the updates (not recorded for verified ones): names items: the share whose persona names an item "
            "of the windows it saw; cut: the share whose answer was cut to the profile under its "
            '"revised profile" heading.'
        )
        lines.append("")
        lines.append(
            "| method | "
            + " | ".join(f"round {t}" for t in range(n))
            + " | under min_words | repeated trigrams | names items | cut |"
        )
        lines.append("|---|" + "---:|" * n + "---:|---:|---:|---:|")
        for method, m in methods.items():
            if m["persona_words_by_round"] is not None:  # a reference has no persona
                shares = " | ".join(
                    f"{100 * m[key]:.0f}%" if m.get(key) is not None else ""
                    for key in ("short_share", "repeated_trigrams", "leaked_share", "cut_share")
                )
                cells = " | ".join(f"{v:.0f}" for v in m["persona_words_by_round"])
                lines.append(f"| {method} | {cells} | {shares} |")
    return "\n".join(lines) + "\n"


def _shown(method: str, entry: Mapping[str, Any]) -> str:
    return f"{method} (no LLM)" if entry.get("reference") else method


def write_dynamic_report(out_dir: str | Path) -> dict[str, Path]:
    """results.json, the plots (when matplotlib is installed) and results.md linking them. Returns ``{"json": ...,
    "markdown": ..., "fig4": ..., "table2_plot": ...}``, the plot keys only for the figures written."""
    out_dir = Path(out_dir)
    rows = read_dynamic_rows(out_dir / ROWS_FILE)
    summary = summarise(rows)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(summary, indent=2))
    plots = plot_dynamic(summary, out_dir)
    paths["markdown"].write_text(render_dynamic_markdown(out_dir, plots=plots))
    return {**paths, **plots}


def _method_order(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every method in ``summary`` (all domains): METHOD_ORDER's first, then the rest alphabetically."""
    methods = {m for by_method in summary.values() for m in by_method}
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def _user_counts(summary: Mapping[str, Mapping[str, Any]], method: str) -> str:
    counts = sorted({int(by_method[method]["users"]) for by_method in summary.values() if method in by_method})
    if not counts:
        return "n=0"
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}–{counts[-1]}"


def _plot_per_domain(
    plt: Any, summary: Mapping[str, Mapping[str, Any]], key: str, ylabel: str, title: str, path: Path
) -> Path:
    """One subplot per domain (at most 3 per row), x = update round, one line per method with ``summary``'s
    ``key`` series; a shared legend below, every method in the same colour and marker everywhere."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    domains = list(summary)
    methods = _method_order(summary)
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    markers = "osD^vP<>Xph*"
    style = {m: (palette(i % palette.N), markers[i % len(markers)]) for i, m in enumerate(methods)}
    references = {m for by_method in summary.values() for m, e in by_method.items() if e.get("reference")}
    for m in references:  # the no-LLM reference: grey, dashed
        style[m] = ("0.45", "")
    methods = [m for m in methods if any(by_method.get(m, {}).get(key) is not None for by_method in summary.values())]
    ncols = min(len(domains), 3)
    nrows = math.ceil(len(domains) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(0.5 + 4.2 * ncols, 1.2 + 3.3 * nrows), layout="constrained", squeeze=False
    )
    try:
        flat: Sequence[Any] = axes.ravel().tolist()
        for ax, domain in zip(flat, domains, strict=False):
            for method in methods:
                entry = summary[domain].get(method)
                if entry is None or entry.get(key) is None:
                    continue
                values = [v if v is not None else math.nan for v in entry[key]]
                colour, marker = style[method]
                dashes = "--" if method in references else "-"
                ax.plot(
                    range(len(values)),
                    values,
                    color=colour,
                    marker=marker,
                    linestyle=dashes,
                    linewidth=1.5,
                    markersize=5,
                )
            ax.set_title(domain)
            ax.set_xlabel("update round")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        for ax in flat[len(domains) :]:
            ax.set_visible(False)
        handles = [
            Line2D(
                [],
                [],
                color=style[m][0],
                marker=style[m][1],
                linestyle="--" if m in references else "-",
                label=f"{m}{' (no LLM)' if m in references else ''} ({_user_counts(summary, m)})",
            )
            for m in methods
        ]
        # two legend columns per subplot column: a wider legend is cut off at the sides of a narrow figure
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2 * ncols), fontsize="small")
        fig.suptitle(title)
        from personalens.plotting import save_png  # not at the top: it loads the selection package

        return save_png(fig, path)
    finally:
        plt.close(fig)


def plot_dynamic(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw ``summarise``'s result into ``out_dir``: ``fig4_future_mae.png`` (mean future-window MAE per round, the
    paper's Figure 4 layout) and ``table2_persona_words.png`` (mean persona length in words per round, Table 2),
    each one subplot per domain. Returns ``{"fig4": path, "table2_plot": path}``, or {} when matplotlib is not
    installed or there is nothing to draw."""
    if not summary or not any(summary.values()):
        return {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {name: by_method for name, by_method in summary.items() if by_method}
    return {
        "fig4": _plot_per_domain(
            plt,
            drawn,
            "future_mae_by_round",
            "future-window MAE",
            "Future-window MAE per update round (Figure 4 layout)",
            out_dir / FIG4_FILE,
        ),
        "table2_plot": _plot_per_domain(
            plt,
            drawn,
            "persona_words_by_round",
            "persona length (words)",
            "Persona length per update round (Table 2 layout)",
            out_dir / TABLE2_PLOT_FILE,
        ),
    }
