"""Experiment tracking through the Trainer's own integrations (`--report-to`).

mmtune adds no logger of its own: `report_to` goes to the Trainer, whose callbacks (TensorBoard,
W&B, MLflow, SwanLab, Trackio) log every step on the main process. What mmtune adds:

- the tracker's package is checked before any model loads (a missing one is one error naming the
  install command);
- the run name, project and tags reach each tracker through the variables it reads
  (`WANDB_PROJECT`, `MLFLOW_EXPERIMENT_NAME`, ...), without overriding ones the user set;
- what a tracker writes locally lands in the output folder, recorded in its manifest: TensorBoard
  event files under `tensorboard/`, W&B's run files under `wandb/`, and MLflow's file store under
  `mlruns/` unless `MLFLOW_TRACKING_URI` points elsewhere.

This module imports nothing heavy: preflight checks use it before torch loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path

from mmtune.config import TRACKERS
from mmtune.errors import UserError

# tracker name (config.TRACKERS, the Trainer's report_to values) -> (the module it imports, its pip package)
PACKAGES: dict[str, tuple[str, str]] = {name: (name, name) for name in TRACKERS}
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
MLFLOW_DIR = "mlruns"
SWANLAB_DIR = "swanlog"


def unknown_trackers(names: Iterable[str]) -> list[str]:
    return [n for n in names if n not in TRACKERS]


def check_trackers(names: Iterable[str]) -> None:
    """Every tracker named is known and its package is installed, or UserError naming the install."""
    names = list(names)
    bad = unknown_trackers(names)
    if bad:
        raise UserError(f"report_to: unknown tracker(s) {', '.join(bad)}: choose from {', '.join(TRACKERS)}")
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n][0]) is None]
    if missing:
        packages = " ".join(PACKAGES[n][1] for n in missing)
        raise UserError(f"--report-to {' '.join(missing)} needs the {packages} package(s), which are not installed: "
                        f"`.venv/bin/pip install {packages}` (tensorboard, wandb and mlflow also come with "
                        "`pip install -e '.[tracking]'`), or drop them from --report-to")


def output_entries(names: Iterable[str]) -> tuple[str, ...]:
    """The output-folder entries the trackers may write (recorded in the run's manifest beforehand)."""
    names = set(names)
    return tuple(entry for tracker, entry in (("tensorboard", TENSORBOARD_DIR + "/"), ("wandb", WANDB_DIR + "/"),
                                               ("mlflow", MLFLOW_DIR + "/"),
                                               ("swanlab", SWANLAB_DIR + "/")) if tracker in names)


def tracker_env(names: Iterable[str], output: str | Path, run_name: str | None, project: str | None,
                tags: list[str], env: MutableMapping[str, str] | None = None,
                entity: str | None = None) -> dict[str, str]:
    """Set (in `env`, default os.environ) what the trackers read; a variable the user set is kept.
    Returns the variables this call set."""
    env = os.environ if env is None else env
    names, out = set(names), Path(output).resolve()
    wanted: dict[str, str] = {}
    if "tensorboard" in names:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(out / TENSORBOARD_DIR)
    if "wandb" in names:
        wanted["WANDB_DIR"] = str(out)  # wandb makes its own wandb/ folder inside
        if project:
            wanted["WANDB_PROJECT"] = project
        if run_name:
            wanted["WANDB_NAME"] = run_name
        if tags:
            wanted["WANDB_TAGS"] = ",".join(tags)
        if entity:
            wanted["WANDB_ENTITY"] = entity
    if "mlflow" in names:
        if "MLFLOW_TRACKING_URI" not in env:  # the run's own file store: MLflow >= 3.7 wants this opt-in for it
            wanted["MLFLOW_TRACKING_URI"] = (out / MLFLOW_DIR).as_uri()
            wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
        if project:
            wanted["MLFLOW_EXPERIMENT_NAME"] = project
        if tags:
            wanted["MLFLOW_TAGS"] = json.dumps({t: "" for t in tags})
        if run_name:
            wanted["MLFLOW_RUN_NAME"] = run_name
    if "swanlab" in names:
        if project:
            wanted["SWANLAB_PROJ_NAME"] = project
        wanted["SWANLAB_LOG_DIR"] = str(out / SWANLAB_DIR)
    set_now = {k: v for k, v in wanted.items() if k not in env}
    env.update(set_now)
    return set_now


def trainer_arguments(names: list[str], run_name: str | None, project: str | None) -> dict[str, object]:
    """The TrainingArguments fields for these trackers."""
    args: dict[str, object] = {"report_to": list(names) if names else "none"}
    if run_name:
        args["run_name"] = run_name
    if project:
        args["project"] = project  # trackio reads it from the arguments
    return args


def finish_trackers(names: Iterable[str]) -> None:
    """End the trackers' runs that the Trainer leaves open (W&B: the Trainer never calls finish, so a second
    run in the same process would log into the first one's run; the files are complete once it returns)."""
    if "wandb" in set(names):
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.run.finish()
