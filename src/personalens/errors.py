"""The exception hierarchy. Every error PersonaLens raises on purpose derives from :class:`PersonaLensError`."""

from __future__ import annotations

from pathlib import Path


class PersonaLensError(Exception):
    """Base class for all PersonaLens errors."""


class ConfigError(PersonaLensError):
    """Settings are missing or contradict each other."""


class DataError(PersonaLensError):
    """Input data is malformed. Carries the file, 1-based line (or row) and field when they are known.

    The message always names what is known, e.g. ``ratings.csv:17: field 'rating': not a number: 'abc'``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}{what}{message}")


class ModelIntegrityError(PersonaLensError):
    """A model file is missing, incomplete, or does not match its pinned sha256."""


class BackendUnavailable(PersonaLensError):
    """An optional backend's packages are not installed (the message says which extra to install)."""


class LLMError(PersonaLensError):
    """A chat model call failed."""


class LLMTransportError(LLMError):
    """The server could not be reached or kept failing after the bounded retries."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class LLMOutputError(LLMError):
    """The model answered, but the answer could not be used (did not parse, failed the schema, no logprobs).

    ``raw`` keeps every answer that was tried, so nothing the model said is silently dropped.
    """

    def __init__(self, message: str, *, raw: list[str] | None = None) -> None:
        super().__init__(message)
        self.raw = list(raw or [])


class BudgetExceeded(LLMError):
    """A usage cap (tokens, calls or seconds) set on the run would be exceeded by the next call."""


class StoreError(PersonaLensError):
    """The persona store refused an input, found its file unusable (e.g. a newer schema), or a write failed.

    A refused input is reported before anything is written; a failed write leaves the store unchanged.
    """
