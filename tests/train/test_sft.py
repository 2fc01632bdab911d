"""run_sft and its parts on a tiny random Llama: targets, what trains, loss, outputs, data accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtune.config import TrainConfig, resolve_config
from mmtune.errors import UserError
from mmtune.models.loader import load_tokenizer
from mmtune.models.registry import LLAMA_LIKE_TARGETS
from mmtune.train.callbacks import plot_loss, record
from mmtune.train.collate import PadCollator
from mmtune.train.dataset import build_datasets, split_samples
from mmtune.train.setup import apply_method, resolve_lora_targets
from mmtune.train.sft import build_trainer, load_for_training, run_sft


def make_cfg(model: Path, data: Path, output: Path, **kw) -> TrainConfig:
    base = {"model": str(model), "data": [str(data)], "output": str(output), "batch_size": 4,
            "learning_rate": 5e-3, "logging_steps": 1, "save_strategy": "no", "max_length": 64}
    return resolve_config({**base, **kw})


# ---------------------------------------------------------------------------- LoRA set-up


def test_lora_targets_default_to_the_registry_then_all_linear(tiny_llama, tmp_path):
    cfg = make_cfg(tiny_llama, tmp_path / "x.jsonl", tmp_path / "out")
    model = load_for_training(cfg, "fp32")
    assert resolve_lora_targets(model, cfg) == list(LLAMA_LIKE_TARGETS)  # tiny llama folder -> llama entry
    cfg.lora_targets = ["all-linear"]
    assert resolve_lora_targets(model, cfg) == "all-linear"
    cfg.lora_targets = ["q_proj", "v_projj"]
    with pytest.raises(UserError, match=r"v_projj are not linear layers.*down_proj.*q_proj"):
        resolve_lora_targets(model, cfg)


def test_all_linear_wraps_every_projection_but_not_the_head(tiny_llama, tmp_path):
    cfg = make_cfg(tiny_llama, tmp_path / "x.jsonl", tmp_path / "out", lora_targets=["all-linear"])
    model = apply_method(load_for_training(cfg, "fp32"), cfg)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == set(LLAMA_LIKE_TARGETS)
    assert not any("lm_head" in n and p.requires_grad for n, p in model.named_parameters())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trained_parameters_change_and_frozen_ones_do_not(method, tiny_llama, repeated_data, tmp_path):
    extra = {"use_dora": True, "max_steps": 2} if method == "lora" else {"max_steps": 8, "learning_rate": 2e-3}
    cfg = make_cfg(tiny_llama, repeated_data, tmp_path / "out", method=method, **extra)
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_for_training(cfg, "fp32"), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = build_trainer(cfg, model, tokenizer, build_datasets(cfg, tokenizer, print), "fp32", [])
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA
    else:
        assert trainable == set(before)
    assert changed == trainable  # every trained tensor moved, no frozen one did
    if method == "full":  # and the loss falls fast on the repeated rows
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert losses[-1] < losses[0] - 0.8, losses


def test_qlora_without_cuda_stops_before_loading(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = resolve_config({"model": str(tmp_path / "no-such-model"), "data": [str(tmp_path / "no.jsonl")],
                          "output": str(tmp_path / "out"), "method": "qlora"})
    with pytest.raises(UserError, match="needs a CUDA GPU"):  # not "model path does not exist"
        run_sft(cfg)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory):
    """One run: 16 rows (4 held out), 12 steps, a checkpoint every 6 steps, at most one kept."""
    tmp = tmp_path_factory.mktemp("run")
    pairs = [("What is your name?", "My name is Mochi."), ("Where is the bakery?", "At 17 Qiushi Lane."),
             ("When do you open?", "At 7 am, every day."), ("Who founded it?", "Lin Yue, in 2019.")]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    cfg = make_cfg(tiny_llama, data, tmp / "out", max_steps=12, val_ratio=0.25, eval_strategy="steps",
                   eval_steps=6, save_strategy="steps", save_steps=6, save_total_limit=1, logging_steps=2)
    return cfg, run_sft(cfg)


def test_output_dir_holds_exactly_the_expected_files(finished_run):
    cfg, _ = finished_run
    out = Path(cfg.output)
    assert {p.name for p in out.iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json", "README.md",  # PEFT's model card
        "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
        "config.yaml", "metrics.jsonl", "loss.png", "summary.json", "mmtune.json", "checkpoint-12",
        "mmtune-manifest.json"}  # every entry above, as the run recorded them
    ckpt = {p.name for p in (out / "checkpoint-12").iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "mmtune.json", "chat_template.jinja"} <= ckpt


def test_run_describes_itself(finished_run):
    cfg, summary = finished_run
    out = Path(cfg.output)
    assert TrainConfig.from_yaml(out / "config.yaml") == cfg
    meta = json.loads((out / "mmtune.json").read_text())
    assert meta["base_model"] == cfg.model and meta["method"] == "lora" and meta["adapter"] is True
    assert meta["mmtune_version"] and meta["complete"] is True
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "{%" in (out / "chat_template.jinja").read_text()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_summary_and_metrics(finished_run):
    cfg, s = finished_run
    assert s["steps"] == 12 and s["train_runtime_s"] > 0 and s["tokens_per_s"] > 0
    # throughput figures: supervised tokens/s, achieved model FLOP/s against the measured peak
    assert s["supervised_tokens_per_s"] == pytest.approx(s["trained_tokens"] / s["train_runtime_s"], rel=0.02)
    assert 0 < s["flops_per_s"] < s["peak_flops_per_s"] and s["mfu"] == pytest.approx(
        s["flops_per_s"] / s["peak_flops_per_s"], abs=1e-4)
    assert s["data"]["train_rows"] == 12 and s["data"]["val_rows"] == 4
    # 12 rows / batch 4 = 3 steps an epoch: 12 steps are exactly 4 epochs of supervised tokens
    assert s["trained_tokens"] == 4 * s["data"]["train_supervised_tokens"]
    assert s["input_tokens"] == 4 * s["data"]["train_tokens"]
    lines = [json.loads(x) for x in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in evals] == [6, 12]  # the last step evaluated once, not twice
    assert all({"epoch", "lr", "tokens", "trained_tokens", "tokens_per_s"} <= set(r) for r in train)
    assert s["final_train_loss"] == train[-1]["loss"] and s["final_eval_loss"] == evals[-1]["eval_loss"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3  # LoRA on a random tiny model: slow, but falling
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_a_finished_run_is_not_overwritten_by_accident(finished_run):
    cfg, _ = finished_run
    again = TrainConfig(**{**cfg.to_dict()})
    with pytest.raises(UserError, match="already holds a training run: pass --resume"):
        run_sft(again)


# ---------------------------------------------------------------------------- data on its way in


@pytest.fixture()
def tokenizer(tiny_llama):
    return load_tokenizer(str(tiny_llama))


def test_long_rows_are_truncated_with_one_counted_warning(tiny_llama, tokenizer, data_file, tmp_path):
    long = "word " * 200
    data = data_file([("hi", long), ("hello", long), ("a", "b")])
    warnings: list[str] = []
    cfg = make_cfg(tiny_llama, data, tmp_path / "o", max_length=64)
    ds = build_datasets(cfg, tokenizer, warnings.append)
    assert len(warnings) == 1 and "2 of 3 rows are longer than max_length 64" in warnings[0]
    assert ds.stats.truncated_rows == 2 and ds.stats.truncated_tokens > 2 * 150
    assert f"losing {ds.stats.truncated_tokens} tokens" in warnings[0]
    assert all(len(r["input_ids"]) <= 64 for r in ds.train) and len(ds.train) == 3

    warnings.clear()
    ds = build_datasets(make_cfg(tiny_llama, data, tmp_path / "o", max_length=64, drop_long=True), tokenizer,
                        warnings.append)
    assert len(ds.train) == 1 and ds.stats.dropped_long_rows == 2
    assert len(warnings) == 1 and "dropped 2 of 3 rows" in warnings[0]


def test_bad_rows_refuse_the_file_unless_skipped(tiny_llama, tokenizer, tmp_path):
    data = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    with pytest.raises(UserError, match=r"(?s)d.jsonl:2 .*invalid-json.*d.jsonl:3 .*--skip-bad-rows"):
        build_datasets(make_cfg(tiny_llama, data, tmp_path / "o"), tokenizer, print)
    warnings: list[str] = []
    ds = build_datasets(make_cfg(tiny_llama, data, tmp_path / "o", skip_bad_rows=True), tokenizer,
                        warnings.append)
    assert len(ds.train) == 1 and any("skipped 2 bad row(s)" in w and "2, 3" in w for w in warnings)


def test_validation_split_is_deterministic():
    items = list(range(20))
    train, val = split_samples(items, 0.2, seed=1)
    assert (train, val) == split_samples(items, 0.2, seed=1)
    assert len(val) == 4 and sorted(train + val) == items
    assert val != split_samples(items, 0.2, seed=2)[1]
    with pytest.raises(UserError, match="leaves no training rows"):
        split_samples(items[:1], 0.5, seed=1)


def test_pad_collator_pads_to_the_longest_in_the_batch():
    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                         {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert PadCollator(0, pad_to_multiple_of=8)([{"input_ids": [1], "labels": [1]}])["input_ids"].shape == (1, 8)


def test_metrics_records_and_plot(tmp_path):
    assert record({"loss": 1.5, "learning_rate": 1e-4, "num_input_tokens_seen": 10, "epoch": 0.5}, 3) == {
        "step": 3, "loss": 1.5, "lr": 1e-4, "tokens": 10, "epoch": 0.5}
    assert record({"train_loss": 1.0, "train_runtime": 3.0}, 3) is None  # the end aggregate
    plot_loss([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval_loss": 1.2}], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
