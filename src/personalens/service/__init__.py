"""The PersonaLens HTTP service (FastAPI; the ``service`` extra): ``create_app(ServiceConfig(...))``, or
``personalens serve`` on the command line. Importing this package starts nothing."""

from personalens.service.app import create_app
from personalens.service.config import ServiceConfig
from personalens.service.keys import KeyRing, add_key

__all__ = ["KeyRing", "ServiceConfig", "add_key", "create_app"]
