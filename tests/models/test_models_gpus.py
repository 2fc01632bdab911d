"""Memory per GPU on several GPUs (`mmtune models --gpus N [--zero 2|3 | --fsdp]`): what each GPU holds
under each launch, which one fits, and the command that launches it."""

from __future__ import annotations

import json

import pytest

from mmtune.cli import main
from mmtune.errors import UserError
from mmtune.models.memory import estimate_memory, layer_weight_gib, least_sharding, per_gpu_memory
from mmtune.models.registry import REGISTRY

BIG = ("qwen2.5-7b-instruct", "qwen2.5-14b-instruct", "qwen2.5-32b-instruct", "qwen2.5-72b-instruct",
       "qwen3-14b", "qwen3-32b", "llama3.1-70b-instruct", "llama3.3-70b-instruct", "gemma2-27b-it",
       "mistral-small-24b-instruct")


def test_the_big_models_are_registered_with_their_sizes():
    from mmtune.models.memory import count_params

    for name in BIG:
        spec = REGISTRY[name]
        assert count_params(spec) / 1e9 == pytest.approx(spec.params_b, rel=0.01), name


def test_sharding_divides_what_it_shards():
    spec = REGISTRY["qwen2.5-72b-instruct"]
    full = estimate_memory(spec, "full")
    w, g, o, a = full["weights"], full["gradients"], full["optimizer"], full["activations"]
    assert per_gpu_memory(spec, full, 8, "ddp") == pytest.approx(full["total"], abs=1e-3)
    assert per_gpu_memory(spec, full, 8, "zero2") == pytest.approx(w + (g + o) / 8 + a, abs=1e-3)
    gathered = 2 * layer_weight_gib(spec)
    assert per_gpu_memory(spec, full, 8, "zero3") == pytest.approx((w + g + o) / 8 + gathered + a, abs=1e-3)
    assert per_gpu_memory(spec, full, 8, "fsdp") == per_gpu_memory(spec, full, 8, "zero3")
    assert per_gpu_memory(spec, full, 8, "zero3-offload") < per_gpu_memory(spec, full, 8, "zero3")
    # 72B in full: 16 bytes a weight is over 1 TiB, so 8 x 80 GiB needs every state sharded
    assert least_sharding(spec, full, 8, 80) == "fsdp"
    assert least_sharding(spec, estimate_memory(spec, "lora"), 8, 80) == "fsdp"  # bf16 weights alone: 135 GiB
    assert least_sharding(spec, estimate_memory(spec, "qlora"), 8, 80) == "ddp"
    small = REGISTRY["qwen2.5-7b-instruct"]
    assert least_sharding(small, estimate_memory(small, "lora"), 8, 80) == "ddp"


def test_models_cli_says_what_fits_and_how_to_launch(capsys):
    assert main(["models", "show", "qwen2.5-32b-instruct", "--json", "--gpus", "16", "--zero", "2"]) == 0
    per = json.loads(capsys.readouterr().out)["per_gpu"]
    assert per["strategy"] == "zero2" and per["gpus"] == 16
    assert per["least_sharding"]["lora"] == "ddp"
    assert per["launch"]["lora"] == ("mmtune train --config my.yaml --nproc-per-node 8 --nnodes 2 --node-rank R "
                                     "--master-addr HOST")
    assert per["launch"]["full"] == ("mmtune train --config my.yaml --deepspeed zero2 --nproc-per-node 8 --nnodes 2 "
                                     "--node-rank R --master-addr HOST")
    assert main(["models", "show", "qwen2.5-72b-instruct", "--json", "--gpus", "8", "--fsdp"]) == 0
    fsdp = json.loads(capsys.readouterr().out)["per_gpu"]["launch"]["full"]
    assert fsdp.startswith("accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 8")
    assert main(["models", "--json", "--gpus", "8", "--fsdp"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["qwen2.5-72b-instruct"]["per_gpu"]["fits"]["full"] is True
    assert main(["models", "--json"]) == 0
    assert "per_gpu" not in json.loads(capsys.readouterr().out)["models"][0]


def test_offload_needs_zero3():
    with pytest.raises(UserError, match="--offload goes with --zero 3"):
        main(["models", "--gpus", "8", "--offload", "--debug"])
