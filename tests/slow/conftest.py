import pytest

from personalens.llm.embedded import LlamaCppModel


@pytest.fixture(scope="session")
def local_llm():
    """The real embedded model (Qwen2.5-Coder-1.5B through llama.cpp), loaded once for the slow tests."""
    model = LlamaCppModel(n_ctx=4096)
    model.load()
    yield model
    model.close()
