"""`mmtune models`: the supported models, their LoRA targets and how much GPU memory tuning them takes.

Text models and vision-language models are listed in two tables; the vision table says what
each model accepts (images per conversation, video) and how big its vision tower is.

Reads only the registry and the memory arithmetic (no torch), so it answers instantly.
"""

from __future__ import annotations

import argparse
import json

from mmtune.errors import UserError

MEMORY_HELP = "memory estimates assume bf16 weights, AdamW, LoRA rank 16 and gradient checkpointing"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list supported models with LoRA targets and memory estimates",
        description="List the model registry: families, hub paths, LoRA targets and estimated GPU memory "
        f"for full / LoRA / QLoRA fine-tuning ({MEMORY_HELP}).",
    )
    _add_common(parser)
    parser.set_defaults(func=run_list, _parser=parser)
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    show = sub.add_parser("show", help="everything the registry knows about one model")
    show.add_argument("name", help="registry name or hub path, e.g. qwen2.5-0.5b-instruct")
    _add_common(show)
    show.set_defaults(func=run_show, _parser=show)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seq-len", type=int, default=2048, help="sequence length for the memory estimate")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="per-device batch size for the memory estimate"
    )
    gpus = parser.add_argument_group("several GPUs: the memory each GPU holds, and the launch that fits")
    gpus.add_argument("--gpus", type=int, metavar="N", help="GPUs in all (default: one GPU, no sharding)")
    shard = gpus.add_mutually_exclusive_group()
    shard.add_argument("--zero", type=int, choices=(2, 3), help="DeepSpeed ZeRO stage: 2 shards gradients and "
                       "optimizer states, 3 the weights too (default: none, plain DDP)")
    shard.add_argument("--fsdp", action="store_true", help="PyTorch FSDP2 (full shard, like ZeRO-3)")
    gpus.add_argument("--offload", action="store_true", help="with --zero 3: weights and optimizer in CPU memory")
    gpus.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                      help="memory of one GPU, to say what fits (default: 80)")
    gpus.add_argument("--gpus-per-node", type=int, default=8, metavar="N",
                      help="GPUs per machine, for the launch commands (default: 8)")


