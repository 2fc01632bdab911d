"""CPU inference: the model's float32 linear layers computed by oneDNN instead of MKL's sgemm.

Why: on a CPU, a decode step is almost all linear layers, and PyTorch sends float32 `F.linear` to
MKL, whose sgemm takes a slow generic path on CPUs it does not tune for (AMD EPYC: profiled under
`mmtune serve`, MKL's `def_sgemm_kernel_0_zen` and its packing copy were most of every step). PyTorch's
own oneDNN linear (`torch.ops.mkldnn._linear_pointwise`, what torch.compile uses on CPU) runs the
same product in about 60% of the time at 1 row (memory-bound) and at 16 rows or a prefill
(compute-bound), so continuous batching gains most. It reads the layer's own dense weight: no copy,
no reordering, nothing else changes (parameters, state_dict, PEFT's LoRA wrappers).

Only inference uses it: with autograd recording (training) a layer computes `F.linear` as before. The
result equals `F.linear`'s up to float rounding (another summation order), like any BLAS change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class OneDnnLinear(torch.nn.Linear):
    """nn.Linear whose inference forward is oneDNN's (the class a loaded model's Linear layers take on)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)
        if x.dtype != self.weight.dtype or not x.is_contiguous():
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def available(model) -> bool:
    """Whether `model` can take oneDNN's linear: float32 weights on the CPU, and a PyTorch with oneDNN."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    weight = next((m.weight for m in model.modules() if type(m) is torch.nn.Linear), None)
    return weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32


def use_onednn(model) -> int:
    """Give every plain nn.Linear of `model` (float32, CPU) oneDNN's inference forward; how many."""
    if not available(model):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
            module.__class__ = OneDnnLinear
            count += 1
    return count
