"""Profiling: turning behaviour into persona text."""

from personalens.profiling.prompts import PROMPTS_VERSION
from personalens.profiling.summarize import Persona, bound_words, summarize_history

__all__ = ["PROMPTS_VERSION", "Persona", "bound_words", "summarize_history"]
