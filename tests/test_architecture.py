"""The dependency rules of docs/ARCHITECTURE.md hold: lower layers never import higher ones, no import circles.

Every ``import`` in lens is read with ``ast`` (those inside functions too, so a lazy import cannot hide a
circle); each module belongs to one layer, and a module may import only its own layer or lower ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "lens"

# Lowest first. A module's layer is that of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    (
        "lens.config",
        "lens.tl_config",
        "lens.names",
        "lens.utils",
        "lens.utilities",
        "lens.activation_pool",
        "lens.factored_matrix",
        "lens.provenance",
    ),
    ("lens.hooks", "lens.hook_cache", "lens.hook_management"),
    (
        "lens.components",
        "lens.families",
        "lens.tokenizer",
        "lens.tokenizer_hf",
        "lens.weights",
        "lens.processing",
        "lens.tl_methods",
        "lens.sae.config",
        "lens.sae.modules",
        "lens.sae.formats",
        "lens.sae.attach",
    ),
    ("lens.analysis",),
    ("lens.generation",),
    ("lens.loading", "lens.hub", "lens.placement", "lens.sae.loading"),
    ("lens.model",),
    ("lens.tools", "lens.sae.evaluate", "lens.sae.features", "lens.sae.browser", "lens.store.sources"),
    # applications, and the old import paths kept as aliases (lens.patching -> lens.tools.patching, ...)
    # (lens.sae.train reads activation stores)
    ("lens", "lens.zoo", "lens.store", "lens.sae", "lens.sae.train", "lens.demo", "lens.repro", "lens.hook_reference",
     "lens.__main__", "lens.adapters", "lens.cache", "lens.patching", "lens.attribution", "lens.logit_lens",
     "lens.head_detectors", "lens.plot", "lens.hook_points", "lens.head_detector"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{module} is in no layer of tests/test_architecture.py (add it, and to the docs)"
    return layer


def imports_of(path: Path, module: str) -> set[str]:
    """lens modules imported anywhere in ``path`` (``from lens.x import y`` is lens.x.y when that is a module)."""  # noqa: E501
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "lens")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "lens":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m != module}


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}
GRAPH = {module_name(p): imports_of(p, module_name(p)) for p in ROOT.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_reaches_a_higher_layer(module):
    mine = layer_of(module)
    higher = sorted(m for m in GRAPH[module] if layer_of(m) > mine)
    assert not higher, f"{module} (layer {mine}) imports higher layers: {higher}"


def test_no_import_circles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n == "lens" or m == "lens":
                continue  # the package root re-exports everything; nothing below may import it (layer test)
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_rules_are_checked_on_real_imports():
    """The checker itself sees lazy imports and reports a violation (so the tests above can fail)."""
    assert "lens.hooks" in GRAPH["lens.components.attention"]
    assert layer_of("lens.model") > layer_of("lens.generation") > layer_of("lens.hooks")
    fake = ast.parse("def f():\n    from lens.model import HookedTransformer\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "lens.model" for n in ast.walk(fake))
