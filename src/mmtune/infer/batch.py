"""Batch inference over a data file: predictions written beside their references.

Any format mmtune reads works: each row's last assistant turn is the reference and the
conversation before it is the prompt (`Sample.prompt_and_answer`); rows with no assistant
turn are prompts without a reference. Rows may hold images and videos when the model is a
vision-language model (relative paths resolve against the data file's folder, or
`media_root`); on a text model they are refused with the reason. Rows the checker rejects are listed and refused, or
skipped and counted with `skip_bad_rows`: never dropped silently.

Prompts are generated in batches of similar length (less padding); the output keeps the
file's order, one JSON line per row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.data.reader import ReadOptions, read_samples
from mmtune.data.schema import Sample
from mmtune.errors import UserError

PROMPT_ONLY_RULES = {"no-assistant"}  # an error for training, a plain prompt for inference


@dataclass
class Row:
    line: int
    prompt: Sample
    reference: str | None


def read_rows(
    path: str,
    *,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
    media_root: str | None = None,
    warn: Callable[[str], None] = print,
) -> list[Row]:
    """The file's rows as prompts and references; errors refused unless skipped (and counted)."""
    rows, bad = [], []
    options = ReadOptions(fmt=fmt, media_root=media_root, enforce_root=media_root is not None)
    for r in read_samples(path, options):
        errors = [f for f in r.findings if f.is_error and f.rule not in PROMPT_ONLY_RULES]
        if r.sample is not None and not errors:
            prompt, answer = r.sample.prompt_and_answer()
            rows.append(Row(r.line, prompt, answer.text if answer is not None else None))
        elif errors:
            bad.append((r, errors))
    if bad and not skip_bad_rows:
        listed = "\n".join(
            f"  {path}:{f.line} {f.field or '-'} [{f.rule}] {f.message}" for _, es in bad[:20] for f in es
        )
        raise UserError(
            f"{path} has {len(bad)} bad row(s):\n{listed}\nFix them (`mmtune data check {path}`), "
            "or pass --skip-bad-rows to predict the others"
        )
    if bad:
        warn(f"warning: skipped {len(bad)} bad row(s) (lines {', '.join(str(r.line) for r, _ in bad[:20])})")
    if not rows:
        raise UserError(f"{path} has no usable rows: `mmtune data check {path}` shows why")
    return rows


def predict(
    engine,
    rows: list[Row],
    *,
    batch_size: int = 8,
    model: str | None = None,
    progress: bool = True,
    **gen: Any,
) -> list[dict[str, Any]]:
    """One record per row (file order): prompt, reference, prediction, finish reason, token counts."""
    from rich.progress import Progress

    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    engine.options(**gen)  # bad options fail before any work
    lengths = [engine.prompt_length(r.prompt, model) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    results: list[Any] = [None] * len(rows)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("generating", total=len(rows))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, c in zip(
                chunk, engine.generate_batch([rows[i].prompt for i in chunk], model=model, **gen)
            ):
                results[i] = c
            bar.advance(task, len(chunk))
    return [_record(row, c) for row, c in zip(rows, results)]


def _record(row: Row, c) -> dict[str, Any]:
    from mmtune.data.formats import openai

    return {
        "line": row.line,
        "prompt": openai.dump(row.prompt, [])["messages"],
        "reference": row.reference,
        "prediction": c.text,
        **({"tool_calls": [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                           for t in c.tool_calls]} if c.tool_calls else {}),
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
    }


def write_jsonl(records: list[dict[str, Any]], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out)


def metrics_of(records: list[dict[str, Any]]) -> dict[str, float]:
    """Exact match, BLEU and ROUGE-L over the rows that have a reference."""
    from mmtune.infer.metrics import score

    pairs = [(r["prediction"], r["reference"]) for r in records if r["reference"] is not None]
    if not pairs:
        raise UserError("no row has a reference answer (an assistant turn), so there is nothing to score")
    preds, refs = zip(*pairs)
    return score(preds, refs)


def print_metrics(m: dict[str, float], file=None) -> None:
    print(
        f"exact match {m['exact_match']:.2f}  BLEU {m['bleu']:.2f}  ROUGE-L {m['rouge_l']:.2f}  "
        f"(over {m['n']} rows with a reference)",
        file=file or sys.stdout,
    )
