"""Progress for long commands: a live bar on a terminal, plain periodic lines anywhere else (logs, CI, ``nohup``).

Synopsis::

    from embedrec.cli.progress import progress
    with progress("evaluate", unit="users") as update:
        evaluate_model(..., on_progress=update)        # update(stage, done, total)

A user who pipes a long run to a file must not wait on silence, and a log must not fill with bar redraws: when
stderr is not a terminal each stage prints one line when it starts, one at most every ``interval`` seconds
(``EMBEDREC_PROGRESS_SECONDS``, default 10) with done/total, rate and time left, and one when it ends::

    evaluate model: 12,288/67,512 users (18%), 410 users/s, about 2 min 15 s left
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from embedrec.cli.common import err_console

StageProgressFn = Callable[[str, int, int], None]

DEFAULT_INTERVAL_S = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("EMBEDREC_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: short enough for a log line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _PlainLines:
    """Periodic ``done/total, rate, time left`` lines on stderr, one stage at a time."""

    def __init__(self, label: str, unit: str, interval: float) -> None:
        self.label, self.unit, self.interval = label, unit, interval
        self.stage: str | None = None
        self.started = self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.started, self.last = stage, now, now
            self._write(f"{self._name()}: started, {total:,} {self.unit}")
            if done == 0:
                return
        finished = done >= total
        if not finished and (done == 0 or now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        if finished:
            self._write(f"{self._name()}: {done:,}/{total:,} {self.unit} done in {duration(elapsed)}")
            return
        left = (total - done) / rate if rate > 0 else float("inf")
        eta = duration(left) if left != float("inf") else "unknown"
        self._write(
            f"{self._name()}: {done:,}/{total:,} {self.unit} ({done / max(total, 1):.0%}), "
            f"{rate:,.0f} {self.unit}/s, about {eta} left"
        )

    def _name(self) -> str:
        return f"{self.label} {self.stage}" if self.stage else self.label

    @staticmethod
    def _write(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class StepLines:
    """One plain line per step of a command made of a few long steps (``prepare``: read, clean, split, write)."""

    def __init__(self, label: str, names: dict[str, str] | None = None) -> None:
        self.label, self.names = label, names or {}
        self.started = time.monotonic()

    def __call__(self, step: str, done: int, total: int) -> None:
        elapsed = duration(time.monotonic() - self.started)
        if done >= total:
            _PlainLines._write(f"{self.label}: done in {elapsed}")
        else:
            _PlainLines._write(
                f"{self.label}: {self.names.get(step, step)} (step {done + 1}/{total}, {elapsed} so far)"
            )


@contextlib.contextmanager
def progress(label: str, *, unit: str = "users", quiet: bool = False) -> Iterator[StageProgressFn]:
    """An ``update(stage, done, total)`` callback: a transient rich bar per stage on a terminal, plain lines
    otherwise (see the module docstring), nothing when ``quiet``."""
    if quiet:
        yield lambda stage, done, total: None
        return
    if not err_console.is_terminal:
        yield _PlainLines(label, unit, _interval())
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{label} {stage}".strip(), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
