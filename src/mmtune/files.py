"""Checks on the files a user names, shared by every layer (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path

from mmtune.errors import UserError


def check_input_file(path: str | os.PathLike, flag: str, hint: str = "") -> Path:
    """`path` is a file this process can read, else a UserError naming `flag`, the path and the fix
    (`hint`: what such a file is, e.g. "data files are .jsonl or .json")."""
    p = Path(path).expanduser()
    more = f" ({hint})" if hint else ""
    if not p.exists():
        raise UserError(f"{flag} {path}: no such file: check the path{more}")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder, not a file: name the file inside it{more}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot read it ({(e.strerror or str(e)).lower()}): fix its "
                        "permissions") from None
    return p


def check_data_files(paths: list[str] | tuple[str, ...], flag: str) -> None:
    """Every data file in `paths` exists and can be read."""
    for path in paths:
        check_input_file(path, flag, "data files are .jsonl or .json")


def check_input_folder(path: str | os.PathLike, flag: str) -> Path:
    """`path` is a folder this process can read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} {path}: no such folder: check the path")
    if not p.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder: give the folder that holds it")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot read this folder: fix its permissions")
    return p
