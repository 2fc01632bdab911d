"""Supervised fine-tuning: `run_sft(cfg)` reads top to bottom, setup -> train -> save.

The loop is the Hugging Face Trainer (so `accelerate launch` with a DeepSpeed or FSDP config
works unchanged); mmtune adds data checking and rendering, LoRA/DoRA/rsLoRA/QLoRA/full set-up,
token accounting, and a self-describing output folder:

    adapter_model.safetensors + adapter_config.json   (lora/qlora)  | model*.safetensors + config.json (full)
    tokenizer files + chat_template.jinja (a vision model: its processor's files too), config.yaml (resolved), metrics.jsonl, loss.png,
    summary.json, mmtune.json (base model, method, mmtune version), checkpoint-*/ (for --resume),
    mmtune-manifest.json (every entry the run wrote: all --overwrite ever replaces; train/output.py)

Nothing is written before the model, the data and the Trainer are ready, and the output folder is
checked first (train/output.py): a folder holding the user's own files is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from mmtune import __version__
from mmtune.chat.render import IGNORE_INDEX, is_processor
from mmtune.config import TrainConfig
from mmtune.errors import UserError
from mmtune.files import check_data_files as check_files
from mmtune.models.loader import check_quantization_available, load_model, load_tokenizer, resolve_model_path
from mmtune.models.registry import find_spec
from mmtune.train.attention import packing_safe, use_varlen_attention
from mmtune.train.callbacks import METRICS_FILE, PLOT_FILE, FinishLine, RichProgress, RunRecorder
from mmtune.train.chunked_loss import CHUNK, HiddenHead, linear_cross_entropy, plain_head
from mmtune.train.collate import PackCollator, PadCollator
from mmtune.train.dataset import Datasets, build_datasets
from mmtune.train.output import (  # noqa: F401  (holds_run, last_checkpoint: this module's public names too)
    STAGING_DIR,
    check_output,
    clear_run,
    discard_failed,
    finish_manifest,
    holds_run,
    last_checkpoint,
    legacy_entries,
    move_in,
    open_output,
    record,
)
from mmtune.train.setup import (
    apply_method,
    count_params,
    is_vision,
    load_vision_processor,
    part_summary,
    resolve_parts,
)
from mmtune.train.throughput import Throughput, attention_pairs, measure_peak_flops, model_flops
from mmtune.train.tracking import (
    check_trackers,
    finish_trackers,
    output_entries,
    tracker_env,
    trainer_arguments,
)
from mmtune.train.zero import (
    check_deepspeed,
    deepspeed_config,
    distributed_state,
    gathered,
    resume_on_any_world_size,
    uses_deepspeed,
)

META_FILE = "mmtune.json"
SUMMARY_FILE = "summary.json"
_COUNTS = "mmtune"  # key in TrainerState.stateful_callbacks: saved in checkpoints, restored on resume
# what a run writes itself at the top of its output folder, recorded in the manifest before training;
# the Trainer's files (weights, tokenizer, ...) are recorded as they are moved in from STAGING_DIR
RUN_FILES = ("config.yaml", META_FILE, SUMMARY_FILE, METRICS_FILE, PLOT_FILE, PLOT_FILE + ".tmp", STAGING_DIR + "/")



def set_up(cfg: TrainConfig, spec, precision: str, build_datasets, say):
    """The data and model of a run, the same for every stage: the family's parts resolved (vision models:
    their defaults; text models: no vision-only flags), the processor (tokenizer + image/video processors)
    or tokenizer, every row checked and rendered by `build_datasets(cfg, processor_or_tokenizer, say, spec)`,
    the method applied. Returns (cfg, processor, tokenizer, data, model, parts, (trainable, total), the
    per-part table to show or "")."""
    cfg = resolve_parts(cfg, spec, say)
    processor = load_vision_processor(cfg) if is_vision(spec) else None
    tokenizer = processor.tokenizer if processor is not None else load_tokenizer(cfg.model)
    data = build_datasets(cfg, processor or tokenizer, say, spec)  # all rows checked here
    model = apply_method(load_for_training(cfg, precision), cfg, spec)
    if processor is None:
        return cfg, None, tokenizer, data, model, None, count_params(model), ""
    table, parts, counts = part_summary(model, spec)
    shown = (f"trainable parameters by part (vision tower: {cfg.train_vision}, projector: "
             f"{'trains' if cfg.train_projector else 'frozen'}, language model: {cfg.method}):\n{table}")
    return cfg, processor, tokenizer, data, model, parts, counts, shown


def run_sft(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.data`; returns the summary (also saved as summary.json)."""
    dist = distributed_state(cfg)  # under DeepSpeed: its process group, gloo where there is no GPU
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    console = Console(stderr=True, quiet=not dist.is_main_process)

    def say(message: str) -> None:  # plain text: paths and messages may hold [brackets]
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    # ---- setup
    check_quantization_available(cfg.quantization)  # QLoRA without CUDA fails here, before any loading
    check_trackers(cfg.report_to)  # --report-to wandb without wandb installed: here, before any loading
    check_deepspeed(cfg.deepspeed)
    out = Path(cfg.output)
    resume_from = check_output(out, overwrite=cfg.overwrite, resume=cfg.resume)  # nothing is written yet
    check_data_files(cfg)
    created = not out.exists()
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    spec = find_spec(cfg.model)
    cfg, processor, tokenizer, data, model, parts, (trainable, total), table = set_up(
        cfg, spec, precision, stage_datasets, say)
    say(f"{cfg.method} on {cfg.model}: {data.stats.train_rows} training rows, "
        f"{data.stats.val_rows} validation rows; training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / total:.2f}%), precision {precision}")
    if table:
        say(table)
    recorder = RunRecorder(cfg.output)
    try:  # the output folder appears from here on (the Trainer makes it)
        trainer = build_trainer(cfg, model, processor or tokenizer, data, precision,
                                [recorder, RichProgress(console)], spec=spec)
        prepare_output(cfg, dist.is_main_process, resume_from)
        if dist.is_main_process:
            cfg.save(cfg.output)
        # ---- train
        if resume_from:
            say(f"resuming from {resume_from}")
            resume_on_any_world_size(trainer, resume_from)  # DeepSpeed: its shards were made for another count
        result = trainer.train(resume_from_checkpoint=resume_from)
        # ---- save
        save_model(trainer, out, dist.is_main_process)  # adapter or full weights (gathered under ZeRO-3/FSDP)
    except BaseException:
        if dist.is_main_process:
            discard_failed(out, created)  # nothing trained yet: no folder (or files) of ours left behind
        raise
    finally:
        finish_trackers(cfg.report_to)
    summary = make_summary(cfg, trainer, result.metrics, recorder, data, (trainable, total), resume_from)
    if parts is not None:
        summary["trainable_by_part"] = {p: {"trainable": t, "total": n} for p, (t, n) in parts.items()}
    if dist.is_main_process:
        finish_output(cfg, summary, recorder)
        print_summary(console, summary)
    dist.wait_for_everyone()
    return summary


