"""The GPUs a local job service shares out among the jobs it runs at once.

On a machine with GPUs, every running job gets devices of its own: a job asks for them with
`extra_body={"gpus": N}` (no ask: one), its training process sees only those (`CUDA_VISIBLE_DEVICES`),
and a job whose GPUs are not free stays queued while later jobs that fit start (first fit, in
creation order); a job asking for more GPUs than the service has is refused when it is created.
On a machine without GPUs nothing is counted: `gpus` is then the number of training processes.

The devices are those in `CUDA_VISIBLE_DEVICES` when it is set (ids or UUIDs, kept as given),
else every device torch sees; `mmtune jobs serve --gpus 0,1` hands out only those. A Ray
cluster counts its own GPUs (jobs/executor.py); this pool is for the local executor only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmtune.errors import UserError


def detect() -> tuple[str, ...]:
    """The devices this machine offers jobs: CUDA_VISIBLE_DEVICES when set, else torch's count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return parse_devices(visible)
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/kfd").exists():
        return ()  # no NVIDIA or ROCm device node: no GPU, and no torch import to find that out
    try:
        import torch
    except ImportError:
        return ()
    return tuple(str(i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def parse_devices(text: str) -> tuple[str, ...]:
    """`"0,1,3"` -> ("0", "1", "3"); `""`, `"none"` or `"-1"` -> no devices. Duplicates are an error."""
    text = text.strip()
    if text.lower() in ("", "none", "-1"):
        return ()
    devices = tuple(d.strip() for d in text.split(","))
    if any(not d for d in devices):
        raise UserError(f"--gpus {text!r}: give device ids separated by commas, e.g. 0,1,2,3 (or none)")
    if len(set(devices)) < len(devices):
        raise UserError(f"--gpus {text!r} names a device twice: give each device once")
    return devices


class GpuPool:
    """Which of `devices` each running job holds (thread-safe)."""

    def __init__(self, devices: Sequence[str]):
        self.devices = tuple(devices)
        self._held: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def need(self, params: dict[str, Any]) -> int:
        """GPUs a job with these params takes from the pool (none where the pool has none)."""
        if not self.devices:
            return 0
        return max(1, int(params.get("mmtune", {}).get("gpus") or 0))

    def problem(self, asked: int) -> str | None:
        """Why a job asking for `asked` GPUs could never start here, or None."""
        if self.devices and asked > len(self.devices):
            return (f"asks for {asked} GPUs but this service has {len(self.devices)} "
                    f"({', '.join(self.devices)}): ask for at most {len(self.devices)}, or run the service on a "
                    "machine with more (or on a Ray cluster: --executor ray)")
        return None

    def free(self) -> tuple[str, ...]:
        with self._lock:
            return self._free()

    def _free(self) -> tuple[str, ...]:
        held = {d for ds in self._held.values() for d in ds}
        return tuple(d for d in self.devices if d not in held)

    def fits(self, params: dict[str, Any]) -> bool:
        with self._lock:
            return self.need(params) <= len(self._free())

    def take(self, job_id: str, params: dict[str, Any]) -> tuple[str, ...] | None:
        """Devices for this job (lowest free ids first), or None where too few are free. () on a pool
        without devices."""
        n = self.need(params)
        with self._lock:
            free = self._free()
            if n > len(free):
                return None
            self._held[job_id] = free[:n]
            return free[:n]

    def give_back(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def held(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._held)
