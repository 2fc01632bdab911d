"""Picture data for image-generation LoRA: a folder of images with captions, or a .jsonl of them.

Two shapes, as the hosted fine-tuning services and kohya / ai-toolkit take them:

- a folder: `cat1.png` + `cat1.txt` (the caption, UTF-8), `cat2.jpg` + `cat2.txt`, ...
- a `.jsonl` file: one `{"image": "path/relative/to/the/file.png", "caption": "..."}` per line.

Checked like text data, every problem with its place (the file name in the folder, or the
line and field of the .jsonl), a stable rule id and the fix; nothing is skipped silently: a
caption without its picture, a sub-folder or a file of another kind is reported too. Pillow
only (no torch): `mmtune data check pictures/` answers in a moment.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmtune.data.check import FileReport
from mmtune.data.findings import ERROR, WARNING, Finding
from mmtune.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HOSTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what the hosted services accept (--rules strict)
HOSTED_MAX_PICTURES = 100
HOSTED_MAX_BYTES = 300 * 1000 * 1000  # "300 MB"
MIN_SIDE = 64  # below this a picture cannot teach anything but blur: an error
SMALL_SIDE = 512  # FLUX trains at 512-1024 px; smaller pictures are upscaled: a warning
RECOMMENDED_SIDE = 1024
PICTURE_FORMATS = ("folder", "pictures-jsonl")


@dataclass
class Picture:
    """One training picture: where it is, its caption (None: none given) and where it was declared."""

    image: Path
    caption: str | None
    where: str  # "cat1.png" in a folder, "line 3" in a .jsonl
    line: int = 0  # .jsonl line; 0 in a folder
    width: int = 0
    height: int = 0
    size_bytes: int = 0
    mode: str = ""
    format: str = ""


@dataclass
class PictureSet:
    path: str
    format: str
    pictures: list[Picture] = field(default_factory=list)
    report: FileReport | None = None


def is_picture_data(path: str | Path) -> bool:
    """A folder, or a .jsonl whose first row has "image" (and no chat keys): picture data."""
    p = Path(path)
    if p.is_dir():
        return True
    if p.suffix.lower() != ".jsonl" or not p.is_file():
        return False
    with open(p, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    return False
                chat = {"messages", "conversations", "query", "instruction"}
                return isinstance(row, dict) and "image" in row and not chat & set(row)
    return False


class _Findings:
    def __init__(self, report: FileReport):
        self.report = report
        self.out: list[Finding] = []

    def add(self, severity: str, line: int, where: str, rule: str, message: str) -> None:
        self.out.append(Finding(severity, line, where, rule, message))
        if severity == ERROR:
            self.report.errors += 1
        else:
            self.report.warnings += 1


def iter_picture_findings(path: str, rules: str = "default", check_media: bool = True,
                          report: FileReport | None = None) -> Iterator[Finding]:
    """Findings of a picture folder or .jsonl, in order; fills `report` (format, rows = pictures, counts)."""
    report = report if report is not None else FileReport(path)
    yield from read_pictures(path, rules, check_media, report).report.findings


def read_pictures(path: str, rules: str = "default", check_media: bool = True,
                  report: FileReport | None = None) -> PictureSet:
    """Every picture with its caption, checked; the report lists every finding (nothing is dropped here)."""
    if rules not in ("default", "strict"):
        raise UserError(f"unknown rule set {rules!r}: choose default or strict")
    p = Path(path)
    report = report if report is not None else FileReport(path)
    found = _Findings(report)
    if p.is_dir():
        report.format = "folder"
        pictures = _read_folder(p, found)
    elif p.is_file():
        report.format = "pictures-jsonl"
        pictures = _read_jsonl(p, found)
    else:
        raise UserError(f"{path} does not exist: give a folder of pictures with .txt captions, or a .jsonl of "
                        '{"image": ..., "caption": ...} rows')
    if check_media:
        for pic in pictures:
            _open(pic, found)
        _duplicates(pictures, found)
    _captions(pictures, found)
    if rules == "strict":
        _hosted_limits(pictures, found)
    if not pictures:
        found.add(ERROR, 0, "", "no-pictures", f"no pictures found in {path}: add images ({', '.join(IMAGE_SUFFIXES)})"
                  " with a .txt caption of the same name beside each")
    found.out.sort(key=lambda f: (f.line, f.field))
    report.rows = len(pictures)
    report.findings = found.out
    return PictureSet(path, report.format, pictures, report)


def load_pictures(path: str, rules: str = "default") -> PictureSet:
    """The pictures to train on; any error refuses the data with every error listed (as `data check` shows)."""
    ps = read_pictures(path, rules)
    errors = [f for f in ps.report.findings if f.is_error]
    if errors:
        lines = "\n  ".join(f"{path}:{f.line}: {f.field} [{f.rule}] {f.message}" for f in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UserError(f"{len(errors)} error(s) in the picture data (see `mmtune data check {path}`):\n  "
                        f"{lines}{more}")
    return ps


# ---- the two shapes ----
def _read_folder(folder: Path, found: _Findings) -> list[Picture]:
    entries = sorted(folder.iterdir(), key=lambda e: e.name)
    images = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
    stems = Counter(e.stem for e in images)
    pictures = []
    for img in images:
        if stems[img.stem] > 1:
            found.add(ERROR, 0, img.name, "ambiguous-caption",
                      f"{stems[img.stem]} pictures share the name {img.stem!r}, so {img.stem}.txt cannot say which "
                      "one it captions: rename one of them")
        caption = None
        txt = img.with_suffix(".txt")
        if txt.is_file():
            try:
                caption = txt.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                found.add(ERROR, 0, txt.name, "caption-not-utf8",
                          f"caption file is not UTF-8 ({e.reason} at byte {e.start}): save it as UTF-8")
                caption = ""
        pictures.append(Picture(img, caption, img.name))
    image_stems = set(stems)
    for e in entries:
        if e.is_dir():
            found.add(WARNING, 0, e.name + "/", "subfolder-ignored",
                      "sub-folders are not read: move its pictures (and captions) up into this folder to train on them")
        elif e.suffix.lower() == ".txt" and e.stem not in image_stems:
            found.add(WARNING, 0, e.name, "orphan-caption",
                      f"caption without a picture (no {e.stem}.png/.jpg/...): add the picture or remove the caption")
        elif e.is_file() and e.suffix.lower() not in (*IMAGE_SUFFIXES, ".txt") and not e.name.startswith("."):
            found.add(WARNING, 0, e.name, "unknown-file",
                      f"not a picture ({', '.join(IMAGE_SUFFIXES)}) or a .txt caption: it is not used")
    return pictures


def _read_jsonl(path: Path, found: _Findings) -> list[Picture]:
    root = path.parent
    pictures = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as e:
                found.add(ERROR, n, "", "invalid-json", f"invalid JSON: {e}. Each line must be one JSON object like "
                          '{"image": "a.png", "caption": "..."}')
                continue
            if not isinstance(row, dict):
                found.add(ERROR, n, "", "not-object", 'each line must be an object like {"image": ..., "caption": ...}')
                continue
            image = row.get("image")
            if not isinstance(image, str) or not image.strip():
                found.add(ERROR, n, "image", "missing-field", '"image" must be the path of the picture (relative to '
                          f"{path.name}'s folder)")
                continue
            caption = row.get("caption")
            if caption is not None and not isinstance(caption, str):
                found.add(ERROR, n, "caption", "wrong-type", f'"caption" must be a string, not {type(caption).__name__}')
                caption = ""
            extra = sorted(set(row) - {"image", "caption"})
            if extra:
                found.add(WARNING, n, extra[0], "unknown-field",
                          f"field(s) {', '.join(map(repr, extra))} are not used for training: remove them or keep on purpose")
            img = Path(image).expanduser()
            pictures.append(Picture(img if img.is_absolute() else root / img, caption, f"line {n}", line=n))
    return pictures


# ---- rules ----
def _field(pic: Picture, what: str) -> tuple[int, str]:
    return (pic.line, what) if pic.line else (0, pic.image.name)


def _open(pic: Picture, found: _Findings) -> None:
    from PIL import Image, ImageOps

    line, where = _field(pic, "image")
    if not pic.image.is_file():
        found.add(ERROR, line, where, "missing-image", f"picture {str(pic.image)!r} does not exist: fix the path")
        return
    pic.size_bytes = pic.image.stat().st_size
    try:
        with Image.open(pic.image) as im:
            im.load()
            pic.format, pic.mode = im.format or "", im.mode
            transparent = "A" in im.mode or (im.mode == "P" and "transparency" in im.info)
            im = ImageOps.exif_transpose(im)
            pic.width, pic.height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        found.add(ERROR, line, where, "undecodable-image",
                  f"cannot decode {pic.image.name}: {e}. Re-save it as PNG or JPEG")
        return
    short = min(pic.width, pic.height)
    if short < MIN_SIDE:
        found.add(ERROR, line, where, "too-small", f"{pic.width}x{pic.height} px: the short side must be at least "
                  f"{MIN_SIDE} px (use a larger original; {RECOMMENDED_SIDE} px is recommended)")
    elif short < SMALL_SIDE:
        found.add(WARNING, line, where, "small-image", f"{pic.width}x{pic.height} px: FLUX trains at 512-1024 px, so "
                  f"this picture is upscaled (blurry); {RECOMMENDED_SIDE} px is recommended")
    if transparent:
        found.add(WARNING, line, where, "transparency", "the picture has transparent pixels: they are trained "
                  "as white (flatten it yourself to choose another background)")


def _duplicates(pictures: list[Picture], found: _Findings) -> None:
    seen: dict[str, Picture] = {}
    for pic in pictures:
        if not pic.size_bytes:
            continue
        digest = hashlib.sha256(pic.image.read_bytes()).hexdigest()
        if digest in seen:
            line, where = _field(pic, "image")
            found.add(WARNING, line, where, "duplicate-image", f"same picture as {seen[digest].where}: remove one "
                      "copy, or keep it on purpose (it trains twice as often)")
        else:
            seen[digest] = pic


def _captions(pictures: list[Picture], found: _Findings) -> None:
    for pic in pictures:
        line, where = _field(pic, "caption")
        if pic.caption is None:
            fix = f"write one in {pic.image.stem}.txt" if not pic.line else 'add "caption"'
            found.add(WARNING, line, where, "missing-caption", f"no caption: it trains on the trigger word alone "
                      f"(--trigger-word; without one training refuses it): {fix}")
        elif not pic.caption.strip():
            found.add(WARNING, line, where, "empty-caption", "the caption is empty: it trains on the trigger word "
                      "alone (--trigger-word; without one training refuses it)")


def _hosted_limits(pictures: list[Picture], found: _Findings) -> None:
    if len(pictures) > HOSTED_MAX_PICTURES:
        found.add(ERROR, 0, "", "too-many-pictures", f"{len(pictures)} pictures: hosted fine-tuning takes at most "
                  f"{HOSTED_MAX_PICTURES}; remove {len(pictures) - HOSTED_MAX_PICTURES}")
    total = sum(p.size_bytes or (p.image.stat().st_size if p.image.is_file() else 0) for p in pictures)
    if total > HOSTED_MAX_BYTES:
        found.add(ERROR, 0, "", "too-large", f"{total / 1e6:.1f} MB of pictures: hosted fine-tuning takes at most "
                  f"{HOSTED_MAX_BYTES / 1e6:.0f} MB; shrink or remove pictures")
    for pic in pictures:
        if pic.image.suffix.lower() not in HOSTED_SUFFIXES:
            line, where = _field(pic, "image")
            found.add(ERROR, line, where, "unsupported-format", f"{pic.image.suffix} pictures are not accepted by "
                      f"hosted fine-tuning ({', '.join(HOSTED_SUFFIXES)}): convert it to PNG or JPEG")


# ---- stats ----
def picture_stats(path: str) -> dict:
    """Counts, sizes, aspect ratios and caption lengths of a picture folder or .jsonl."""
    ps = read_pictures(path)
    pics = [p for p in ps.pictures if p.width]
    ratios = Counter(_ratio_name(p.width, p.height) for p in pics)
    words = [len((p.caption or "").split()) for p in ps.pictures]
    chars = [len((p.caption or "").strip()) for p in ps.pictures]

    def spread(values: list[int]) -> dict:
        if not values:
            return {"min": 0, "median": 0, "max": 0}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "path": path,
        "format": ps.format,
        "pictures": len(ps.pictures),
        "decoded": len(pics),
        "errors": ps.report.errors,
        "warnings": ps.report.warnings,
        "total_mb": round(sum(p.size_bytes for p in pics) / 1e6, 2),
        "width": spread([p.width for p in pics]),
        "height": spread([p.height for p in pics]),
        "aspect_ratios": dict(ratios.most_common()),
        "file_formats": dict(Counter(p.format for p in pics).most_common()),
        "captions": {"missing": sum(p.caption is None for p in ps.pictures),
                     "empty": sum(p.caption is not None and not p.caption.strip() for p in ps.pictures),
                     "words": spread(words), "characters": spread(chars)},
    }


_RATIOS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 1.5, "2:3": 2 / 3, "16:9": 16 / 9, "9:16": 9 / 16}


def _ratio_name(w: int, h: int) -> str:
    r = w / h
    name, value = min(_RATIOS.items(), key=lambda kv: abs(kv[1] - r))
    return name if abs(value - r) / value < 0.05 else f"{r:.2f}:1"
