"""Checks every command runs on its arguments before anything heavy is imported or any model loads.

Each raises a UserError whose one line names the argument, what is wrong and the fix, so a
mistake costs a second (and leaves nothing behind), not a model load and a traceback. Light:
the standard library, the registry and huggingface_hub's cache lookup only (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmtune.errors import UserError
from mmtune.files import check_data_files, check_input_file, check_input_folder  # noqa: F401  (for commands)
from mmtune.infer.artifacts import adapter_base, is_adapter_dir
from mmtune.models.available import check_model
from mmtune.train.output import check_location, foreign_entries, last_checkpoint, system_reason

MERGED_RECORD = "mmtune.json"  # an `mmtune merge` output folder holds it, with method "merged"


def check_model_arg(model: str | None) -> None:
    """What chat, infer, export and merge take: a model (see `check_model`) or a training run's folder;
    an adapter's base model must be available too."""
    if model and is_adapter_dir(model):
        check_adapter(Path(model).expanduser())
        return
    folder = Path(model).expanduser() if model else None
    if folder is not None and folder.is_dir() and not (folder / "config.json").is_file():
        last = last_checkpoint(folder)
        if last is not None:
            raise UserError(f"{model} holds no finished model yet, only checkpoints: give one of them (e.g. "
                            f"{last}), or finish the run first (`mmtune train --output {model} --resume`)")
    check_model(model)


def check_adapter(folder: Path, flag: str | None = None) -> None:
    """`folder` holds a LoRA adapter whose base model can be loaded here."""
    if not folder.exists():
        raise UserError(f"{flag + ' ' if flag else ''}{folder}: no such folder: give the output folder of a "
                        "LoRA training run")
    if not is_adapter_dir(folder):
        raise UserError(f"{flag + ' ' if flag else ''}{folder} holds no LoRA adapter (adapter_config.json): "
                        "give the output folder of a LoRA training run; a fully fine-tuned run is already a "
                        "standalone model")
    base = adapter_base(folder)
    try:
        check_model(base)
    except UserError as e:
        raise UserError(f"the adapter in {folder} was trained on {base}, which cannot be loaded here: "
                        f"{e}") from None


def check_output_file(path: str | os.PathLike, flag: str, inputs: tuple[str | os.PathLike, ...] = (),
                      example: str = "out.jsonl") -> Path:
    """`path` can be written: not a folder, not one of the inputs, not in a system folder, its folder
    writable (it may not exist yet: commands make it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file name, e.g. {flag} {Path(path) / example}")
    reason = system_reason(p.parent)
    if reason:
        raise UserError(f"{flag} {path}: its folder {p.parent} is {reason}: write into a folder of your own")
    for source in inputs:
        if Path(source).expanduser().resolve() == p.resolve():
            raise UserError(f"{flag} {path} is also an input: choose another output file")
    existing = next((q for q in p.parents if q.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable for you: choose a folder you can "
                        "write to")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{flag} {path} exists and is not writable for you: choose another file")
    return p


def check_merge_output(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """`mmtune merge` replaces its output folder whole: only a new or empty one, or (with --overwrite) one
    an earlier merge wrote."""
    check_location(out, flag)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{flag} {out} already exists and is not empty: remove it, choose another {flag}, or "
                        "pass --overwrite to replace an earlier merge")
    from mmtune.infer.artifacts import read_json

    if read_json(out / MERGED_RECORD).get("method") != "merged":
        shown = ", ".join(foreign_entries(out)[:10])
        raise UserError(f"{flag} {out} is not a folder `mmtune merge` wrote (it holds {shown}), so "
                        f"--overwrite does not replace it: move its files out, or choose another {flag}")
