"""A vision training file uploaded as one zip: a `.jsonl` / `.json` data file and the images (and videos)
its rows name, by paths relative to the data file inside the zip.

Checked on upload, so a bad zip is a 400 naming the entry (or the row) and the fix:
1. from the zip's directory, nothing unpacked yet: a readable zip, no encrypted entry, no unsafe name
   (absolute, a drive letter, `..`, a backslash, a control character) and no symbolic link ("zip slip"),
   no name twice, at most MAX_ENTRIES entries and MAX_UNPACKED_BYTES unpacked, exactly one data file;
2. unpacked into a fresh folder (each entry confined to it and stopped at the size the zip declares, so
   a lying header cannot fill the disk: "zip bomb"), then the data layer reads the file with media
   checks confined to that folder: every image and video a row names must be in the zip and decode.

The folder is `<data dir>/files/<file id>/` and the stored file is the data file in it, so every other
part of the service (the check, the job's training config, the token counts) reads it as any upload,
its media resolving beside it. macOS's `__MACOSX/` forks and `.DS_Store` are not user data: left out
and counted. A zip whose entries all sit in one top folder (what zipping a folder gives) is unpacked
without that folder.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any

from mmtune.jobs.errors import APIError, bad_request
from mmtune.jobs.pictures import OversizeEntry, unsafe_name, write_entry  # (one set of zip rules for both)

MAX_ENTRIES = 50_000
MAX_UNPACKED_BYTES = 16 << 30
DATA_SUFFIXES = (".jsonl", ".json")
MEDIA_ERRORS = ("media-missing", "media-outside-root", "media-undecodable")
SHOWN = 10


def top_data_files(infos: list[zipfile.ZipInfo]) -> tuple[str, list[zipfile.ZipInfo]]:
    """The common top folder to strip ('' or 'name/': what zipping a folder gives) and the .jsonl/.json
    entries at the top once it is stripped."""
    tops = {i.filename.split("/", 1)[0] for i in infos}
    strip = f"{next(iter(tops))}/" if len(tops) == 1 and all("/" in i.filename for i in infos) else ""
    return strip, [i for i in infos if "/" not in i.filename[len(strip):] and i.filename.lower().endswith(DATA_SUFFIXES)]


def holds_chat_data(path: Path) -> bool:
    """Whether an uploaded zip is a data file with its media (this module) rather than pictures with captions
    for a picture job (jobs/pictures.py): one .jsonl/.json at its top whose first row is not a caption row
    (`{"image": ..., "caption": ...}`, the picture format), or no data file and no .txt caption either."""
    import json

    try:
        with zipfile.ZipFile(path) as zf:
            infos, _ = _entries(zf)
            _, data = top_data_files(infos)
            if not data:  # pictures have .txt captions; neither: refused as a media zip, naming both shapes
                return not any(i.filename.lower().endswith(".txt") for i in infos)
            if len(data) > 1:
                return True  # refused as a media zip, naming why
            with zf.open(data[0]) as f:
                head = f.read(1 << 16).decode("utf-8", errors="replace").lstrip().lstrip("[").lstrip()
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # unreadable: refused here, naming why
    line = head.splitlines()[0] if head else ""
    try:
        first = json.loads(line.rstrip(","))
    except ValueError:
        return True  # not a caption row: the data layer names what is wrong with it
    return not (isinstance(first, dict) and "caption" in first and "messages" not in first)


def _refuse(message: str, code: str = "invalid_zip") -> APIError:
    return bad_request(message, "file", code)


def _junk(name: str) -> bool:
    parts = name.split("/")
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store"


def _entries(zf: zipfile.ZipFile) -> tuple[list[zipfile.ZipInfo], int]:
    """The user's entries (files, not folders or macOS junk) and how many junk ones were left out."""
    infos, junk = [], 0
    for info in zf.infolist():
        if _junk(info.filename):
            junk += 1
        elif not info.is_dir():
            infos.append(info)
    return infos, junk


