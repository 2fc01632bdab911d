"""The output folder of a training run: where it may be, what in it is mmtune's, and its manifest.

A run records every top-level entry it writes in `mmtune-manifest.json` *before* writing it, so
even a run killed half-way leaves a folder whose files are all accounted for. Only those entries
(and the Trainer's `checkpoint-N/` folders) are ever replaced or removed: `--overwrite` clears
them, and a folder holding anything else (the user's README.md, notes, plots) is refused with the
files listed. `/`, the home folder, its parents and the system folders are refused outright.

No torch here: `mmtune train` checks its output folder before any model loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from mmtune import __version__
from mmtune.errors import UserError

MANIFEST_FILE = "mmtune-manifest.json"
STAGING_DIR = ".mmtune-saving"  # the final model is saved here, then moved in entry by entry
CHECKPOINT = re.compile(r"checkpoint-\d+")
# a finished run's records and weights: what a new run must not replace without --overwrite
RUN_MARKERS = ("summary.json", "mmtune.json", "adapter_model.safetensors", "model.safetensors",
               "model.safetensors.index.json")
# never a run's folder, nor anything inside them
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                "/sys", "/usr", "/System", "/Library", "/private/etc")
# never a run's folder themselves (their subfolders may be: /tmp/x, /var/lib/x, /opt/x)
SYSTEM_ROOTS = ("/", "/home", "/Users", "/root", "/var", "/opt", "/srv", "/mnt", "/media", "/run", "/tmp",
                "/private", "/private/tmp", "/private/var", "/Volumes")
LISTED = 10  # files named in a refusal; the rest are counted
# what an mmtune from before the manifest wrote at the top of a run folder: adopted on --resume only
LEGACY_RUN_FILES = ("config.yaml", "mmtune.json", "summary.json", "metrics.jsonl", "loss.png",
                    "adapter_config.json", "adapter_model.safetensors", "model.safetensors",
                    "model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "README.md", "training_args.bin", "processor_config.json",
                    "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json")


# ---------------------------------------------------------------------------- where


def unsafe_reason(folder: Path) -> str | None:
    """Why `folder` may never hold mmtune's output folder (None when it may): the file-system root, the
    home folder or one of its parents, a system folder or anything inside /etc, /usr, /bin, ..."""
    path = _absolute(folder)
    try:
        home = _absolute(Path.home())
    except (RuntimeError, KeyError):  # no HOME and no passwd entry: there is no home folder to protect
        home = None
    if path == home:
        return "your home folder"
    if home is not None and path in home.parents and path != Path(path.anchor):
        return "a parent of your home folder"
    for root in SYSTEM_ROOTS:
        if path == _absolute(Path(root)):
            return "the root of the file system" if root == "/" else f"the system folder {root}"
    return system_reason(path)


def system_reason(folder: Path) -> str | None:
    """Why no file may be written into `folder` (None when one may): `/`, or in /etc, /usr, /bin, ..."""
    path = _absolute(folder)
    if path == Path(path.anchor):
        return "the root of the file system"
    for tree in SYSTEM_TREES:
        top = _absolute(Path(tree))
        if path == top or top in path.parents:
            return f"the system folder {tree}" if path == top else f"inside the system folder {tree}"
    return None


def check_location(folder: Path, flag: str) -> None:
    """UserError unless `folder` is a place a command may write its output (`flag` names the option)."""
    reason = unsafe_reason(folder)
    if reason:
        raise UserError(f"{flag} {folder} is {reason}: mmtune writes its output only into a folder of its "
                        "own; "
                        f"give a new or empty folder, e.g. {flag} runs/my-run")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder: give a new or empty folder")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: {existing} is not writable for you: choose a folder you can "
                        "write to")


def _absolute(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


# ---------------------------------------------------------------------------- what is mmtune's


def read_manifest(folder: Path) -> list[str]:
    """The entries the manifest lists ("name" for a file, "name/" for a folder); [] without one."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return []
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"cannot read {path} ({e}): it lists the files mmtune wrote in this folder; "
                        "remove the folder yourself if you no longer need the run") from None
    return [f for f in files
            if isinstance(f, str) and f and "/" not in f.rstrip("/") and f not in (".", "..")]


def _names(entries: Iterable[str]) -> set[str]:
    return {e.rstrip("/") for e in entries}


def is_mine(folder: Path, name: str, manifest: set[str] | None = None) -> bool:
    """Whether the top-level entry `name` of `folder` was written by mmtune (needs a manifest)."""
    if manifest is None:
        if not (Path(folder) / MANIFEST_FILE).is_file():
            return False
        manifest = _names(read_manifest(folder))
    if name in (MANIFEST_FILE, f".{MANIFEST_FILE}.tmp") or name in manifest:
        return True
    return CHECKPOINT.fullmatch(name) is not None and (Path(folder) / name).is_dir()


def foreign_entries(folder: Path, adopt_legacy: bool = False) -> list[str]:
    """The top-level entries of `folder` that mmtune did not write, sorted (folders end in "/").
    `adopt_legacy`: a run folder from before the manifest counts its known files as mmtune's."""
    if not folder.is_dir():
        return []
    has_manifest = (folder / MANIFEST_FILE).is_file()
    if has_manifest:
        manifest = _names(read_manifest(folder))
    elif adopt_legacy:
        manifest, has_manifest = _names(legacy_entries(folder)), bool(legacy_entries(folder))
    else:
        manifest = set()
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if not (has_manifest and is_mine(folder, p.name, manifest)))


