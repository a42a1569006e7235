"""The package layout: an acyclic import graph, imports at the top, a narrow namespace."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("surgery", "criteria", "models")
LAZY_ON_PURPOSE = {"surgery.cli"}  # `surgery --help` must not load the engine


def _modules():
    for pkg in PROJECT:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield name.removesuffix(".__init__"), ast.parse(path.read_text())


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, [node.module]
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]


def _graph():
    edges, local = {}, []
    for mod, tree in _modules():
        for node, names in _imports(tree):
            for n in names:
                if n.split(".")[0] in PROJECT:
                    (local.append((mod, n)) if node.col_offset else edges.setdefault(mod, set()).add(n))
    return edges, local


def test_project_imports_are_at_the_top_of_files():
    _, local = _graph()
    assert [(m, n) for m, n in local if m not in LAZY_ON_PURPOSE] == []


def test_import_graph_between_modules_has_no_cycle():
    edges, _ = _graph()
    packages = {m for m, t in _modules() if (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in edges.get(u, ()):
            if v in packages:  # a package's __init__ only gathers names; its modules are the nodes
                continue
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for u in list(edges):
        if u not in state:
            visit(u, [])
    assert cycles == []


def _inside(name, package):
    return name == package or name.startswith(package + ".")


def test_criteria_does_not_import_the_engine_or_the_models():
    edges, _ = _graph()
    bad = {(m, n) for m, ns in edges.items() if _inside(m, "surgery.criteria") for n in ns
           if not _inside(n, "surgery.criteria")}
    assert bad == set()


def test_the_engine_does_not_import_the_models():
    edges, _ = _graph()
    bad = {(m, n) for m, ns in edges.items() if not _inside(m, "surgery.models") for n in ns
           if _inside(n, "surgery.models") or n.split(".")[0] == "models"}
    assert bad == set()


def test_short_names_are_the_same_modules_and_cannot_be_shadowed(tmp_path):
    import subprocess
    import sys
    (tmp_path / "criteria.py").write_text("MINE = True\n")
    (tmp_path / "models.py").write_text("MINE = True\n")
    code = ("import surgery, torch, criteria, models\n"
            "assert criteria.MINE and models.MINE\n"
            "from surgery.models import create\n"
            "small = surgery.prune(create('resnet20'), torch.randn(1, 3, 32, 32), ratio=0.5)\n"
            "print(len(surgery.criteria.available()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import criteria
    import models
    import surgery.criteria.kmeans
    from criteria.kmeans import KMeansCriterion
    assert criteria is surgery.criteria and models is surgery.models
    assert KMeansCriterion is surgery.criteria.kmeans.KMeansCriterion


def test_deprecated_names_still_work_with_a_warning():
    import surgery
    with pytest.warns(DeprecationWarning, match="apply_plan"):
        assert surgery.apply is surgery.apply_plan
    with pytest.warns(DeprecationWarning, match="surgery.testing"):
        assert surgery.oracle is surgery.testing
    with pytest.warns(DeprecationWarning, match="surgery.extend"):
        assert surgery.register_handler is surgery.extend.register_handler
