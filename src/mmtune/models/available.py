"""Can this model be had, here and now? Answered in well under a second, before anything loads.

`check_model(model)` accepts what `resolve_model_path` accepts (a registry name, a local model
folder, a .gguf file, a hub id) and raises a UserError naming the fix when the model cannot be
loaded: a path that does not exist, a folder that is not a model, an embedded model whose package
is missing, a hub model that is not in the local cache while offline (HF_HUB_OFFLINE), or that the
hub, asked once with a short timeout and no retries, does not have or cannot be reached for.

Nothing is converted, downloaded or imported beyond huggingface_hub (no torch, no transformers).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from mmtune.errors import UserError
from mmtune.files import check_input_file
from mmtune.models.loader import embedded_file, looks_like_path
from mmtune.models.registry import DEFAULT_MODEL, REGISTRY, named

HUB_TIMEOUT_S = 3.0  # one request to the hub; transformers' own retries would take over a minute
PROBE_FILE = "config.json"  # every transformers model repo has it
OTHER_WAYS = (f"give a local model folder or .gguf file, or use the embedded default ({DEFAULT_MODEL}, "
              "no download)")


def check_model(model: str | None, *, timeout: float = HUB_TIMEOUT_S) -> None:
    """UserError (one line, with the fix) unless `model` can be loaded here; None is the default model."""
    model = model or DEFAULT_MODEL
    spec = named(model)
    if spec is not None:
        if spec.embedded:
            embedded_file(spec)  # the package and its file are there
        else:
            check_hub_model(spec.hf_path, timeout=timeout, name=spec.name)
        return
    path = Path(model).expanduser()
    if path.exists():
        check_local_model(path)
        return
    if looks_like_path(model):
        raise UserError(f"model path {model!r} does not exist: check the path, or give a registry name "
                        "(`mmtune models` lists them) or a Hugging Face hub id like "
                        "Qwen/Qwen2.5-0.5B-Instruct")
    check_hub_model(model, timeout=timeout)


def check_local_model(path: Path) -> None:
    """A folder with config.json, a folder holding one .gguf, or a .gguf file."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{path} is a file but not a .gguf model: give the model's folder (with "
                            "config.json) or a .gguf file")
        _readable(path)
        return
    if (path / "config.json").is_file():
        _readable(path / "config.json")
        return
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        _readable(ggufs[0])
        return
    hint = f"it holds {len(ggufs)} .gguf files: name one of them" if ggufs else "is this the right folder?"
    raise UserError(f"{path} has no config.json, so it is not a Hugging Face model folder ({hint})")


def _readable(path: Path) -> None:
    check_input_file(path, "model")


def check_hub_model(repo_id: str, *, timeout: float = HUB_TIMEOUT_S, name: str | None = None) -> None:
    """The hub model is in the local cache, or (online) the hub answers once that it has it."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    what = f"model {name!r} (hub id {repo_id})" if name else f"model {repo_id!r}"
    try:
        cached = try_to_load_from_cache(repo_id, PROBE_FILE)
    except HFValidationError:
        raise UserError(f"unknown model {repo_id!r}: it is not a registry name{_close(repo_id)}, a local "
                        "folder or a Hugging Face hub id (`mmtune models` lists the registry)") from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE and "/" not in repo_id and name is None:
        raise UserError(f"unknown model {repo_id!r}: it is not a registry name{_close(repo_id)} "
                        "(`mmtune models` lists them), a local folder, nor a hub model in the local Hugging Face "
                        f"cache (HF_HUB_OFFLINE is set, so the hub is not asked); {OTHER_WAYS}")
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                        f"download it once online (`hf download {repo_id}`), or {OTHER_WAYS}")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, PROBE_FILE), timeout=timeout)
    except GatedRepoError:
        raise UserError(f"{what} is gated on the Hugging Face hub: accept its terms on "
                        f"https://huggingface.co/{repo_id} and log in (`hf auth login`), "
                        f"or {OTHER_WAYS}") from None
    except RepositoryNotFoundError:
        raise UserError(f"unknown model {repo_id!r}: it is not a registry name{_close(repo_id)}, a local "
                        "folder, nor a model on the Hugging Face hub (a private one needs `hf auth login`); "
                        "`mmtune models` lists the registry") from None
    except EntryNotFoundError:
        raise UserError(f"{what} on the Hugging Face hub has no {PROBE_FILE}, so it is not a transformers "
                        f"model: {OTHER_WAYS}") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise UserError(f"the Hugging Face hub answered {status or 'an error'} for {what}: try again later, "
                        f"or {OTHER_WAYS}") from None
    except Exception as e:  # no network, DNS, timeout, proxy: whatever the HTTP client raises
        raise UserError(f"{what} is not in the local Hugging Face cache and the hub cannot be reached "
                        f"({type(e).__name__}: {_short(e)}): connect and try again, "
                        f"or {OTHER_WAYS}") from None


def _close(model: str) -> str:
    close = difflib.get_close_matches(model.lower(), list(REGISTRY), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no details"
    return text if len(text) <= 120 else text[:117] + "..."
