"""The shape of the package: the module graph of gapt_ds is a DAG (no import cycle, counting imports
inside functions and ``__main__`` blocks; only ``if TYPE_CHECKING:`` imports are left out), and every
function is readable on one screen."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gapt_ds"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # typing-only imports never run
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from ((node.module, alias.name) for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for module, attr in _imports(ast.parse(path.read_text())):
            target = f"{module}.{attr}" if attr and f"{module}.{attr}" in files else module
            if target in files and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gapt_ds_import_graph_is_a_dag():
    graph = import_graph()
    assert {"gapt_ds.config", "gapt_ds.gate", "gapt_ds.algorithms", "gapt_ds.train", "gapt_ds.cli"} <= set(graph)
    assert "gapt_ds.gate" in graph["gapt_ds.algorithms"]  # edges are really collected
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_cli_knows_the_subcommands():
    graph = import_graph()
    assert not [m for m, edges in graph.items() if "gapt_ds.cli" in edges]


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_one_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not long, long


def test_only_distributed_py_imports_torch_distributed():
    users = [m for m, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
             if any(mod == "torch.distributed" or (mod == "torch" and attr == "distributed")
                    for mod, attr in _imports(ast.parse(path.read_text())))]
    assert users == ["gapt_ds.distributed"], users
