"""The house plan, read from the source (docs/architecture.md): one direction of flow, a quiet library.

``kernels`` <- ``dynamics`` <- ``phases`` <- ``figures``: a package imports only
itself and the packages to its left. Nothing in ``kernels/`` or ``dynamics/``
prints, plots, draws progress bars or imports ``phases``/``figures``; no
library module switches the matplotlib backend or JAX's precision at import.
"""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("kernels", "dynamics", "phases", "figures")
QUIET = ("kernels", "dynamics")
LOUD_MODULES = ("matplotlib", "tqdm", "seaborn")


def _modules(package):
    for folder, _, files in os.walk(os.path.join(REPO, package)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, REPO), ast.parse(open(path).read(), path)


def _imports(tree):
    """Top-level names of every module imported anywhere in ``tree`` (function bodies included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


ALL = [(package, path, tree) for package in LAYERS for path, tree in _modules(package)]


def test_the_packages_exist_and_are_read():
    assert {package for package, _, _ in ALL} == set(LAYERS)
    assert len(ALL) > 30


@pytest.mark.parametrize("package,path,tree", ALL, ids=[path for _, path, _ in ALL])
def test_imports_flow_one_way(package, path, tree):
    allowed = LAYERS[:LAYERS.index(package) + 1]
    upward = sorted({name for name in _imports(tree)
                     if name.split(".")[0] in LAYERS and name.split(".")[0] not in allowed})
    assert not upward, f"{path} imports {upward}, above {package} in the flow"


QUIET_MODULES = [(path, tree) for package, path, tree in ALL if package in QUIET]


@pytest.mark.parametrize("path,tree", QUIET_MODULES, ids=[path for path, _ in QUIET_MODULES])
def test_the_library_neither_prints_nor_plots(path, tree):
    prints = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    loud = sorted({name for name in _imports(tree) if name.split(".")[0] in LOUD_MODULES})
    assert not prints, f"{path} calls print on lines {prints}"
    assert not loud, f"{path} imports {loud}"


def test_a_planted_violation_is_caught():
    tree = ast.parse("def f():\n    from phases.detect import detect\n    print(1)\n")
    assert "phases.detect" in set(_imports(tree))


def test_importing_the_packages_leaves_the_backend_and_precision_alone():
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import jax\n"
        "import figures, figures.style, phases, phases.plot, phases.experiments, dynamics.simulator, dynamics.trajectory\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert not jax.config.jax_enable_x64\n"
        "from dynamics import simulate\n"
        "assert callable(simulate), simulate\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=os.environ | {"MPLBACKEND": ""})
    assert result.returncode == 0, result.stderr[-2000:]


# The design documents outside the repository, spelled so that this file does not cite them itself.
OUTSIDE_DOCS = ("../shared/" + "THEORY", "THEORY" + ".md", "ARCHI" + "TECTURE")


def test_no_module_cites_a_path_outside_the_repository():
    offenders = []
    for folder in (*LAYERS, "tests", "bench"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py") and name != "test_architecture.py":
                    text = open(os.path.join(root, name)).read()
                    if any(word in text for word in OUTSIDE_DOCS):
                        offenders.append(os.path.relpath(os.path.join(root, name), REPO))
    readme = open(os.path.join(REPO, "README.md")).read()
    assert not offenders, offenders
    assert not [word for word in OUTSIDE_DOCS if word in readme]
