"""Processors of vision-language models, with or without torchvision.

Where torchvision is installed, `load_processor` is `AutoProcessor.from_pretrained`: the
official processor, untouched. transformers builds its video processors (and so every
processor that holds one, e.g. Qwen2-VL's) only with torchvision; without it, the
processor is assembled here from its parts: the PIL image processor, the tokenizer, the
saved chat template and processor settings, plus a numpy stand-in for the video processor
that takes frames mmtune decoded with PyAV:
- `FramesVideoProcessor`: the Qwen2-VL / Qwen2.5-VL / Qwen3-VL video processors (resize,
  normalise, cut (t, h, w) patches; Qwen3-VL sizes the whole clip at once);
- `PlainFramesVideoProcessor`: LLaVA-NeXT-Video's and LLaVA-OneVision's, which resize (and
  crop) every frame like a CLIP image and stack them (T, C, H, W) — done here by the PIL CLIP
  image processor with the video processor's settings.
- `SlicedFramesVideoProcessor`: MiniCPM-V 4.6's (4.7 uses the same), which (one frame per visual unit, the
  default `stack_frames=1`) slices and packs every frame exactly as its image processor does
  an image — done here by that PIL image processor with the video settings.
Nothing else differs, so rendering and the model see the same inputs either way (tests
compare the shims' output with the image processor's on a still "video").

torch and transformers are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from mmtune.errors import UserError

VIDEO_CONFIG = "video_preprocessor_config.json"
# processor class -> the official video processor FramesVideoProcessor stands in for
_FRAMES_VIDEO_FAMILIES = {"Qwen2VLProcessor": "Qwen2VLVideoProcessor", "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
                          "Qwen3VLProcessor": "Qwen3VLVideoProcessor"}
# processor class -> (official video processor, its class defaults) for PlainFramesVideoProcessor
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_PLAIN_VIDEO_FAMILIES = {
    "LlavaNextVideoProcessor": ("LlavaNextVideoVideoProcessor", {
        "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
        "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD}),
    "LlavaOnevisionProcessor": ("LlavaOnevisionVideoProcessor", {
        "size": {"height": 384, "width": 384}, "do_center_crop": False, "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD}),
}
# Qwen3-VL's video defaults (Qwen3VLVideoProcessor's class attributes)
_QWEN3_VIDEO = {"size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}, "patch_size": 16,
                "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def load_processor(model: str, *, max_pixels: int | None = None, min_pixels: int | None = None):
    """The processor (tokenizer + image/video processors + chat template) of `model`: a registry
    name, hub id, model folder, or a training run's folder (the processor saved beside an adapter),
    with a pad token on its tokenizer (models/loader.ensure_pad_token).

    max_pixels/min_pixels bound the resized image area on processors that resize by area
    (Qwen2-VL family); elsewhere they are refused with the setting that fits that model.
    """
    from transformers import AutoProcessor

    from mmtune.models.loader import ensure_pad_token

    path = processor_folder(model)
    processor = AutoProcessor.from_pretrained(path) if has_torchvision() else _assemble(Path(path))
    if max_pixels is not None or min_pixels is not None:
        set_pixel_bounds(processor, max_pixels=max_pixels, min_pixels=min_pixels)
    ensure_pad_token(processor.tokenizer, model)
    return processor


def processor_folder(model: str) -> str:
    """A folder holding `model`'s processor files: the folder itself, or for a hub id its processor files
    (configs, tokenizer, chat template; no weights) in the local hub cache: the processor is assembled
    from files where torchvision is missing."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder)
    from mmtune.models.loader import resolve_model_path

    path = resolve_model_path(model)
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"])
    except Exception as e:  # offline, gated, unknown repo: the hub's own reason
        raise UserError(f"cannot fetch the processor of {path} from the Hugging Face hub ({type(e).__name__}: {e}); "
                        "check the name and your access, or download the model folder and pass it as --model") from None


def _media_processors(processor) -> list:
    return [p for p in (processor.image_processor, getattr(processor, "video_processor", None)) if p is not None]


def _by_area(proc) -> bool:
    keys = dict(getattr(proc, "size", None) or {})
    return "longest_edge" in keys and "shortest_edge" in keys and hasattr(proc, "merge_size")


def resizes_by_area(processor) -> bool:
    """Whether --max-pixels/--min-pixels apply: the image (and video) processors bound the area."""
    return all(_by_area(p) for p in _media_processors(processor))


