"""Profiling: turning behaviour into persona text (summarisation and reflection)."""

from personalens.profiling.prompts import PROMPTS_VERSION, UNKNOWN_PROFILE
from personalens.profiling.reflect import ReflectionTrace, reflect_profile, sample_negatives
from personalens.profiling.summarize import Persona, bound_words, find_leaked_titles, summarize_history

__all__ = [
    "PROMPTS_VERSION",
    "UNKNOWN_PROFILE",
    "Persona",
    "ReflectionTrace",
    "bound_words",
    "find_leaked_titles",
    "reflect_profile",
    "sample_negatives",
    "summarize_history",
]
