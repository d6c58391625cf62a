"""The package's imports run one way, room by room, with no cycle.

Every ``import`` statement of every module under ``audiossl/`` counts: at module level, inside functions, and under
``if TYPE_CHECKING:``. Rooms, lowest first (a module imports only from its own room or a lower one)::

    errors, version < config_dict < frontend < data, models < hub < convert < objectives < tasks < cli

``audiossl/__init__.py`` (the public API, imported lazily) and ``__main__`` sit above all rooms; no module inside the
package imports a name from the package root, only from the modules that define it.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = Path(ROOT) / "audiossl"
RANK = {"errors": 0, "version": 0, "config_dict": 1, "frontend": 2, "data": 3, "models": 3, "hub": 4, "convert": 5,
        "objectives": 6, "tasks": 7, "cli": 8}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The audiossl module that ``name`` (a module, or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> dict[str, int]:
    """audiossl modules ``module`` imports -> first line number, every import statement counted."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]  # `from audiossl.x import y`: y may be a module
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("audiossl") else None
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_walk_sees_the_whole_package():
    # a guard against a walk that finds nothing (and so no cycle): every room is there, and known edges are seen
    assert {_room(m) for m in MODULES} >= set(RANK)
    assert "audiossl.models.inference" in GRAPH["audiossl.models.classifier"]
    assert "audiossl.tasks.probe" in GRAPH["audiossl.cli.train"]  # an import inside a function


def test_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_run_one_way():
    wrong = []
    for module, targets in GRAPH.items():
        src = _room(module)
        if src not in RANK:  # the package root and __main__ sit above every room
            continue
        for target, line in targets.items():
            dst = _room(target)
            if dst is None:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports from the package root; import "
                             "from the module that defines the name")
            elif dst != src and RANK[dst] >= RANK[src]:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {src} imports {target} ({dst} is not below)")
    assert not wrong, "\n".join(wrong)


def test_the_top_level_is_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 6, top


def test_public_api_names_resolve():
    import audiossl

    for name in audiossl.__all__:
        assert getattr(audiossl, name) is not None, name
    assert set(audiossl.__all__) <= set(dir(audiossl))
    from audiossl.hub.reader import load_model

    assert audiossl.load_model is load_model
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        audiossl.nope  # noqa: B018


@pytest.mark.parametrize("module", ["audiossl", "audiossl.models.runners", "audiossl.models.inference",
                                    "audiossl.models.classifier", "audiossl.hub.reader", "audiossl.hub.export",
                                    "audiossl.convert", "audiossl.cli.predict", "audiossl.data.storage"])
def test_imports_alone(module):
    """Each imports in a fresh interpreter on its own (no import-order dependency); the package root without torch."""
    code = f"import sys, {module}; assert {module != 'audiossl'} or 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