def set_pixel_bounds(processor, *, max_pixels: int | None, min_pixels: int | None) -> None:
    """--max-pixels/--min-pixels onto the image (and video) processor's `size`."""
    if not resizes_by_area(processor):
        raise UserError(
            f"--max-pixels/--min-pixels apply to models that resize images by area (the Qwen2-VL family); "
            f"{type(processor).__name__} resizes to a fixed size: drop these settings"
        )
    for proc in _media_processors(processor):
        size = proc.size
        keys = dict(size)
        if max_pixels is not None:
            keys["longest_edge"] = int(max_pixels)
        if min_pixels is not None:
            keys["shortest_edge"] = int(min_pixels)
        if keys["shortest_edge"] > keys["longest_edge"]:
            raise UserError(f"--min-pixels {keys['shortest_edge']} is larger than --max-pixels {keys['longest_edge']}")
        proc.size = type(size)(**keys) if not isinstance(size, dict) else keys


def _assemble(path: Path):
    """The official processor class built from its parts, without torchvision (see module doc)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    settings = _read_json(path / "processor_config.json")
    name = settings.pop("processor_class", None) or _read_json(path / "tokenizer_config.json").get("processor_class")
    if not name or not hasattr(transformers, name):
        raise UserError(f"{path} names no known processor class (processor_config.json): is it a vision model folder?")
    cls = getattr(transformers, name)
    parts: dict[str, Any] = {
        "image_processor": AutoImageProcessor.from_pretrained(path, backend="pil"),
        "tokenizer": AutoTokenizer.from_pretrained(path),
    }
    template = path / "chat_template.jinja"
    if template.is_file():
        parts["chat_template"] = template.read_text(encoding="utf-8")
    if "video_processor" in cls.get_attributes():
        cls = _without_video_check(cls)
        parts["video_processor"] = _video_shim(name, path, parts["image_processor"], settings.get("video_processor"))
    for key in ("image_processor", "video_processor", "tokenizer", "chat_template", "auto_map"):
        settings.pop(key, None)
    return cls(**parts, **settings)


def _video_shim(name: str, path: Path, image_processor, saved: dict | None):
    config = saved or _read_json(path / VIDEO_CONFIG)
    if name in ("MiniCPMV4_6Processor", "MiniCPMV4_7Processor"):
        return make_sliced_video_processor(config)
    if name in _PLAIN_VIDEO_FAMILIES:
        return make_plain_video_processor(name, config)
    if name not in _FRAMES_VIDEO_FAMILIES:
        return None  # the processor then handles images only; a video row raises a clear error
    if _FRAMES_VIDEO_FAMILIES[name] == "Qwen3VLVideoProcessor":
        return make_frames_video_processor(image_processor, {**_QWEN3_VIDEO, **config}, official=_FRAMES_VIDEO_FAMILIES[name])
    return make_frames_video_processor(image_processor, config)


@cache
def _without_video_check(cls):
    """`cls` accepting a video processor that is not one of transformers' torchvision classes."""
    from transformers.video_processing_utils import VideoProcessorMixin

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and (argument is None or isinstance(argument, VideoProcessorMixin)):
            return VideoProcessorMixin
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    # same name: save_pretrained records the official class, so the folder loads anywhere
    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "__module__": cls.__module__})


