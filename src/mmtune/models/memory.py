"""Back-of-the-envelope GPU memory for fine-tuning a registry model, from its architecture numbers.

Pure arithmetic on a `ModelSpec` (no torch), so `mmtune models` can print it instantly.
It answers "will this fit on my card?", not "how many bytes exactly": allocator slack,
the CUDA context (~0.5-1 GiB) and framework buffers are not counted.
"""

from __future__ import annotations

from typing import Literal

from mmtune.models.registry import ModelSpec

Method = Literal["full", "lora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora")

GIB = 1024**3
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # 4-bit weights + double-quantised absmax per 64-block
LOGIT_BYTES = 2 + 4 + 4  # bf16 logits, their fp32 copy for the loss, the fp32 gradient of the loss


def layer_linear_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every projection in one decoder layer, by module name.

    Three attention shapes cover the registry: separate q/k/v (grouped-query attention),
    fused qkv + fused gate_up (Phi-3), and multi-head latent attention (MiniCPM3).
    """
    h, inter, heads, kv, hd = (
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.attn_head_dim,
    )
    mlp = {"gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    if spec.mla:
        q_rank, kv_rank, nope, rope, v_dim = spec.mla
        return {
            "q_a_proj": (h, q_rank),
            "q_b_proj": (q_rank, heads * (nope + rope)),
            "kv_a_proj_with_mqa": (h, kv_rank + rope),
            "kv_b_proj": (kv_rank, heads * (nope + v_dim)),
            "o_proj": (heads * v_dim, h),
            **mlp,
        }
    if "qkv_proj" in spec.lora_targets:
        return {
            "qkv_proj": (h, (heads + 2 * kv) * hd),
            "o_proj": (heads * hd, h),
            "gate_up_proj": (h, 2 * inter),
            "down_proj": (inter, h),
        }
    return {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        **mlp,
    }


def layer_linear_params(spec: ModelSpec) -> int:
    """Weights in all projections of all decoder layers (what 4-bit quantisation shrinks)."""
    return spec.num_layers * sum(i * o for i, o in layer_linear_shapes(spec).values())


def embedding_params(spec: ModelSpec) -> int:
    """Input embedding plus an untied output head (kept in bf16 even under QLoRA)."""
    return spec.vocab_size * spec.hidden_size * (1 if spec.tie_embeddings else 2)


def language_model_params(spec: ModelSpec) -> int:
    """Parameters of the (language) decoder from its architecture numbers (norms counted, small
    biases not)."""
    norms = spec.hidden_size * (2 * spec.num_layers + 1)
    return layer_linear_params(spec) + embedding_params(spec) + norms


def vision_params(spec: ModelSpec) -> int:
    """Vision tower + projector parameters of a vision-language model (0 for a text model): the
    entry's `vision_params_b` where given, else its declared total minus the language model."""
    if spec.kind != "vision":
        return 0
    if spec.vision_params_b is not None:
        return round(spec.vision_params_b * 1e9)
    return max(0, round(spec.params_b * 1e9) - language_model_params(spec))


def count_params(spec: ModelSpec) -> int:
    """Total parameters: the language model's from its numbers, plus the vision tower's."""
    return language_model_params(spec) + vision_params(spec)


def lora_params(spec: ModelSpec, rank: int = 16, targets: tuple[str, ...] | None = None) -> int:
    """Trainable LoRA parameters: rank × (in + out) for every targeted projection of every layer."""
    shapes = layer_linear_shapes(spec)
    wanted = targets if targets is not None else spec.lora_targets
    return spec.num_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in wanted if t in shapes)


def activation_bytes(
    spec: ModelSpec, seq_len: int, batch_size: int, gradient_checkpointing: bool = True
) -> float:
    """Activations kept for the backward pass, in bytes (bf16, SDPA/flash attention).

    Per token and layer a decoder keeps roughly every projection output, the attention
    output, the MLP activation and the two norms' inputs and outputs:
    `a = Σ out_features + attn_out + intermediate + 4·hidden` elements of 2 bytes.
    Without checkpointing all layers keep `a`; with it, each layer keeps only its input
    (hidden) and one layer at a time is recomputed with its full `a`. The loss adds
    `vocab × LOGIT_BYTES` per token (bf16 logits, fp32 copy, fp32 gradient).
    """
    tokens = seq_len * batch_size
    shapes = layer_linear_shapes(spec)
    attn_out = shapes["o_proj"][0]
    per_layer = sum(o for _, o in shapes.values()) + attn_out + spec.intermediate_size + 4 * spec.hidden_size
    if gradient_checkpointing:
        layers = spec.num_layers * spec.hidden_size + per_layer
    else:
        layers = spec.num_layers * per_layer
    return tokens * (2 * layers + spec.vocab_size * LOGIT_BYTES)


