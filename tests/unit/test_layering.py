"""The layering rule of docs/architecture.md, enforced: a layer imports only layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "hakit"

# Lower number = lower layer. A module may import its own layer or lower ones.
LAYERS = {
    "errors": 0,
    "waiting": 0,
    "paths": 0,
    "latency": 0,
    "wire": 0,
    "core": 1,
    "config": 1,
    "adapters": 2,
    "replication": 2,
    "testing": 2,
    "daemon": 3,
    "lab": 3,
    "templates": 3,
    "witness": 3,
    "tls": 2,
    "api": 4,
    "metrics": 4,
    "probe": 4,
    "cli": 5,
    "console": 5,
    "tools": 5,
    "__main__": 5,
    "__init__": 0,
}
FORBIDDEN_IN_CORE = {"asyncio", "socket", "os", "subprocess", "time", "threading", "select"}


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_every_package_has_a_layer() -> None:
    assert {layer_of(p) for p in modules()} <= set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_only(path: Path) -> None:
    mine = LAYERS[layer_of(path)]
    for name in imports(path):
        parts = name.split(".")
        if parts[0] != "hakit" or len(parts) == 1:
            continue
        target = parts[1]
        assert LAYERS[target] <= mine, (
            f"{path.name} (layer {mine}) imports {name} ({LAYERS[target]})"
        )


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if layer_of(p) in ("core", "wire")],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_decision_core_has_no_io(path: Path) -> None:
    bad = {i.split(".")[0] for i in imports(path)} & FORBIDDEN_IN_CORE
    assert not bad, f"{path.name} imports {bad}: decision code must stay pure"
