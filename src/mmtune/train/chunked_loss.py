"""Output layer + cross-entropy in chunks of positions: the [positions x vocabulary] logits tensor
is never held whole, neither forward nor for the backward pass.

`linear_cross_entropy(hidden, weight, targets)` returns the summed next-token loss of `hidden @
weight.T` against `targets` (-100 = not a target). It computes each chunk's logits, their
log-sum-exp and the gradient of the loss with respect to that chunk's hidden states (and to the
weight, when it trains) inside the forward pass, then drops the chunk: memory for logits is
one chunk's, whatever the vocabulary (Qwen's 152k entries x 4k targets would be 2.4 GB in fp32).
The backward pass only scales the stored gradients. Same loss and gradients as
`cross_entropy(hidden @ weight.T, targets, reduction="sum")` (tests/train/test_packing.py).

`HiddenHead` is how the Trainer gets the hidden states the output layer would see, through the
model's own forward (so DDP and PEFT wrappers stay in charge): while it is active, the output
layer passes its input through, so `model(..., logits_to_keep=positions).logits` holds those
positions' final hidden states. Models whose logits are more than one plain linear map of the
hidden state (soft-capping, logit scaling, a bias, an adapter on the output layer) are not
eligible and keep the model's own head.
"""

from __future__ import annotations

import torch

from mmtune.chat.render import IGNORE_INDEX

CHUNK = 1024  # positions per chunk: 1024 x 49k vocab x 4 bytes = 200 MB at most, whatever the batch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        acc = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)  # fp32 at least
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            valid = t != IGNORE_INDEX
            if not bool(valid.any()):
                continue
            logits = (h @ weight.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            safe = t.clamp(min=0)
            picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if want_h or want_w:
                # d(sum loss)/d(logits) = softmax - one_hot(target), zero on non-targets; reuse the buffer
                g = logits.sub_(lse.unsqueeze(1)).exp_()
                g[torch.arange(g.shape[0], device=g.device), safe] -= 1.0
                g.mul_(valid.unsqueeze(1))
                if want_h:
                    grad_h[start:start + chunk] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                if want_w:
                    grad_w += g.t() @ h.to(acc)
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = CHUNK) -> torch.Tensor:
    """Sum over targets of -log softmax(hidden @ weight.T)[target]; hidden [n, d], weight [V, d],
    targets [n] with -100 where nothing is predicted. Never builds more than [chunk, V] logits."""
    if hidden.dtype != weight.dtype and not torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(weight.dtype)  # a model that upcasts its logits handed us fp32 hidden states
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk)


# configuration attributes that put something between the output layer and the logits
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def plain_head(model) -> torch.nn.Linear | None:
    """The model's output layer when logits are exactly `hidden @ head.weight.T`, else None."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None:  # a LoRA-wrapped head is not nn.Linear
        return None
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in {id(c): c for c in (config, text) if c is not None}.values():
        for attr in _LOGIT_TRANSFORMS:
            value = getattr(cfg, attr, None)
            if value not in (None, 1, 1.0):
                return None
    return head


class HiddenHead:
    """Context manager: `head` returns its input, so the model's logits are its hidden states."""

    def __init__(self, head: torch.nn.Linear):
        self.head = head

    def __enter__(self) -> torch.nn.Linear:
        self.head.forward = _identity
        return self.head

    def __exit__(self, *exc) -> None:
        del self.head.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