def check_directory(path: Path) -> tuple[list[zipfile.ZipInfo], str, int]:
    """Step 1: the entries to unpack, the common top folder to strip ('' or 'name/'), junk left out."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos, junk = _entries(zf)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _refuse(f"the file is not a readable ZIP archive ({e}): zip the data file and its images again "
                      "(e.g. `zip -r data.zip data.jsonl images/`)") from None
    seen: set[str] = set()
    for info in infos:
        why = unsafe_name(info.filename)
        if why:
            raise _refuse(f"zip entry {info.filename[:200]!r}: {why}, so it could be written outside the folder it "
                          "is unpacked into: zip the files with relative paths (`zip -r data.zip data.jsonl images/`)",
                          "unsafe_zip_entry")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _refuse(f"zip entry {info.filename[:200]!r} is a symbolic link, which could point anywhere on the "
                          "server: zip the file itself (`zip` without -y)", "unsafe_zip_entry")
        if info.flag_bits & 0x1:
            raise _refuse(f"zip entry {info.filename[:200]!r} is encrypted: zip the files without a password")
        if info.filename in seen:
            raise _refuse(f"zip entry {info.filename[:200]!r} is in the zip twice: zip each file once")
        seen.add(info.filename)
    if len(infos) > MAX_ENTRIES:
        raise _refuse(f"the zip holds {len(infos)} files: a media upload holds at most {MAX_ENTRIES}; split the "
                      "data into several files", "zip_too_large")
    total = sum(i.file_size for i in infos)
    if total > MAX_UNPACKED_BYTES:
        raise _refuse(f"the zip unpacks to {total / 2**30:.1f} GiB: a media upload unpacks to at most "
                      f"{MAX_UNPACKED_BYTES / 2**30:.0f} GiB; scale the images down or split the data", "zip_too_large")
    strip, entries = top_data_files(infos)
    data = [i.filename for i in entries]
    if not data:
        raise _refuse("the zip holds no .jsonl or .json data file at its top: put the data file at the top of the "
                      "zip, beside the folders of images its rows name (a zip of pictures for a picture job holds a "
                      ".txt caption beside each picture)", "zip_without_data")
    if len(data) > 1:
        raise _refuse(f"the zip holds {len(data)} data files at its top ({', '.join(sorted(data)[:5])}): a training "
                      "file is one data file; zip one data file (with its images) per upload", "zip_without_data")
    return infos, strip, junk


def _unpack(path: Path, infos: list[zipfile.ZipInfo], strip: str, dest: Path) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(path) as zf:
        for info in infos:
            target = (dest / info.filename[len(strip):]).resolve()
            if root not in target.parents:  # unsafe_name refuses these; never write them
                raise _refuse(f"zip entry {info.filename[:200]!r} would be written outside its folder", "unsafe_zip_entry")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_entry(zf, info, target)
            except OversizeEntry:
                raise _refuse(f"zip entry {info.filename[:200]!r} unpacks to more than the {info.file_size} "
                              "bytes the zip declares for it (a damaged or forged zip): zip the files again") from None
            except FileExistsError:
                raise _refuse(f"zip entry {info.filename[:200]!r} is in the zip twice (once with another spelling): "
                              "zip each file once") from None
            except (zipfile.BadZipFile, EOFError, NotImplementedError) as e:
                raise _refuse(f"zip entry {info.filename[:200]!r} cannot be unpacked ({e}): zip the files again with "
                              "ordinary (deflate) compression") from None


def media_findings(data_file: Path, folder: Path) -> list[Any]:
    """Step 2: the rows whose images or videos are not in the zip, or do not decode (data-layer findings)."""
    from mmtune.data.reader import FileReader, ReadOptions

    bad = []
    for r in FileReader(str(data_file), ReadOptions(check_media=True, media_root=str(folder), enforce_root=True)):
        bad.extend(f for f in r.findings if f.rule in MEDIA_ERRORS)
    return bad


def unpack_media_zip(path: Path, folder: Path) -> dict[str, Any]:
    """Check the uploaded zip at `path` and unpack it into `folder` (which must not exist). Returns
    `{"data_file": name, "files": n, "bytes": n, "media": n, "left_out": n}`; on any problem a 400 naming
    the entry or row and the fix, and `folder` is gone."""
    infos, strip, junk = check_directory(path)
    folder.mkdir(parents=True)
    try:
        _unpack(path, infos, strip, folder)
        [data] = [folder / i.filename[len(strip):] for i in infos if "/" not in i.filename[len(strip):]
                  and i.filename.lower().endswith(DATA_SUFFIXES)]
        bad = media_findings(data, folder)
        if bad:
            listed = "; ".join(f"line {f.line} {f.field}: {_zip_message(f)}" for f in bad[:SHOWN])
            more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
            raise _refuse(f"{data.name} in the zip names media the zip cannot give: {listed}{more}. Paths are "
                          f"relative to {data.name} inside the zip: add the files or fix the paths, then zip again",
                          "zip_media_missing")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {"data_file": data.name, "files": len(infos), "bytes": sum(i.file_size for i in infos),
            "media": len(infos) - 1, "left_out": junk}


def _zip_message(finding) -> str:
    if finding.rule == "media-missing":
        ref = finding.message.split("'")[1] if "'" in finding.message else ""
        return f"{ref!r} is not in the zip" if ref else finding.message
    if finding.rule == "media-outside-root":
        return finding.message.split(" points outside")[0] + " points outside the zip"
    return finding.message


def stored_name(file_id: str, data_file: str) -> str:
    """The stored name of an unpacked media zip: its data file inside the upload's folder."""
    return f"{file_id}/{data_file}"


def remove_folder(files_dir: Path, file_id: str) -> None:
    folder = files_dir / file_id
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

