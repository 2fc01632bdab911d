"""DeepSpeed ZeRO for `mmtune train --deepspeed zero2|zero3|zero3_offload|FILE.json` (and for `accelerate
launch` with a DeepSpeed config such as examples/accelerate/zero2.yaml).

The shipped configs leave batch size, gradient accumulation, clipping, learning rate and precision to
mmtune's own config ("auto": the Trainer fills them in), so a run differs from a DDP run only in how its
state is sharded. The optimizer stays the Trainer's AdamW (ZeRO shards its states); with offload,
DeepSpeed's AdamW runs on the CPU as DeepSpeedCPUAdam (its C++ op compiles with ninja on first use, a
few minutes, then is cached under ~/.cache/torch_extensions).

`distributed_state(cfg)` starts the processes' group before anything else touches accelerate: on a
machine without GPUs (DeepSpeed's CPU accelerator, gloo), accelerate would otherwise start DeepSpeed
with no backend and then count every process as rank 0 of 1 (accelerate 1.15 `PartialState`), so each
would write the output folder and none would see the others' batches.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

_AUTO_RUN = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
             "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
             "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
_ZERO3 = {"stage": 3, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": "auto",
          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
          "stage3_gather_16bit_weights_on_model_save": True}  # the final weights saved whole, loadable as usual
PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {**_AUTO_RUN, "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
                                                 "reduce_bucket_size": "auto"}},
    "zero3": {**_AUTO_RUN, "zero_optimization": _ZERO3},
    # offloaded states step on the CPU: DeepSpeed's own AdamW (DeepSpeedCPUAdam), the Trainer's hyperparameters
    "zero3_offload": {**_AUTO_RUN, "zero_optimization": {**_ZERO3, "offload_optimizer": {"device": "cpu",
                                                                                          "pin_memory": True},
                                                         "offload_param": {"device": "cpu", "pin_memory": True}},
                      "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                                "weight_decay": "auto"}}},
}
INSTALL = 'pip install -e ".[deepspeed]" (or pip install deepspeed)'


def check_deepspeed(value: str | None) -> None:
    """Before any model loads: DeepSpeed is installed and the config (a preset or a JSON file) reads."""
    if value is None:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"--deepspeed {value} needs DeepSpeed, which is not installed: {INSTALL}")
    deepspeed_config(value)


def deepspeed_config(value: str) -> dict[str, Any]:
    """The DeepSpeed config for --deepspeed: a preset's (a copy), or a JSON file's, checked."""
    if value in PRESETS:
        return copy.deepcopy(PRESETS[value])
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--deepspeed {value}: no such file; give {', '.join(PRESETS)} or a DeepSpeed JSON config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--deepspeed {value}: not a readable JSON file ({e}): fix it, or start from a preset "
                        f"({', '.join(PRESETS)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization", {}), dict):
        raise UserError(f"--deepspeed {value}: a DeepSpeed config is a JSON object (with a zero_optimization "
                        "object): see https://www.deepspeed.ai/docs/config-json/")
    return config


def uses_deepspeed(cfg) -> bool:
    """--deepspeed, or a process started by `accelerate launch` with a DeepSpeed config."""
    return cfg.deepspeed is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def distributed_state(cfg):
    """accelerate's PartialState for this run (the first one made in the process). Under DeepSpeed it is
    set up here with an explicit backend where the machine has no GPU (gloo), then reused by the Trainer
    (TrainingArguments' `use_configured_state`)."""
    from accelerate import PartialState

    if not uses_deepspeed(cfg):
        return PartialState()
    if "LOCAL_RANK" not in os.environ:
        raise UserError("DeepSpeed runs under a launcher: use `mmtune train ... --deepspeed "
                        f"{cfg.deepspeed or 'zero2'} --nproc-per-node N` (N = 1 for one process), torchrun or "
                        "accelerate launch")
    import torch

    before = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # how accelerate is told to start DeepSpeed's group
    try:
        return PartialState(**({} if torch.cuda.is_available() else {"backend": "gloo"}))
    finally:
        if before is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]


def gathered(weight):
    """Context manager: a ZeRO-3-partitioned weight whole inside it (read-only: every process gathers the
    same copy, and its gradient goes back to the partitions as any parameter's); any other weight as is."""
    import contextlib

    if not hasattr(weight, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)


def resume_on_any_world_size(trainer, checkpoint: str | None) -> None:
    """A DeepSpeed checkpoint written by another number of processes resumes too: DeepSpeed refuses ZeRO
    optimizer shards made for another world size, so the checkpoint is converted once (rank 0) into DeepSpeed's
    universal format (`deepspeed.checkpoint.ds_to_universal`, beside the original in the checkpoint folder),
    which loads on any number of processes, and the run is told to load that."""
    if checkpoint is None or not trainer.is_deepspeed_enabled:
        return
    folder = Path(checkpoint)
    tag_file = folder / "latest"
    if not tag_file.is_file():
        return
    tag = tag_file.read_text().strip()
    written_by = len(list((folder / tag).glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    world = trainer.accelerator.num_processes
    if written_by in (0, world):
        return
    universal = folder / f"{tag}_universal"
    if trainer.accelerator.is_main_process and not (folder / "latest_universal").is_file():
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(folder / tag), "--output_folder", str(universal), "--inject_missing_state",
                               "--num_extract_workers", "1", "--num_merge_workers", "1"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{folder} was written by {written_by} processes and could not be converted for "
                            f"{world} ({proc.stderr.strip()[-800:]}): resume with --nproc-per-node {written_by} "
                            "(the same number of processes in all)")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.deepspeed_plugin.deepspeed_config["checkpoint"] = {"load_universal": True}
