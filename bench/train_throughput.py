"""Training speed, side by side: mmtune vs TRL's SFTTrainer vs a plain transformers Trainer + PEFT.

All three train the same model with the same LoRA config (all-linear), AdamW, learning-rate
schedule, seed, data order and the same tokens: the generated chat data is rendered once by
mmtune, and the very same input_ids and labels (-100 outside assistant answers) go to every
trainer, so they compute the same loss on the same tokens. What differs is how they run:

  mmtune  `run_sft` as `mmtune train` runs it (packing, per-sequence attention, head and loss
          on supervised positions only, no gradient checkpointing)
  trl     `SFTTrainer` on its defaults for these settings (gradient checkpointing on, padded
          batches, its extra entropy/accuracy metrics) with the pre-tokenized rows
  plain   `Trainer` + PEFT, dynamic padding (DataCollatorForSeq2Seq), no gradient checkpointing

The three run one after another in this one process (order: --order), so machine load hits them
alike; the load average is printed before and after each. FLOPs are counted the same way for
all (mmtune.train.throughput: 4N per real token for LoRA, 6N for full, plus causal attention),
against this machine's peak measured here with a large fp32 matmul (bf16 on a GPU).

    python bench/train_throughput.py                     # SmolLM2-135M, 64 rows, batch 8, 8 steps
    python bench/train_throughput.py --trl-steps 8 --order plain,mmtune,trl
    python bench/train_throughput.py --random-like qwen2.5-0.5b-instruct --rows 256 --max-length 1024   # a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

WORDS = ("the of and to in is for on that with as by at from it this be are was or an which we can not your "
         "bakery order delivery address refund account password invoice shipping warranty battery screen "
         "model data train loss step token answer question system user please thanks help check update "
         "because while before after during between about above under again further then once here there "
         "when where why how all any both each few more most other some such only own same so than too very").split()


# ---------------------------------------------------------------------------- data


def words(rng: random.Random, mean_log: float, sigma: float, cap: int) -> str:
    n = max(1, min(cap, int(rng.lognormvariate(mean_log, sigma))))
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_rows(n: int, seed: int) -> list[dict]:
    """Chat rows shaped like real SFT data: log-normal prompt and answer lengths, a system prompt
    on most rows, and some multi-turn conversations."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.7:
            messages.append({"role": "system", "content": words(rng, 2.8, 0.4, 40)})
        for _turn in range(1 if rng.random() < 0.75 else rng.choice((2, 3))):
            messages.append({"role": "user", "content": words(rng, 3.0, 0.7, 120)})
            messages.append({"role": "assistant", "content": words(rng, 3.6, 0.7, 200)})
        rows.append({"messages": messages})
    return rows


# ---------------------------------------------------------------------------- measuring


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident set size while the block runs (sampled every 20 ms), and on a GPU the
    highest memory torch allocated there (`gpu`, None without one)."""

    def __enter__(self):
        self.peak, self._stop, self.gpu = rss_bytes(), threading.Event(), None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if torch.cuda.is_available():
            self.gpu = torch.cuda.max_memory_allocated()


class CountingCollator:
    """Wraps a collator and counts what the model is fed: real tokens, supervised targets, attention pairs."""

    def __init__(self, inner):
        self.inner, self.tokens, self.supervised, self.pairs = inner, 0, 0, 0

    def __call__(self, features):
        for f in features:
            n = len(f["input_ids"])
            self.tokens += n
            self.pairs += n * (n + 1) // 2
            self.supervised += sum(1 for x in list(f["labels"])[1:] if x != -100)
        return self.inner(features)


@dataclass
class Result:
    name: str
    steps: int
    runtime_s: float
    tokens: int
    supervised: int
    pairs: int
    peak_rss: int
    peak_gpu: int | None
    first_loss: float
    final_loss: float
    note: str = ""


def release_memory() -> None:
    """Free what the previous trainer left, and hand freed heap back to the OS, so each run's peak
    RSS starts from the same floor (they share this process)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train_losses(log_history: list[dict]) -> list[float]:
    return [e["loss"] for e in log_history if "loss" in e]


# ---------------------------------------------------------------------------- the three trainers


def common_args(a) -> dict:
    return dict(per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1, learning_rate=a.lr,
                lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, seed=a.seed, data_seed=a.seed,
                logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(), bf16=a.precision == "bf16", remove_unused_columns=False)


def lora_config(a):
    from peft import LoraConfig

    return LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


def load_base(a):
    from transformers import AutoModelForCausalLM

    from mmtune.models.loader import resolve_model_path

    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(a.model), dtype=dtype)
    model.config.use_cache = False
    return model.to("cuda") if torch.cuda.is_available() else model


