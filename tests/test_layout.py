"""The layout of `cm` (README "Architecture"): no import cycle among its modules, and none among
its units (a top-level module, or a package such as cm/methods/ taken as one), so that every
import runs from a higher layer down to a lower one; at most 15 modules at the top of `cm/`."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "cm"
MAX_TOP_MODULES = 15


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(modules: set, path: pathlib.Path) -> set:
    """The `cm` modules that `path` imports (a name imported from a package counts as the module
    of that name when one exists, else as the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
    return out


def import_graph() -> dict:
    """{module: the cm modules it imports}, every module of cm/ (packages by their __init__)."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(set(paths), path) - {name} for name, path in paths.items()}


def unit_of(module: str) -> str:
    """cm.methods.ect -> cm.methods; cm.train -> cm.train."""
    return ".".join(module.split(".")[:2])


def find_cycle(graph: dict):
    """One cycle of `graph` as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_modules():
    graph = import_graph()
    assert len(graph) > 80  # the walk found the packages' modules
    assert find_cycle(graph) is None


def test_no_import_cycle_among_units():
    """Packages as single nodes: no package imports a module that imports it back."""
    units: dict = {}
    for module, deps in import_graph().items():
        units.setdefault(unit_of(module), set()).update(unit_of(d) for d in deps)
    units = {u: deps - {u} for u, deps in units.items()}
    assert {"cm.methods", "cm.io", "cm.workdir", "cm.data", "cm.models"} <= set(units)
    assert find_cycle(units) is None


def test_top_level_holds_at_most_15_modules():
    top = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)
