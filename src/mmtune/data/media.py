"""Where media references point, and whether the files there exist and decode.

A reference is what the data says: a relative path (against the media root), an absolute
path, `file://`, `http(s)://` or a `data:` URL. Results are cached per reference (bounded),
so a dataset that reuses one image a thousand times decodes it once.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections import OrderedDict
from urllib.parse import unquote, urlparse

CACHE_SIZE = 4096


def classify(ref: str) -> str:
    """'data' | 'remote' | 'path'."""
    if ref.startswith("data:"):
        return "data"
    if ref.startswith(("http://", "https://")):
        return "remote"
    return "path"


def local_path(ref: str, media_root: str | None) -> str:
    """The filesystem path a (non-URL) reference points at."""
    if ref.startswith("file://"):
        ref = unquote(urlparse(ref).path)
    ref = os.path.expanduser(ref)
    if os.path.isabs(ref) or not media_root:
        return os.path.normpath(ref)
    return os.path.normpath(os.path.join(media_root, ref))


def inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def decode_data_url(ref: str) -> bytes:
    head, _, data = ref.partition(",")
    if ";base64" not in head:
        return unquote(data).encode("latin-1")
    return base64.b64decode(data, validate=True)


class MediaChecker:
    """Checks that media exist, decode, and stay inside the root (when the root is enforced)."""

    def __init__(self, media_root: str | None, enforce_root: bool = False, decode: bool = True):
        self.media_root = media_root
        self.enforce_root = enforce_root
        self.decode = decode
        self._cache: OrderedDict[tuple[str, str, str | None], tuple[str, str] | None] = OrderedDict()

    def check(self, kind: str, ref: str, media_root: str | None = None) -> tuple[str, str] | None:
        """None if fine, else (rule, message). Remote URLs give a warning rule ('media-remote')."""
        root = media_root or self.media_root
        key = (kind, ref, root)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        result = self._check(kind, ref, root)
        self._cache[key] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _check(self, kind: str, ref: str, root: str | None) -> tuple[str, str] | None:
        if not ref:
            return ("media-count-mismatch", f"an <{kind}> tag has no {kind} to go with it")
        how = classify(ref)
        if how == "remote":
            return ("media-remote", f"remote {kind} {ref!r} is not checked; download it, or allow remote media when training")
        if how == "data":
            try:
                data = decode_data_url(ref)
            except (binascii.Error, ValueError) as e:
                return ("media-undecodable", f"the data: URL is not valid base64 ({e})")
            return self._decode(kind, io.BytesIO(data), "the data: URL")
        path = local_path(ref, root)
        if self.enforce_root and root and not inside(path, root):
            return ("media-outside-root", f"{ref!r} points outside the media root {root}: keep media under the root")
        if not os.path.isfile(path):
            where = f" (looked in {root})" if root and not os.path.isabs(ref) else ""
            return ("media-missing", f"{kind} file {ref!r} does not exist{where}: fix the path or pass --media-root")
        return self._decode(kind, path, repr(ref))

    def _decode(self, kind: str, src, name: str) -> tuple[str, str] | None:
        if not self.decode:
            return None
        try:
            if kind == "image":
                decode_image(src)
            else:
                decode_video(src)
        except Exception as e:  # any decoder failure means the file cannot train
            return ("media-undecodable", f"{kind} {name} does not decode: {type(e).__name__}: {e}")
        return None


def decode_image(src) -> tuple[int, int]:
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        return im.size


def decode_video(src) -> int:
    """Opens a video with PyAV and decodes its first frame; returns the stream's frame count."""
    import av

    with av.open(src) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        for _frame in container.decode(stream):
            return stream.frames
        raise ValueError("no decodable frame")
