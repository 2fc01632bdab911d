"""DPO speed and memory, side by side: mmtune's `--stage dpo` vs TRL's `DPOTrainer` on its defaults.

Both train the same model with the same LoRA (rank, alpha, dropout, all-linear), AdamW, learning
rate, schedule, batch size, seed and number of steps, on the same generated preference pairs
(conversational prompt / chosen / rejected; mmtune reads them from a jsonl file, TRL from a
datasets.Dataset of the same rows). Both use the LoRA model with its adapter switched off as the
reference. What differs is how they run:

  mmtune  `mmtune train --stage dpo` (chosen and rejected packed into one padding-free row,
          output layer only where a completion token is predicted, no gradient checkpointing)
  trl     `DPOTrainer` with `DPOConfig` defaults for everything not listed above (its own
          tokenization, padding, gradient checkpointing and metrics)

They run one after another in this process (--order); the load average is printed around each, and the
table gives each run's 1-minute load at its start and end (a shared machine's figures depend on it).
Time is the Trainer's train_runtime (training only: no loading, no tokenization).

    nice python bench/dpo.py                      # SmolLM2-135M, 64 pairs, batch 8, 8 steps
    nice python bench/dpo.py --steps 16 --order trl,mmtune
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import WORDS, PeakRSS, load_now, release_memory  # noqa: E402


def make_pairs(n: int, seed: int) -> list[dict]:
    """Prompt + two answers of 8-40 words: the chosen one signed, the rejected one curt."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for _ in range(n):
        prompt = words(rng.randint(6, 20)).capitalize() + "?"
        body = words(rng.randint(8, 40)).capitalize() + "."
        rows.append({"prompt": [{"role": "user", "content": prompt}],
                     "chosen": [{"role": "assistant", "content": body + " Yours, Mochi."}],
                     "rejected": [{"role": "assistant", "content": words(rng.randint(4, 30)).capitalize() + "."}]})
    return rows


def run_mmtune(a, data: Path, out: Path) -> dict:
    from mmtune.config import resolve_config
    from mmtune.train.preference import run_preference

    cfg = resolve_config({"model": a.model, "data": [str(data)], "output": str(out), "stage": "dpo",
                          "beta": a.beta, "max_steps": a.steps, "batch_size": a.batch_size, "learning_rate": a.lr,
                          "lora_rank": a.lora_rank, "lora_alpha": a.lora_alpha, "lora_dropout": a.lora_dropout,
                          "lora_targets": ["all-linear"], "max_length": 1024, "logging_steps": 1,
                          "save_strategy": "no", "seed": a.seed, "data_cache": False})
    with PeakRSS() as mem:
        summary = run_preference(cfg)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return {"name": "mmtune", "runtime_s": summary["train_runtime_s"], "tokens": summary["input_tokens"],
            "peak_rss": mem.peak, "peak_gpu": mem.gpu, "first_loss": losses[0], "final_loss": losses[-1],
            "final_reward_accuracy": summary.get("final_reward_accuracy")}


def run_trl(a, rows: list[dict], out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from mmtune.models.loader import load_tokenizer, resolve_model_path

    tok = load_tokenizer(a.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(a.model), dtype=torch.float32)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                     max_steps=a.steps, beta=a.beta, lr_scheduler_type="cosine", seed=a.seed, data_seed=a.seed,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available())
    peft = LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft)
    with PeakRSS() as mem:
        result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    acc = [e["rewards/accuracies"] for e in trainer.state.log_history if "rewards/accuracies" in e]
    return {"name": "trl", "runtime_s": result.metrics["train_runtime"],
            "tokens": int(trainer.state.num_input_tokens_seen or 0), "peak_rss": mem.peak, "peak_gpu": mem.gpu,
            "first_loss": losses[0], "final_loss": losses[-1], "final_reward_accuracy": acc[-1] if acc else None,
            "gradient_checkpointing": args.gradient_checkpointing}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--order", default="mmtune,trl")
    a = p.parse_args()

    rows = make_pairs(a.pairs, a.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for name in a.order.split(","):
            start_load = load_now()
            print(f"[{time.strftime('%H:%M:%S')}] {name}: load {start_load}", file=sys.stderr)
            release_memory()
            results[name] = run_mmtune(a, data, Path(tmp) / "mmtune") if name == "mmtune" else \
                run_trl(a, rows, Path(tmp) / "trl")
            results[name]["load"] = f"{start_load.split()[0]} -> {load_now().split()[0]}"
            print(f"[{time.strftime('%H:%M:%S')}] {name} done: load {load_now()}", file=sys.stderr)
    print(f"\nDPO, {a.model}, LoRA r{a.lora_rank} all-linear, {a.steps} steps x {a.batch_size} pairs "
          f"({a.pairs} generated pairs), {'GPU' if torch.cuda.is_available() else 'CPU'}, torch {torch.__version__}")
    print(f"{'':8}{'train s':>10}{'s/step':>9}{'peak RSS':>11}{'peak GPU':>10}{'loss first->last':>20}"
          f"{'reward acc':>12}  load (1 min, start -> end)")
    for r in results.values():
        gpu = f"{r['peak_gpu'] / 2**30:.2f} G" if r["peak_gpu"] else "-"
        acc = f"{r['final_reward_accuracy']:.2f}" if r["final_reward_accuracy"] is not None else "-"
        print(f"{r['name']:8}{r['runtime_s']:>10.1f}{r['runtime_s'] / a.steps:>9.2f}"
              f"{r['peak_rss'] / 2**30:>9.2f} G{gpu:>10}{r['first_loss']:>10.4f} ->{r['final_loss']:>7.4f}{acc:>12}"
              f"  {r['load']}")
    if {"mmtune", "trl"} <= results.keys():
        m, t = results["mmtune"], results["trl"]
        print(f"\nspeed: mmtune {t['runtime_s'] / m['runtime_s']:.2f}x TRL's DPOTrainer (same steps); "
              f"peak RSS {m['peak_rss'] / 2**30:.2f} G vs {t['peak_rss'] / 2**30:.2f} G"
              + (f"; peak GPU {m['peak_gpu'] / 2**30:.2f} G vs {t['peak_gpu'] / 2**30:.2f} G" if m["peak_gpu"] else ""))
        print(f"TRL ran with gradient_checkpointing={t['gradient_checkpointing']} (its default)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
