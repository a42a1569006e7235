"""torch-surgery: structured pruning that physically removes channels.

Top level: the verbs and types users call (``__all__``). Public submodules:
``surgery.extend`` (register new layers, functions and methods), ``surgery.testing`` (the
exactness oracle), ``surgery.layers`` (single-layer edits), ``surgery.sparsity`` (masks),
``surgery.metrics`` (parameters, FLOPs), ``surgery.criteria``, ``surgery.models``,
``surgery.pipeline``. The stage folders (``core``, ``ops``, ``trace``, ``groups``,
``select``, ``rewrite``, ``repair``, ``reporting``) are the engine's inside.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> model = create("vgg16_bn", num_classes=10)
    >>> small = surgery.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
"""
import importlib

from surgery.core.version import __version__

# Names are loaded on first use (PEP 562), so `import surgery.criteria` and `surgery --help`
# do not pay for the engine; `from surgery import prune` works as usual.
_LAZY = {
    "trace": "surgery.groups.build", "ChannelGraph": "surgery.groups.graph", "Group": "surgery.groups.graph",
    "Member": "surgery.groups.graph", "PruneConfig": "surgery.core.config", "prune": "surgery.pruner",
    "Pruner": "surgery.pruner", "Surgeon": "surgery.surgeon", "Plan": "surgery.plan", "apply_plan": "surgery.replay",
    "save": "surgery.saving", "load": "surgery.saving", "report": "surgery.reporting.report",
    "Report": "surgery.reporting.report", "keep_classes": "surgery.layers",
    "Verification": "surgery.rewrite.verify", "recalibrate": "surgery.repair.recalibrate",
    **{name: "surgery.core.errors" for name in ("SurgeryError", "ArgumentError", "TraceError", "ShapeError",
                                                 "ExportError", "VerificationError", "InPlaceError", "RatioError")},
}
_SUBMODULES = ("extend", "layers", "metrics", "sparsity", "testing", "pipeline", "criteria", "models")

__all__ = ["trace", "prune", "Pruner", "PruneConfig", "Surgeon", "Plan", "apply_plan", "save", "load", "recalibrate",
           "report", "Report", "keep_classes", "ChannelGraph", "Group", "Member", "Verification",
           "SurgeryError", "ArgumentError", "TraceError", "ShapeError", "ExportError", "VerificationError",
           "InPlaceError", "RatioError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"surgery.{name}")
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
