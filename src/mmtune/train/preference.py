"""Preference training: `run_preference(cfg)` for --stage dpo|simpo|orpo|kto, setup -> train -> save.

The same pipeline as SFT (train/sft.py): the data layer reads and checks every row, the one renderer
(chat/render.py) renders prompt + completion through the model's chat template, and the Hugging
Face Trainer runs the loop (checkpoints, --resume, gradient accumulation, accelerate). What differs:

- rows: a pair renders twice, prompt + chosen and prompt + rejected, with the prompt's own assistant
  turns at weight 0, so each side's labels are exactly the tokens SFT would train on in its
  completion (answer, tool calls, end-of-turn token) and nothing of the prompt;
- one forward pass per step: chosen and rejected rows go through the model together (laid end to
  end when packing is exact for the model, else padded), and the output layer runs only where a
  completion token is predicted (`logits_to_keep`);
- the reference: with LoRA, the same model with its adapter switched off (no second copy); with
  full fine-tuning, reference log-probabilities computed once before training. SimPO and ORPO
  have none;
- metrics.jsonl carries the implicit rewards (reward_chosen, reward_rejected, reward_margin,
  reward_accuracy, and for KTO kl), rewards.png plots the reward accuracy beside loss.png.

The losses are in train/losses.py, held to TRL's on the same batch by tests/train/test_preference_losses.py.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from mmtune.chat.render import IGNORE_INDEX, check_media_limits, render_sample
from mmtune.config import TrainConfig
from mmtune.data.reader import KIND_OF_STAGE, ReadOptions, load_samples
from mmtune.data.schema import Message, Sample
from mmtune.errors import UserError
from mmtune.models.loader import check_quantization_available, load_tokenizer
from mmtune.models.registry import find_spec
from mmtune.train import losses
from mmtune.train.callbacks import FinishLine, RichProgress, RunRecorder, save_figure
from mmtune.train.collate import PackCollator, PadCollator
from mmtune.train.dataset import Datasets, DataStats, report_losses, split_samples
from mmtune.train.output import check_output, discard_failed
from mmtune.train.setup import apply_method, count_params, is_vision
from mmtune.train.sft import (
    MMTuneTrainer,
    SaveMeta,
    finish_output,
    load_for_training,
    make_summary,
    packs,
    prepare_output,
    print_summary,
    resolve_precision,
    save_model,
    training_arguments,
)

PAIRED = ("dpo", "simpo", "orpo")
STAGES = (*PAIRED, "kto")
REWARD_PLOT = "rewards.png"
_NOT_MODEL = ("labels", "seq_ids", "n_pairs", "desirable", "ref_logps", "kl_batch")

Warn = Callable[[str], None]


def uses_reference(stage: str) -> bool:
    return stage in ("dpo", "kto")


# ---------------------------------------------------------------------------- rows


def completion_sample(sample: Sample, completion: list[Message]) -> Sample:
    """The prompt followed by one completion, as a conversation whose only trainable turns are the
    completion's: an assistant turn inside the prompt (an earlier answer) gets weight 0."""
    prompt = [dataclasses.replace(m, weight=0.0) if m.role == "assistant" else m for m in sample.messages]
    return Sample(prompt + list(completion), sample.tools, sample.media_root, sample.source)


def render_completion(sample: Sample, completion: list[Message], tokenizer, max_length: int):
    """Token ids and labels of prompt + completion, labels on the completion's tokens only."""
    return render_sample(completion_sample(sample, completion), tokenizer, train_on="assistant",
                         max_length=max_length)


def _row(r) -> dict[str, list[int]]:
    return {"input_ids": r.input_ids, "labels": r.labels}


def encode_pairs(samples: list[Sample], tokenizer, cfg: TrainConfig, stats: DataStats, spec) -> list[dict]:
    """dpo/simpo/orpo rows: {"chosen": row, "rejected": row}. A pair is kept or lost whole: when either
    side is over --max-length both are truncated (or, with --drop-long, the pair is dropped), and a
    pair whose truncation left a side with no completion token is dropped (all counted)."""
    rows = []
    for s in samples:
        check_media_limits(s, spec)
        sides = [render_completion(s, side, tokenizer, cfg.max_length) for side in (s.chosen, s.rejected)]
        if _count_losses(sides, cfg, stats):
            rows.append({"chosen": _row(sides[0]), "rejected": _row(sides[1])})
    return rows


