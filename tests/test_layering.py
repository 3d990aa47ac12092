"""The package's import graph: no production module imports test scaffolding, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llavarad_cli"
#: Scaffolding that exists for tests and smoke tests only: the product must never need it.
SCAFFOLDING = ("llavarad_cli.testing",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_scaffolding(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(name == s or name.startswith(s + ".") for s in SCAFFOLDING) or last.endswith("fixtures")


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Modules of the package that an import statement names (``from a import b``: ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _imports(path: Path, module_level_only: bool) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module, is_package = _module_name(path), path.name == "__init__.py"
    if module_level_only:
        nodes = []
        for stmt in tree.body:  # top-level statements, looking into module-level if/try blocks
            stack = [stmt]
            while stack:
                node = stack.pop()
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    continue
                nodes.append(node)
                stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    return [(target, node.lineno) for node in nodes for target in _targets(node, module, is_package)
            if target.startswith("llavarad_cli")]


def test_no_production_module_imports_test_scaffolding():
    offenders = []
    for module, path in MODULES.items():
        if _is_scaffolding(module):
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                      for target, line in _imports(path, module_level_only=False) if _is_scaffolding(target)]
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle_at_module_level():
    graph = {}
    for module, path in MODULES.items():
        # Importing one's own parent package is no cycle: it is already being initialised.
        graph[module] = sorted({t for t, _ in _imports(path, module_level_only=True)
                                if t in MODULES and t != module and not module.startswith(t + ".")})
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_imports_of_every_form(tmp_path):
    """The checks above are only as good as the parser: each import form is found, at the right level."""
    src = tmp_path / "probe.py"
    src.write_text("import llavarad_cli.errors\nfrom llavarad_cli import testing\n"
                   "def f():\n    from llavarad_cli.testing.tiny import tiny_lm\n")
    module_level = [t for t, _ in _imports_of(src, True)]
    anywhere = [t for t, _ in _imports_of(src, False)]
    assert module_level == ["llavarad_cli.errors", "llavarad_cli.testing"]
    assert "llavarad_cli.testing.tiny" in anywhere and _is_scaffolding("llavarad_cli.testing.tiny")
    assert _is_scaffolding("llavarad_cli.evaluate.radgraph_fixtures") and not _is_scaffolding("llavarad_cli.cli")


def _imports_of(path: Path, module_level_only: bool):
    """``_imports`` for a file outside the package (named as if it were ``llavarad_cli.probe``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    return [(t, n.lineno) for n in nodes for t in _targets(n, "llavarad_cli.probe", False)]
