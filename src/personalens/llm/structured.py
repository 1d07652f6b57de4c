"""Structured output: ask for JSON under a schema, parse tolerantly, validate, re-ask a bounded number of times.

Backends that support JSON-schema constrained decoding (llama.cpp, vLLM, most hosted APIs) get the schema with the
request. The answer is still parsed and validated here, because some servers ignore parts of a schema (llama.cpp's
converter does not enforce ``minimum``/``maximum``: :func:`backend_schema` rewrites small integer ranges as ``enum``).
When an answer does not parse or validate, the model is shown its answer and the error and asked again, up to
``max_attempts`` in all; then :class:`~personalens.errors.LLMOutputError` carries every raw answer.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from personalens.errors import LLMOutputError
from personalens.llm.base import ChatModel, ChatRequest, Message, Usage, assistant, user

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


@dataclass(slots=True)
class JsonAnswer:
    value: Any
    attempts: int
    raw: list[str]
    usage: Usage


def extract_json(text: str) -> Any:
    """Parse the JSON value in a model answer: plain JSON, JSON inside a code fence, or the first balanced object or
    array inside prose. Trailing commas are forgiven. Raises ``ValueError`` naming the problem."""
    candidates: list[str] = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    span = _first_balanced(text)
    if span is not None:
        candidates.append(span)
    last_error = "no JSON value found"
    for candidate in candidates:
        if not candidate:
            continue
        for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as exc:
                last_error = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    raise ValueError(f"the answer is not valid JSON ({last_error})")


def _first_balanced(text: str) -> str | None:
    """The first ``{...}`` or ``[...]`` span with balanced brackets, strings respected."""
    start = next((i for i, ch in enumerate(text) if ch in "{["), None)
    if start is None:
        return None
    stack: list[str] = []
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start : i + 1]
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Check ``value`` against the JSON-schema subset PersonaLens uses: type, enum, const, properties, required,
    additionalProperties (false), items, prefixItems, minItems, maxItems, minimum, maximum, minLength, maxLength.
    Returns the problems found (empty when valid), each with its JSON path."""
    problems: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        ok = any(
            isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool)) for k in kinds
        )
        if not ok and "integer" in kinds and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            return [f"{path}: expected {'/'.join(kinds)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: longer than {schema['maxLength']} characters")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}: missing required field {name!r}")
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in props:
                    problems.append(f"{path}: unexpected field {name!r}")
        for name, sub in props.items():
            if name in value:
                problems += validate(value[name], sub, f"{path}.{name}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{path}: more than {schema['maxItems']} items")
        prefix = schema.get("prefixItems", [])
        for i, element in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if isinstance(sub, Mapping):
                problems += validate(element, sub, f"{path}[{i}]")
    return problems


def backend_schema(schema: Mapping[str, Any], *, max_enum: int = 32) -> dict[str, Any]:
    """A copy of ``schema`` that constrained decoders enforce fully: an integer with both ``minimum`` and ``maximum``
    and at most ``max_enum`` values becomes an ``enum`` (llama.cpp ignores the bounds otherwise)."""

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            if out.get("type") == "integer" and "minimum" in out and "maximum" in out and "enum" not in out:
                lo, hi = int(out["minimum"]), int(out["maximum"])
                if 0 <= hi - lo < max_enum:
                    out["enum"] = list(range(lo, hi + 1))
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return rewrite(copy.deepcopy(dict(schema)))


def generate_json(
    model: ChatModel,
    messages: str | Message | Sequence[Message],
    schema: Mapping[str, Any],
    *,
    max_attempts: int = 3,
    max_tokens: int = 512,
    temperature: float = 0.0,
    seed: int | None = None,
    constrained: bool = True,
) -> JsonAnswer:
    """Ask ``model`` for a JSON value matching ``schema``; parse, validate and re-ask at most ``max_attempts`` times.

    Each re-ask shows the model its previous answer and what was wrong with it. Raises
    :class:`~personalens.errors.LLMOutputError` with every raw answer when no attempt succeeds.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    request = ChatRequest.of(
        messages,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        json_schema=backend_schema(schema) if constrained else None,
    )
    raw: list[str] = []
    usage = Usage()
    problems: list[str] = []
    for attempt in range(1, max_attempts + 1):
        result = model.chat(request)
        usage = usage + result.usage
        raw.append(result.text)
        try:
            value = extract_json(result.text)
        except ValueError as exc:
            problems = [str(exc)]
        else:
            problems = validate(value, schema)
            if not problems:
                return JsonAnswer(value, attempt, raw, usage)
        if result.finish_reason == "length":
            problems.append(f"the answer was cut off at max_tokens={max_tokens}; answer more briefly")
        feedback = (
            "Your answer could not be used: "
            + "; ".join(problems[:5])
            + ". Reply again with only the corrected JSON, nothing else."
        )
        # A re-ask is a new request, so it is cached apart from the first one.
        request = replace(
            request,
            messages=(*request.messages, assistant(result.text), user(feedback)),
        )
    raise LLMOutputError(
        f"no valid JSON after {max_attempts} attempts: {'; '.join(problems[:3])}",
        raw=raw,
    )
