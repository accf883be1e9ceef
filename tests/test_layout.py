"""The layout the README's "Layout" section describes holds: no import cycle among our modules (deferred imports
inside functions count too), no component imports another, `rollout/` imports no component, and `service/names.py`
imports nothing of ours."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("infra", "service", "rollout", "bench", "engine", "policy")
# infra's components: they wire builders into Pulumi resources (README, "Layout").
COMPONENTS = {f"infra.{name}" for name in ("serving", "seldon", "gateway", "platform", "monitoring", "access", "feedback", "image")}


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    return ".".join(relative.parts[:-1]) if relative.name == "__init__" else ".".join(relative.parts)


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports anywhere in its body."""
    files = {module_name(path): path for package in PACKAGES for path in (REPO / package).glob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(target for target in targets if target in files and target != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_module_of_ours_takes_part_in_an_import_cycle(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_components_import_no_other_component_and_the_rollout_none(graph):
    assert COMPONENTS <= set(graph), "a component named here no longer exists: update COMPONENTS"
    crossings = {name: sorted(graph[name] & COMPONENTS) for name in graph
                 if graph[name] & COMPONENTS and (name in COMPONENTS or name.startswith("rollout"))}
    assert crossings == {}


def test_the_shared_names_module_imports_nothing_of_ours(graph):
    assert graph["service.names"] == set()


def test_only_the_stack_entry_points_take_the_whole_stack_config():
    """Builders and components take the config sections they read (README, "Layout"); the whole StackConfig
    stops at the places that split it: the stack itself, the renderer and the plan, which compares two stacks."""
    splitting = {"infra/config.py", "infra/stack.py", "infra/render.py", "rollout/plan.py"}
    takers = set()
    for path in sorted((REPO / "infra").glob("*.py")) + sorted((REPO / "rollout").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.Name) and node.id == "StackConfig" for node in ast.walk(tree)) or any(
                isinstance(node, ast.ImportFrom) and any(alias.name == "StackConfig" for alias in node.names)
                for node in ast.walk(tree)):
            takers.add(str(path.relative_to(REPO)))
    assert takers == splitting
