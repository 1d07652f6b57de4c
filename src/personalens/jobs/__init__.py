"""Offline batch jobs: building persona sets for many users, resumably."""

from personalens.jobs.build import (
    BuildConfig,
    BuildReport,
    PersonaXBuilder,
    UserOutcome,
    behaviour_times,
    split_history,
)

__all__ = ["BuildConfig", "BuildReport", "PersonaXBuilder", "UserOutcome", "behaviour_times", "split_history"]
