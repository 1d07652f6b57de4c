"""The service's configuration: where tenants' data lives, the keys file, limits and worker counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from personalens.errors import ConfigError
from personalens.settings import Settings


@dataclass(frozen=True)
class ServiceConfig:
    """``data_dir`` holds one folder per tenant (``<tenant>/personas.sqlite`` and ``<tenant>/service.sqlite``).

    ``store_url`` set to a ``postgresql://`` URL puts the persona stores in PostgreSQL instead, one schema per tenant
    (``<base>_t_<tenant>``, where ``<base>`` is the URL's ``?schema=`` or ``personalens``); behaviours and job records
    stay in the tenant's SQLite file under ``data_dir``. ``settings`` configures the LLM and embedder when the app
    factory is not handed them (they are then built on first use). ``reports_dir`` (off by default) is a folder of
    evaluation reports the explorer serves read-only to any valid key (``/explorer``, ``/v1/reports``).
    """

    data_dir: Path
    keys_file: Path | None = None
    store_url: str | None = None
    settings: Settings = field(default_factory=Settings)
    max_body_bytes: int = 1 << 20
    max_behaviours: int = 5000
    max_job_users: int = 1000
    job_workers: int = 1
    job_queue: int = 16
    llm_concurrency: int = 1
    title: str = "PersonaLens"
    reports_dir: Path | None = None
    wikipedia_url: str | None = None  # a MediaWiki base URL for the chat agent's encyclopedia tool (off by default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.keys_file is not None:
            object.__setattr__(self, "keys_file", Path(self.keys_file))
        if self.reports_dir is not None:
            object.__setattr__(self, "reports_dir", Path(self.reports_dir))
        if self.store_url is not None:
            from personalens.store.postgres import is_postgres_url

            if not is_postgres_url(self.store_url):
                raise ConfigError("store_url must be a postgresql:// URL (leave it unset for SQLite per tenant)")
        for name in (
            "max_body_bytes",
            "max_behaviours",
            "max_job_users",
            "job_workers",
            "job_queue",
            "llm_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    @property
    def keys_path(self) -> Path:
        return self.keys_file if self.keys_file is not None else self.data_dir / "keys.json"
