"""What a picture run shows while it trains: a progress bar (plain lines when not a terminal), and loss.png.

metrics.jsonl has the same shape as a text run's (one JSON object per log: step, epoch, loss, lr,
grad_norm, and pictures_per_s where a text run has tokens_per_s), so the job service and the
studio read both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class Progress:
    def __init__(self, total: int, start: int = 0, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.total = total
        self.bar = RichProgress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[pps]} pictures/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not self.console.is_terminal,
        )
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-", lr="-", pps="-")
        self.bar.start()

    def advance(self, done: int) -> None:
        self.bar.update(self.task, completed=done)

    def log(self, rec: dict[str, Any]) -> None:
        self.bar.update(self.task, loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", pps=f"{rec['pictures_per_s']:.2f}")
        if not self.console.is_terminal:
            self.console.print(f"step {rec['step']}/{self.total}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                               f"{rec['pictures_per_s']:.2f} pictures/s", markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Train loss against step, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["step"], r["loss"]) for r in history if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if points:
        ax.plot(*zip(*points), label="train loss (flow matching)", color="tab:blue")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
