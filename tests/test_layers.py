"""facerep's layers import only downward (docs/development.md, "Layout"): checked on every import
statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "facerep"
# lowest first; a module may import its own package and any package of a lower layer, nothing else
LAYERS = [
    {"runtime"},
    {"config"},
    {"geometry"},
    {"backbones", "losses", "metrics", "data", "viz"},
    {"models"},
    {"methods", "tasks"},
    {"train"},
    {"apps"},
    {"commands"},
]
FACADE = {"__init__", "__main__"}  # the package itself: imports whatever it re-exports
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _part(module: str) -> str | None:
    """``facerep.backbones.vit`` -> ``backbones``; non-facerep modules -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "facerep" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            if node.module == "facerep":  # from facerep import backbones
                found += [(node.lineno, f"facerep.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts - FACADE == set(LAYER_OF)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path: Path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own in FACADE:
        return
    for lineno, module in _imports(path):
        target = _part(module)
        if target is None or target == own:
            continue
        assert LAYER_OF[target] < LAYER_OF[own], (
            f"{path.relative_to(PACKAGE)}:{lineno} imports facerep.{target} (layer {LAYER_OF[target]}) "
            f"from {own} (layer {LAYER_OF[own]})"
        )
