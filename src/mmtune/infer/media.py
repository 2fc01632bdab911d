"""Images and videos in prompts: which references a caller may use, and loading them.

A prompt's media reference is a `data:` URL, a local path (absolute, relative or
`file://`) or an `http(s)://` URL. What is allowed depends on who asks, so each caller
states it with a `MediaPolicy`:

- `mmtune chat` and `mmtune infer`: local files anywhere (the user's own machine),
  URLs only with `--allow-remote-media`;
- the server: `data:` URLs always; local files only under `--media-root DIR` (and never
  outside it, symlinks included); URLs only with `--allow-remote-media`.

Every refusal is a UserError naming the flag that allows it (the server answers 400 with
it). A policy may also bound how many images a prompt carries (`max_images`) and how many
pixels one image may decode to (`max_image_pixels`); the size is read from the image's header
before anything is decoded, so a 30000x30000 PNG of 100 KB is refused, not decompressed
(Pillow's own decompression-bomb refusal is a UserError too). Decoding is Pillow's for images
and data/media_io's (PyAV) for videos, with the metadata training gives the processor. No torch here.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from mmtune.chat.render import NO_LIMITS, MediaSizes  # noqa: F401  (the Engine's media sizes: chat/render.py)
from mmtune.data.media import classify, inside, local_path
from mmtune.data.schema import Sample
from mmtune.errors import UserError

REMOTE_FLAG = "--allow-remote-media"
ROOT_FLAG = "--media-root DIR"
MAX_REMOTE_BYTES = 64 * 1024 * 1024
REMOTE_TIMEOUT_S = 30.0
MAX_IMAGES_FLAG = "--max-images"
MAX_PIXELS_FLAG = "--max-image-megapixels"
SERVER_MAX_IMAGES = 8  # a server's default images per request
SERVER_MAX_IMAGE_PIXELS = 40_000_000  # and pixels per image: a 40 MP photo, 120 MB decoded


@dataclass(frozen=True)
class MediaPolicy:
    """Which media references a prompt may use.

    allow_local: local files may be read; with `confine`, only inside `root`.
    root: relative paths resolve against it (else against the sample's own media root,
    e.g. the data file's folder, else the working directory).
    """

    allow_remote: bool = False
    allow_local: bool = True
    root: str | None = None
    confine: bool = False
    max_images: int | None = None  # images per prompt (None: any number)
    max_image_pixels: int | None = None  # width x height of one image, from its header (None: Pillow's own bound)

    @classmethod
    def server(cls, media_root: str | None = None, allow_remote: bool = False, *,
               max_images: int | None = SERVER_MAX_IMAGES,
               max_image_pixels: int | None = SERVER_MAX_IMAGE_PIXELS) -> MediaPolicy:
        """The server's rule: local files only inside `media_root`, when one is given; at most
        `max_images` images per prompt and `max_image_pixels` per image (None: no bound of ours)."""
        root = os.path.realpath(os.path.expanduser(media_root)) if media_root else None
        if root and not os.path.isdir(root):
            raise UserError(f"--media-root {media_root} is not a folder: give an existing folder")
        if max_images is not None and max_images < 0:
            raise UserError(f"{MAX_IMAGES_FLAG} must be >= 0 (got {max_images})")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise UserError(f"{MAX_PIXELS_FLAG} must be > 0")
        return cls(allow_remote=allow_remote, allow_local=root is not None, root=root, confine=True,
                   max_images=max_images, max_image_pixels=max_image_pixels)


LOCAL = MediaPolicy()  # chat / infer default: local files yes, remote no




def check_ref(ref: str, kind: str, policy: MediaPolicy, sample_root: str | None = None) -> str:
    """The reference to load (`data:` URL, http(s) URL, or an absolute local path), or UserError."""
    how = classify(ref)
    if how == "data":
        return ref
    if how == "remote":
        if not policy.allow_remote:
            raise UserError(
                f"{kind} {_short(ref)} is a remote URL and remote media are off: download it and attach the "
                f"file, or allow remote media with {REMOTE_FLAG}"
            )
        return ref
    if not policy.allow_local:
        raise UserError(
            f"{kind} {_short(ref)} is a local file, and this server reads no local files: send it as a data: URL "
            f"(base64), or start the server with {ROOT_FLAG} to allow files inside DIR"
        )
    path = local_path(ref, policy.root or sample_root or os.getcwd())
    if policy.confine and not (policy.root and inside(path, policy.root)):
        raise UserError(
            f"{kind} {_short(ref)} is outside the media root {policy.root}: only files inside the folder given "
            f"with {ROOT_FLAG} can be read"
        )
    if not os.path.isfile(path):
        raise UserError(f"{kind} file {ref!r} does not exist ({path}): check the path")
    return path


def _short(ref: str) -> str:
    return repr(ref if len(ref) <= 80 else ref[:77] + "...")


def fetch(url: str, *, limit: int = MAX_REMOTE_BYTES, timeout: float = REMOTE_TIMEOUT_S) -> bytes:
    """The bytes at an http(s) URL, at most `limit` of them."""
    import urllib.error
    import urllib.request

    from mmtune import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"mmtune/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only: classify)
            data = response.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"cannot download {_short(url)}: {e}; check the URL, or attach a local file") from None
    if len(data) > limit:
        raise UserError(f"{_short(url)} is larger than {limit // (1024 * 1024)} MiB: attach a smaller file")
    return data


def _loadable(ref: str) -> str:
    """A reference media_io can read: remote URLs are downloaded into a data: URL."""
    if classify(ref) != "remote":
        return ref
    return "data:application/octet-stream;base64," + base64.b64encode(fetch(ref)).decode("ascii")


def load_media(
    sample: Sample,
    policy: MediaPolicy = LOCAL,
    *,
    video_fps: float | None = None,
    video_frames: int | None = None,
) -> tuple[list, list, list[dict]]:
    """(images as RGB PIL images, videos as uint8 frames (T, H, W, 3), each video's metadata), in
    conversation order: the videos decoded and sampled as training decodes them (data/media_io.py)."""
    from mmtune.data.media_io import load_video_with_metadata

    check_refs(sample, policy)
    images = [open_image(_loadable(check_ref(p.ref, "image", policy, sample.media_root)), policy.max_image_pixels)
              for p in sample.images]
    loaded = [
        load_video_with_metadata(_loadable(check_ref(p.ref, "video", policy, sample.media_root)), fps=video_fps,
                                 frames=video_frames)
        for p in sample.videos
    ]
    return images, [v for v, _ in loaded], [m for _, m in loaded]


def check_refs(sample: Sample, policy: MediaPolicy) -> None:
    """Refuse what the policy refuses, before any decoding or downloading."""
    if policy.max_images is not None and len(sample.images) > policy.max_images:
        raise UserError(f"this conversation has {len(sample.images)} images and this server takes at most "
                        f"{policy.max_images} per request ({MAX_IMAGES_FLAG}): send fewer images")
    for p in sample.media():
        check_ref(p.ref, p.type, policy, sample.media_root)


def open_image(ref: str, max_pixels: int | None = None):
    """The image at a checked reference (a data: URL or a local path) as RGB, its size read from the
    header and refused over `max_pixels` before any pixel is decoded."""
    import io

    from PIL import Image

    from mmtune.data.media import decode_data_url

    shown = _short(ref)
    try:
        source = io.BytesIO(decode_data_url(ref)) if classify(ref) == "data" else ref
        with Image.open(source) as im:  # reads the header only
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise UserError(f"image {shown} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over "
                                f"this server's limit of {max_pixels / 1e6:g} megapixels per image "
                                f"({MAX_PIXELS_FLAG}): send a smaller image")
            return im.convert("RGB")
    except Image.DecompressionBombError as e:  # Pillow refuses before we see the size
        over = (f", over this server's limit of {max_pixels / 1e6:g} megapixels per image ({MAX_PIXELS_FLAG})"
                if max_pixels is not None else "")
        raise UserError(f"image {shown} is too large to decode safely{over} ({e}): send a smaller image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {shown}: {e}; send a PNG, JPEG, WebP or GIF image") from None
