"""The layout rules, read from the source: module sizes, no import cycle, engine/ free of the UI, and the session
files named only by the session modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui")
MAX_LINES = 450
# The modules that may spell a session file's name (engine/session.py and the modules it is split into).
SESSION_MODULES = {"engine.session", "engine.session_files", "engine.session_lock", "engine.session_check",
                   "engine.session_log"}
SESSION_NAMES = ("session.json", "metrics.jsonl", ".lock", "checkpoint-", r"session\.json", r"metrics\.jsonl")


def modules() -> dict[str, Path]:
    """Every module of engine/ and tui/ by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the import nodes under `if TYPE_CHECKING:`, which never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped |= {id(inner) for child in node.body for inner in ast.walk(child)}
    return skipped


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules `path` imports anywhere, inside functions too (lazy imports count): `from P import name` is the
    submodule P.name where that is a module, else P."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("path", list(modules().values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_450_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by responsibility"


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_engine_and_tui_modules():
    found = modules()
    known = set(found)
    graph = {name: {m for m in imports(path, known) if m in known and m != name} for name, path in found.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_engine_never_imports_textual_or_tui():
    known = set(modules())
    for name, path in modules().items():
        if name.startswith("engine"):
            ui = {m for m in imports(path, known) if m.split(".")[0] in ("textual", "tui")}
            assert not ui, f"{name} imports {sorted(ui)}"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_session_file_names_are_spelt_only_in_the_session_modules():
    spelt = []
    for name, path in modules().items():
        if name in SESSION_MODULES:
            continue
        tree = ast.parse(path.read_text())
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
                    and any(word in node.value for word in SESSION_NAMES)):
                spelt.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelt == []
