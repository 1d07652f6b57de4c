"""PersonaLens: LLM personas from long user behaviour histories, kept true over time.

The public surface is re-exported here; heavy backends (llama.cpp, onnxruntime) are imported only when used.
"""

from personalens.errors import (
    BackendUnavailable,
    BudgetExceeded,
    ConfigError,
    DataError,
    LLMError,
    LLMOutputError,
    LLMTransportError,
    ModelIntegrityError,
    PersonaLensError,
)
from personalens.settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "LLMError",
    "LLMOutputError",
    "LLMTransportError",
    "ModelIntegrityError",
    "PersonaLensError",
    "Settings",
    "__version__",
    "load_settings",
]
