"""Embedders: the contract, the bundled MiniLM default, OpenAI-compatible embeddings, a cache and a test double."""

from personalens.embed.base import Embedder, l2_normalise
from personalens.embed.cache import CachedEmbedder
from personalens.embed.testing import HashEmbedder

__all__ = ["CachedEmbedder", "Embedder", "HashEmbedder", "l2_normalise"]
