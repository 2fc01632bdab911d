"""What a run shows and leaves behind while it trains: progress bar, metrics.jsonl, loss.png.

`RunRecorder` turns every Trainer log/eval event into one JSON line of metrics.jsonl (the
job service tails it) and redraws loss.png; `RichProgress` draws the terminal bar (loss,
learning rate, tokens/s, ETA) or, when stdout is not a terminal, prints one line per log.
`FinishLine` makes sure the last step is logged and evaluated, so the summary always has a
final train (and eval) loss. All of them act on the main process only (`state.is_world_process_zero`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
PLOT_EVERY_S = 10.0  # redraw loss.png at most this often (and once at the end)

# Trainer log keys -> metrics.jsonl keys
_RENAME = {"learning_rate": "lr", "num_input_tokens_seen": "tokens"}
_KEEP = ("step", "epoch", "loss", "eval_loss", "lr", "grad_norm", "tokens", "trained_tokens", "tokens_per_s")
# preference stages (train/preference.py): implicit rewards, KTO's reference point, ORPO's NLL
_PREFERENCE = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "kl", "nll_loss")
_KEEP += _PREFERENCE + tuple("eval_" + k for k in _PREFERENCE)


def record(logs: dict[str, Any], step: int) -> dict[str, Any] | None:
    """One metrics.jsonl object from a Trainer log event; None for the end-of-training aggregate
    (which has `train_loss`, the session average, and goes to summary.json instead)."""
    if not ("loss" in logs or "eval_loss" in logs):
        return None
    out = {"step": step}
    for key, value in logs.items():
        key = _RENAME.get(key, key)
        if key in _KEEP and value is not None:
            out[key] = round(value, 6) if isinstance(value, float) and math.isfinite(value) else value
    return out


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Train and eval loss against step, written atomically (a reader never sees half a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write `fig` as a PNG at `path` atomically (a reader never sees half a plot), then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


class RunRecorder(TrainerCallback):
    """metrics.jsonl (one JSON object per log/eval event) and loss.png in the output folder."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.history: list[dict[str, Any]] = []
        self._plotted = 0.0

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        # a resumed run restarts from its checkpoint's history: drop what was logged after it
        self.history = [r for r in (record(e, e.get("step", 0)) for e in state.log_history) if r]
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        rec = record(logs, state.global_step)
        if rec is None:
            return
        self.history.append(rec)
        with open(self.output / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if time.monotonic() - self._plotted > PLOT_EVERY_S:
            self.plot()

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.plot()

    def plot(self) -> None:
        plot_loss(self.history, self.output / PLOT_FILE)
        self._plotted = time.monotonic()

    def last(self, key: str) -> float | None:
        return next((r[key] for r in reversed(self.history) if key in r), None)


class FinishLine(TrainerCallback):
    """Log (and evaluate, when there is validation data) at the last step, exactly once."""

    def __init__(self, has_eval: bool):
        self.has_eval = has_eval
        self._evaluated_at = -1

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_evaluate = self.has_eval
        if control.should_evaluate:
            self._evaluated_at = state.global_step
        return control

    def on_epoch_end(self, args, state, control, **kw):
        if control.should_evaluate and self._evaluated_at == state.global_step:
            control.should_evaluate = False  # this step was just evaluated
        return control


class RichProgress(TrainerCallback):
    """A progress bar with loss, learning rate, tokens/s and ETA (plain lines when not a terminal)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False, disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", lr="-", tps="-")
        self.progress.start()

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is None or not logs:
            return
        rec = record(logs, state.global_step)
        if rec is None:
            return
        if "loss" in rec:
            self.progress.update(self.task, loss=f"{rec['loss']:.4f}", lr=f"{rec.get('lr', 0):.2e}",
                                 tps=f"{rec.get('tokens_per_s', 0):.0f}")
        if not self.console.is_terminal or "eval_loss" in rec:
            self.console.print(format_record(rec, state.max_steps))

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def format_record(rec: dict[str, Any], max_steps: int) -> str:
    """One human line for a metrics record: `step 20/60  loss 1.234  lr 1.0e-04  812 tok/s`."""
    parts = [f"step {rec['step']}/{max_steps}"]
    if "loss" in rec:
        parts.append(f"loss {rec['loss']:.4f}")
    if "eval_loss" in rec:
        parts.append(f"eval_loss {rec['eval_loss']:.4f}")
    if "lr" in rec:
        parts.append(f"lr {rec['lr']:.2e}")
    if "tokens_per_s" in rec:
        parts.append(f"{rec['tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)
