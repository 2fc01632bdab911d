"""The models a server answers for: public name → (Engine, name inside that engine).

Adapters that share a base are loaded over one copy of it (one Engine), so serving five
LoRA runs of the same model costs one model's memory. Plain and merged models get an
Engine each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmtune.errors import UserError
from mmtune.infer.artifacts import adapter_base, is_adapter_dir, model_name


@dataclass
class ModelPool:
    engines: list[Any] = field(default_factory=list)  # mmtune.infer.engine.Engine

    def __post_init__(self):
        seen: dict[str, Any] = {}
        for engine in self.engines:
            for name in engine.names:
                if name in seen:
                    raise UserError(f"two models are called {name!r}: name them apart with NAME=PATH")
                seen[name] = engine
        self._by_name = seen

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def engine_for(self, name: str):
        """The engine serving `name`, or None."""
        return self._by_name.get(name)


def parse_model_arg(arg: str) -> tuple[str | None, str]:
    """`NAME=PATH` → (NAME, PATH); `PATH` → (None, PATH)."""
    name, sep, path = arg.partition("=")
    if sep and name and path and "/" not in name:
        return name, path
    return None, arg


def build_pool(models: Sequence[str], *, dtype: Any = None, device: str | None = None) -> ModelPool:
    """Load every model argument; adapters with the same base share one Engine."""
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
        engine = Engine(base, adapters=adapters, dtype=dtype, device=device)
        engine.default_model = next(iter(adapters))
        engines.append(engine)
    served_bases = {e.base for e in engines}
    for name, path in plain:
        if name is None and path in served_bases:
            continue  # already served as the base under its adapters
        engines.append(Engine(path, name=name, dtype=dtype, device=device))
    return ModelPool(engines)
