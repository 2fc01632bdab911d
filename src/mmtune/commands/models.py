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


def _memory(spec, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from mmtune.models.memory import METHODS, estimate_memory

    if args.seq_len < 1 or args.batch_size < 1:
        raise UserError("--seq-len and --batch-size must be at least 1")
    return {m: estimate_memory(spec, m, args.seq_len, args.batch_size) for m in METHODS}


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
    return [f"{e['memory_gib'][m]['total']:.1f}" for m in ("full", "lora", "qlora")]


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
        title=f"mmtune models (GiB at seq len {args.seq_len}, batch {args.batch_size})",
        caption=MEMORY_HELP + "; LoRA targets are *_proj modules; * = default model",
    )
    for col in ("name", "family", "kind", "params", "hub path", "LoRA targets", "full", "LoRA", "QLoRA"):
        table.add_column(col, justify="right" if col in ("params", "full", "LoRA", "QLoRA") else "left")
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
        "media tokens count in the sequence)",
        caption="images: per conversation; trains by default: LoRA on the language model, the projector in full, "
        "the vision tower as the 'tower' column says, each family's usual recipe (see `mmtune train --help`: "
        "--train-vision, --train-projector)",
    )
    for col in ("name", "family", "params", "vision", "hub path", "images", "video", "tower", "full", "LoRA", "QLoRA"):
        table.add_column(col, justify="right" if col in ("params", "vision", "full", "LoRA", "QLoRA") else "left")
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
