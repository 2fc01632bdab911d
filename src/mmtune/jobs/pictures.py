"""A picture fine-tuning job's training file: a ZIP of images with same-name .txt captions, checked and unpacked.

Checked in two passes, each problem with its entry name inside the zip, a stable rule id and the fix:

1. `zip_problems`, from the zip's directory alone (nothing unpacked; run on upload, so a bad zip is a 400):
   not a zip, encrypted entries, unsafe names (absolute paths, drive letters, `..`, backslashes, control
   characters, symbolic links: "zip slip"), the same name twice, more than the hosted limits of
   HOSTED_MAX_PICTURES pictures or HOSTED_MAX_BYTES bytes unpacked, more than MAX_ENTRIES entries.
2. `check_picture_zip`, when a job is validated: the zip is unpacked into the job's folder (each entry
   confined to it and stopped at its declared size, so a lying header cannot fill the disk: "zip bomb"),
   then the folder is checked by the data layer under the hosted (strict) rules, as `mmtune data check
   --rules strict FOLDER` does: undecodable or small pictures, missing captions, duplicates, formats.

macOS's `__MACOSX/` resource forks are not user data: they are left out, and counted in the result. A zip
whose entries all sit in one folder (`pictures/a.png`, ...) is read from that folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from mmtune.data.findings import ERROR
from mmtune.data.pictures import HOSTED_MAX_BYTES, HOSTED_MAX_PICTURES, IMAGE_SUFFIXES, read_pictures

ZIP_FORMAT = "pictures-zip"
PICTURES_KIND = "pictures"  # what a picture job's file holds (the `kind` of its check)
MAX_ENTRIES = 1000  # files and folders: 100 pictures, their captions, and room for the odd extra file
SKIPPED_PREFIX = "__MACOSX/"
CHUNK = 1 << 20
DRIVE_RE = re.compile(r"^[A-Za-z]:")
COMPLETE = ".complete"  # written last into an unpacked folder


class ZipProblem(Exception):
    """A problem found while unpacking (after the directory looked right): one finding."""

    def __init__(self, entry: str, rule: str, message: str):
        super().__init__(message)
        self.finding = _finding(entry, rule, message)


def _finding(entry: str, rule: str, message: str, severity: str = ERROR) -> dict[str, Any]:
    return {"severity": severity, "line": 0, "field": entry, "rule": rule, "message": message}


def is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def unsafe_name(name: str) -> str | None:
    """Why an entry name could write outside the folder it is unpacked into, or None."""
    if any(ord(ch) < 32 for ch in name):
        return "it holds control characters"
    if "\\" in name:
        return "it holds a backslash (a Windows path separator)"
    if name.startswith("/") or DRIVE_RE.match(name):
        return "it is an absolute path"
    if ".." in name.split("/"):
        return "it climbs out of the folder with '..'"
    return None


def _entries(zf: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], int]:
    """The entries to unpack (files and folders), and how many __MACOSX/ entries are left out."""
    keep = [i for i in zf.infolist() if not i.filename.startswith(SKIPPED_PREFIX)]
    return keep, len(zf.infolist()) - len(keep)


def zip_problems(path: str | Path) -> list[dict[str, Any]]:
    """Every problem of the zip's directory (its entries' names, flags and declared sizes), as findings."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos, _ = _entries(zf)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return [_finding("", "invalid-zip", f"the file is not a readable ZIP archive ({e}): zip the folder of "
                         "pictures and captions again (e.g. `zip -r pictures.zip pictures/`)")]
    out: list[dict[str, Any]] = []
    for info in infos:
        why = unsafe_name(info.filename)
        if why:
            out.append(_finding(info.filename[:200], "unsafe-path", f"entry {info.filename[:200]!r}: {why}, so it "
                                "could be written outside the folder it is unpacked into: zip the pictures with "
                                "paths relative to their folder"))
        elif stat.S_ISLNK(info.external_attr >> 16):
            out.append(_finding(info.filename, "unsafe-path", f"entry {info.filename!r} is a symbolic link, which "
                                "could point anywhere on the server: zip the picture itself (`zip` without -y)"))
        if info.flag_bits & 0x1:
            out.append(_finding(info.filename[:200], "encrypted-entry", f"entry {info.filename[:200]!r} is "
                                "encrypted: zip the pictures without a password"))
    for name, n in Counter(i.filename for i in infos).items():
        if n > 1:
            out.append(_finding(name[:200], "duplicate-entry", f"entry {name[:200]!r} appears {n} times, so which "
                                "one is meant is unclear: zip each file once"))
    files = [i for i in infos if not i.is_dir()]
    pictures = [i for i in files if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES]
    if len(pictures) > HOSTED_MAX_PICTURES:
        out.append(_finding("", "too-many-pictures", f"{len(pictures)} pictures: a picture fine-tuning job takes at "
                            f"most {HOSTED_MAX_PICTURES} (the hosted services' limit); remove "
                            f"{len(pictures) - HOSTED_MAX_PICTURES}"))
    if len(infos) > MAX_ENTRIES:
        out.append(_finding("", "too-many-files", f"{len(infos)} entries: a picture zip holds at most {MAX_ENTRIES} "
                            f"files and folders ({HOSTED_MAX_PICTURES} pictures and their .txt captions)"))
    total = sum(i.file_size for i in files)
    if total > HOSTED_MAX_BYTES:
        out.append(_finding("", "too-large", f"the zip unpacks to {total / 1e6:.1f} MB: a picture fine-tuning job "
                            f"takes at most {HOSTED_MAX_BYTES / 1e6:.0f} MB of pictures and captions (the hosted "
                            "services' limit); shrink or remove pictures"))
    return out