# ---------------------------------------------------------------------------- setup


def check_data_files(cfg: TrainConfig) -> None:
    """Every --data and --val-data file exists and can be read (before anything loads or is written)."""
    check_files(cfg.data, "--data")
    check_files(cfg.val_data, "--val-data")


def stage_datasets(cfg: TrainConfig, tokenizer, say, spec) -> Datasets:
    """Conversations (--stage sft), or plain text with the loss on every token (--stage pt).
    `tokenizer` is a vision-language model's processor."""
    if cfg.stage != "pt":
        return build_datasets(cfg, tokenizer, warn=say, spec=spec)
    if is_processor(tokenizer):
        raise UserError(f"--stage pt trains text models in this version; {cfg.model} is a vision-language model")
    from mmtune.train.pretrain import build_text_datasets

    return build_text_datasets(cfg, tokenizer, say)


def prepare_output(cfg: TrainConfig, is_main: bool, resume_from: str | None, extra: tuple[str, ...] = ()) -> None:
    """Make the output folder ready, once everything before training has worked: an earlier run's
    files cleared (--overwrite; only what its manifest lists), the folder made and the files this
    run writes recorded in its manifest."""
    out = Path(cfg.output)
    if is_main:
        if resume_from is None and cfg.overwrite and out.is_dir():
            clear_run(out)
        open_output(out, [*RUN_FILES, *output_entries(cfg.report_to), *extra,
                          *(legacy_entries(out) if resume_from else ())])  # adopted on --resume
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def save_model(trainer: MMTuneTrainer, out: Path, is_main: bool) -> None:
    """The Trainer saves into a staging folder inside `out`; its entries are then recorded in the manifest
    and moved in, so no file appears in `out` unrecorded (and training_args.bin, a pickle, never does)."""
    staging = out / STAGING_DIR
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    trainer.save_model(str(staging))
    if is_main:
        (staging / "training_args.bin").unlink(missing_ok=True)  # config.yaml is the readable record
        move_in(staging, out)