def frames_metadata(videos, given=None) -> list:
    """transformers VideoMetadata per video: what the caller passed (mmtune passes the decoder's
    fps and sampled indices), else the frames taken as 24 fps (transformers' own default)."""
    from transformers.video_utils import VideoMetadata

    out = []
    for i, frames in enumerate(videos):
        meta = given[i] if given is not None and i < len(given) else None
        if meta is None:
            meta = {"total_num_frames": len(frames), "fps": 24.0, "frames_indices": list(range(len(frames)))}
        out.append(meta if isinstance(meta, VideoMetadata) else VideoMetadata(**dict(meta)))
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# MiniCPMV4_6VideoProcessor's class defaults
_MINICPM_VIDEO = {"max_slice_nums": 9, "scale_resolution": 448, "patch_size": 14, "slice_mode": True,
                  "downsample_mode": "16x", "use_image_id": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def make_sliced_video_processor(config: dict | None = None):
    """A SlicedFramesVideoProcessor (MiniCPM-V 4.6): MiniCPMV4_6VideoProcessor's defaults, overridden by
    a saved video_preprocessor_config.json."""
    keys = (*_MINICPM_VIDEO, "do_rescale", "rescale_factor", "do_normalize", "resample", "do_convert_rgb",
            "stack_frames")
    settings = {**_MINICPM_VIDEO, **{k: v for k, v in (config or {}).items() if k in keys and v is not None}}
    return _sliced_cls()(**settings)


def make_plain_video_processor(processor_name: str, config: dict | None = None):
    """A PlainFramesVideoProcessor for `processor_name` (LLaVA-NeXT-Video, LLaVA-OneVision): the official
    video processor's defaults, overridden by a saved video_preprocessor_config.json."""
    official, defaults = _PLAIN_VIDEO_FAMILIES[processor_name]
    keys = ("size", "crop_size", "do_center_crop", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "resample", "do_convert_rgb")
    settings = {**defaults, **{k: v for k, v in (config or {}).items() if k in keys and v is not None}}
    return _plain_cls()(official=official, **settings)


def make_frames_video_processor(image_processor, config: dict | None = None, *,
                                official: str = "Qwen2VLVideoProcessor"):
    """A FramesVideoProcessor with the image processor's normalisation and patching settings,
    overridden by a saved video_preprocessor_config.json where there is one. `official` names the
    video processor it stands in for (Qwen3VLVideoProcessor sizes whole clips)."""
    cfg = dict(config or {})
    size = cfg.get("size") or dict(image_processor.size)
    return _frames_cls()(
        official=official,
        size={"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"]},
        patch_size=cfg.get("patch_size", image_processor.patch_size),
        temporal_patch_size=cfg.get("temporal_patch_size", image_processor.temporal_patch_size),
        merge_size=cfg.get("merge_size", image_processor.merge_size),
        image_mean=list(cfg.get("image_mean", image_processor.image_mean)),
        image_std=list(cfg.get("image_std", image_processor.image_std)),
    )


