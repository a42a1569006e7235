"""The package layout: stage folders whose imports run one way, no cycle (packages included),
imports at the top, a narrow namespace, no deprecated names."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECT = ("surgery", "criteria", "models")
LAZY_ON_PURPOSE = {"surgery.cli"}  # `surgery --help` must not load the engine
# The stages, in data-flow order: a module may import from its own stage and earlier ones only.
STAGES = ["surgery.core", "surgery.ops", "surgery.capture", "surgery.groups", "surgery.select", "surgery.rewrite",
          "surgery.repair", "surgery.reporting", "surgery (top: the verbs)", "surgery.pipeline", "surgery.cli"]
TOP_LIMIT = 12  # modules directly in surgery/ besides __init__ and __main__


def _modules():
    for pkg in PROJECT:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            yield name.removesuffix(".__init__"), ast.parse(path.read_text())


def _imports(tree, known):
    """(node, modules it imports): ``from pkg import sub`` imports the module ``pkg.sub``;
    ``from pkg import name`` imports ``pkg`` (its ``__init__``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            yield node, [s for s in subs if s in known] + ([node.module] if any(s not in known for s in subs) else [])
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]


def _graph():
    known = {m for m, _ in _modules()}
    edges, local = {}, []
    for mod, tree in _modules():
        for node, names in _imports(tree, known):
            for n in names:
                if n.split(".")[0] in PROJECT and n in known:
                    (local.append((mod, n)) if node.col_offset else edges.setdefault(mod, set()).add(n))
    return edges, local


def _inside(name, package):
    return name == package or name.startswith(package + ".")


def _stage(module):
    """Index in STAGES, or None for the criteria and models packages (they stand apart)."""
    if _inside(module, "surgery.criteria") or _inside(module, "surgery.models") or module.split(".")[0] != "surgery":
        return None
    if module in ("surgery.cli", "surgery.__main__"):
        return STAGES.index("surgery.cli")
    for i, stage in enumerate(STAGES):
        if _inside(module, stage):
            return i
    return STAGES.index("surgery (top: the verbs)")


def test_project_imports_are_at_the_top_of_files():
    _, local = _graph()
    assert [(m, n) for m, n in local if m not in LAZY_ON_PURPOSE] == []


def test_no_module_imports_from_a_later_stage():
    edges, _ = _graph()
    bad = sorted((m, n) for m, ns in edges.items() for n in ns
                 if _stage(m) is not None and _stage(n) is not None and _stage(n) > _stage(m))
    assert bad == []


def test_import_graph_has_no_cycle_packages_included():
    edges, _ = _graph()
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in edges.get(u, ()):
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


def test_the_layout_test_sees_a_later_stage_import(tmp_path):
    """The stage check can fail: a rewrite module imported by a core module is caught."""
    assert _stage("surgery.rewrite.verify") > _stage("surgery.core.inputs")
    assert _stage("surgery.pruner") > _stage("surgery.reporting.report")
    assert _stage("surgery.pipeline.runner") > _stage("surgery.pruner")
    assert _stage("surgery.criteria.base") is None


def test_the_top_of_the_package_holds_only_the_verbs():
    top = sorted(p.stem for p in (ROOT / "surgery").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= TOP_LIMIT, top
    stages = {s.split(".")[1] for s in STAGES if s.startswith("surgery.") and " " not in s and s != "surgery.cli"}
    assert stages <= {p.name for p in (ROOT / "surgery").iterdir() if (p / "__init__.py").exists()}


def test_criteria_imports_only_criteria_and_the_error_types():
    edges, _ = _graph()
    bad = {(m, n) for m, ns in edges.items() if _inside(m, "surgery.criteria") for n in ns
           if not _inside(n, "surgery.criteria") and n != "surgery.core.errors" and not n.startswith("surgery.core.errors.")
           and n not in ("surgery", "surgery.core")}
    assert bad == set()


def test_the_engine_does_not_import_the_models():
    edges, _ = _graph()
    bad = {(m, n) for m, ns in edges.items() if not _inside(m, "surgery.models") for n in ns
           if _inside(n, "surgery.models") or n.split(".")[0] == "models"}
    assert bad == set()


def test_short_names_are_the_same_modules_and_cannot_be_shadowed(tmp_path):
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


@pytest.mark.parametrize("name", ["apply", "oracle", "remove_filters", "sparsify", "register_handler",
                                  "register_module_rule", "handler_for"])
def test_old_top_level_names_are_gone(name):
    import surgery
    with pytest.raises(AttributeError):
        getattr(surgery, name)


def test_every_public_name_resolves():
    import surgery
    for name in surgery.__all__:
        assert getattr(surgery, name) is not None, name
    assert callable(surgery.trace) and callable(surgery.report)
