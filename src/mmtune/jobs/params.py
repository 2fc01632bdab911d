"""A fine-tuning job request, checked: OpenAI's fields plus mmtune's own, each range-checked.

OpenAI clients send hyper-parameters either the legacy way (top-level `hyperparameters`)
or the current way (`method={"type": "supervised", "supervised": {"hyperparameters": ...}}`);
both are read. `method={"type": "dpo", "dpo": {"hyperparameters": {"beta", ...}}}` trains on
preference pairs (`mmtune train --stage dpo`); mmtune's other stages (simpo, orpo, kto, and pt
beside supervised) are the extra field `stage`, with their own settings (dpo_loss, simpo_gamma,
...). mmtune's own settings (preset, LoRA shape, max_length, a training `method` name such as
"lora", max_steps, ...) arrive as extra top-level fields (the openai client's
`extra_body`) or inside either hyper-parameter object. An unknown field is an error naming
the closest known one, so a typo never trains with a default.

The result is plain data: the job row's `params` and the `TrainConfig` values of its run.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.config import DEFAULT_BETA, DEFAULT_PRESET, DPO_LOSSES, METHODS, PRESETS, STAGE_FLAGS
from mmtune.jobs.errors import APIError, bad_request
from mmtune.jobs.store import new_id, valid_id
from mmtune.models.registry import DEFAULT_MODEL, REGISTRY

OPENAI_HYPER = ("n_epochs", "batch_size", "learning_rate_multiplier")
DPO_HYPER = (*OPENAI_HYPER, "beta")  # OpenAI's DpoHyperparameters
# OpenAI's method.type -> the `mmtune train --stage`s it covers (the first is its own); `stage` picks another
METHOD_STAGES = {"supervised": ("sft", "pt"), "dpo": ("dpo", "simpo", "orpo", "kto")}
MAX_BETA = 100.0
SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOP_LEVEL = ("model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
             "metadata", "integrations")


@dataclass(frozen=True)
class Limits:
    """What a job may ask for (the service's settings; create-time range checks use them)."""

    max_epochs: int = 10
    max_batch_size: int = 32
    max_length: int = 4096
    max_learning_rate: float = 0.1


@dataclass(frozen=True)
class ModelRules:
    """Which base models a job may name, besides the registry's: local model folders or .gguf files
    inside `roots` (the operator's --model-root folders; realpaths, so no symlink leads out), hub ids
    with `allow_hub` (--allow-hub-models: the server may download them), and the full fine-tunes of
    this service's own succeeded jobs by their fine-tuned model name (`fine_tuned(name)` -> folder)."""

    roots: tuple[str, ...] = ()
    allow_hub: bool = False
    fine_tuned: Callable[[str], Path | None] = lambda name: None


def _int(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer from {lo} to {hi}"
        return None if lo <= v <= hi else f"must be from {lo} to {hi}"
    return check


def _num(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"must be a number in {span}"
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {span}"
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def mmtune_fields(limits: Limits) -> dict[str, Callable[[Any], str | None]]:
    """mmtune's own job settings and their checks (name -> check returning a problem or None)."""
    return {
        "preset": _choice(tuple(PRESETS)),
        "method": _choice(METHODS),
        "lora_rank": _int(1, 256),
        "lora_alpha": _num(0, 4096, lo_open=True),
        "lora_dropout": _num(0, 1, hi_open=True),
        "max_length": _int(8, limits.max_length),
        "max_steps": _int(1, 1_000_000),
        "save_steps": _int(1, 1_000_000),
        "logging_steps": _int(1, 100_000),
        "gpus": _int(0, 1024),  # GPUs the job's run takes (more than 1: one process each, on one machine)
        "nodes": _one_node,
        "stage": _choice(tuple(s for stages in METHOD_STAGES.values() for s in stages)),
        "beta": _num(0, MAX_BETA, lo_open=True),
        "dpo_loss": _choice(DPO_LOSSES),
        "label_smoothing": _num(0, 0.5, hi_open=True),
        "simpo_gamma": _num(0, 100),
        "orpo_lambda": _num(0, 100, lo_open=True),
        "sft_weight": _num(0, 100),
        "desirable_weight": _num(0, 100, lo_open=True),
        "undesirable_weight": _num(0, 100, lo_open=True),
    }


def _one_node(v: Any) -> str | None:
    if v != 1 or isinstance(v, bool):
        return ("must be 1: a job trains on one machine (its gpus there); for several machines run `mmtune train "
                "--nnodes` yourself (README \"Scale out\")")
    return None


def parse_create(body: Any, limits: Limits, file_exists: Callable[[str], dict | None],
                 models: ModelRules | None = None) -> dict[str, Any]:
    """The job row for a create request, or APIError(400/404) naming the field at fault."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_request")
    picture = picture_model(body.get("model"), models or ModelRules())
    if picture is not None:
        return parse_picture_create(body, picture, limits, file_exists)
    _refuse_other_kind(body, picture_fields(limits), "image-generation (FLUX) models", mmtune_fields(limits))
    integrations = check_integrations(body)
    extras = {k: v for k, v in body.items() if k not in TOP_LEVEL}
    method = body.get("method")
    if method is not None and not isinstance(method, dict):
        extras["method"] = method  # mmtune's training method ("lora"), not OpenAI's method object
    own = mmtune_fields(limits)
    _refuse_unknown(extras, own, "")
    openai_hyper, nested_own = _hyperparameters(body, own)
    settings = _merge(extras, nested_own)
    if openai_hyper.get("beta", "auto") != "auto":
        settings = _merge(settings, {"beta": openai_hyper["beta"]})
    for name, value in settings.items():
        _check(name, value, own[name])
    settings["stage"] = _stage(body.get("method"), settings)
    model = check_model(body.get("model"), models or ModelRules())
    training = _file_param(body, "training_file", file_exists, required=True)
    validation = _file_param(body, "validation_file", file_exists, required=False)
    if validation is not None and validation == training:
        raise bad_request("validation_file must differ from training_file: the validation loss of rows the model "
                          "trains on says nothing", "validation_file")
    params = resolve(openai_hyper, settings, limits)
    if isinstance(body.get("model"), str) and body["model"].strip().startswith("ft:"):
        params["mmtune"]["parent_model"] = body["model"].strip()  # what the job object echoes as its model
    return {
        "id": new_id("job"),
        "model": model,
        "training_file": training,
        "validation_file": validation,
        "suffix": _suffix(body.get("suffix")),
        "seed": _seed(body.get("seed")),
        "metadata": _metadata(body.get("metadata")),
        "params": {**params, **({"integrations": integrations} if integrations else {})},
    }


def _stage(method: Any, settings: dict[str, Any]) -> str:
    """The `mmtune train --stage` of the job: method.type's own stage, or the extra `stage` within it; the
    preference settings (beta, dpo_loss, ...) must apply to it."""
    stage = settings.get("stage")
    kind = method.get("type", "supervised") if isinstance(method, dict) else None
    if kind is None:
        stage = stage or "sft"
    elif stage is None:
        stage = METHOD_STAGES[kind][0]
    elif stage not in METHOD_STAGES[kind]:
        other = next(t for t, stages in METHOD_STAGES.items() if stage in stages)
        raise bad_request(f"stage {stage!r} is not a {kind} stage (a {kind} job trains "
                          f"{' or '.join(METHOD_STAGES[kind])}): set method.type to {other!r}, or drop stage",
                          "stage")
    for name, stages in STAGE_FLAGS.items():
        if settings.get(name) is not None and stage not in stages:
            raise bad_request(f"{name} applies to stage {' / '.join(stages)}, not {stage}: drop it, or choose "
                              "another stage", name)
    if settings.get("label_smoothing") and stage == "dpo" and settings.get("dpo_loss") != "robust":
        raise bad_request("label_smoothing applies to dpo_loss 'robust': add dpo_loss robust, or drop it",
                          "label_smoothing")
    return stage


def picker(hyper: dict[str, Any]) -> Callable[[str, Any], Any]:
    """`pick(name, default)`: the hyperparameter's value, or `default` where it is absent or "auto"."""

    def pick(name: str, default: Any) -> Any:
        value = hyper.get(name, "auto")
        return default if value == "auto" else value

    return pick


def preset_learning_rate(pick: Callable[[str, Any], Any], base: dict[str, Any], what: str, limits: Limits) -> float:
    """The preset's learning rate x the job's learning_rate_multiplier, or a 400 when out of range."""
    multiplier = float(pick("learning_rate_multiplier", 1.0))
    lr = base["learning_rate"] * multiplier
    if not 0 < lr <= limits.max_learning_rate:
        raise bad_request(f"learning_rate_multiplier {multiplier} gives a learning rate of {lr:g} ({what}: "
                          f"{base['learning_rate']:g} x multiplier); it must be in (0, {limits.max_learning_rate:g}]",
                          "hyperparameters.learning_rate_multiplier")
    return lr


def resolve(hyper: dict[str, Any], settings: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Concrete values: "auto" and absent ones come from the preset; lr = preset lr x multiplier."""
    preset = settings.get("preset", DEFAULT_PRESET)
    base = PRESETS[preset]
    pick = picker(hyper)
    lr = preset_learning_rate(pick, base, f"preset {preset}", limits)
    own = {
        "preset": preset,
        "method": settings.get("method", "lora"),
        "learning_rate": lr,
        "lora_rank": settings.get("lora_rank", base["lora_rank"]),
        "lora_alpha": settings.get("lora_alpha", base["lora_alpha"]),
        "lora_dropout": settings.get("lora_dropout", base["lora_dropout"]),
        "max_length": settings.get("max_length", min(2048, limits.max_length)),
        "max_steps": settings.get("max_steps"),
        "save_steps": settings.get("save_steps", 50),
        "logging_steps": settings.get("logging_steps", 1),
        **({"gpus": settings["gpus"]} if settings.get("gpus") else {}),
        "stage": settings.get("stage", "sft"),
    }
    stage = own["stage"]
    if stage in STAGE_FLAGS["beta"]:
        own["beta"] = settings.get("beta", DEFAULT_BETA[stage])
    for name in ("dpo_loss", "label_smoothing", "sft_weight", "simpo_gamma", "orpo_lambda", "desirable_weight",
                 "undesirable_weight"):
        if settings.get(name) is not None:
            own[name] = settings[name]
    batch_size = pick("batch_size", base["batch_size"])
    if stage == "kto" and batch_size < 2:
        raise bad_request("stage kto needs batch_size >= 2: its reference point comes from mismatched pairs within "
                          "a batch", "hyperparameters.batch_size")
    return {
        "hyperparameters": {"n_epochs": pick("n_epochs", base["epochs"]),
                            "batch_size": batch_size,
                            "learning_rate_multiplier": float(pick("learning_rate_multiplier", 1.0))},
        "mmtune": own,
    }


# ------------------------------------------------------------------ pieces


def _refuse_unknown(values: Mapping[str, Any], own: Mapping[str, Any], where: str) -> None:
    openai = DPO_HYPER if where.startswith("method.dpo.") else OPENAI_HYPER
    allowed = [*openai, *(k for k in own if k not in openai)] if where else list(own)
    known = allowed if where else [*TOP_LEVEL, *own]
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
            raise bad_request(f"unknown parameter {where}{key!r}{hint}", f"{where}{key}", "unknown_parameter")


def _hyperparameters(body: dict[str, Any], own: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAI hyper-parameters (from `hyperparameters` and/or `method`) and any mmtune fields inside them."""
    sources: list[tuple[str, Any]] = []
    if body.get("hyperparameters") is not None:
        sources.append(("hyperparameters", body["hyperparameters"]))
    method = body.get("method")
    if isinstance(method, dict):
        kind = method.get("type", "supervised")
        if kind not in METHOD_STAGES:
            raise bad_request(f"method type {str(kind)[:40]!r} is not supported: mmtune fine-tunes with "
                              "'supervised' or 'dpo' (set method.type to one of them)", "method.type", "unsupported")
        for key in method:
            if key != "type" and key != kind:
                raise bad_request(f"method.{key} does not go with method.type {kind!r}: put the hyperparameters in "
                                  f"method.{kind}", f"method.{key}")
        sub = method.get(kind) or {}
        if not isinstance(sub, dict):
            raise bad_request(f"method.{kind} must be an object", f"method.{kind}")
        for key in sub:
            if key != "hyperparameters":
                raise bad_request(f"unknown parameter method.{kind}.{key!r}: method.{kind} holds 'hyperparameters'",
                                  f"method.{kind}.{key}", "unknown_parameter")
        if sub.get("hyperparameters") is not None:
            sources.append((f"method.{kind}.hyperparameters", sub["hyperparameters"]))
    hyper: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, values in sources:
        if not isinstance(values, dict):
            raise bad_request(f"{where} must be an object", where)
        _refuse_unknown(values, own, where + ".")
        for key, value in values.items():
            target = hyper if key in DPO_HYPER and (key != "beta" or where.startswith("method.dpo.")) else nested
            if key in target and target[key] != value:
                raise bad_request(f"{key} is given twice with different values ({target[key]!r} and {value!r}): "
                                  "give it once", f"{where}.{key}")
            target[key] = value
            origin.setdefault(key, where)
    _check_openai(hyper, origin)
    return hyper, nested


def _check_openai(hyper: dict[str, Any], origin: dict[str, str]) -> None:
    checks = {"n_epochs": _int(1, 10), "batch_size": _int(1, 32),
              "learning_rate_multiplier": _num(0, 1e6, lo_open=True), "beta": _num(0, MAX_BETA, lo_open=True)}
    for key, value in hyper.items():
        if value != "auto" and (problem := checks[key](value)):
            raise bad_request(f"{origin[key]}.{key} {problem} or 'auto' (got {value!r})",
                              f"{origin[key]}.{key}")


def _merge(top: dict[str, Any], nested: dict[str, Any]) -> dict[str, Any]:
    out = dict(nested)
    for key, value in top.items():
        if key == "method" and isinstance(value, dict):
            continue
        if key in out and out[key] != value:
            raise bad_request(f"{key} is given twice with different values ({out[key]!r} and {value!r})", key)
        out[key] = value
    return out


def _check(name: str, value: Any, check: Callable[[Any], str | None]) -> None:
    if value is None:
        return
    problem = check(value)
    if problem:
        raise bad_request(f"{name} {problem} (got {value!r})", name)


def check_model(model: Any, rules: ModelRules) -> str:
    """A registry name or alias; a fine-tuned model of this service; a model folder or .gguf file inside
    an operator-allowed root; or a hub id when hub models are allowed. A path outside the roots gets
    the same answer whether it exists or not, so the API is no file-existence oracle."""
    if model is None:
        return DEFAULT_MODEL
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model must be a model name: a registry name (`mmtune models`), a fine-tuned model "
                          "of this server, or a local folder or hub id the server allows", "model")
    model = model.strip()
    if model in REGISTRY or any(model in s.aliases for s in REGISTRY.values()):
        return model
    if model.startswith("ft:"):
        return _fine_tuned_base(model, rules)
    if model.startswith(("/", "~", ".")) or "\\" in model or model.count("/") > 1:
        return _local_model(model, rules)
    if HUB_ID_RE.fullmatch(model):
        if not rules.allow_hub:
            raise bad_request(f"model {model[:100]!r} looks like a hub id, and this server does not download hub "
                              "models: use a registry name (`mmtune models` lists them), or start the server with "
                              "--allow-hub-models", "model", "model_not_allowed")
        return model
    close = difflib.get_close_matches(model.lower(), list(REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise APIError(404, f"model {model[:100]!r} was not found: {hint}give a registry name (`mmtune models` lists "
                   "them), a fine-tuned model of this server (ft:...), a model folder under the server's "
                   "--model-root, or a hub id (with --allow-hub-models)", param="model", code="model_not_found")


def _local_model(model: str, rules: ModelRules) -> str:
    import os

    refused = APIError(400, f"model {model[:200]!r} is not a model folder or .gguf file inside a folder this "
                       "server allows: give a path inside one of the server's --model-root folders"
                       + ("" if rules.roots else " (it has none: start it with --model-root DIR)"),
                       param="model", code="model_not_allowed")
    path = os.path.realpath(os.path.expanduser(model))
    roots = [os.path.realpath(r) for r in rules.roots]
    if not any(os.path.commonpath([path, r]) == r for r in roots):
        raise refused  # the same answer for what exists and what does not
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))
            or os.path.isfile(path) and path.lower().endswith(".gguf")):
        raise APIError(404, f"model {model[:200]!r} is not a model folder (with config.json) or a .gguf file: "
                       "check the path", param="model", code="model_not_found")
    return path


def _fine_tuned_base(model: str, rules: ModelRules) -> str:
    folder = rules.fine_tuned(model)
    if folder is None:
        raise APIError(404, f"model {model[:200]!r} is not a fine-tuned model of this server: GET "
                       "/v1/fine_tuning/jobs lists them (fine_tuned_model of a succeeded job)", param="model",
                       code="model_not_found")
    if not ((Path(folder) / "config.json").is_file() or is_adapter_folder(folder)):
        raise APIError(404, f"model {model[:200]!r} has no model files any more (its job folder was emptied)",
                       param="model", code="model_not_found")
    return str(Path(folder).resolve())


def is_adapter_folder(folder: str | Path) -> bool:
    """A LoRA run's output (adapter_config.json, no config.json): a job on it trains on the merged model
    (the worker merges it first), so that DPO's reference is the fine-tuned model, not the base under it."""
    folder = Path(folder)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def model_base_name(model: str) -> str:
    """The <base> of `ft:<base>:<suffix>:<job>`: registry name, folder or file name, or hub id."""
    spec = REGISTRY.get(model) or next((s for s in REGISTRY.values() if model in s.aliases), None)
    if spec is not None:
        name = spec.name
    elif model.startswith("/"):
        path = Path(model)
        name = (path.stem if path.suffix.lower() == ".gguf" else path.name) or "model"
    else:
        name = model
    return name.replace(":", "-")


def _file_param(body: dict[str, Any], name: str, exists: Callable[[str], dict | None], required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name} is required: upload a file with purpose fine-tune (POST /v1/files) and "
                              "pass its id", name, "missing_required_parameter")
        return None
    if not valid_id("file", value):
        raise bad_request(f"{name} must be a file id like file-abc123 (got {str(value)[:80]!r})", name,
                          "invalid_file_id")
    row = exists(value)
    if row is None:
        raise APIError(404, f"{name} {value!r} was not found: upload it first (POST /v1/files)", param=name,
                       code="file_not_found")
    if row["purpose"] != "fine-tune":
        raise bad_request(f"{name} {value} has purpose {row['purpose']!r}; upload it with purpose 'fine-tune'",
                          name, "invalid_file_purpose")
    return value


def _suffix(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not SUFFIX_RE.fullmatch(value):
        raise bad_request("suffix must be 1 to 64 characters of letters, digits, '.', '_' or '-' "
                          f"(got {str(value)[:80]!r})", "suffix")
    return value


def _seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(2**31)
    problem = _int(0, 2**31 - 1)(value)
    if problem:
        raise bad_request(f"seed {problem} (got {value!r})", "seed")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    ok = (isinstance(value, dict) and len(value) <= 16
          and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                  for k, v in value.items()))
    if not ok:
        raise bad_request("metadata must be an object of at most 16 string keys (up to 64 characters) with string "
                          "values (up to 512 characters)", "metadata")
    return value


def check_integrations(body: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI's `integrations`: a list of `{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}`
    (the only type OpenAI defines). The run then logs to W&B through the Trainer's integration."""
    value = body.get("integrations")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 1:
        raise bad_request("integrations must be a list of at most one integration object, like "
                          '[{"type": "wandb", "wandb": {"project": "my-project"}}]', "integrations")
    out = []
    for i, item in enumerate(value):
        where = f"integrations[{i}]"
        if not isinstance(item, dict) or item.get("type") != "wandb":
            raise bad_request(f'{where}.type must be "wandb" (the only integration type)', f"{where}.type")
        unknown = sorted(set(item) - {"type", "wandb"})
        if unknown:
            raise bad_request(f"{where}: unknown field(s) {', '.join(unknown)}: only type and wandb", where)
        w = item.get("wandb")
        if not isinstance(w, dict):
            raise bad_request(f"{where}.wandb must be an object with at least a project", f"{where}.wandb")
        unknown = sorted(set(w) - {"project", "name", "entity", "tags"})
        if unknown:
            raise bad_request(f"{where}.wandb: unknown field(s) {', '.join(unknown)}: project, name, entity, tags",
                              f"{where}.wandb")
        if not isinstance(w.get("project"), str) or not 0 < len(w["project"]) <= 128:
            raise bad_request(f"{where}.wandb.project is required: the W&B project name (1 to 128 characters)",
                              f"{where}.wandb.project")
        for key in ("name", "entity"):
            if w.get(key) is not None and (not isinstance(w[key], str) or not 0 < len(w[key]) <= 128):
                raise bad_request(f"{where}.wandb.{key} must be a string of 1 to 128 characters",
                                  f"{where}.wandb.{key}")
        tags = w.get("tags") or []
        if not isinstance(tags, list) or len(tags) > 50 or not all(
                isinstance(t, str) and 0 < len(t) <= 64 and "," not in t for t in tags):
            raise bad_request(f"{where}.wandb.tags must be a list of at most 50 strings of 1 to 64 characters "
                              "(no commas)", f"{where}.wandb.tags")
        if importlib.util.find_spec("wandb") is None:
            raise bad_request("this server cannot log to W&B: the wandb package is not installed where it runs "
                              "(`pip install wandb`); or leave integrations out", f"{where}.type",
                              "integration_unavailable")
        out.append({"type": "wandb", "wandb": {"project": w["project"], "name": w.get("name"),
                                               "entity": w.get("entity"), "tags": list(tags)}})
    return out


# ------------------------------------------------------------------ picture (image-generation) jobs


def picture_fields(limits: Limits) -> dict[str, Callable[[Any], str | None]]:
    """The `mmtune train` picture settings a picture job takes (by their config names) and their checks."""
    from mmtune.imagegen.config import OPTIMIZERS, PICTURE_PRESETS, SCHEDULES, TIMESTEP_SAMPLING

    return {
        "preset": _choice(tuple(PICTURE_PRESETS)),
        "trigger_word": _trigger_word,
        "repeats": _int(1, 1000),
        "resolution": _int(16, 2048),
        "buckets": _bool,
        "lora_rank": _int(1, 256),
        "lora_alpha": _num(0, 4096, lo_open=True),
        "lora_dropout": _num(0, 1, hi_open=True),
        "max_steps": _int(1, 1_000_000),
        "save_steps": _int(1, 1_000_000),
        "logging_steps": _int(1, 100_000),
        "warmup_steps": _int(0, 1_000_000),
        "scheduler": _choice(SCHEDULES),
        "optimizer": _choice(OPTIMIZERS),
        "gradient_checkpointing": _bool,
        "guidance": _num(0, 30),
        "timestep_sampling": _choice(TIMESTEP_SAMPLING),
        "max_sequence_length": _int(1, 512),
        "sample_prompt": _prompts,
        "sample_steps": _int(1, 100),
    }


PICTURE_DEFAULTS = {"repeats": 10, "save_steps": 200, "logging_steps": 1, "lora_dropout": 0.0}
MAX_SAMPLE_PROMPTS = 8


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _trigger_word(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip() or len(v) > 64 or any(ch.isspace() for ch in v.strip()):
        return "must be one word (1 to 64 characters, no spaces), such as TOK"
    return None


def _prompts(v: Any) -> str | None:
    items = [v] if isinstance(v, str) else v
    if (not isinstance(items, list) or not 1 <= len(items) <= MAX_SAMPLE_PROMPTS
            or not all(isinstance(p, str) and 0 < len(p.strip()) and len(p) <= 1000 for p in items)):
        return f"must be a prompt or a list of 1 to {MAX_SAMPLE_PROMPTS} prompts (each 1 to 1000 characters)"
    return None


def picture_model(model: Any, rules: ModelRules) -> str | None:
    """The model of a picture job when `model` names an image-generation model (a FLUX registry name or alias,
    its hub id with `allow_hub`, or a FLUX diffusers folder inside a model root), else None (a text job). A
    fine-tuned picture model is refused by name: a picture job trains on a base FLUX model."""
    import os

    from mmtune.imagegen.run import read_run
    from mmtune.models.imagegen_registry import IMAGE_REGISTRY, find_image_spec

    if not isinstance(model, str) or not model.strip():
        return None
    model = model.strip()
    for spec in IMAGE_REGISTRY.values():
        if model.lower() in {spec.name, *(a.lower() for a in spec.aliases)}:
            return spec.name
        if model.lower() == spec.hf_path.lower():
            if not rules.allow_hub:
                raise bad_request(f"model {model!r} is a hub id, and this server does not download hub models: "
                                  f"use the registry name {spec.name!r} (the same model), or start the server with "
                                  "--allow-hub-models", "model", "model_not_allowed")
            return spec.hf_path
    if model.startswith("ft:"):
        folder = rules.fine_tuned(model)
        if folder is not None and read_run(folder) is not None:
            base = read_run(folder).get("base_model")
            raise bad_request(f"model {model[:200]!r} is a fine-tuned picture model: a picture job trains a new "
                              f"LoRA on a base FLUX model; create it on {base!r} with all the pictures",
                              "model", "model_not_supported")
        return None
    if model.startswith(("/", "~", ".")):
        path = os.path.realpath(os.path.expanduser(model))
        roots = [os.path.realpath(r) for r in rules.roots]
        inside = any(os.path.commonpath([path, r]) == r for r in roots)
        if inside and os.path.isfile(os.path.join(path, "model_index.json")) and find_image_spec(path) is not None:
            return path
    return None


def is_picture_job(job: dict[str, Any]) -> bool:
    """A job that tunes an image-generation model on a zip of pictures (its params say so)."""
    from mmtune.models.imagegen_registry import IMAGE_KIND

    return (job.get("params") or {}).get("mmtune", {}).get("kind") == IMAGE_KIND


def _refuse_other_kind(body: dict[str, Any], other: Mapping[str, Any], what: str, mine: Mapping[str, Any]) -> None:
    """A 400 for a setting of the other kind of job (a picture setting for a text model, or back), anywhere the
    request may hold settings: top level (extra_body), `hyperparameters`, `method.<type>.hyperparameters`."""
    places: list[tuple[str, Any]] = [("", body), ("hyperparameters.", body.get("hyperparameters"))]
    method = body.get("method")
    if isinstance(method, dict):
        kind = method.get("type", "supervised")
        sub = method.get(kind) if isinstance(method.get(kind), dict) else {}
        places.append((f"method.{kind}.hyperparameters.", sub.get("hyperparameters")))
    for where, values in places:
        if not isinstance(values, dict):
            continue
        for key in values:
            if key in other and key not in mine and key not in OPENAI_HYPER and key not in TOP_LEVEL:
                raise bad_request(f"{where}{key} is a setting of {what}, not of this model {str(body.get('model'))[:80]!r}"
                                  f": drop it, or name such a model", f"{where}{key}", "unknown_parameter")


def parse_picture_create(body: dict[str, Any], model: str, limits: Limits,
                         file_exists: Callable[[str], dict | None]) -> dict[str, Any]:
    """The job row of a picture job: `model` an image-generation model, `training_file` a zip of pictures with
    captions, the picture settings (trigger_word, repeats, resolution, ...) at the top level (`extra_body`) or in
    the hyper-parameter objects, as a text job's mmtune settings are."""
    from mmtune.imagegen.config import PICTURE_PRESETS
    from mmtune.models.imagegen_registry import IMAGE_KIND

    if body.get("integrations"):
        raise bad_request("integrations (W&B) are not available for picture jobs yet: leave them out (the job's "
                          "events carry its loss and sample pictures)", "integrations", "unsupported")
    own = picture_fields(limits)
    method = body.get("method")
    if method is not None and not isinstance(method, dict):
        raise bad_request("method must be OpenAI's method object ({\"type\": \"supervised\"}); a picture job trains "
                          "a LoRA (mmtune's method names are for text models)", "method")
    if isinstance(method, dict) and method.get("type", "supervised") != "supervised":
        raise bad_request(f"method type {str(method.get('type'))[:40]!r} does not apply to an image-generation "
                          "model: a picture job is supervised (leave method out, or type 'supervised')",
                          "method.type", "unsupported")
    _refuse_other_kind(body, mmtune_fields(limits), "text models", own)
    extras = {k: v for k, v in body.items() if k not in TOP_LEVEL}
    _refuse_unknown(extras, own, "")
    hyper, nested = _hyperparameters(body, own)
    settings = _merge(extras, nested)
    for name, value in settings.items():
        _check(name, value, own[name])
    if body.get("validation_file") is not None:
        raise bad_request("a picture job takes no validation_file (the flow-matching loss of held-out pictures says "
                          "little; the job's sample pictures show the progress): leave it out", "validation_file")
    training = _file_param(body, "training_file", file_exists, required=True)
    preset = settings.get("preset", "standard")
    base = PICTURE_PRESETS[preset]
    pick = picker(hyper)
    lr = preset_learning_rate(pick, base, f"picture preset {preset}", limits)
    prompts = settings.get("sample_prompt")
    values = {"kind": IMAGE_KIND, "preset": preset, "learning_rate": lr,
              "lora_rank": settings.get("lora_rank", base["lora_rank"]),
              "lora_alpha": settings.get("lora_alpha", base["lora_alpha"]),
              **{k: settings.get(k, v) for k, v in PICTURE_DEFAULTS.items()},
              "max_steps": settings.get("max_steps"),
              **{k: v for k, v in settings.items() if k not in ("preset", "lora_rank", "lora_alpha", "max_steps")
                 and k not in PICTURE_DEFAULTS},
              **({"sample_prompt": [prompts] if isinstance(prompts, str) else list(prompts)} if prompts else {})}
    return {
        "id": new_id("job"),
        "model": model,
        "training_file": training,
        "validation_file": None,
        "suffix": _suffix(body.get("suffix")),
        "seed": _seed(body.get("seed")),
        "metadata": _metadata(body.get("metadata")),
        "params": {"hyperparameters": {"n_epochs": pick("n_epochs", base["epochs"]),
                                       "batch_size": pick("batch_size", base["batch_size"]),
                                       "learning_rate_multiplier": float(pick("learning_rate_multiplier", 1.0))},
                   "mmtune": values},
    }
