"""Rank 0's console view of training: a rich progress bar with loss, learning rate, tokens/s and ETA.

When the output is not a terminal (logs, CI) the bar is replaced by one plain line per logged step.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def format_row(row: dict) -> str:
    lr = row.get("lr")
    # No loss when every sample since the last logged step was skipped.
    loss = f"loss {row['loss']:.4f}" if row.get("loss") is not None else "loss -"
    return f"{loss}  lr {lr:.3g}  {row['tokens_per_s']:,.0f} tok/s" if lr is not None else \
        f"{loss}  {row['tokens_per_s']:,.0f} tok/s"


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self.console = Console(highlight=False)
        self.live = enabled and self.console.is_terminal
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, stats="")
        return self

    def update(self, step: int, row: dict | None) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            fields = {"stats": format_row(row)} if row else {}
            self._progress.update(self._task, completed=step, **fields)
        elif row is not None:
            self.console.print(f"step {step}/{self.total}  {format_row(row)}  epoch {row['epoch']:.2f}")

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
