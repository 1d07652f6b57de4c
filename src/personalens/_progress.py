"""The CLI's progress display. On a terminal it is rich's live bar; when stderr is a file or a pipe (``nohup``, a CI
log) a live bar shows nothing until the end, so :class:`LoggedProgress` writes one plain line about the running
tasks at most every ``log_every`` seconds, on the first update after the interval has passed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import Progress, TaskID


def _elapsed(seconds: float | None) -> str:
    whole = int(seconds or 0)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class LoggedProgress(Progress):
    """A rich :class:`~rich.progress.Progress` that also logs a line per interval when ``log_every`` is set."""

    def __init__(
        self, *columns: Any, log_every: float | None = None, clock: Callable[[], float] = time.monotonic, **options: Any
    ) -> None:
        super().__init__(*columns, get_time=clock, **options)
        self._log_every = log_every
        self._clock = clock
        self._last_line = clock()

    def update(self, task_id: TaskID, **fields: Any) -> None:
        super().update(task_id, **fields)
        self._maybe_log()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log()

    def _maybe_log(self) -> None:
        if self._log_every is None:
            return
        now = self._clock()
        if now - self._last_line < self._log_every:
            return
        self._last_line = now
        parts = []
        for task in self.tasks:
            if not task.visible:
                continue
            count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
            parts.append(f"{task.description}: {count} in {_elapsed(task.elapsed)}")
        if parts:
            stamp = time.strftime("%H:%M:%S")
            self.console.print(f"[{stamp}] " + "; ".join(parts), markup=False, highlight=False, soft_wrap=True)
