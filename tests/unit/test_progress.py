"""LoggedProgress: the CLI's plain progress lines when stderr is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from personalens._progress import LoggedProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress(clock: Clock, log_every: float | None) -> tuple[LoggedProgress, io.StringIO]:
    sink = io.StringIO()
    console = Console(file=sink, width=200, force_terminal=False)
    return LoggedProgress(console=console, disable=True, log_every=log_every, clock=clock), sink


def test_a_line_once_the_interval_has_passed_then_not_again_until_the_next() -> None:
    clock = Clock()
    progress, sink = _progress(clock, 60)
    task = progress.add_task("scoring", total=30)
    progress.advance(task)
    assert sink.getvalue() == ""  # within the first interval: nothing
    clock.now = 61
    progress.advance(task)
    progress.advance(task)  # same moment: no second line
    lines = sink.getvalue().splitlines()
    assert len(lines) == 1
    assert "scoring: 2/30 in 0:01:01" in lines[0]
    clock.now = 100
    progress.update(task, description="user b")
    assert len(sink.getvalue().splitlines()) == 1
    clock.now = 125
    progress.update(task, description="user c", completed=7)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2
    assert "user c: 7/30" in lines[1]


def test_open_ended_and_hidden_tasks() -> None:
    clock = Clock()
    progress, sink = _progress(clock, 10)
    stage = progress.add_task("sampling", total=None)
    hidden = progress.add_task("internal", total=5, visible=False)
    clock.now = 11
    progress.advance(stage, 4)
    progress.advance(hidden)
    line = sink.getvalue().strip()
    assert "sampling: 4 in 0:00:11" in line and "internal" not in line


def test_no_lines_without_an_interval() -> None:
    clock = Clock()
    progress, sink = _progress(clock, None)
    task = progress.add_task("x", total=2)
    clock.now = 1e6
    progress.advance(task)
    progress.update(task, completed=2)
    assert sink.getvalue() == ""