def estimate_memory(
    spec: ModelSpec,
    method: Method = "lora",
    seq_len: int = 2048,
    batch_size: int = 1,
    *,
    lora_rank: int = 16,
    gradient_checkpointing: bool = True,
    weight_bytes: float = 2.0,
) -> dict[str, float]:
    """GPU memory (GiB) to fine-tune `spec`: weights, gradients, optimizer, activations, total.

    Formula (P = all parameters, L = LoRA parameters, W = `weight_bytes`, 2 for bf16):
    - full:  weights P·W, gradients P·W, AdamW two moments in the parameter dtype 2·P·W
             (a bf16-loaded model trained with torch AdamW, as mmtune's loader does on GPU).
    - lora:  frozen weights P·W plus fp32 adapters 4·L (peft upcasts adapters);
             gradients 4·L; AdamW moments 8·L.
    - qlora: like lora, but the decoder projections are NF4 with double quantisation
             (≈0.52 bytes/param); embeddings, output head and norms stay at W.
    - activations: see `activation_bytes` (same for every method: the frozen base still
      has to back-propagate through every layer).
    - vision-language models: the vision tower + projector (`vision_params`) trains under
      full and stays frozen at W bytes under lora/qlora (mmtune never quantises it); media
      tokens count in `seq_len` like text tokens.
    Not counted: CUDA context, allocator fragmentation, the LoRA dropout copies, the vision
    tower's own activations, and a projector trained next to LoRA (small: ~1% of the model).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    total_params = count_params(spec)
    adapters = lora_params(spec, lora_rank)
    if method == "full":
        weights, grads, optim = (
            total_params * weight_bytes,
            total_params * weight_bytes,
            2 * total_params * weight_bytes,
        )
    else:
        quantised = layer_linear_params(spec) if method == "qlora" else 0  # decoder projections only
        base = (total_params - quantised) * weight_bytes + quantised * NF4_BYTES
        weights, grads, optim = base + 4 * adapters, 4 * adapters, 8 * adapters
    acts = activation_bytes(spec, seq_len, batch_size, gradient_checkpointing)
    parts = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts}
    parts["total"] = sum(parts.values())
    return {k: round(v / GIB, 3) for k, v in parts.items()}


# ---- several GPUs: what each one holds under a launch strategy --------------------------------------------
# ddp: every GPU holds everything; zero2: gradients and optimizer states sharded (DeepSpeed ZeRO-2);
# zero3 / fsdp: weights too (DeepSpeed ZeRO-3, PyTorch FSDP2 full shard); zero3-offload: weights and optimizer in
# CPU memory, streamed to the GPU a layer at a time. Activations are per GPU (its own batch) in every case.
STRATEGIES: tuple[str, ...] = ("ddp", "zero2", "zero3", "fsdp", "zero3-offload")
LAUNCH_CONFIG = {"zero2": "zero2.yaml", "zero3": "zero3.yaml", "fsdp": "fsdp.yaml", "zero3-offload": "zero3_offload.yaml"}
DEEPSPEED_STRATEGY = {"zero2": "zero2", "zero3": "zero3", "zero3-offload": "zero3_offload"}  # -> --deepspeed


def layer_weight_gib(spec: ModelSpec, weight_bytes: float = 2.0) -> float:
    """One decoder layer's weights (what a sharded run gathers at a time), in GiB."""
    return layer_linear_params(spec) / spec.num_layers * weight_bytes / GIB


def per_gpu_memory(spec: ModelSpec, parts: dict[str, float], gpus: int, strategy: str,
                   weight_bytes: float = 2.0) -> float:
    """GiB one GPU holds for an `estimate_memory` result when `gpus` GPUs train under `strategy`.
    Sharded strategies add two gathered layers (the one computing and the one prefetched)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    w, g, o, a = parts["weights"], parts["gradients"], parts["optimizer"], parts["activations"]
    gathered = 2 * layer_weight_gib(spec, weight_bytes)
    if strategy == "ddp" or (gpus == 1 and strategy != "zero3-offload"):
        total = w + g + o + a
    elif strategy == "zero2":
        total = w + (g + o) / gpus + a
    elif strategy in ("zero3", "fsdp"):
        total = (w + g + o) / gpus + gathered + a
    else:  # zero3-offload: weights and optimizer in CPU memory; gradients of a layer pass through
        total = gathered + g / gpus + a
    return round(total, 3)


def least_sharding(spec: ModelSpec, parts: dict[str, float], gpus: int, gpu_gib: float) -> str | None:
    """The first strategy (least communication first) whose per-GPU memory fits `gpu_gib`, or None."""
    order = ("ddp", "zero2", "fsdp", "zero3-offload") if gpus > 1 else ("ddp", "zero3-offload")
    for strategy in order:
        if per_gpu_memory(spec, parts, gpus, strategy) <= gpu_gib:
            return strategy
    return None


def launch_command(strategy: str, gpus: int, gpus_per_node: int = 8) -> str:
    """The command that trains with `strategy` on `gpus` GPUs (several machines when over `gpus_per_node`)."""
    nodes = -(-gpus // gpus_per_node)
    per_node = min(gpus, gpus_per_node)
    if strategy == "ddp" or strategy in DEEPSPEED_STRATEGY:  # mmtune's own launcher (torchrun underneath)
        cmd = "mmtune train --config my.yaml"
        if strategy in DEEPSPEED_STRATEGY:
            cmd += f" --deepspeed {DEEPSPEED_STRATEGY[strategy]}"
        cmd += f" --nproc-per-node {per_node}"
        if nodes > 1:
            cmd += f" --nnodes {nodes} --node-rank R --master-addr HOST"
        return cmd
    cmd = f"accelerate launch --config_file examples/accelerate/{LAUNCH_CONFIG[strategy]} --num_processes {gpus}"
    if nodes > 1:
        cmd += f" --num_machines {nodes} --machine_rank R --main_process_ip HOST"
    return cmd + " -m mmtune.cli train --config my.yaml"
