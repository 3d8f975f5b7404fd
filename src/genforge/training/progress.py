"""What a person watching a run sees: a rich progress bar with losses and throughput, and a clean Ctrl-C."""

from __future__ import annotations

import signal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def say(text: str) -> None:
    """One line of information for the person watching (stderr, like the bar)."""
    Console(stderr=True).print(text, highlight=False, soft_wrap=True)


class ProgressReporter:
    def __init__(self, enabled: bool, total: int, start: int, unit: str = "images"):
        self.enabled = enabled
        self.unit = {"images": "img", "tokens": "tok"}.get(unit, unit)
        self.progress = None
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(stderr=True), refresh_per_second=4,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False

    def set_total(self, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, total=total)

    def update(self, step: int, losses: dict[str, float], per_sec: float) -> None:
        if self.progress is None:
            return
        info = "  ".join(f"{k} {v:.3f}" for k, v in losses.items()) + f"  {per_sec:,.0f} {self.unit}/s"
        self.progress.update(self.task, completed=step, info=info)


class StopOnSignal:
    """First Ctrl-C / SIGTERM asks the loop to stop after the current step (and checkpoint); a second one kills."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