def unpack(path: str | Path, dest: Path) -> tuple[Path, int]:
    """Unpack a zip that passed `zip_problems` into `dest` (made whole or not at all; kept when already there):
    (the folder its pictures are in, __MACOSX/ entries left out). ZipProblem when an entry turns out bad."""
    dest = Path(dest)
    with zipfile.ZipFile(path) as zf:
        infos, skipped = _entries(zf)
        if not (dest / COMPLETE).is_file():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                for info in infos:
                    _unpack_one(zf, info, tmp)
                (tmp / COMPLETE).write_text("", encoding="utf-8")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(dest)
    tops = {i.filename.split("/", 1)[0] for i in infos}
    single = next(iter(tops)) if len(tops) == 1 else None
    if single and all("/" in i.filename for i in infos) and (dest / single).is_dir():
        return dest / single, skipped
    return dest, skipped


class OversizeEntry(Exception):
    """A zip entry unpacked to more than the size its header declares (a damaged or forged zip)."""


def write_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one entry to `target`, which must not exist yet (FileExistsError), stopping with OversizeEntry
    past the size the zip declares for it: a lying header cannot fill the disk ("zip bomb")."""
    written = 0
    with zf.open(info) as src, open(target, "xb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise OversizeEntry(info.filename)
            out.write(chunk)


def _unpack_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    name = info.filename
    if unsafe_name(name) or stat.S_ISLNK(info.external_attr >> 16):  # zip_problems refuses these; never unpack them
        raise ZipProblem(name[:200], "unsafe-path", f"entry {name[:200]!r} could be written outside its folder")
    target = root / name
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(target), real_root]) != real_root:
        raise ZipProblem(name, "unsafe-path", f"entry {name!r} would be written outside its folder")
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_entry(zf, info, target)
    except OversizeEntry:
        raise ZipProblem(name, "size-mismatch", f"entry {name!r} unpacks to more than the {info.file_size} bytes "
                         "the zip declares for it (a damaged or forged zip): zip the pictures again") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, FileExistsError):
            raise ZipProblem(name, "duplicate-entry", f"entry {name!r} is in the zip twice") from None
        raise ZipProblem(name, "corrupt-entry", f"entry {name!r} cannot be unpacked ({e}): zip the pictures "
                         "again") from None
    except (NotImplementedError, RuntimeError) as e:  # an unsupported compression method, a password
        raise ZipProblem(name, "unsupported-entry", f"entry {name!r} cannot be unpacked ({e}): zip it with the "
                         "ordinary (deflate) compression") from None


def check_picture_zip(path: str | Path, dest: Path) -> dict[str, Any]:
    """The check of a picture zip for a job (the shape of jobs.validate.check_upload), unpacking it into `dest`:
    {rules, format, kind, checked_for, rows, errors, warnings, findings, folder, skipped}. `folder` is where
    the pictures are (what the job trains on) when there are no errors."""
    problems = zip_problems(path)
    skipped = 0
    folder: Path | None = None
    findings: list[dict[str, Any]] = list(problems)
    rows = warnings = 0
    if not problems:
        try:
            folder, skipped = unpack(path, Path(dest))
        except ZipProblem as e:
            findings = [e.finding]
    if folder is not None:
        prefix = "" if folder == Path(dest) else folder.name + "/"
        ps = read_pictures(str(folder), "strict")
        rows = ps.report.rows
        for f in ps.report.findings:
            if f.rule == "unknown-file" and f.field == COMPLETE:
                continue
            findings.append(_finding(prefix + f.field if f.field else "", f.rule, f.message, f.severity))
    errors = sum(f["severity"] == ERROR for f in findings)
    warnings = len(findings) - errors
    findings.sort(key=lambda f: f["severity"] != ERROR)
    return {"rules": "strict", "format": ZIP_FORMAT, "kind": PICTURES_KIND, "checked_for": PICTURES_KIND,
            "rows": rows, "errors": errors, "warnings": warnings, "findings": findings[:100],
            "folder": str(folder) if folder is not None and not errors else None, "skipped": skipped}


def describe_zip_finding(finding: dict[str, Any]) -> str:
    """`p1.png: <message> [rule too-small]` (the entry inside the zip)."""
    where = f"{finding['field']}: " if finding["field"] else ""
    return f"{where}{finding['message']} [rule {finding['rule']}]"


def zip_failure_message(param: str, file_row: dict[str, Any], check: dict[str, Any], shown: int = 3) -> str:
    """error.message of a job whose picture zip has errors: the first few, by entry and rule, and the fix."""
    errors = [f for f in check["findings"] if f["severity"] == ERROR]
    text = "; ".join(describe_zip_finding(f) for f in errors[:shown])
    more = f"; and {check['errors'] - shown} more" if check["errors"] > shown else ""
    return (f"{param} {file_row['id']} ({file_row['filename']}) has {check['errors']} error(s): {text}{more}. Fix "
            "the pictures (unzip them and run `mmtune data check --rules strict FOLDER` to list every problem), "
            "zip them again, upload the zip and create a new job.")