def resolve_precision(precision: str) -> str:
    """"auto" -> bf16 on a CUDA GPU that supports it, else fp32; explicit half precision needs a GPU."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise UserError(f"precision {precision} needs a CUDA GPU and this machine has none: use --precision "
                        "fp32 (or auto)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bf16: use --precision fp16 (or auto, which picks fp32)")
    return precision


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_for_training(cfg: TrainConfig, precision: str):
    """The base model. A frozen base (lora/qlora) is loaded in the training precision; a fully trained
    model keeps fp32 master weights and mixed precision comes from autocast."""
    dtype = torch.float32 if cfg.method == "full" else _DTYPES[precision]
    device_map = None
    if cfg.method == "qlora":
        from accelerate import PartialState

        device_map = {"": PartialState().local_process_index}  # each process holds its own copy
    model = load_model(cfg.model, dtype=dtype, quantization=cfg.quantization, device_map=device_map)  # vision: *ImageTextToText
    model.config.use_cache = False  # the KV cache is for generation; training only wastes memory on it
    if cfg.packing:
        use_varlen_attention(model)  # per-row attention in packed batches (SDPA models; others keep theirs)
    return model


class MMTuneTrainer(Trainer):
    """The Trainer plus token accounting: trained (supervised) tokens and tokens/s in every log.

    The trained-token count lives in `state.stateful_callbacks`, which checkpoints save and
    --resume restores, so a resumed run's totals continue where the checkpoint left them.
    """

    _mark: tuple[float, int] | None = None  # (time, input tokens) at the previous train log
    supervised_only: bool = True  # head + loss only where the next token is trained (compute_loss)
    _attn_pairs: int = 0  # (query, key) pairs attended this session, for the FLOP count
    chunked_loss: bool = True  # output layer + loss chunk by chunk (train/chunked_loss.py) where exact
    loss_path: str | None = None  # how the last training loss was computed: chunked | kept-logits | full-logits
    loss_chunk: int = CHUNK

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._mark is None:
            self._mark = (time.perf_counter(), self.state.num_input_tokens_seen)
            self._session_start = self._mark
            self._session_trained = self.trained_tokens
        n = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum().reshape(1).to(self.args.device)  # targets, as shifted
        counts = self.state.stateful_callbacks.setdefault(_COUNTS, {})
        counts["trained_tokens"] = counts.get("trained_tokens", 0) + int(self.accelerator.gather(n).sum().item())
        self._attn_pairs += attention_pairs(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = self.supervised_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not loss.requires_grad:
            # a batch that reaches no trainable weight (text-only rows while only vision parts train):
            # a zero loss still connected to them, so backward (and DDP) run as for any batch
            loss = loss + sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            result = (loss, result[1]) if return_outputs else loss
        return result

    def supervised_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Next-token cross-entropy computed only at positions whose target is trained.

        The model is asked for those positions alone (`logits_to_keep`), so the output layer never
        runs on prompt or padding positions; where the logits are a plain linear map of the hidden
        state, the output layer and the loss then run chunk by chunk (train/chunked_loss.py), so
        not even the [targets x vocabulary] logits tensor is built whole. Sum over targets / number of targets in the accumulated
        batch: the same value, scaling and gradients as the model's own loss.
        """
        if not self.supervised_only or "labels" not in inputs:
            self.loss_path = "full-logits"
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        targets = inputs.pop("labels")[:, 1:]  # the token position j predicts
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
        chosen = targets[:, keep]
        head = self._plain_head(model)
        if head is not None:  # the head's matmul and the loss in chunks: no [targets x vocabulary] tensor
            with HiddenHead(head):
                outputs = model(**inputs, logits_to_keep=keep)
            with gathered(head.weight):  # ZeRO-3: the partitioned weight whole for the chunked matmul
                loss = linear_cross_entropy(_kept(outputs.logits, keep), full_weight(head.weight), chosen,
                                            self.loss_chunk)
            self.loss_path = "chunked"
        else:
            outputs = model(**inputs, logits_to_keep=keep)
            logits = _kept(outputs.logits, keep).float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chosen.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            self.loss_path = "kept-logits"
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            loss = loss / (chosen != IGNORE_INDEX).sum().clamp(min=1)
        else:  # as the Trainer treats a model's own loss given num_items_in_batch
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _run_epoch(self, *args, **kwargs):
        """A run resumed from a checkpoint taken at its last step trains nothing more (the Trainer
        would run one extra step before noticing that max_steps is reached)."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """--group-by-length from row lengths known without reading rows (a vision dataset's items
        decode their media when read; the Trainer's own sampler would read every one)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def _plain_head(self, model):
        """The output layer for the chunked loss, or None: FSDP1 (its flattened parameters) or logits that
        are more than `hidden @ head.weight.T` keep the model's own head. FSDP2 and DeepSpeed ZeRO-3 take
        the chunked loss: their partitioned head weight is gathered whole for it (`full_weight`, `gathered`)."""
        if not self.chunked_loss or (self.is_fsdp_enabled and not
                                                                   getattr(self.accelerator, "is_fsdp2", False)):
            return None
        return plain_head(self.accelerator.unwrap_model(model))

    def throughput(self, runtime: float, peak_flops: float) -> Throughput:
        """This session's supervised tokens/s and achieved FLOP/s as a share of `peak_flops`."""
        start = getattr(self, "_session_start", (0.0, self.state.num_input_tokens_seen))[1]
        tokens = self.state.num_input_tokens_seen - start
        trained = self.trained_tokens - getattr(self, "_session_trained", self.trained_tokens)
        per_token, per_pair = model_flops(self.accelerator.unwrap_model(self.model))
        flops = per_token * tokens + per_pair * self._attn_pairs * self.accelerator.num_processes
        return Throughput.of(runtime, tokens, trained, flops, peak_flops * self.accelerator.num_processes)

    @property
    def trained_tokens(self) -> int:
        return int(self.state.stateful_callbacks.get(_COUNTS, {}).get("trained_tokens", 0))

    def session_tokens_per_s(self, runtime: float) -> float:
        start = getattr(self, "_session_start", (0.0, self.state.num_input_tokens_seen))[1]
        return (self.state.num_input_tokens_seen - start) / max(runtime, 1e-9)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now, tokens = time.perf_counter(), self.state.num_input_tokens_seen
            if self._mark is not None:
                logs["tokens_per_s"] = (tokens - self._mark[1]) / max(now - self._mark[0], 1e-9)
            self._mark = (now, tokens)
        if "loss" in logs or "eval_loss" in logs:
            logs["trained_tokens"] = self.trained_tokens
        super().log(logs, start_time)


class SaveMeta(TrainerCallback):
    """Writes mmtune.json into each checkpoint, so a checkpoint loads like a finished run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            record(folder.parent, folder.name + "/")
            write_meta(folder, self.cfg, complete=False)


def training_arguments(cfg: TrainConfig, precision: str, has_eval: bool, packed: bool = False) -> TrainingArguments:
    """The Trainer's arguments, all derived from the config (nothing else reaches the Trainer).
    `packed`: batches are packed rows (no padding, no attention_mask), so every input id counts.
    With --report-to, the trackers' variables are set here too (their callbacks read them when the
    Trainer makes them): their files go to the output folder (train/tracking.py)."""
    tracker_env(cfg.report_to, cfg.output, cfg.run_name, cfg.tracker_project, cfg.tracker_tags,
                entity=cfg.tracker_entity)
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    eval_strategy = cfg.eval_strategy if has_eval else "no"
    zero = uses_deepspeed(cfg)  # DeepSpeed has its own CPU accelerator: never the Trainer's use_cpu
    return TrainingArguments(
        deepspeed=deepspeed_config(cfg.deepspeed) if cfg.deepspeed else None,
        accelerator_config={"use_configured_state": True} if zero else None,  # train/zero.py made the state
        output_dir=cfg.output,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.scheduler,
        lr_scheduler_kwargs={"min_lr_rate": 0.1} if cfg.scheduler == "cosine_with_min_lr" else None,
        warmup_steps=cfg.warmup_ratio or cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda and not mps and not zero,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps if eval_strategy == "steps" else None,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        prediction_loss_only=True,  # evaluation reports eval_loss only: keep no logits
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        dataloader_num_workers=cfg.num_workers,
        remove_unused_columns=False,
        include_num_input_tokens_seen="all" if packed else "non_padding",
        # vision models: a batch without media leaves the vision parts unused
        ddp_find_unused_parameters=True if cfg.train_vision is not None else False if cfg.uses_lora else None,
        **trainer_arguments(cfg.report_to, cfg.run_name, cfg.tracker_project),
        disable_tqdm=True,
        log_level="warning",
    )


def build_trainer(cfg: TrainConfig, model, tokenizer, data: Datasets, precision: str,
                  callbacks: list[TrainerCallback], collator=None, spec=None) -> MMTuneTrainer:
    """`tokenizer` is the processing class saved with the model (a vision model's processor);
    `collator` replaces the default one (packed or padded batches, media joined by the registry's
    media_layout for `spec`)."""
    has_eval = data.val is not None and cfg.eval_strategy != "no"
    packed = collator is None and packs(cfg, model)
    trainer = MMTuneTrainer(
        model=model,
        args=training_arguments(cfg, precision, has_eval, packed),
        train_dataset=data.train,
        eval_dataset=data.val,
        data_collator=collator or (PackCollator() if packed else PadCollator(
            getattr(tokenizer, "tokenizer", tokenizer).pad_token_id, layout=spec.media_layout if spec else "concat")),
        processing_class=tokenizer,
        callbacks=[*callbacks, FinishLine(has_eval), SaveMeta(cfg)],
    )
    trainer.supervised_only = cfg.loss_on_supervised_only
    for default in (ProgressCallback, PrinterCallback):  # RichProgress replaces them
        trainer.remove_callback(default)
    return trainer


def packs(cfg: TrainConfig, model) -> bool:
    """Packed batches when asked for and exact for this model's attention, else padded ones (said once)."""
    if not cfg.packing:
        return False
    if packing_safe(model):
        return True
    warnings.warn(f"packing is off for {cfg.model}: its {model.config._attn_implementation} attention does not "
                  "keep packed rows apart, so batches are padded instead (same results, slower)", stacklevel=2)
    return False


# ---------------------------------------------------------------------------- save


def write_meta(folder: str | Path, cfg: TrainConfig, complete: bool = True) -> None:
    """mmtune.json: what a loader needs to use this folder (base model + adapter, or full weights)."""
    meta = {
        "mmtune_version": __version__,
        "base_model": cfg.model,
        "base_model_path": resolve_model_path(cfg.model),
        "method": cfg.method,
        "adapter": cfg.uses_lora,
        "quantization": cfg.quantization,
        "complete": complete,
        **({"kind": "vision", "train_vision": cfg.train_vision, "train_projector": cfg.train_projector}
           if cfg.train_vision is not None else {}),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def make_summary(cfg: TrainConfig, trainer: MMTuneTrainer, metrics: dict[str, Any], recorder: RunRecorder,
                 data: Datasets, params: tuple[int, int], resume_from: str | None) -> dict[str, Any]:
    runtime = float(metrics.get("train_runtime", 0.0))
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    speed = trainer.throughput(runtime, measure_peak_flops(precision))
    return {
        "model": cfg.model,
        "method": cfg.method,
        "output": str(cfg.output),
        "train_runtime_s": round(runtime, 2),
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 4),
        "trained_tokens": trainer.trained_tokens,
        "input_tokens": int(trainer.state.num_input_tokens_seen),
        "tokens_per_s": round(trainer.session_tokens_per_s(runtime), 1),
        "supervised_tokens_per_s": round(speed.supervised_tokens_per_s, 1),
        "flops_per_s": round(speed.flops_per_s),
        "peak_flops_per_s": round(speed.peak_flops_per_s),
        "mfu": round(speed.mfu, 4),
        "final_train_loss": recorder.last("loss"),
        "final_eval_loss": recorder.last("eval_loss"),
        "trainable_params": params[0],
        "total_params": params[1],
        "resumed_from": Path(resume_from).name if resume_from else None,
        "loss_path": trainer.loss_path,  # chunked head + loss | logits at trained positions | all logits
        "data": data.stats.to_dict(),
    }


def finish_output(cfg: TrainConfig, summary: dict[str, Any], recorder: RunRecorder) -> None:
    """Leave the output folder self-describing (and free of the Trainer's pickled arguments)."""
    out = Path(cfg.output)
    write_meta(out, cfg)
    recorder.plot()
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    finish_manifest(out)  # exactly the entries the run leaves


def print_summary(console: Console, s: dict[str, Any]) -> None:
    table = Table(title="training finished", show_header=False, title_justify="left")
    rows = [("output", s["output"]), ("steps", s["steps"]), ("time", f"{s['train_runtime_s']:.1f} s"),
            ("trained tokens", f"{s['trained_tokens']:,}"), ("tokens/s", f"{s['tokens_per_s']:.0f}"),
            ("supervised tokens/s", f"{s['supervised_tokens_per_s']:.0f}"),
            ("FLOP/s", f"{s['flops_per_s'] / 1e9:.1f} G = {100 * s['mfu']:.1f}% of the measured "
                       f"{s['peak_flops_per_s'] / 1e9:.0f} G peak"),
            ("final train loss", _fmt(s["final_train_loss"])), ("final eval loss", _fmt(s["final_eval_loss"]))]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """The whole weight: an FSDP2-sharded one (a DTensor outside its module's forward) is gathered, in a way
    autograd follows (its gradient is reduce-scattered back to the shards)."""
    from torch.distributed.tensor import DTensor

    return weight.full_tensor() if isinstance(weight, DTensor) else weight


def _kept(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept positions' logits. A model whose forward swallows `logits_to_keep` (MiniCPM-V 4.6
    passes it on in **kwargs) returns every position: one more than the targets, so never
    `len(keep)`; those are selected here."""
    return logits if logits.shape[1] == keep.numel() else logits[:, keep]