def legacy_entries(folder: Path) -> list[str]:
    """A run folder an mmtune from before the manifest wrote (a checkpoint holding mmtune.json): its
    entries with the names such a run wrote, and its checkpoints. [] for any other folder."""
    if (folder / MANIFEST_FILE).is_file() or not any((c / "mmtune.json").is_file()
                                                     for c in folder.glob("checkpoint-*")):
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.name in LEGACY_RUN_FILES or (CHECKPOINT.fullmatch(p.name) and p.is_dir()))


def holds_run(out: Path) -> bool:
    """Checkpoints, weights or a finished run's records: what a new run must not silently replace."""
    if not out.is_dir():
        return False
    return any(CHECKPOINT.fullmatch(p.name) for p in out.glob("checkpoint-*")) or any(
        (out / m).exists() for m in RUN_MARKERS)


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint-N/ in `out`. A run killed while saving leaves a folder
    without a readable trainer_state.json (the Trainer writes it last): such folders are skipped."""
    if not out.is_dir():
        return None
    found = []
    for folder in out.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit() and _readable_json(folder / "trainer_state.json"):
            found.append((int(step), folder))
    return str(max(found)[1]) if found else None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- the check


def check_output(out: Path, *, overwrite: bool, resume: bool, flag: str = "--output") -> str | None:
    """Everything about the output folder that can be checked before any work, without changing it.

    Returns the checkpoint `resume` continues from. Refuses: an unsafe place, a folder holding files
    mmtune did not write (listed), a finished run without --resume/--overwrite, --resume without a
    checkpoint. A run killed before its first checkpoint left only its own recorded files: starting
    again over it is allowed, so a job runner can simply re-run the command.
    """
    out = Path(out)
    check_location(out, flag)
    foreign = foreign_entries(out, adopt_legacy=resume)
    if foreign:
        more = len(foreign) - LISTED
        shown = ", ".join(foreign[:LISTED]) + (f" and {more} more" if more > 0 else "")
        legacy = ""
        if not (out / MANIFEST_FILE).is_file() and ((out / "mmtune.json").is_file() or legacy_entries(out)):
            legacy = (f" (a run from an mmtune that kept no {MANIFEST_FILE}: "
                      f"{'--resume continues it, or ' if legacy_entries(out) else ''}"
                      "delete it yourself if you no longer need it)")
        raise UserError(f"{flag} {out} holds files mmtune did not write: {shown}{legacy}. They are never "
                        f"replaced{' (not even with --overwrite)' if overwrite else ''}: move them out, or "
                        f"choose another {flag} (a new or empty folder)")
    if resume:
        last = last_checkpoint(out)
        if last is None:
            raise UserError(f"--resume: {out} holds no checkpoint-*/ folder to continue from; run without "
                            f"--resume to start afresh (or check {flag})")
        return last
    if holds_run(out) and not overwrite:
        raise UserError(f"{out} already holds a training run: pass --resume to continue it, --overwrite to "
                        f"replace it, or choose another {flag}")
    return None


# ---------------------------------------------------------------------------- writing


def record(folder: Path, *entries: str) -> None:
    """Add `entries` to the folder's manifest (written atomically), before they are written."""
    folder = Path(folder)
    listed = read_manifest(folder)
    new = [e for e in entries if e not in listed]
    if new or not (folder / MANIFEST_FILE).is_file():
        write_manifest(folder, [*listed, *new])


def write_manifest(folder: Path, entries: Iterable[str]) -> None:
    body = {"about": "the files and folders mmtune wrote here; `mmtune train --overwrite` replaces only "
                     "these "
                     "(and checkpoint-N/ folders)",
            "mmtune_version": __version__, "files": sorted(set(entries))}
    tmp = Path(folder) / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    tmp.replace(Path(folder) / MANIFEST_FILE)


def open_output(out: Path, entries: Iterable[str]) -> bool:
    """Make the folder (if needed) and record `entries`, the files the run is about to write.
    Returns whether the folder was made here (a failed run then removes it again)."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    record(out, *entries)
    return created


def finish_manifest(out: Path) -> None:
    """The manifest as the run leaves the folder: exactly the entries that are there (all mmtune's)."""
    manifest = _names(read_manifest(out))
    entries = [p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name != MANIFEST_FILE
               and is_mine(out, p.name, manifest)]
    write_manifest(out, entries)


def move_in(staging: Path, out: Path) -> None:
    """Move what the Trainer saved in `staging` into `out`, each entry recorded before it appears."""
    entries = sorted(staging.iterdir())
    record(out, *(p.name + ("/" if p.is_dir() else "") for p in entries))
    for src in entries:
        dest = out / src.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(src, dest)
    staging.rmdir()


def clear_run(out: Path) -> None:
    """Remove what an earlier run wrote, and only that: the manifest's entries and checkpoint-N/ folders
    (the manifest last, so a kill half-way leaves the rest still recorded)."""
    if not (out / MANIFEST_FILE).is_file():
        return
    manifest = _names(read_manifest(out))
    for path in list(out.iterdir()):
        if path.name != MANIFEST_FILE and is_mine(out, path.name, manifest):
            _remove(path)
    (out / MANIFEST_FILE).unlink()


def discard_failed(out: Path, created: bool) -> None:
    """After a failed run: if it left nothing worth keeping (no checkpoint, nothing logged), remove the
    files it wrote, and the folder too when this run made it. Anything else is left as it is."""
    if not out.is_dir() or last_checkpoint(out) is not None:
        return
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return
    if foreign_entries(out):
        return
    for path in list(out.iterdir()):
        _remove(path)
    if created:
        out.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
