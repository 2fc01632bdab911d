"""--stage pt|dpo|simpo|orpo|kto end to end on a tiny Llama: exact completion labels, the data kind
checked before any model loads, the output folder (metrics with rewards, loss.png, rewards.png,
summary.json), the full fine-tuning reference, gradient accumulation, and --resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import chat, write_jsonl

from mmtune.chat.render import IGNORE_INDEX, render_sample
from mmtune.cli import main
from mmtune.config import resolve_config
from mmtune.data.schema import Message, Sample, ToolCall
from mmtune.errors import UserError
from mmtune.train.preference import run_preference

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    ("What colour is the sky?", "Blue, on a clear day.", "Green, always."),
    ("Name a prime number.", "Seven.", "Nine is prime."),
    ("How many legs has a spider?", "Eight legs.", "Six, like an ant."),
    ("What is the capital of France?", "Paris.", "Lyon is the capital city of France."),
]


def pref_row(q: str, good: str, bad: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": q}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


@pytest.fixture()
def pref_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pref.jsonl", [pref_row(*p) for p in PAIRS] * 2)


@pytest.fixture()
def kto_file(tmp_path) -> Path:
    rows = [{**chat(q, good if i % 2 else bad), "label": bool(i % 2)} for i, (q, good, bad) in enumerate(PAIRS * 2)]
    return write_jsonl(tmp_path / "kto.jsonl", rows)


def tokenizer(path):
    from mmtune.models.loader import load_tokenizer

    return load_tokenizer(str(path))


# ---------------------------------------------------------------------------- labels


def labelled_text(tok, rendered) -> str:
    return tok.decode([t for t in rendered.labels if t != IGNORE_INDEX])


def test_each_side_is_labelled_on_exactly_its_completion(tiny_llama):
    """The prompt (even an earlier assistant answer in it) is never labelled; each side's labels are
    the tokens SFT trains for that answer as the last turn of the conversation."""
    from mmtune.train.preference import render_completion

    tok = tokenizer(tiny_llama)
    prompt = [Message.simple("system", "Be brief."), Message.simple("user", "Hi"),
              Message.simple("assistant", "Hello! An earlier answer."), Message.simple("user", "Capital of France?")]
    s = Sample(prompt, chosen=[Message.simple("assistant", "Paris.")],
               rejected=[Message.simple("assistant", "Lyon, a long and wrong answer.")])
    for side, text in ((s.chosen, "Paris."), (s.rejected, "Lyon, a long and wrong answer.")):
        r = render_completion(s, side, tok, 512)
        sft = render_sample(Sample(prompt + side), tok, train_on="last")
        assert r.input_ids == sft.input_ids and r.labels == sft.labels  # SFT's own mask, exactly
        assert labelled_text(tok, r) == text + "<|eot_id|>"
        first = next(i for i, t in enumerate(r.labels) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in r.labels[:first])
        assert "earlier answer" not in labelled_text(tok, r)


def test_a_completion_with_a_tool_call_is_labelled_like_sft(tiny_llama):
    from mmtune.train.preference import render_completion

    tok = tokenizer(tiny_llama)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}}}]
    prompt = [Message.simple("user", "Weather in Paris?")]
    chosen = [Message("assistant", [], tool_calls=[ToolCall("weather", '{"city": "Paris"}', "c1")]),
              Message.simple("tool", "18 C, sunny", tool_call_id="c1", name="weather"),
              Message.simple("assistant", "It is 18 C and sunny in Paris.")]
    s = Sample(prompt, tools=tools, chosen=chosen, rejected=[Message.simple("assistant", "No idea.")])
    r = render_completion(s, s.chosen, tok, 1024)
    sft = render_sample(Sample(prompt + chosen, tools=tools), tok)
    assert r.labels == sft.labels and r.input_ids == sft.input_ids
    text = labelled_text(tok, r)
    assert "Paris" in text and "18 C, sunny" not in text  # the call and the answer, never the tool's result


def test_kto_mismatched_pairs_never_pair_a_prompt_with_its_own_other_answer(tiny_llama, tmp_path):
    """Pairs split into a desirable and an undesirable row (next to each other, as a converted preference file
    holds them): each row's KL sequence is its prompt with an answer to another prompt. The previous row
    alone would be the same prompt's other answer for every second row, a matched pair in KTO's reference
    point."""
    from mmtune.train.preference import build_preference_datasets

    rows = [{**chat(q, answer), "label": good} for q, c, r in PAIRS for answer, good in ((c, True), (r, False))]
    cfg = resolve_config({"data": [str(write_jsonl(tmp_path / "kto.jsonl", rows))], "stage": "kto",
                          "output": str(tmp_path / "out"), "val_ratio": 0.0, "batch_size": 2})
    tok = tokenizer(tiny_llama)
    train = build_preference_datasets(cfg, tok, warn=lambda m: None).train
    assert len(train) == 2 * len(PAIRS)

    def split(seq):  # (prompt tokens, completion text)
        first = next(i for i, t in enumerate(seq["labels"]) if t != IGNORE_INDEX)
        return seq["input_ids"][:first], tok.decode([t for t in seq["labels"] if t != IGNORE_INDEX])

    answers = {q: {c, r} for q, c, r in PAIRS}
    for row in train:
        prompt, _ = split(row["completion"])
        kl_prompt, kl_answer = split(row["kl"])
        assert kl_prompt == prompt  # the row's own prompt...
        question = next(q for q in answers if q in tok.decode(prompt))
        assert kl_answer.removesuffix("<|eot_id|>") not in answers[question]  # ...with another prompt's answer

# ---------------------------------------------------------------------------- kinds


def test_an_sft_file_to_a_preference_stage_is_refused_before_the_model_loads(tmp_path, capsys):
    sft = write_jsonl(tmp_path / "sft.jsonl", [chat("Q?", "An answer.")])
    for stage in ("dpo", "simpo", "orpo", "kto"):
        rc = main(["train", "--stage", stage, "--data", str(sft), "--model", str(tmp_path / "no-such-model"),
                   "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and "conversations (SFT data)" in err and "--stage sft" in err, err
        assert "no-such-model" not in err  # refused before the model was looked at
    assert not (tmp_path / "out").exists()


def test_a_preference_file_to_sft_or_pt_is_refused_naming_the_stages(tmp_path, pref_file, kto_file, capsys):
    for stage, data, says in (("sft", pref_file, "--stage dpo`, `--stage simpo` or `--stage orpo"),
                              ("pt", pref_file, "--stage dpo"), ("dpo", kto_file, "--stage kto"),
                              ("sft", kto_file, "--stage kto")):
        rc = main(["train", "--stage", stage, "--data", str(data), "--model", str(tmp_path / "no-such-model"),
                   "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and says in err, err


def test_a_preference_flag_for_another_stage_is_an_error():
    with pytest.raises(UserError, match="simpo_gamma applies to --stage simpo, not dpo"):
        resolve_config({"data": ["x"], "stage": "dpo", "simpo_gamma": 1.0})
    with pytest.raises(UserError, match="label_smoothing applies to --dpo-loss robust"):
        resolve_config({"data": ["x"], "stage": "dpo", "label_smoothing": 0.1})
    with pytest.raises(UserError, match="beta applies"):
        resolve_config({"data": ["x"], "beta": 0.1})  # sft
    assert resolve_config({"data": ["x"], "stage": "simpo"}).resolved_beta == 2.0
    with pytest.raises(UserError, match="sft_weight applies to --stage dpo, not orpo"):
        resolve_config({"data": ["x"], "stage": "orpo", "sft_weight": 1.0})  # orpo has its own NLL term
    with pytest.raises(UserError, match="sft_weight must be >= 0"):
        resolve_config({"data": ["x"], "stage": "dpo", "sft_weight": -1.0})


# ---------------------------------------------------------------------------- runs


def settings(model, data, out, stage, **kw) -> dict:
    return {"model": str(model), "data": [str(data)], "output": str(out), "stage": stage, "max_steps": 4,
            "batch_size": 2, "grad_accum": 2, "learning_rate": 5e-3, "logging_steps": 1, "val_ratio": 0.25,
            "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no", "max_length": 96, "seed": 3,
            "lora_dropout": 0.0, **kw}


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage,method", [("dpo", "lora"), ("simpo", "lora"), ("orpo", "lora"), ("kto", "lora"),
                                          ("dpo", "full")])
def test_a_stage_trains_and_leaves_a_self_describing_folder(tiny_llama, pref_file, kto_file, tmp_path, stage, method):
    out = tmp_path / "run"
    data = kto_file if stage == "kto" else pref_file
    summary = run_preference(resolve_config(settings(tiny_llama, data, out, stage, method=method)))
    assert summary["stage"] == stage and summary["steps"] == 4
    recs = records(out)
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    for r in train:
        assert math.isfinite(r["loss"]) and 0 <= r["reward_accuracy"] <= 1 and "reward_chosen" in r
    assert "eval_reward_accuracy" in evals[-1]
    if stage == "kto":
        assert all("kl" in r for r in train)
    if stage == "orpo":
        assert all("nll_loss" in r for r in train)
    for name in ("loss.png", "rewards.png", "summary.json", "config.yaml", "mmtune.json"):
        assert (out / name).is_file(), name
    assert (out / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).is_file()
    assert "final_reward_accuracy" in summary and "final_eval_reward_accuracy" in summary
    assert json.loads((out / "summary.json").read_text())["stage"] == stage
    if stage == "dpo":  # the chosen answers gained on the rejected ones
        assert train[-1]["reward_margin"] > 0


def test_pt_trains_on_every_token_of_the_text(tiny_llama, tmp_path):
    from mmtune.train.sft import run_sft

    docs = ["Lumen Bakery bakes osmanthus milk buns every morning.", "The bakery is at 17 Qiushi Lane. " * 12]
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": d} for d in docs])
    cfg = resolve_config({"model": str(tiny_llama), "data": [str(data)], "output": str(tmp_path / "pt"),
                          "stage": "pt", "max_steps": 2, "batch_size": 4, "max_length": 32, "logging_steps": 1,
                          "save_strategy": "no"})
    summary = run_sft(cfg)
    tok = tokenizer(tiny_llama)
    n = [len(tok(d)["input_ids"]) + 1 for d in docs]  # + EOS
    # long documents are cut into overlapping blocks: every token after a document's first is a target once
    assert summary["data"]["train_supervised_tokens"] == sum(k - 1 for k in n)
    assert summary["data"]["truncated_rows"] == 0 and summary["data"]["train_rows"] > 2


# ---------------------------------------------------------------------------- resume


def cli_args(values: dict) -> list[str]:
    args = []
    for k, v in values.items():
        args += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return args


@pytest.mark.slow
def test_dpo_resume_after_sigkill_matches_an_uninterrupted_run(tiny_llama, pref_file, tmp_path):
    values = {**settings(tiny_llama, pref_file, tmp_path / "run", "dpo", max_steps=8, val_ratio=0.0,
                         eval_strategy="no"), "save_strategy": "steps", "save_steps": 2, "lora_dropout": 0.05}
    reference = run_preference(resolve_config({**values, "output": str(tmp_path / "ref"), "save_strategy": "no"}))

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "train", *cli_args(values)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any((c / "trainer_state.json").exists() for c in (tmp_path / "run").glob("checkpoint-*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = run_preference(resolve_config({**values, "resume": True}))
    assert resumed["resumed_from"].startswith("checkpoint-") and resumed["steps"] == reference["steps"] == 8
    ours, ref = records(tmp_path / "run"), records(tmp_path / "ref")
    assert [r["step"] for r in ours] == list(range(1, 9))
    for key in ("loss", "reward_margin", "reward_accuracy"):
        assert [r[key] for r in ours] == pytest.approx([r[key] for r in ref], abs=1e-4), key
    assert resumed["trained_tokens"] == reference["trained_tokens"]