def random_model(name: str, tokenizer_from: str, layers: int | None, folder: Path, seed: int) -> Path:
    """A randomly initialised model with the shape of registry entry `name` (its vocabulary size
    too, so the output layer costs what it does for real), saved with `tokenizer_from`'s tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmtune.models.loader import load_tokenizer
    from mmtune.models.registry import find_spec

    spec = find_spec(name)
    if spec is None or spec.kind != "text" or spec.mla is not None:
        raise SystemExit(f"--random-like {name}: give a text model from `mmtune models` (not MLA)")
    tokenizer = load_tokenizer(tokenizer_from)
    config = AutoConfig.for_model(
        spec.model_type, hidden_size=spec.hidden_size, num_hidden_layers=layers or spec.num_layers,
        intermediate_size=spec.intermediate_size, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim or spec.hidden_size // spec.num_heads,
        vocab_size=max(spec.vocab_size, len(tokenizer)), tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    print(f"random {spec.model_type} shaped like {name}: {config.num_hidden_layers} layers, {n / 1e9:.3f}B "
          f"parameters, in {folder}")
    return folder


def run_mmtune(a, data_file: Path, rows, work: Path) -> tuple[Result, dict]:
    from mmtune.config import resolve_config
    from mmtune.train import sft

    cfg = resolve_config({"model": a.model, "data": [str(data_file)], "output": str(work / "mmtune"),
                          "max_steps": a.steps, "batch_size": a.batch_size, "learning_rate": a.lr,
                          "scheduler": "cosine", "lora_rank": a.lora_rank, "lora_alpha": a.lora_alpha,
                          "lora_dropout": a.lora_dropout, "lora_targets": ["all-linear"], "max_length": a.max_length,
                          "seed": a.seed, "precision": a.precision, "logging_steps": 1, "save_strategy": "no",
                          "overwrite": True})
    counter: dict[str, CountingCollator] = {}
    original = sft.build_trainer

    def counted(*args, **kw):  # count what mmtune's collator is fed, like the others
        trainer = original(*args, **kw)
        trainer.data_collator = counter.setdefault("c", CountingCollator(trainer.data_collator))
        return trainer

    sft.build_trainer = counted
    try:
        with PeakRSS() as rss:
            summary = sft.run_sft(cfg)
    finally:
        sft.build_trainer = original
    losses = [json.loads(x)["loss"] for x in (work / "mmtune" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    c = counter["c"]
    return Result("mmtune", summary["steps"], summary["train_runtime_s"], c.tokens, c.supervised, c.pairs, rss.peak,
                  rss.gpu, losses[0], losses[-1]), summary


def run_plain(a, rows, work: Path) -> Result:
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from mmtune.models.loader import load_tokenizer

    tokenizer = load_tokenizer(a.model)
    with PeakRSS() as rss:
        model = get_peft_model(load_base(a), lora_config(a))
        collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        args = TrainingArguments(output_dir=str(work / "plain"), max_steps=a.steps, **common_args(a))
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        metrics = trainer.train().metrics
    losses = train_losses(trainer.state.log_history)
    return Result("plain", trainer.state.global_step, metrics["train_runtime"], collator.tokens, collator.supervised,
                  collator.pairs, rss.peak, rss.gpu, losses[0], losses[-1])


def run_trl(a, rows, work: Path) -> Result:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mmtune.models.loader import load_tokenizer

    tokenizer = load_tokenizer(a.model)
    with PeakRSS() as rss:
        args = SFTConfig(output_dir=str(work / "trl"), max_steps=a.trl_steps, max_length=a.max_length,
                         **common_args(a))
        trainer = SFTTrainer(model=load_base(a), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora_config(a))
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        metrics = trainer.train().metrics
    losses = train_losses(trainer.state.log_history)
    gc_on = trainer.args.gradient_checkpointing
    return Result("trl", trainer.state.global_step, metrics["train_runtime"], counter.tokens, counter.supervised,
                  counter.pairs, rss.peak, rss.gpu, losses[0], losses[-1],
                  note=f"gradient checkpointing {'on' if gc_on else 'off'}")


# ---------------------------------------------------------------------------- report


def flops_of(r: Result, per_token: float, per_pair: float) -> float:
    return per_token * r.tokens + per_pair * r.pairs


def print_table(results: list[Result], per_token: float, per_pair: float, peak: float, head_weights: int = 0) -> None:
    mm = next((r for r in results if r.name == "mmtune"), None)
    on_gpu = any(r.peak_gpu is not None for r in results)
    gpu_head = f" {'peak GPU':>9}" if on_gpu else ""
    head = (f"{'trainer':8} {'steps':>5} {'loop s':>8} {'sup tok/s':>10} {'vs':>6} {'tok/s':>8} {'GFLOP/s':>8} "
            f"{'MFU':>6} {'peak RSS':>9}{gpu_head} {'loss@1':>8} {'final':>8}  note")
    print(head)
    print("-" * len(head))
    for r in results:
        sps = r.supervised / r.runtime_s
        ratio = f"{(mm.supervised / mm.runtime_s) / sps:.2f}x" if mm and r is not mm else "-"
        fl = flops_of(r, per_token, per_pair) / r.runtime_s
        print(f"{r.name:8} {r.steps:>5} {r.runtime_s:>8.1f} {sps:>10.1f} {ratio:>6} {r.tokens / r.runtime_s:>8.1f} "
              f"{fl / 1e9:>8.1f} {100 * fl / peak:>5.1f}% {r.peak_rss / 2**30:>7.2f}G"
              f"{f' {(r.peak_gpu or 0) / 2**30:>8.2f}G' if on_gpu else ''} {r.first_loss:>8.4f} "
              f"{r.final_loss:>8.4f}  {r.note}")
    print("'vs' = mmtune's supervised tokens/s divided by this trainer's; MFU = model FLOP/s (4N per real token "
          "for LoRA + causal attention) / measured peak")
    if mm:
        for r in results:
            if r is not mm:
                d1 = abs(r.first_loss - mm.first_loss) / mm.first_loss
                print(f"first-step loss {r.name} vs mmtune: {100 * d1:.2f}% apart"
                      + ("" if r.steps != mm.steps else
                         f"; final: {100 * abs(r.final_loss - mm.final_loss) / mm.final_loss:.2f}% apart"))
        if head_weights:  # the model FLOPs above count the output layer on every token; mmtune runs it on targets only
            model_fl = flops_of(mm, per_token, per_pair)
            run_fl = model_fl - 4 * head_weights * (mm.tokens - mm.supervised)
            print(f"mmtune runs the output layer ({head_weights / 1e6:.1f}M weights) on its {mm.supervised} target positions "
                  f"only, not all {mm.tokens}: the FLOPs it actually executes are {100 * run_fl / model_fl:.1f}% of "
                  f"the model FLOPs counted, a hardware utilisation of {100 * run_fl / mm.runtime_s / peak:.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps for mmtune and plain (8 = one epoch)")
    p.add_argument("--trl-steps", type=int, default=3, help="TRL is slow: fewer steps, per-token figures compared")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--random-like", metavar="NAME",
                   help="instead of --model: a randomly initialised model shaped like this registry entry (e.g. "
                   "qwen2.5-0.5b-instruct), with --model's tokenizer; needs no download (GPU runs)")
    p.add_argument("--layers", type=int, help="with --random-like: this many layers instead of the entry's")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--order", default="mmtune,plain,trl")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    if a.precision == "auto":
        a.precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mmtune.config import resolve_config
    from mmtune.models.loader import load_tokenizer
    from mmtune.train.dataset import build_datasets
    from mmtune.train.throughput import measure_peak_flops, model_flops

    work = Path(tempfile.mkdtemp(prefix="mmtune-bench-"))
    if a.random_like:
        a.model = str(random_model(a.random_like, a.model, a.layers, work / "random", a.seed))
    data_file = work / "chat.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in make_rows(a.rows, a.seed)))
    cfg = resolve_config({"model": a.model, "data": [str(data_file)], "max_length": a.max_length, "seed": a.seed})
    data = build_datasets(cfg, load_tokenizer(a.model), warn=print)  # the tokens every trainer gets
    rows = data.train
    lengths = sorted(len(r["input_ids"]) for r in rows)
    print(f"{len(rows)} rows, tokens/row median {lengths[len(lengths) // 2]}, max {lengths[-1]}, "
          f"{data.stats.train_supervised_tokens} supervised of {data.stats.train_tokens}; "
          f"torch threads {torch.get_num_threads()}, precision {a.precision}")
    peak = measure_peak_flops(a.precision, repeats=8)
    release_memory()
    print(f"measured peak matmul: {peak / 1e9:.1f} GFLOP/s; load average {load_now()}; RSS now "
          f"{rss_bytes() / 2**30:.2f} GiB")
    runners = {"mmtune": lambda: run_mmtune(a, data_file, rows, work)[0], "plain": lambda: run_plain(a, rows, work),
               "trl": lambda: run_trl(a, rows, work)}
    results = []
    for name in a.order.split(","):
        release_memory()
        print(f"--- {name}: load average before {load_now()}", flush=True)
        t = time.perf_counter()
        results.append(runners[name]())
        print(f"--- {name}: {time.perf_counter() - t:.0f} s in all; load average after {load_now()}", flush=True)
    base = load_base(a)
    per_token, per_pair = model_flops(base, full=False)
    head_weights = base.get_output_embeddings().weight.numel()
    print(f"\n{a.model}, LoRA r{a.lora_rank} all-linear, batch {a.batch_size}, max length {a.max_length}, "
          f"{a.precision}; peak {peak / 1e9:.1f} GFLOP/s")
    print_table(results, per_token, per_pair, peak, head_weights)
    if a.json:
        a.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
