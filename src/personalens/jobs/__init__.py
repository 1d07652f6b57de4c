"""Offline batch jobs, resumable: building PersonaX persona sets and refining personas over new windows."""

from personalens.jobs.build import (
    BuildConfig,
    BuildReport,
    PersonaXBuilder,
    UserOutcome,
    behaviour_times,
    split_history,
)
from personalens.jobs.refine import RefineJob, RefineOutcome, RefineReport

__all__ = [
    "BuildConfig",
    "BuildReport",
    "PersonaXBuilder",
    "RefineJob",
    "RefineOutcome",
    "RefineReport",
    "UserOutcome",
    "behaviour_times",
    "split_history",
]
