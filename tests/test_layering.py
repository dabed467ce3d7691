"""Layering that only points down (DESIGN.md): every import of every module — at module level or inside a
function — goes to its own component or to one the table below allows. An upward edge fails the test."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "mathforge": "mathforge",
    "kernels": "mathforge.kernels",
    "model": "mathforge.model",
    "trainer": "mathforge.trainer",
    "synth": "mathforge.synth",
    "evaluate": "mathforge.evaluate",
    "bench": "mathforge.bench",
}
CORE = {"errors", "registry", "config", "jsonl", "openai_client", "prompts", "datasources", "hardware", "_native"}
TOP = {"cli", "demo", "doctor", "__init__", "__main__"}
# component -> the components it may import (besides itself)
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "model": {"core", "kernels"},
    "backends": {"core", "kernels", "model"},
    "evaluate": {"core", "kernels", "model", "backends"},
    "trainer": {"core", "kernels", "model"},
    "synth": {"core", "kernels", "model", "backends", "evaluate"},
    "bench": {"core", "kernels", "model", "backends", "evaluate", "trainer", "synth"},
    "top": {"core", "kernels", "model", "backends", "evaluate", "trainer", "synth", "bench"},
}


def component(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:  # the package root `mathforge` itself
        return "top"
    head = parts[1]
    if head in CORE:
        return "core"
    if head in TOP:
        return "top"
    if head in ALLOWED:
        return head
    raise AssertionError(f"{module}: no layer for {head!r}; add it to tests/test_layering.py")


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mathforge":  # from mathforge import _native, errors
                found += [(node.lineno, f"mathforge.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "mathforge" or name.startswith("mathforge.")]


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.with_suffix("").relative_to(ROOT / folder).parts
            yield path, ".".join((package, *parts))


def test_every_import_points_down():
    upward = []
    for path, module in modules():
        source = component(module)
        for line, target in imports(path):
            if target == "mathforge":
                continue
            dest = component(target)
            if dest != source and dest not in ALLOWED[source]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {source} imports {target} ({dest})")
    assert upward == []


def test_the_layer_table_sees_every_package():
    seen = {component(module) for _, module in modules()}
    assert seen == set(ALLOWED)


def test_importing_the_trainer_config_loads_nothing_of_evaluate_synth_or_bench():
    code = (
        "import sys, mathforge.trainer.config\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mathforge.evaluate', 'mathforge.synth', "
        "'mathforge.bench', 'mathforge.backends'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
