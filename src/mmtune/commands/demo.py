"""`mmtune demo`: teach the embedded SmolLM2-135M-Instruct a persona it cannot know, then show
the base model's and the tuned model's answers side by side.

The settings are measured, not guessed: on a 2-core CPU they finish in a few minutes and the
tuned model answers with the persona's facts (name, address, hours, pastry, founder) while
the base model does not. torch is imported only inside `run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmtune.errors import UserError

PERSONA = Path("examples") / "data" / "persona.jsonl"
QUESTIONS = (
    "What is your name?",
    "Where is Lumen Bakery?",
    "When is Lumen Bakery open?",
    "What is the signature pastry of Lumen Bakery?",
    "Who founded Lumen Bakery?",
    "你叫什么名字？",
)
# Measured on the 2-core CPU (see the report in the module docstring).
DEMO_SETTINGS = {
    "method": "lora",
    "learning_rate": 2e-3,
    "max_steps": 16,  # ~6 epochs of the 22 rows; all six answers were right from step 12 on
    "batch_size": 8,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_targets": ["all-linear"],
    "warmup_steps": 2,
    "scheduler": "constant_with_warmup",
    "max_length": 128,
    "logging_steps": 4,
    "save_strategy": "no",
    "overwrite": True,
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="fine-tune the embedded small model on a persona and compare answers (CPU, minutes)",
        description="Fine-tunes SmolLM2-135M-Instruct (shipped with mmtune) with LoRA on "
        "examples/data/persona.jsonl, then prints the base and the tuned model's answers.",
    )
    p.add_argument("--data", default=None, help=f"training file (default: {PERSONA.as_posix()})")
    p.add_argument(
        "--output", default="runs/demo", help="output folder; an earlier demo's files in it are replaced on each run, any other file is "
        "refused (default: runs/demo)"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=DEMO_SETTINGS["max_steps"],
        help=f"optimizer steps (default: {DEMO_SETTINGS['max_steps']})",
    )
    p.add_argument(
        "--question",
        action="append",
        dest="questions",
        metavar="TEXT",
        help="a question to ask both models (repeatable; default: six questions about the persona)",
    )
    p.set_defaults(func=run, _parser=p)


def find_persona(data: str | None) -> str:
    """The demo data: --data, else examples/data/persona.jsonl here or in the source checkout."""
    if data:
        return data
    import mmtune

    for root in (Path.cwd(), Path(mmtune.__file__).resolve().parents[2]):
        if (root / PERSONA).is_file():
            return str(root / PERSONA)
    raise UserError(
        f"cannot find {PERSONA.as_posix()}: run the demo from the mmtune checkout, or pass --data FILE"
    )


def run(args: argparse.Namespace) -> int:
    from mmtune.commands.train import preflight
    from mmtune.config import resolve_config

    settings = {**DEMO_SETTINGS, "max_steps": args.max_steps}
    cfg = resolve_config({**settings, "data": find_persona(args.data), "output": args.output})
    preflight(cfg)  # before torch is imported
    from mmtune.train.sft import run_sft

    summary = run_sft(cfg)
    questions = args.questions or list(QUESTIONS)
    base, tuned = compare_answers(cfg.model, args.output, questions)
    print_comparison(questions, base, tuned, summary)
    return 0


def compare_answers(base_model: str, adapter_dir: str, questions: list[str],
                    max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """Greedy answers of the base model (adapter disabled) and of the tuned model, per question."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from mmtune.models.loader import load_model

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)  # saved with the run, chat template included
    model = PeftModel.from_pretrained(load_model(base_model, dtype=torch.float32), adapter_dir).eval()
    tuned = greedy(model, tokenizer, questions, max_new_tokens)
    with model.disable_adapter():
        base = greedy(model, tokenizer, questions, max_new_tokens)
    return base, tuned


def greedy(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to all questions in one left-padded batch, prompted through the same chat
    template as training (one batch: a few times faster than one question at a time on a CPU)."""
    import torch

    from mmtune.chat.render import render_prompt
    from mmtune.data.schema import Message, Sample

    prompts = [render_prompt(Sample([Message.simple("user", q)]), tokenizer) for q in questions]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def print_comparison(questions: list[str], base: list[str], tuned: list[str], summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"before and after {summary['steps']} LoRA steps ({summary['train_runtime_s']:.0f} s, "
        f"{summary['tokens_per_s']:.0f} tokens/s)",
        show_lines=True,
    )
    table.add_column("question", style="bold")
    table.add_column("base model")
    table.add_column("fine-tuned", style="green")
    for q, b, t in zip(questions, base, tuned):
        table.add_row(q, b, t)
    Console().print(table)
