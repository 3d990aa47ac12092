"""Training logs (rank 0 only): ``metrics.jsonl``, optional TensorBoard / Weights & Biases, the loss-curve PNG."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from llavarad_cli.io_utils import atomic_write_bytes, atomic_write_text


class MetricsLog:
    """Appends one JSON line per logged step, flushed at once; a resumed run first drops lines past its step."""

    def __init__(self, path: Path, resume_step: int, report_to: list[str], run_name: str, config: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.warnings: list[str] = []
        self._tb = self._wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                self.warnings.append("report_to tensorboard: the `tensorboard` package is not installed; skipped")
        if "wandb" in report_to:
            try:
                import wandb

                self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "llavarad"), name=run_name,
                                         config=config, resume="allow")
            except ImportError:
                self.warnings.append("report_to wandb: the `wandb` package is not installed; skipped")

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, row: dict) -> None:
        # JSON has no NaN/Infinity: a value that is not finite is written as null, so every line stays JSON.
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()
        step = row["step"]
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def loss_curve_title(stage: str, out_dir: Path) -> str:
    """``llavarad finetune: run-3``; just ``llavarad pretrain`` when the output folder is named after the stage
    (``runs/pretrain``), instead of saying it twice."""
    name = Path(out_dir).name
    return f"llavarad {stage}" if name in ("", stage) else f"llavarad {stage}: {name}"


def plot_loss_curve(metrics_path: Path, png_path: Path, title: str) -> Path | None:
    """Loss (and learning rate, on a second axis) against the optimizer step; None when nothing was logged."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    # A step with no loss (every sample skipped) is a gap in the line.
    ax.plot(steps, [r["loss"] if r["loss"] is not None else float("nan") for r in rows], color="tab:blue",
            label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (token-mean CE)")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in rows):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] if r.get("lr") is not None else float("nan") for r in rows], color="tab:orange",
                   alpha=0.6, label="lr")
        lr_ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    png_path = Path(png_path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(png_path, buffer.getvalue())
    return png_path
