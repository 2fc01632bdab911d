"""The layering rules of docs/architecture.md, read from the source with `ast` (no module is imported).

- imports point down: commands, serve, jobs > train, infer, export, imagegen > chat, data, models >
  config, errors, files, utils (same-layer imports are allowed; nothing imports commands/ or cli);
- infer/ imports nothing from train/;
- data/ imports no torch (nor transformers) at module level: checking a file stays fast;
- no private `_name` crosses a module (`from mmtune.x import _name`, or `module._name` on an
  imported mmtune module).
Every import counts: module level, inside functions, and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmtune"
LAYERS = {
    **dict.fromkeys(("commands", "serve", "jobs", "cli", "__init__"), 3),
    **dict.fromkeys(("train", "infer", "export", "imagegen"), 2),
    **dict.fromkeys(("chat", "data", "models"), 1),
    **dict.fromkeys(("config", "errors", "files", "utils", "__version__"), 0),
}
ENTRY_POINTS = ("commands", "cli")  # what only the command line itself imports
HEAVY = ("torch", "transformers")

# Violations allowed on purpose (none: issue #12 moved the renderer to chat/, below train/ and infer/).
# An entry that no longer occurs fails the test, so this list can only shrink.
KNOWN: set[tuple[str, str, str]] = set()


def _module(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _area(module: str) -> str:
    """The top-level piece of mmtune a module belongs to: "train", "config", ... ("__init__": the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _nodes(node: ast.AST, top: bool = True):
    """(node, at module level) for every node under `node`, in one pass: a function's body is not module level."""
    for child in ast.iter_child_nodes(node):
        yield child, top
        yield from _nodes(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _imports(nodes, module: str, is_package: bool):
    """(imported module, imported name or None, line, at module level) for every import."""
    package = module if is_package else module.rpartition(".")[0]
    for node, top in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno, top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                keep = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(keep + ([node.module] if node.module else []))
            for alias in node.names:
                yield base, alias.name, node.lineno, top


def _target_area(target: str, name: str | None) -> str:
    parts = target.split(".")
    if len(parts) > 1:
        return parts[1]
    return name if name in LAYERS else "__version__"  # `import mmtune` / `from mmtune import __version__`


@functools.cache
def violations(src: Path = SRC) -> dict[tuple[str, str, str], str]:
    """(rule, importing module, imported thing) -> where, for every broken rule in `src` (the mmtune package)."""
    found: dict[tuple[str, str, str], str] = {}
    for path in sorted(src.rglob("*.py")):
        module = _module(path, src)
        source = _area(module)
        nodes = list(_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
        where = f"{path.relative_to(src.parent.parent)}"
        module_aliases: dict[str, str] = {}
        for target, name, line, top in _imports(nodes, module, path.name == "__init__.py"):
            thing = f"{target}.{name}" if name else target
            root = target.split(".")[0]
            if source == "data" and top and root in HEAVY:
                found[("heavy import in data", module, thing)] = f"{where}:{line}"
            if root != "mmtune":
                continue
            dest = _target_area(target, name)
            if name and (Path(src.parent, *target.split("."), f"{name}.py").is_file()
                         or Path(src.parent, *target.split("."), name).is_dir()):
                module_aliases[name] = f"{target}.{name}"
            if LAYERS[dest] > LAYERS[source] or (dest in ENTRY_POINTS and source not in ENTRY_POINTS):
                found[("import points up", module, thing)] = f"{where}:{line}"
            if source == "infer" and dest == "train":
                found[("infer imports train", module, thing)] = f"{where}:{line}"
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                found[("private name", module, thing)] = f"{where}:{line}"
        for node, _ in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                thing = f"{module_aliases[node.value.id]}.{node.attr}"
                found[("private name", module, thing)] = f"{where}:{node.lineno}"
    return found


def test_imports_follow_the_layers():
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN}
    assert not new, "layering rules broken (docs/architecture.md):\n" + "\n".join(
        f"  {v}: {rule}: {module} imports {thing}" for (rule, module, thing), v in sorted(new.items()))


def test_the_known_list_only_shrinks():
    gone = KNOWN - set(violations())
    assert not gone, "fixed, so delete from KNOWN in tests/test_layering.py:\n" + "\n".join(
        f"  {entry}" for entry in sorted(gone))


def test_the_scanner_sees_each_rule(tmp_path):
    """A planted file per rule is caught (so a test that passes means something)."""
    root = tmp_path / "mmtune"
    for area in ("data", "infer", "models", "train", "config"):
        (root / area).mkdir(parents=True)
        (root / area / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models" / "loader.py").write_text("_PAD = 0\n")
    (root / "data" / "bad.py").write_text("import torch\nfrom mmtune.models import loader\n"
                                          "def f():\n    from mmtune.infer.engine import Engine\n"
                                          "    return loader._PAD\n")
    (root / "infer" / "bad.py").write_text("def g():\n    from mmtune.train.render import _end\n")
    (root / "models" / "ok.py").write_text("from mmtune.config import X\nfrom . import loader\n"
                                           "def h():\n    import torch\n")
    assert set(violations(root)) == {
        ("heavy import in data", "mmtune.data.bad", "torch"),
        ("import points up", "mmtune.data.bad", "mmtune.infer.engine.Engine"),
        ("private name", "mmtune.data.bad", "mmtune.models.loader._PAD"),
        ("infer imports train", "mmtune.infer.bad", "mmtune.train.render._end"),
        ("private name", "mmtune.infer.bad", "mmtune.train.render._end"),
    }