def kl_partners(samples: Sequence[Sample]) -> list[int]:
    """For each row, the row whose completion goes with its prompt in KTO's mismatched pair: the nearest
    earlier row (cyclically) with another prompt. The previous row alone (TRL's +1 rotation) is often the
    same prompt: a pair split into a desirable and an undesirable row, as pair-split data holds them; its
    completion is then a matched answer, and the reference point rises with the very reward it is
    compared to. Where every row has one prompt there is no mismatched pair: the previous row."""
    prompts = [(s.messages, s.tools) for s in samples]
    n = len(prompts)
    start = list(range(n))  # the first row of each row's run of equal prompts
    for i in range(1, n):
        if prompts[i] == prompts[i - 1]:
            start[i] = start[i - 1]
    last = n - 1  # the row before the first run, cyclically: the end of the data, before its own run of it
    while last > 0 and prompts[last] == prompts[0]:
        last -= 1
    if last == 0:
        return [(i - 1) % n for i in range(n)]
    return [start[i] - 1 if start[i] > 0 else last for i in range(n)]


def encode_unpaired(samples: list[Sample], tokenizer, cfg: TrainConfig, stats: DataStats, spec) -> list[dict]:
    """kto rows: {"completion": row, "kl": row, "desirable": bool}. `kl` is this row's prompt with the
    completion of an earlier row with another prompt (`kl_partners`, a mismatched pair): KTO's reference
    point is the policy/reference log-ratio on such pairs."""
    rows = []
    partners = kl_partners(samples)
    for i, s in enumerate(samples):
        check_media_limits(s, spec)
        other = samples[partners[i]]
        sides = [render_completion(s, s.completion, tokenizer, cfg.max_length),
                 render_completion(s, other.completion, tokenizer, cfg.max_length)]
        if _count_losses(sides, cfg, stats):
            rows.append({"completion": _row(sides[0]), "kl": _row(sides[1]), "desirable": bool(s.label)})
    return rows


def _count_losses(sides, cfg: TrainConfig, stats: DataStats) -> bool:
    cut = [r.truncated for r in sides if r.truncated]
    if cut:
        if cfg.drop_long:
            stats.dropped_long_rows += 1
            return False
        stats.truncated_rows += 1
        stats.truncated_tokens += sum(cut)
    if any(r.n_supervised == 0 for r in sides):
        stats.dropped_empty_rows += 1
        return False
    return True


def build_preference_datasets(cfg: TrainConfig, tokenizer, warn: Warn = print, spec=None) -> Datasets:
    """Read (the stage's kind only), check, split and render the data files."""
    kind = KIND_OF_STAGE["dpo" if cfg.stage in PAIRED else cfg.stage]
    options = ReadOptions(media_root=cfg.media_root, enforce_root=cfg.media_root is not None)

    def read(paths: list[str]) -> list[Sample]:
        return [s for p in paths for s in load_samples(p, options, skip_bad_rows=cfg.skip_bad_rows, warn=warn,
                                                        kind=kind)]

    samples = read(cfg.data)
    train_s, val_s = (samples, read(cfg.val_data)) if cfg.val_data else split_samples(samples, cfg.val_ratio,
                                                                                        cfg.seed)
    encode = encode_pairs if cfg.stage in PAIRED else encode_unpaired
    stats = DataStats()
    train = encode(train_s, tokenizer, cfg, stats, spec)
    val = encode(val_s, tokenizer, cfg, stats, spec) if val_s else None
    report_losses(stats, len(train_s) + len(val_s), cfg, warn)
    if not train:
        raise UserError("no training rows left after rendering: every row was dropped (see the warnings above); "
                        "raise --max-length or check that every completion has an assistant answer")
    if cfg.stage == "kto" and cfg.batch_size < 2:
        raise UserError("--stage kto needs --batch-size >= 2: its reference point is estimated from mismatched "
                        "pairs within a batch")
    stats.train_rows, stats.val_rows = len(train), len(val) if val else 0
    seqs = [r[k] for r in train for k in _sides(cfg.stage)]
    stats.train_tokens = sum(len(r["input_ids"]) for r in seqs)
    stats.train_supervised_tokens = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in seqs)
    return Datasets(train, val or None, stats)


