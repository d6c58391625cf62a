"""The readers and writers of models form layers, not a cycle: runners < inference < classifier < checkpoint < export
< convert / predict. Each module imports in a fresh interpreter on its own, and none of them reaches the others
through an import hidden inside a function."""

import ast
import os
import subprocess
import sys

import pytest
from helpers import ROOT

LAYERED = ["audiossl.models.runners", "audiossl.models.inference", "audiossl.models.classifier", "audiossl.hub.reader",
           "audiossl.hub.export", "audiossl.convert", "audiossl.cli.predict"]


@pytest.mark.parametrize("module", LAYERED)
def test_imports_alone(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def _path(module: str) -> str:
    p = os.path.join(ROOT, *module.split("."))
    return os.path.join(p, "__init__.py") if os.path.isdir(p) else p + ".py"


@pytest.mark.parametrize("module", LAYERED)
def test_no_function_level_imports_between_the_layers(module):
    tree = ast.parse(open(_path(module)).read())
    hidden = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module in LAYERED:
                    hidden.append(f"{fn.name}: from {node.module}")
    assert not hidden, hidden