@lru_cache(maxsize=1)
def _frames_cls():
    """Defined lazily: the base class lives in transformers."""
    import numpy as np
    from PIL import Image
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.video_processing_utils import VideoProcessorMixin

    class FramesVideoProcessor(VideoProcessorMixin):
        """Qwen2-VL's video processing on uint8 frames (T, H, W, 3), in numpy: resize every frame to
        one smart_resize'd size, rescale, normalise, repeat the last frame up to a multiple of
        temporal_patch_size, and cut (t, h, w) patches in the order the vision tower expects.
        As Qwen3VLVideoProcessor, the size bounds apply to the whole clip (frames x height x width)."""

        model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __init__(self, *, official, size, patch_size, temporal_patch_size, merge_size, image_mean, image_std,
                     **kw):
            super().__init__(**kw)
            self.official = official
            self.size, self.patch_size, self.merge_size = dict(size), patch_size, merge_size
            self.temporal_patch_size = temporal_patch_size
            self.image_mean, self.image_std = image_mean, image_std

        def __call__(self, videos, video_metadata=None, **kwargs) -> BatchFeature:
            patches, grids = zip(*(self._one(np.asarray(v)) for v in videos), strict=True)
            return BatchFeature({"pixel_values_videos": np.concatenate(patches),
                                 "video_grid_thw": np.asarray(grids, dtype=np.int64),
                                 "video_metadata": frames_metadata(videos, video_metadata)},
                                tensor_type=kwargs.get("return_tensors"), skip_tensor_conversion=["video_metadata"])

        def _one(self, frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"expected frames shaped (T, H, W, 3), got {frames.shape}")
            t, h, w, _ = frames.shape
            factor = self.patch_size * self.merge_size
            if self.official == "Qwen3VLVideoProcessor":
                from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as clip_resize

                rh, rw = clip_resize(max(t, self.temporal_patch_size), h, w,
                                     temporal_factor=self.temporal_patch_size, factor=factor,
                                     min_pixels=self.size["shortest_edge"], max_pixels=self.size["longest_edge"])
            else:
                rh, rw = smart_resize(h, w, factor=factor, min_pixels=self.size["shortest_edge"],
                                      max_pixels=self.size["longest_edge"])
            resized = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.BICUBIC)) for f in frames])
            x = resized.astype(np.float32) / 255.0
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
            x = x.transpose(0, 3, 1, 2)  # T, C, H, W
            tps = self.temporal_patch_size
            if t % tps:
                x = np.concatenate([x, np.repeat(x[-1:], tps - t % tps, axis=0)])
            gt, gh, gw = x.shape[0] // tps, rh // self.patch_size, rw // self.patch_size
            m, p, c = self.merge_size, self.patch_size, x.shape[1]
            x = x.reshape(gt, tps, c, gh // m, m, p, gw // m, m, p)
            x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            return x.reshape(gt * gh * gw, c * tps * p * p), [gt, gh, gw]

        def to_dict(self) -> dict:
            # saved under the official class name, so a torchvision install loads the real one
            return {"video_processor_type": self.official, "size": self.size,
                    "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                    "merge_size": self.merge_size, "image_mean": self.image_mean, "image_std": self.image_std,
                    "do_sample_frames": False}

    return FramesVideoProcessor


@lru_cache(maxsize=1)
def _plain_cls():
    """Defined lazily: the base class lives in transformers."""
    import numpy as np
    from PIL import Image
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.video_processing_utils import VideoProcessorMixin

    class PlainFramesVideoProcessor(VideoProcessorMixin):
        """LLaVA-NeXT-Video's / LLaVA-OneVision's video processing on uint8 frames (T, H, W, 3): each
        frame resized (shortest edge, or to height x width), optionally centre-cropped, rescaled and
        normalised like a CLIP image; a video is (T, C, H, W), videos are stacked."""

        model_input_names = ["pixel_values_videos"]

        def __init__(self, *, official: str, **settings):
            super().__init__()
            self.official, self.settings = official, settings
            self.frames = CLIPImageProcessorPil(**settings)

        def __call__(self, videos, video_metadata=None, **kwargs) -> BatchFeature:
            stacked = [self.frames([Image.fromarray(f) for f in np.asarray(v)], return_tensors="np")["pixel_values"]
                       for v in videos]
            return BatchFeature({"pixel_values_videos": np.stack(stacked),
                                 "video_metadata": frames_metadata(videos, video_metadata)},
                                tensor_type=kwargs.get("return_tensors"), skip_tensor_conversion=["video_metadata"])

        def to_dict(self) -> dict:
            # saved under the official class name, so a torchvision install loads the real one
            return {"video_processor_type": self.official, **self.settings, "do_sample_frames": False}

    return PlainFramesVideoProcessor


@lru_cache(maxsize=1)
def _sliced_cls():
    """Defined lazily: the base class lives in transformers."""
    import numpy as np
    from PIL import Image
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.video_processing_utils import VideoProcessorMixin

    class SlicedFramesVideoProcessor(VideoProcessorMixin):
        """MiniCPM-V 4.6's video processing on uint8 frames (T, H, W, 3): every frame resized, sliced
        and packed (NaViT) by the PIL image processor with the video settings; outputs under the
        video processor's names (pixel_values_videos, target_sizes_videos, grids_videos,
        num_patches_per_frame, num_frames_per_video)."""

        model_input_names = ["pixel_values_videos", "target_sizes_videos"]

        def __init__(self, **settings):
            super().__init__()
            self.stack_frames = settings.pop("stack_frames", 1)
            self.settings = settings
            self.slice_mode, self.downsample_mode = settings["slice_mode"], settings["downsample_mode"]
            self.use_image_id = settings["use_image_id"]
            self.frames = MiniCPMV4_6ImageProcessorPil(**settings)

        def __call__(self, videos, video_metadata=None, **kwargs) -> BatchFeature:
            if self.stack_frames and self.stack_frames > 1:
                raise UserError(f"this model's video settings stack {self.stack_frames} sub-frames per second "
                                "(stack_frames), which mmtune can only reproduce with torchvision installed: "
                                "install torchvision, or set stack_frames to 1 in video_preprocessor_config.json")
            frames = [Image.fromarray(f) for v in videos for f in np.asarray(v)]
            out = self.frames(frames, return_tensors=None)
            data = {"pixel_values_videos": out["pixel_values"], "target_sizes_videos": out["target_sizes"],
                    "grids_videos": np.asarray(out["grids"], dtype=np.int32).reshape(-1, 2),
                    "num_patches_per_frame": np.asarray(out["num_patches_per_image"], dtype=np.int32),
                    "num_frames_per_video": [len(v) for v in videos],
                    "video_metadata": frames_metadata(videos, video_metadata)}
            return BatchFeature(data, tensor_type=kwargs.get("return_tensors"),
                                skip_tensor_conversion=["grids_videos", "num_patches_per_frame",
                                                        "num_frames_per_video", "video_metadata"])

        def to_dict(self) -> dict:
            # saved under the official class name, so a torchvision install loads the real one
            return {"video_processor_type": "MiniCPMV4_6VideoProcessor", **self.settings,
                    "stack_frames": self.stack_frames, "do_sample_frames": False}

    return SlicedFramesVideoProcessor