def _sides(stage: str) -> tuple[str, ...]:
    return ("chosen", "rejected") if stage in PAIRED else ("completion",)


# ---------------------------------------------------------------------------- batches


@dataclasses.dataclass
class PreferenceCollator:
    """One batch of sequences for one forward pass: a pair batch is [chosen_1..n, rejected_1..n], a KTO batch
    its completions (and, in `kl_batch`, the mismatched pairs). `seq_ids` says which sequence each
    token belongs to (-1 on padding), so per-sequence log-probs come out the same packed or padded.
    Precomputed reference log-probs travel as `ref_logps` (one per sequence, same order)."""

    pad_token_id: int
    pack: bool = True

    def sequences(self, seqs: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        if self.pack:
            batch = PackCollator()(seqs)
            seq_ids = torch.cat([torch.full((len(s["input_ids"]),), i) for i, s in enumerate(seqs)])[None]
        else:
            batch = PadCollator(self.pad_token_id)(seqs)
            rows = torch.arange(len(seqs))[:, None].expand_as(batch["labels"])
            seq_ids = torch.where(batch["attention_mask"].bool(), rows, -1)
        batch["seq_ids"] = seq_ids.long()
        return batch

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if "chosen" in rows[0]:
            batch = self.sequences([r["chosen"] for r in rows] + [r["rejected"] for r in rows])
            batch["n_pairs"] = len(rows)
            if "ref" in rows[0]:
                batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows])
            return batch
        batch = self.sequences([r["completion"] for r in rows])
        batch["desirable"] = torch.tensor([r["desirable"] for r in rows], dtype=torch.bool)
        batch["kl_batch"] = self.sequences([r["kl"] for r in rows])
        if "ref" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows])
            batch["kl_batch"]["ref_logps"] = torch.tensor([r["ref"][1] for r in rows])
        return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in _NOT_MODEL}


