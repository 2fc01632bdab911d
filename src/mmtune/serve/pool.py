"""The models a server answers for: public name → (Engine, name inside that engine).

Adapters that share a base are loaded over one copy of it (one Engine), so serving five
LoRA runs of the same model costs one model's memory. Plain and merged models get an
Engine each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.errors import UserError
from mmtune.infer.artifacts import adapter_base, is_adapter_dir, model_name
from mmtune.infer.media import NO_LIMITS, MediaSizes


@dataclass
class ModelPool:
    engines: list[Any] = field(default_factory=list)  # mmtune.infer.engine.Engine
    # More models that appear while the server runs (a fine-tuning job's result): each source
    # is asked for {name: folder} when a name is looked up, and a model is loaded on first use.
    sources: list[Callable[[], Mapping[str, str | Path]]] = field(default_factory=list)
    dtype: Any = None
    device: str | None = None
    sizes: MediaSizes = NO_LIMITS  # for every engine, applied where a model's processor takes them

    def __post_init__(self):
        seen: dict[str, Any] = {}
        for engine in self.engines:
            for name in engine.names:
                if name in seen:
                    raise UserError(f"two models are called {name!r}: name them apart with NAME=PATH")
                seen[name] = engine
        self._by_name = seen
        self._load_lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Every name a request may use: loaded models, then those loaded on first use."""
        return list(dict.fromkeys([*self._by_name, *self._later()]))

    def engine_for(self, name: str):
        """The engine serving `name` if it is loaded, or None (see `pending` and `load`)."""
        return self._by_name.get(name)

    def pending(self, name: str) -> str | None:
        """The folder of a model that is served but not loaded yet, or None."""
        if name in self._by_name:
            return None
        path = self._later().get(name)
        return str(path) if path is not None else None

    def load(self, name: str):
        """Load a pending model (blocking: call it off the event loop). An adapter joins the
        engine of its base when that base is loaded already, so it costs no second base."""
        from mmtune.infer.engine import Engine

        with self._load_lock:
            if name in self._by_name:
                return self._by_name[name]
            path = self.pending(name)
            if path is None:
                return None
            base = adapter_base(path) if is_adapter_dir(path) else None
            engine = next((e for e in self.engines if base is not None and e.base == base), None)
            if engine is not None:
                engine.add_adapter(name, path)
            else:
                engine = Engine(path, name=name, dtype=self.dtype, device=self.device, sizes=self.sizes,
                                strict_sizes=False)
                self.engines.append(engine)
            for n in engine.names:
                self._by_name.setdefault(n, engine)
            return engine

    def _later(self) -> dict[str, Path | str]:
        out: dict[str, Path | str] = {}
        for source in self.sources:
            out.update(source())
        return out


def parse_model_arg(arg: str) -> tuple[str | None, str]:
    """`NAME=PATH` → (NAME, PATH); `PATH` → (None, PATH)."""
    name, sep, path = arg.partition("=")
    if sep and name and path and "/" not in name:
        return name, path
    return None, arg


def build_pool(models: Sequence[str], *, dtype: Any = None, device: str | None = None,
               sizes: MediaSizes = NO_LIMITS) -> ModelPool:
    """Load every model argument; adapters with the same base share one Engine. `sizes` bound the
    media of the vision models among them whose processor takes them (the others keep theirs)."""
    from mmtune.infer.engine import Engine

    if not models:
        from mmtune.models.registry import DEFAULT_MODEL

        models = [DEFAULT_MODEL]
    groups: dict[str, dict[str, str]] = {}
    plain: list[tuple[str | None, str]] = []
    for arg in models:
        name, path = parse_model_arg(arg)
        if is_adapter_dir(path):
            groups.setdefault(adapter_base(path), {})[name or model_name(path)] = path
        else:
            plain.append((name, path))
    engines = []
    for base, adapters in groups.items():
        engine = Engine(base, adapters=adapters, dtype=dtype, device=device, sizes=sizes, strict_sizes=False)
        engine.default_model = next(iter(adapters))
        engines.append(engine)
    served_bases = {e.base for e in engines}
    for name, path in plain:
        if name is None and path in served_bases:
            continue  # already served as the base under its adapters
        engines.append(Engine(path, name=name, dtype=dtype, device=device, sizes=sizes, strict_sizes=False))
    return ModelPool(engines, dtype=dtype, device=device, sizes=sizes)
