"""The layout rules of docs/architecture.md, checked on the source code:

- ``webui`` imports ``modules``, never the other way round;
- ``modules/arch`` (network architectures) imports nothing of the project but ``modules.errors`` (and itself);
- the sampling loop and the denoiser read no settings (everything arrives in their run object);
- no import circles, counting imports inside functions too (a lazy import hides a circle, it does not remove it);
- the root of ``modules/`` holds only A1111's public module names (and ``initialize``); internals live in
  subpackages named for what they hold.

``test_the_checker_finds_each_kind_of_violation`` proves on a small made-up tree that each rule can fail.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_NAMES = {  # A1111's module names that extensions import (reference-a1111.md), plus the start-up module
    "cmd_args", "deepbooru", "devices", "errors", "esrgan_model", "extensions", "extra_networks", "face_restoration",
    "generation_parameters_copypaste", "hashes", "images", "img2img", "infotext_utils", "initialize", "interrogate",
    "launch_utils", "lowvram", "masking", "options", "paths", "postprocessing", "processing", "prompt_parser", "rng", "safe",
    "script_callbacks", "scripts", "sd_emphasis", "sd_models", "sd_samplers", "sd_samplers_common", "sd_schedulers",
    "sd_vae", "shared", "shared_options", "shared_state", "shared_total_tqdm", "styles", "txt2img", "ui_components",
    "upscaler",
}
ALLOWED_CIRCLES: list[set[str]] = []  # none: shared learns of the engine through modules.initialize, not imports
ARCH_MAY_IMPORT = {"modules.errors"}
SETTINGS = {"modules.shared", "modules.shared_options", "modules.options"}
NO_SETTINGS = {"modules.engine.sampling", "modules.engine.denoiser"}


def _module_files(root: Path) -> dict[str, Path]:
    files = {}
    for package in ("modules", "webui"):
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    return files


def _imported(name: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports, at the top or inside functions."""
    files = _module_files(root)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            for imported in _imported(name, path, node):
                while imported and imported not in files:  # `import modules.x.y` also names modules.x
                    imported = imported.rpartition(".")[0]
                if imported and imported != name and imported not in ("modules", "webui"):
                    targets.add(imported)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(root: Path) -> list[str]:
    graph = import_graph(root)
    problems = []
    for name, targets in sorted(graph.items()):
        if name.startswith("modules") and any(t.startswith("webui") for t in targets):
            problems.append(f"{name} imports webui (webui -> modules only)")
        outside = {t for t in targets - ARCH_MAY_IMPORT if not t.startswith("modules.arch.")}
        if name.startswith("modules.arch.") and outside:
            problems.append(f"{name} imports {sorted(outside)} (modules/arch: only modules.errors)")
        if name in NO_SETTINGS and targets & SETTINGS:
            problems.append(f"{name} reads settings through {sorted(targets & SETTINGS)} (the run object carries them)")
    for component in circles(graph):
        if component not in ALLOWED_CIRCLES:
            problems.append(f"import circle: {' -> '.join(sorted(component))}")
    for entry in sorted(os.listdir(root / "modules")):
        stem, ext = os.path.splitext(entry)
        if ext == ".py" and stem != "__init__" and stem not in PUBLIC_NAMES:
            problems.append(f"modules/{entry} is not one of A1111's public module names: move it into a subpackage")
    return problems


def test_the_project_follows_its_import_rules():
    assert violations(ROOT) == []


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    files = {
        "modules/__init__.py": "",
        "modules/shared.py": "def model():\n    from modules import sd_models\n    return sd_models\n",
        "modules/sd_models.py": "from modules.shared import opts\n",
        "modules/processing.py": "import webui.ui\n",
        "modules/helpers.py": "",
        "modules/errors.py": "",
        "modules/arch/__init__.py": "",
        "modules/arch/net.py": "from modules import errors\nfrom ..sd_models import opts\n",
        "modules/engine/__init__.py": "",
        "modules/engine/sampling.py": "from modules.shared import opts\n",
        "webui/__init__.py": "",
        "webui/ui.py": "from modules import processing\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert sorted(violations(tmp_path)) == sorted([
        "modules.arch.net imports ['modules.sd_models'] (modules/arch: only modules.errors)",
        "modules.engine.sampling reads settings through ['modules.shared'] (the run object carries them)",
        "modules.processing imports webui (webui -> modules only)",
        "import circle: modules.processing -> webui.ui",
        "import circle: modules.sd_models -> modules.shared",
        "modules/helpers.py is not one of A1111's public module names: move it into a subpackage",
    ])
