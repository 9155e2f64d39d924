"""The package layers: engine knows nothing of the UI, the UI never loads torch, the CLI never loads textual."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_never_imports_the_ui(path):
    assert not {m for m in imported_modules(path) if m.split(".")[0] in ("tui", "textual", "textual_plotext")}


@pytest.mark.parametrize("path", sorted((REPO / "tui").rglob("*.py")), ids=lambda p: p.name)
def test_the_ui_never_imports_torch(path):
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "torch"}


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_importing_the_engine_and_cli_leaves_textual_out():
    loaded = loaded_after("import engine, engine.cli, engine.engine, engine.phases")
    assert "torch" in loaded and "textual" not in loaded


def test_importing_the_ui_leaves_torch_out():
    loaded = loaded_after("import tui, tui.app, tui.cli, tui.screens")
    assert "textual" in loaded and "torch" not in loaded
