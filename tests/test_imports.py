"""Import hygiene: cheap top-level imports, and an acyclic intra-package import graph."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tvlens"
HEAVY = ("torch", "transformer_lens", "transformers")


def _loaded_after(code: str) -> list[str]:
    """Top-level heavy modules in ``sys.modules`` after running ``code`` in a fresh process."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["tvlens", "tvlens.tasks", "tvlens.hooks", "tvlens.analyses"])
def test_import_is_cheap(module: str) -> None:
    assert _loaded_after(f"import {module}") == []


def test_lazy_names_resolve() -> None:
    # the lazy re-export must give the function, not the submodule of the same name
    import tvlens
    from tvlens.analyses import task_vectors

    assert callable(task_vectors) and task_vectors is tvlens.task_vectors
    assert set(tvlens.__all__) <= set(dir(tvlens))


def test_cli_help_is_cheap() -> None:
    code = (
        "import contextlib, io\nfrom tvlens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass"
    )
    assert _loaded_after(code) == []


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def import_graph() -> dict[str, set[str]]:
    """Module -> the tvlens modules it imports, anywhere in its body (functions included).

    ``if TYPE_CHECKING:`` blocks are skipped: they never run.
    """
    modules = {_module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                return True
        return False

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("tvlens")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "tvlens":
                    continue
                for a in node.names:
                    full = f"{source}.{a.name}"
                    targets.add(full if full in modules else resolve(source))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "tvlens.tasks.base" in graph and graph["tvlens.tasks.base"]  # the parser sees edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (counting function-level imports): " + " -> ".join(cycle)


def test_layering_analyses_never_import_viz_and_viz_never_loads_models() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("tvlens.analyses"):
            assert not {t for t in targets if t.startswith("tvlens.viz")}, module
        if module.startswith("tvlens.viz") and module != "tvlens.viz.report_cmd":
            # viz draws tables; the report command may compute them, a figure never does
            assert not {t for t in targets if t.startswith("tvlens.models")}, module
            parts = module.split(".")[1:]
            path = PACKAGE.joinpath(*parts).with_suffix(".py")
            source = (
                path if path.exists() else PACKAGE.joinpath(*parts, "__init__.py")
            ).read_text()
            assert "run_with_cache" not in source and "load_run(" not in source, module