def completion_logps(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, token count) of each sequence's completion. The model computes logits only at
    positions that predict a completion token (`logits_to_keep`), never the whole [tokens x vocabulary]."""
    targets = batch["labels"][:, 1:]
    seq = batch["seq_ids"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    outputs = model(**model_inputs(batch), logits_to_keep=keep, use_cache=False)
    logits = outputs.logits if outputs.logits.shape[1] == keep.numel() else outputs.logits[:, keep]
    n_seq = int(batch["seq_ids"].max().item()) + 1
    return losses.sequence_logps(logits, targets[:, keep], seq[:, keep], n_seq)


# ---------------------------------------------------------------------------- trainer


class PreferenceTrainer(MMTuneTrainer):
    """MMTuneTrainer (token accounting, resume guards) with a preference loss and reward metrics."""

    def __init__(self, *args, cfg: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.model_accepts_loss_kwargs = False  # each micro-batch's loss is a mean: the Trainer divides by grad_accum
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = preference_loss(model, inputs, self.cfg, self._reference(model))
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(float(self.accelerator.gather_for_metrics(value.reshape(1)).mean()))
        return (loss, {}) if return_outputs else loss  # no outputs kept (evaluation reports losses and rewards)

    def _reference(self, model):
        """log-probs of the reference policy for a batch: the adapter switched off (LoRA)."""
        unwrapped = self.accelerator.unwrap_model(model)

        def reference(batch):
            with torch.no_grad(), unwrapped.disable_adapter():
                return completion_logps(model, batch)

        return reference if hasattr(unwrapped, "disable_adapter") else None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode, prefix = ("eval", "eval_") if "eval_loss" in logs else ("train", "")
        if "loss" in logs or "eval_loss" in logs:
            for key, values in self._metrics[mode].items():
                if values:
                    logs[prefix + key] = sum(values) / len(values)
            self._metrics[mode].clear()
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            from transformers.trainer_pt_utils import LengthGroupedSampler

            lengths = [sum(len(r[k]["input_ids"]) for k in _sides(self.cfg.stage)) for r in dataset]
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths)
        return super()._get_train_sampler(train_dataset)


def preference_loss(model, batch: dict[str, Any], cfg: TrainConfig, reference=None):
    """(loss, metrics) of one batch for cfg.stage. `reference(batch)` gives the reference log-probs where
    they were not precomputed (`ref_logps` in the batch)."""
    logps, counts = completion_logps(model, batch)
    stage, beta = cfg.stage, cfg.resolved_beta

    def ref_of(b):
        if "ref_logps" in b:
            return b["ref_logps"].to(logps)
        if reference is None:
            raise RuntimeError("no reference log-probs: precompute them (full fine-tuning) or use LoRA")
        return reference(b)[0]

    metrics: dict[str, torch.Tensor] = {}
    if stage in PAIRED:
        n = int(batch["n_pairs"])
        chosen, rejected = logps[:n], logps[n:]
        if stage == "dpo":
            ref = ref_of(batch)
            loss, rc, rr = losses.dpo_loss(chosen, rejected, ref[:n], ref[n:], beta=beta, loss_type=cfg.resolved_dpo_loss,
                                           label_smoothing=cfg.resolved_label_smoothing, chosen_lengths=counts[:n],
                                           rejected_lengths=counts[n:])
        elif stage == "simpo":
            loss, rc, rr = losses.simpo_loss(chosen / counts[:n], rejected / counts[n:], beta=beta,
                                             gamma=cfg.resolved_simpo_gamma, label_smoothing=cfg.resolved_label_smoothing)
        else:
            nll = -chosen.sum() / counts[:n].sum()
            loss, rc, rr = losses.orpo_loss(chosen / counts[:n], rejected / counts[n:], nll,
                                            lam=cfg.resolved_orpo_lambda)
            metrics["nll_loss"] = nll.detach()
        metrics.update(reward_chosen=rc.mean(), reward_rejected=rr.mean(), reward_margin=(rc - rr).mean(),
                       reward_accuracy=(rc > rr).float().mean())
        return loss, metrics
    desirable = batch["desirable"]
    kl_batch = batch["kl_batch"]
    with torch.no_grad():
        kl_logps = completion_logps(model, kl_batch)[0]
    kl = losses.kto_kl(kl_logps, ref_of(kl_batch))
    loss, rg, rb = losses.kto_loss(logps, ref_of(batch), desirable, kl, beta=beta,
                                   desirable_weight=cfg.resolved_desirable_weight,
                                   undesirable_weight=cfg.resolved_undesirable_weight)
    right = torch.cat([rg > 0, rb < 0]).float()
    metrics.update(kl=kl, reward_accuracy=right.mean())
    if rg.numel():
        metrics["reward_chosen"] = rg.mean()
    if rb.numel():
        metrics["reward_rejected"] = rb.mean()
    if rg.numel() and rb.numel():
        metrics["reward_margin"] = rg.mean() - rb.mean()
    return loss, metrics


@torch.no_grad()
def precompute_reference(trainer: PreferenceTrainer, rows: list[dict], stage: str) -> None:
    """Reference log-probs of every row, computed once with the model as loaded (full fine-tuning: the
    reference is the starting model, and no second copy is kept). Stored in each row as `ref`."""
    model, collator = trainer.model, trainer.data_collator
    was_training = model.training
    model.eval()
    step = max(1, trainer.args.per_device_eval_batch_size)
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        batch = trainer._prepare_inputs(collator([{k: v for k, v in r.items() if k != "ref"} for r in chunk]))
        with trainer.autocast_smart_context_manager():
            if stage in PAIRED:
                lp = completion_logps(model, batch)[0].tolist()
                n = len(chunk)
                refs = list(zip(lp[:n], lp[n:], strict=True))
            else:
                lp = completion_logps(model, batch)[0].tolist()
                kl = completion_logps(model, batch["kl_batch"])[0].tolist()
                refs = list(zip(lp, kl, strict=True))
        for r, ref in zip(chunk, refs, strict=True):
            r["ref"] = list(ref)
    model.train(was_training)


# ---------------------------------------------------------------------------- records


class PreferenceRecorder(RunRecorder):
    """metrics.jsonl and loss.png as for SFT, plus rewards.png: reward accuracy (train and eval) by step."""

    def plot(self) -> None:
        super().plot()
        plot_rewards(self.history, self.output / REWARD_PLOT)


def plot_rewards(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for key, style, label in (("reward_accuracy", "-", "train"), ("eval_reward_accuracy", "o-", "eval")):
        points = [(r["step"], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points), style, label=f"{label} reward accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("reward accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    save_figure(fig, path)


# ---------------------------------------------------------------------------- the run


def run_preference(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on preference data with cfg.stage; returns the summary (also summary.json)."""
    from accelerate import PartialState

    dist = PartialState()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    console = Console(stderr=True, quiet=not dist.is_main_process)

    def say(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    # ---- setup
    check_quantization_available(cfg.quantization)
    spec = find_spec(cfg.model)
    if is_vision(spec):
        raise UserError(f"--stage {cfg.stage} trains text models in this version; {cfg.model} is a vision-language "
                        "model (train it with --stage sft, or pick a text model from `mmtune models`)")
    out = Path(cfg.output)
    resume_from = check_output(out, overwrite=cfg.overwrite, resume=cfg.resume)  # nothing is written yet
    created = not out.exists()
    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    tokenizer = load_tokenizer(cfg.model)
    data = build_preference_datasets(cfg, tokenizer, say, spec)
    model = apply_method(load_for_training(cfg, precision), cfg)
    trainable, total = count_params(model)
    reference = ("none" if not uses_reference(cfg.stage) else "the base model (adapter switched off)"
                 if cfg.uses_lora else "the starting model, log-probs computed once before training")
    say(f"{cfg.stage} ({cfg.method}) on {cfg.model}: {data.stats.train_rows} training "
        f"{'pairs' if cfg.stage in PAIRED else 'rows'}, {data.stats.val_rows} validation; training {trainable:,} of "
        f"{total:,} parameters ({100 * trainable / total:.2f}%), precision {precision}; reference: {reference}")
    recorder = PreferenceRecorder(cfg.output)
    try:  # the output folder appears from here on
        trainer = build_preference_trainer(cfg, model, tokenizer, data, precision, [recorder, RichProgress(console)])
        if uses_reference(cfg.stage) and not cfg.uses_lora:
            precompute_reference(trainer, data.train, cfg.stage)
            if data.val is not None:
                precompute_reference(trainer, data.val, cfg.stage)
        prepare_output(cfg, dist.is_main_process, resume_from, extra=(REWARD_PLOT, REWARD_PLOT + ".tmp"))
        if dist.is_main_process:
            cfg.save(cfg.output)
        # ---- train
        if resume_from:
            say(f"resuming from {resume_from}")
        result = trainer.train(resume_from_checkpoint=resume_from)
        # ---- save
        save_model(trainer, out, dist.is_main_process)
    except BaseException:
        if dist.is_main_process:
            discard_failed(out, created)  # nothing trained yet: no folder (or files) of ours left behind
        raise
    summary = make_summary(cfg, trainer, result.metrics, recorder, data, (trainable, total), resume_from)
    summary["stage"] = cfg.stage
    for key in ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected", "kl"):
        for prefix in ("", "eval_"):
            value = recorder.last(prefix + key)
            if value is not None and math.isfinite(value):
                summary[f"final_{prefix}{key}"] = value
    if dist.is_main_process:
        finish_output(cfg, summary, recorder)
        print_summary(console, summary)
    dist.wait_for_everyone()
    return summary


def build_preference_trainer(cfg: TrainConfig, model, tokenizer, data: Datasets, precision: str,
                             callbacks: list[TrainerCallback]) -> PreferenceTrainer:
    has_eval = data.val is not None and cfg.eval_strategy != "no"
    packed = packs(cfg, model)
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(cfg, precision, has_eval, packed),
        train_dataset=data.train,
        eval_dataset=data.val,
        data_collator=PreferenceCollator(tokenizer.pad_token_id, pack=packed),
        processing_class=tokenizer,
        callbacks=[*callbacks, FinishLine(has_eval), SaveMeta(cfg)],
        cfg=cfg,
    )
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    return trainer
