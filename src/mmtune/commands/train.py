"""`mmtune train`: supervised fine-tuning. Flags are generated from `TrainConfig` fields.

Only the flags a user actually types override the config file (argparse defaults are
suppressed), which is what makes `defaults < preset < --config < flags` hold. torch and
transformers are imported inside `run`, so `mmtune --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from typing import Any

from mmtune.config import PRESETS, TrainConfig, config_fields, field_help, field_type, resolve_config

EPILOG = """\
presets (--preset): {presets}

examples:
  mmtune train --data examples/data/persona.jsonl --output runs/persona --max-steps 60
  mmtune train --config examples/configs/lora.yaml --learning-rate 2e-4
  mmtune train --config my.yaml --resume            continue an interrupted run
  mmtune train --config my.yaml --nproc-per-node 8     all 8 GPUs of this machine (torchrun, DDP)
  mmtune train --config my.yaml --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1
                                                    2 machines: the same command on the other with --node-rank 1
  mmtune train --config my.yaml --nproc-per-node 8 --deepspeed zero3     DeepSpeed ZeRO-3 (zero2, zero3_offload, FILE.json)
  accelerate launch --config_file examples/accelerate/zero2.yaml -m mmtune.cli train --config my.yaml
  mmtune train --print-config > my.yaml             a commented config to start from

image-generation models (`mmtune models`, third table): LoRA on FLUX.1 from a folder of pictures + .txt captions
  mmtune train --model flux.1-dev --data pictures/ --trigger-word TOK --repeats 10 --output runs/tok

vision-language models (`mmtune models`, second table): the same command on data with images/videos.
What trains, per part (unset: the family's practice): the language model by --method (lora|qlora|
full, or frozen), the vision tower by --train-vision none|lora|full, the projector by
--train-projector/--no-train-projector. A shapes demo: python examples/shapes.py --help
  mmtune train --model qwen2-vl-2b-instruct --data images.jsonl --output runs/vl --max-pixels 401408
  mmtune train --model llava-1.5-7b --data images.jsonl --output runs/proj --method frozen
  mmtune train --stage dpo --model qwen2-vl-2b-instruct --data image_pairs.jsonl --output runs/vl-dpo
"""


def add_parser(subparsers) -> None:
    presets = "; ".join(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in vals.items()) for name, vals in PRESETS.items()
    )
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on your data (LoRA, QLoRA or full; text or vision-language)",
        description="Supervised fine-tuning. Values come from, lowest first: defaults < --preset < --config "
        "YAML < flags. The resolved config is written to OUTPUT/config.yaml.",
        epilog=EPILOG.format(presets=presets),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file of config keys (the flag names with "
        "underscores); flags given here override it (default: none)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as commented YAML and exit (default: off)",
    )
    add_config_arguments(p)
    from mmtune.commands.launch import add_launch_arguments
    from mmtune.imagegen.config import add_picture_arguments

    add_launch_arguments(p)  # --nproc-per-node, --nnodes, ...: runs torchrun (commands/launch.py)

    add_picture_arguments(p)  # image-generation models (FLUX LoRA): their own flag group
    p.set_defaults(func=run, _parser=p)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field: `--learning-rate` for `learning_rate`, help with its default."""
    for f in config_fields():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = field_help(f).replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        hint = field_type(f.name)
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None -> X (list[str] stays a list)
            base = next(a for a in typing.get_args(hint) if a is not type(None))
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kw.update(nargs="+", metavar=f.metadata.get("metavar") or "VALUE")
        elif f.metadata.get("choices") and len(f.metadata["choices"]) <= 4:
            kw["metavar"] = "{" + ",".join(str(c) for c in f.metadata["choices"]) + "}"
        else:
            kw["metavar"] = f.metadata.get("metavar") or {int: "N", float: "X"}.get(base, "VALUE")
            if base in (int, float):
                kw["type"] = _number(base)
        parser.add_argument(flag, **kw)


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def config_from_args(args: argparse.Namespace, validate: bool = True) -> TrainConfig:
    """The resolved config: only the flags present in `args` override the preset and --config."""
    names = {f.name for f in config_fields()}
    flags = {k: v for k, v in vars(args).items() if k in names}
    return resolve_config(flags, getattr(args, "config", None), validate)


def run(args: argparse.Namespace) -> int:
    from mmtune.imagegen.config import picture_model, run_train_command

    if picture_model(args):  # an image-generation model: the picture LoRA trainer (imagegen/)
        return run_train_command(args)
    cfg = config_from_args(args, validate=not args.print_config)
    if args.print_config:
        print(cfg.to_yaml(with_help=True), end="")
        return 0
    preflight(cfg)
    from mmtune.commands.launch import exec_torchrun, torchrun_command, wants_launch

    # checked once here, then every process runs this same command under torchrun (DeepSpeed always: one
    # process without launch flags)
    if wants_launch(args) or (cfg.deepspeed and "LOCAL_RANK" not in os.environ):
        argv = getattr(args, "_argv", None) or sys.argv[1:]
        argv = argv[argv.index("train") + 1:] if "train" in argv else argv
        exec_torchrun(torchrun_command(args, argv + (["--debug"] if args.debug and "--debug" not in argv else [])))
    if cfg.stage in ("dpo", "simpo", "orpo", "kto"):
        from mmtune.train.preference import run_preference

        run_preference(cfg)
        return 0
    from mmtune.train.sft import run_sft

    run_sft(cfg)  # sft, and pt (its text rows train like SFT rows: train/pretrain.py)
    return 0


def preflight(cfg: TrainConfig) -> None:
    """What can be wrong before any model loads: the output folder, the data files and their kind, the model."""
    from pathlib import Path

    from mmtune.data.reader import ReadOptions, require_kind
    from mmtune.files import check_data_files, check_input_folder
    from mmtune.models.available import check_model
    from mmtune.train.output import check_output

    check_output(Path(cfg.output), overwrite=cfg.overwrite, resume=cfg.resume)
    check_data_files(cfg.data, "--data")
    check_data_files(cfg.val_data, "--val-data")
    if cfg.media_root:
        check_input_folder(cfg.media_root, "--media-root")
    require_kind(cfg.data + cfg.val_data, cfg.stage, ReadOptions(media_root=cfg.media_root))
    check_model(cfg.model)
    from mmtune.train.tracking import check_trackers

    check_trackers(cfg.report_to)  # a tracker that is not installed: before any model loads
    from mmtune.train.zero import check_deepspeed

    check_deepspeed(cfg.deepspeed)  # not installed, or a config file that does not read
