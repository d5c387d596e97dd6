"""Imports point down: every fer_common module imports alone, no two import each other, and the layers hold.

The layers (issue 30): the base modules at the top of the package import only each other; model/ and
datasets/ import the base; infer/ the base and model/; train/ the base, model/ and datasets/; video/ the base
and infer/; the API (fer_common.api, the package face), commands/ and compat/ (the peers' APIs) import
anything. PyTorch is imported at module level only in model/ and train/: the ONNX path and every command's
--help load without it.

The graph is read from the source with ast, counting imports inside functions too: an import moved into a
function to dodge a loop is still a loop.
"""

import ast
import json
import subprocess
import sys

from synthetic import REPO

PACKAGE = REPO / "fer_common"


def module_names() -> list[str]:
    """Every module of the package, sub-packages too, dotted below fer_common (`training`, `commands.train`)."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and "__pycache__" not in parts:
            names.append(".".join(parts))
    return sorted(names)


def _source(name: str):
    path = PACKAGE.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(name: str, known: set[str]) -> set[str]:
    """The fer_common modules that fer_common/<name> imports, anywhere in the file (functions included)."""
    source = _source(name)
    package = name.split(".") if source.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:                                  # from .x import a, from .. import x
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "fer_common":
                target = node.module.split(".")[1:]         # from fer_common.x import a
            else:
                continue
            for alias in node.names:                        # `from pkg import module` names a module
                sub = ".".join(target + [alias.name])
                found.add(sub if sub in known else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:                        # import fer_common.x
                parts = alias.name.split(".")
                if parts[0] == "fer_common":
                    found.add(".".join(parts[1:]))
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    names = set(module_names())
    return {name: imported_modules(name, names) for name in sorted(names)}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a readable path."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph, component: set[str]) -> list[str]:
    """A path a -> b -> ... -> a inside one strongly connected component."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in component)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_graph_reader_sees_imports_inside_functions_and_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # calibration imports the predictor and the bulk reader; checkpoint imports models (at module level).
    graph = import_graph()
    assert {"infer.predictor", "infer.bulk"} <= graph["commands.calibrate"] and "model.networks" in graph["model.checkpoint"]
    assert "model.checkpoint" in graph["infer.predictor"]
    if "commands.train" in graph:      # sub-packages too, through `from ..x import a`
        assert "train.loop" in graph["commands.train"]


def test_fer_common_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import loops: " + "; ".join(" -> ".join(c) for c in cycles)


IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "fer_common" or m.startswith("fer_common.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module("fer_common." + name)
    except BaseException:
        failures[name] = traceback.format_exc().strip().splitlines()[-1]
print(json.dumps(failures))
"""


def test_each_module_imports_alone():
    # One fresh interpreter; before each module every fer_common module is forgotten, so each is imported
    # first, on its own, as a user's `import fer_common.x` would (torch and the like stay loaded: only speed).
    r = subprocess.run([sys.executable, "-c", IMPORT_EACH, *module_names()], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    failures = json.loads(r.stdout.strip().splitlines()[-1])
    assert not failures, failures


def test_metrics_import_without_torch_or_matplotlib():
    # softmax lives in metrics so that the inference path (predictor) needs no torch for it.
    code = ("import sys, fer_common.metrics as m; m.softmax([[0.0, 1.0]]); "
            "print(sorted(x for x in ('torch', 'matplotlib') if x in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


BASE = {"boxes", "cli", "device", "errors", "files", "labels", "metrics", "model_info", "preprocess", "results",
        "runtime", "shipped", "version"}
MAY_IMPORT = {
    "base": {"base"},
    "model": {"base", "model"},
    "datasets": {"base", "datasets"},
    "infer": {"base", "model", "infer"},
    "train": {"base", "model", "datasets", "train"},
    "video": {"base", "infer", "video"},
}
TORCH_AT_TOP = {"model", "train"}


def layer(name: str) -> str:
    top = name.split(".")[0]
    if top in BASE:
        return "base"
    if top in ("api", "__main__", "commands", "compat"):
        return "top"
    assert top in MAY_IMPORT, f"fer_common.{name} is in no layer: add it to BASE or a sub-package"
    return top


def test_every_module_is_in_a_layer_and_the_base_is_small():
    names = module_names()
    for name in names:
        layer(name)
    assert len([n for n in names if "." not in n and n not in MAY_IMPORT and n not in ("commands", "compat")]) <= 20


def test_layers_import_only_what_they_may():
    broken = []
    for name, imported in import_graph().items():
        allowed = MAY_IMPORT.get(layer(name))
        if allowed is None:
            continue
        broken += [f"{name} -> {other}" for other in sorted(imported) if layer(other) not in allowed]
    assert not broken, "imports against the layers: " + "; ".join(broken)


def top_level_imports(name: str) -> set[str]:
    """Root packages a module imports at module level (not inside functions)."""
    tree = ast.parse(_source(name).read_text(encoding="utf-8"))
    roots = set()
    for node in tree.body:
        nodes = [node]
        if isinstance(node, (ast.If, ast.Try)):      # `try: import x` at module level still runs at import
            nodes = list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.Import):
                roots |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                roots.add(n.module.split(".")[0])
    return roots


def test_torch_is_imported_at_module_level_only_in_model_and_train():
    heavy = {"torch", "torchvision", "timm"}
    found = {name: sorted(top_level_imports(name) & heavy) for name in module_names()}
    broken = [f"{name} ({', '.join(mods)})" for name, mods in found.items() if mods and layer(name) not in TORCH_AT_TOP]
    assert not broken, "PyTorch at module level outside model/ and train/: " + "; ".join(broken)


def test_the_layer_rule_sees_a_wrong_import():
    assert layer("infer.predictor") == "infer" and layer("cli") == "base" and layer("commands.train") == "top"
    assert "video" not in MAY_IMPORT["infer"] and "datasets" not in MAY_IMPORT["model"]


def test_the_package_face_names_every_public_object():
    import fer_common

    for name, module in fer_common.PUBLIC.items():
        obj = getattr(fer_common, name)
        assert obj.__module__ == module or name == "to_dataframe", name
    with __import__("pytest").raises(AttributeError):
        fer_common.no_such_thing


def test_no_module_over_450_lines():
    long = {name: n for name in module_names()
            if (n := len(_source(name).read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, f"modules over 450 lines (split them by concern): {long}"
