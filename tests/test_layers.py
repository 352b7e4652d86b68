"""The package layers (README, "Architecture"): dependencies point one way and never in a circle.

- core: `mrcnn` and its modules, except the TOP_MODULES; imports only core modules;
- middle: `preprocess`, `postprocess`, `convert_weights`; import the core and each other;
- top: the TOP_MODULES of `mrcnn` (Matterport's import paths and the libraries that use the
  whole project), the scripts, benchmarks, samples, tools and tests; import anything.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""
import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE, MIDDLE, TOP = 0, 1, 2
MIDDLE_PACKAGES = ("preprocess", "postprocess", "convert_weights")
TOP_MODULES = ("mrcnn.model", "mrcnn.utils", "mrcnn.visualize", "mrcnn.trainer", "mrcnn.export")
LAYER_NAMES = {CORE: "the core (mrcnn)", MIDDLE: "preprocess/postprocess/convert_weights",
               TOP: "the top (scripts, mrcnn's Matterport API modules)"}


def module_name(path):
    """Dotted module name of a .py file below ROOT (a package's __init__ is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module):
    """CORE, MIDDLE or TOP for a project module; None for a module of another project."""
    top_package = module.split(".")[0]
    if top_package == "mrcnn":
        if any(module == top or module.startswith(top + ".") for top in TOP_MODULES):
            return TOP
        return CORE
    if top_package in MIDDLE_PACKAGES:
        return MIDDLE
    return TOP


def project_modules():
    """{module name: path} of every Python file git tracks or would track (not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "*.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return {module_name(ROOT / path): ROOT / path for path in listed if (ROOT / path).is_file()}


def imported_modules(path, name, known, source=None):
    """Project modules that the file (or `source`, its text) imports: absolute and relative
    imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # The longest project module that the dotted name starts with.
            parts = target.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    found.add(candidate)
                    break
    found.discard(name)
    return found


def import_graph():
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def layer_violations(graph):
    """'a imports b' lines where a sits below b."""
    return sorted(f"{source} ({LAYER_NAMES[layer(source)]}) imports {target} "
                  f"({LAYER_NAMES[layer(target)]})"
                  for source, targets in graph.items() for target in targets
                  if layer(target) > layer(source))


def cycles(graph):
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_dependencies_point_down_the_layers():
    assert layer_violations(import_graph()) == []


def test_no_module_imports_in_a_circle():
    assert cycles(import_graph()) == []


def test_detect_needs_only_the_core():
    """Everything one image meets in detect() lives in the core."""
    graph = import_graph()
    reached, todo = set(), ["mrcnn.detector"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert {layer(module) for module in reached} == {CORE}


@pytest.mark.parametrize("source, text, expected", [
    ("mrcnn/boxes.py", "from preprocess.images import load_image\n", "mrcnn.boxes"),
    ("mrcnn/ops/nms.py", "def f():\n    import postprocess.visualize\n", "mrcnn.ops.nms"),
    ("preprocess/masks.py", "from mrcnn import model\n", "preprocess.masks"),
    ("convert_weights/keras_h5.py", "import train\n", "convert_weights.keras_h5"),
])
def test_the_check_catches_an_import_upwards(source, text, expected):
    """A forbidden import added to a file of the project is reported."""
    modules = project_modules()
    graph = import_graph()
    path = ROOT / source
    graph[expected] = imported_modules(path, expected, modules, path.read_text() + text)
    violations = layer_violations(graph)
    assert len(violations) == 1 and violations[0].startswith(expected + " ")


def test_the_check_catches_a_circle():
    graph = {"mrcnn.a": {"mrcnn.b"}, "mrcnn.b": {"mrcnn.c"}, "mrcnn.c": {"mrcnn.a"},
             "mrcnn.d": {"mrcnn.a"}}
    assert cycles(graph) == [["mrcnn.a", "mrcnn.b", "mrcnn.c"]]
