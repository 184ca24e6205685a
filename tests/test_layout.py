"""Imports point one way (cli -> experiments -> data_pipelines -> molmo_jax): the library imports
`data_pipelines` only inside the edge functions its package docstring names, and never `experiments`."""
from __future__ import annotations

import ast
from pathlib import Path

import molmo_jax

ROOT = Path(__file__).resolve().parents[1]
# module (relative path) -> the functions that may import data_pipelines; None: any function of it
EDGES = {"molmo_jax/eval/runner.py": {"open_dataset"}}


def is_cli(path: str) -> bool:
    return path.startswith("molmo_jax/cli/") or path.endswith("_cli.py")


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level:
        return [node.module or ""]
    return []


def imports_with_function(tree: ast.Module):
    """(top-level package imported, line, innermost enclosing function or None) of every import."""
    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            for name in imported(child):
                yield name.split(".")[0], child.lineno, function
            yield from walk(child, inner)
    yield from walk(tree, None)


def violations(path: str, source: str) -> list[str]:
    out = []
    for package, line, function in imports_with_function(ast.parse(source)):
        where = f"{path}:{line}"
        if package == "experiments":
            out.append(f"{where} imports experiments")
        elif package == "data_pipelines":
            allowed = EDGES.get(path, set())
            if function is None:
                out.append(f"{where} imports data_pipelines at module level")
            elif not is_cli(path) and function not in allowed:
                out.append(f"{where} imports data_pipelines in {function}(), not an edge")
    return out


def test_the_library_imports_data_pipelines_only_at_its_edges():
    found = []
    for file in sorted((ROOT / "molmo_jax").rglob("*.py")):
        path = file.relative_to(ROOT).as_posix()
        found += violations(path, file.read_text())
    assert not found, "\n".join(found)
    for path, functions in EDGES.items():  # the docstring names each edge
        assert all(f"{Path(path).stem}.{f}" in molmo_jax.__doc__ for f in functions), path


def test_the_check_catches_backward_imports():
    assert violations("molmo_jax/train/x.py", "from data_pipelines import mixtures") == [
        "molmo_jax/train/x.py:1 imports data_pipelines at module level"]
    assert violations("molmo_jax/eval/runner.py", "def evaluate():\n    import data_pipelines.synthetic") == [
        "molmo_jax/eval/runner.py:2 imports data_pipelines in evaluate(), not an edge"]
    assert violations("molmo_jax/eval/runner.py", "def open_dataset():\n    from data_pipelines import eval_sets") == []
    assert violations("molmo_jax/data_cli.py", "def run():\n    from data_pipelines import hub") == []
    assert violations("molmo_jax/io.py", "def f():\n    from experiments import main") == [
        "molmo_jax/io.py:2 imports experiments"]