def _memory(spec, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from mmtune.models.memory import METHODS, estimate_memory

    if args.seq_len < 1 or args.batch_size < 1:
        raise UserError("--seq-len and --batch-size must be at least 1")
    return {m: estimate_memory(spec, m, args.seq_len, args.batch_size) for m in METHODS}


def strategy(args: argparse.Namespace) -> str:
    """The launch strategy the flags name (ddp without --zero/--fsdp)."""
    if getattr(args, "offload", False) and getattr(args, "zero", None) != 3:
        raise UserError("--offload goes with --zero 3 (ZeRO-3 with CPU offload): add --zero 3 or drop --offload")
    if getattr(args, "fsdp", False):
        return "fsdp"
    zero = getattr(args, "zero", None)
    return "ddp" if zero is None else "zero2" if zero == 2 else "zero3-offload" if args.offload else "zero3"


def _per_gpu(spec, memory: dict[str, dict[str, float]], args: argparse.Namespace) -> dict | None:
    """With --gpus: what each GPU holds under the chosen launch, whether it fits, and the least sharding
    (and its command) that fits each method on these GPUs."""
    if getattr(args, "gpus", None) is None:
        return None
    from mmtune.models.memory import launch_command, least_sharding, per_gpu_memory

    if args.gpus < 1 or args.gpu_memory <= 0 or args.gpus_per_node < 1:
        raise UserError("--gpus, --gpu-memory and --gpus-per-node must be positive")
    chosen = strategy(args)
    per = {m: per_gpu_memory(spec, parts, args.gpus, chosen) for m, parts in memory.items()}
    least = {m: least_sharding(spec, parts, args.gpus, args.gpu_memory) for m, parts in memory.items()}
    return {"gpus": args.gpus, "strategy": chosen, "gpu_memory_gib": args.gpu_memory, "memory_gib": per,
            "fits": {m: v <= args.gpu_memory for m, v in per.items()}, "least_sharding": least,
            "launch": {m: launch_command(s, args.gpus, args.gpus_per_node) if s else None for m, s in least.items()}}


def accepts(spec) -> dict | None:
    """What a vision-language model takes in one conversation (None for a text model)."""
    if spec.kind != "vision":
        return None
    return {"images": True, "max_images": spec.max_images, "video": spec.supports_video}


def _images_text(spec) -> str:
    if spec.max_images is None:
        return "any number"
    return "1 per conversation" if spec.max_images == 1 else f"up to {spec.max_images}"


def _entry(spec, args: argparse.Namespace) -> dict:
    out = {**spec.to_dict(), "memory_gib": _memory(spec, args)}
    per_gpu = _per_gpu(spec, out["memory_gib"], args)
    if per_gpu is not None:
        out["per_gpu"] = per_gpu
    if spec.kind == "vision":
        out["accepts"] = accepts(spec)
    return out


def run_list(args: argparse.Namespace) -> int:
    from mmtune.models.registry import DEFAULT_MODEL, REGISTRY

    entries = [_entry(spec, args) for spec in REGISTRY.values()]
    if args.json:
        print(
            json.dumps(
                {
                    "default_model": DEFAULT_MODEL,
                    "seq_len": args.seq_len,
                    "batch_size": args.batch_size,
                    "models": entries,
                    "image_generation_models": _image_entries(),
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0

    console = _console()
    console.print(_text_table([e for e in entries if e["kind"] == "text"], args, DEFAULT_MODEL))
    console.print(_vision_table([e for e in entries if e["kind"] == "vision"], args))
    console.print(_image_table(_image_entries()))
    return 0


# ---- image-generation models (FLUX LoRA): their own registry, models/imagegen_registry.py
def _image_entries() -> list[dict]:
    from mmtune.models.imagegen_registry import IMAGE_REGISTRY, image_memory_gib

    return [{**spec.to_dict(), "memory_gib": image_memory_gib(spec, spec.default_resolution)}
            for spec in IMAGE_REGISTRY.values()]


def _image_table(entries: list[dict]):
    from rich.table import Table

    table = Table(title="image-generation models (GiB at 1024x1024, batch 1; `mmtune train --data pictures/`)",
                  caption="LoRA on the transformer (rank 16, bf16 base, gradient checkpointing; captions and latents "
                  "encoded once, text encoders and VAE off the GPU); generate: transformer + VAE, text encoders "
                  "offloaded (all resident in brackets)")
    for col in ("name", "kind", "params", "hub path", "steps", "guidance", "LoRA targets", "LoRA train", "generate"):
        table.add_column(col, justify="right" if col in ("params", "steps", "guidance", "LoRA train", "generate")
                         else "left")
    for e in entries:
        m = e["memory_gib"]
        table.add_row(e["name"], e["kind"], f"{e['params_b']:g}B", e["hf_path"], str(e["default_steps"]),
                      f"{e['default_guidance']:g}", ",".join(e["lora_targets"]), f"{m['lora_train']:.1f}",
                      f"{m['generate']:.1f} ({m['generate_all_resident']:.1f})")
    return table


def _memory_cells(e: dict) -> list[str]:
    per = e.get("per_gpu")
    if per is None:
        return [f"{e['memory_gib'][m]['total']:.1f}" for m in ("full", "lora", "qlora")]
    cells = [f"{per['memory_gib'][m]:.1f}" + ("" if per["fits"][m] else " ✗") for m in ("full", "lora", "qlora")]
    least = per["least_sharding"]
    return [*cells, f"{least['full'] or 'more GPUs'} / {least['lora'] or 'more GPUs'}"]


def _memory_title(args: argparse.Namespace) -> str:
    if getattr(args, "gpus", None) is None:
        return ""
    return (f"; per GPU, {args.gpus} GPUs under {strategy(args)}, ✗ = over {args.gpu_memory:g} GiB; "
            "'fits with' = the least sharding that fits full / LoRA")


def _memory_columns(table, args: argparse.Namespace) -> None:
    if getattr(args, "gpus", None) is not None:
        table.add_column("fits with (full / LoRA)")


def _console():
    """A console as wide as the terminal; piped or redirected, wide enough that no name is cut."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200)


def _text_table(entries: list[dict], args: argparse.Namespace, default: str):
    from rich.table import Table

    table = Table(
        title=f"mmtune models (GiB at seq len {args.seq_len}, batch {args.batch_size}{_memory_title(args)})",
        caption=MEMORY_HELP + "; LoRA targets are *_proj modules; * = default model",
    )
    for col in ("name", "family", "kind", "params", "hub path", "LoRA targets", "full", "LoRA", "QLoRA"):
        table.add_column(col, justify="right" if col in ("params", "full", "LoRA", "QLoRA") else "left")
    _memory_columns(table, args)
    for e in entries:
        name = e["name"] + (" *" if e["name"] == default else "")
        table.add_row(name, e["family"], e["kind"], f"{e['params_b']:g}B", e["hf_path"],
                      ",".join(t.removesuffix("_proj") for t in e["lora_targets"]), *_memory_cells(e))
    return table


def _vision_table(entries: list[dict], args: argparse.Namespace):
    from rich.table import Table

    from mmtune.models.registry import REGISTRY

    table = Table(
        title=f"vision-language models (GiB at seq len {args.seq_len}, batch {args.batch_size}; "
        f"media tokens count in the sequence{_memory_title(args)})",
        caption="images: per conversation; trains by default: LoRA on the language model, the projector in full, "
        "the vision tower as the 'tower' column says, each family's usual recipe (see `mmtune train --help`: "
        "--train-vision, --train-projector)",
    )
    for col in ("name", "family", "params", "vision", "hub path", "images", "video", "tower", "full", "LoRA", "QLoRA"):
        table.add_column(col, justify="right" if col in ("params", "vision", "full", "LoRA", "QLoRA") else "left")
    _memory_columns(table, args)
    from mmtune.models.memory import vision_params

    for e in entries:
        spec = REGISTRY[e["name"]]
        table.add_row(e["name"], e["family"], f"{e['params_b']:g}B", f"{vision_params(spec) / 1e9:.2f}B",
                      e["hf_path"], _images_text(spec), "yes" if spec.supports_video else "no",
                      "frozen" if spec.default_train_vision == "none" else spec.default_train_vision, *_memory_cells(e))
    return table


def run_show(args: argparse.Namespace) -> int:
    from mmtune.models.registry import REGISTRY, find_spec

    spec = find_spec(args.name)
    if spec is None and _show_image_model(args):
        return 0
    if spec is None:
        import difflib

        close = difflib.get_close_matches(args.name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown model {args.name!r}: {hint}`mmtune models` lists every registry name")
    entry = _entry(spec, args)
    if spec.kind == "vision":
        from mmtune.models.memory import vision_params

        entry["vision_params_b"] = round(vision_params(spec) / 1e9, 3)
    if args.json:
        print(json.dumps(entry, ensure_ascii=False, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=spec.name, show_header=False)
    for key, value in entry.items():
        if key == "accepts":
            value = f"images: {_images_text(spec)}; video: {'yes' if value['video'] else 'no'}"
        if key == "memory_gib" or value in (None, (), [], False) and key not in ("trust_remote_code",):
            continue
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    for method, parts in entry["memory_gib"].items():
        detail = ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "total")
        table.add_row(f"memory {method} (GiB)", f"{parts['total']:.2f}  ({detail})")
    per = entry.get("per_gpu")
    for method in (per or {}).get("memory_gib", {}):
        table.add_row(f"{method} per GPU, {per['gpus']} x {per['strategy']}",
                      f"{per['memory_gib'][method]:.2f} GiB ({'fits' if per['fits'][method] else 'does not fit'} "
                      f"{per['gpu_memory_gib']:g} GiB)")
        launch = per["launch"][method]
        table.add_row(f"{method} launch", f"{per['least_sharding'][method]}: {launch}" if launch else
                      f"does not fit {per['gpus']} x {per['gpu_memory_gib']:g} GiB under any sharding: more GPUs, "
                      "a shorter --seq-len, or another method")
    _console().print(table)
    return 0


def _show_image_model(args: argparse.Namespace) -> bool:
    from mmtune.models.imagegen_registry import find_image_spec, image_memory_gib

    spec = find_image_spec(args.name)
    if spec is None:
        return False
    entry = {**spec.to_dict(), "memory_gib": image_memory_gib(spec, spec.default_resolution),
             "lora_params_rank16": spec.lora_params(16)}
    if args.json:
        print(json.dumps(entry, ensure_ascii=False, indent=2))
        return True
    from rich.table import Table

    table = Table(title=spec.name, show_header=False)
    for key, value in entry.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    _console().print(table)
    return True
