"""Imports point down: every edgeclf import, at module top or inside a function, goes to its own
layer or a lower one, and no two modules import each other (directly or round a loop).

The order is docs/architecture.md's. A lower layer that needs something from a higher one gets
it moved down (or handed in as a value), never an exception here.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeclf"

# Lowest first. A module belongs to the layer of its longest matching name.
LAYERS = [
    ("base", ["edgeclf", "edgeclf.errors", "edgeclf.console", "edgeclf.tfenv", "edgeclf.atomic", "edgeclf.checks",
              "edgeclf.records", "edgeclf.schemas", "edgeclf.outputs"]),
    ("layout", ["edgeclf.layout"]),
    ("pipeline", ["edgeclf.pipeline"]),
    ("audit", ["edgeclf.audit"]),
    ("ptq", ["edgeclf.ptq"]),
    ("calibration", ["edgeclf.calibration"]),
    ("exporters", ["edgeclf.exporters", "edgeclf.artefacts"]),
    ("devices", ["edgeclf.devices"]),
    ("lastmile", ["edgeclf.lastmile"]),
    ("report/bundle", ["edgeclf.report", "edgeclf.bundle"]),
    ("jobs", ["edgeclf.jobs"]),
    ("cli", ["edgeclf.cli", "edgeclf.__main__"]),
]
GENERATED = "edgeclf.exporters.tflite_metadata_schema"  # flatc's output, imports nothing of ours


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if not module_name(p).startswith(GENERATED)}


def layer(module: str) -> int:
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != "edgeclf" and module.startswith(prefix + "."))]
    assert matches, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return max(matches)[1]


def imports(module: str, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every edgeclf module it imports, anywhere in the file (or in `source`)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from edgeclf.x import y` imports the module edgeclf.x.y when there is one
            found += [(node.lineno, f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source) for a in node.names]
    return [(line, name) for line, name in found if name == "edgeclf" or name.startswith("edgeclf.")]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_point_down():
    climbing = []
    for module in sorted(MODULES):
        for line, target in imports(module):
            if not target.startswith(GENERATED) and layer(target) > layer(module):
                climbing.append(f"{MODULES[module].relative_to(ROOT)}:{line} ({LAYERS[layer(module)][0]}) imports "
                                f"{target} ({LAYERS[layer(target)][0]})")
    assert not climbing, "imports that climb a layer:\n" + "\n".join(climbing)


def test_no_import_cycles():
    graph = {m: {t for _, t in imports(m) if t in MODULES and t != m} for m in MODULES}
    # A package's __init__ runs before any of its modules, so a module importing its own package
    # is no loop unless the __init__ imports that module back, which the graph shows.
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen and nxt > start:  # each cycle once, from its smallest module
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_scan_reads_function_bodies_and_relative_imports():
    source = "import json\nfrom . import metrics\ndef f():\n    from edgeclf.devices import runner\n    import edgeclf.exporters\n"
    assert imports("edgeclf.pipeline.predict", source) == [
        (2, "edgeclf.pipeline.metrics"), (4, "edgeclf.devices.runner"), (5, "edgeclf.exporters")]
