"""torch-surgery: structured pruning that physically removes channels.

Top level: the verbs and types users call. Submodules: ``surgery.extend`` (rules and
handlers for new layers), ``surgery.testing`` (the exactness oracle), ``surgery.layers``
(single-layer edits), ``surgery.sparsity`` (masks), ``surgery.metrics``.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> model = create("vgg16_bn", num_classes=10)
    >>> small = surgery.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
"""
import importlib
import warnings

from surgery.version import __version__
from surgery.report import Report, report  # eager: the submodule surgery.report would shadow the function

# Names are loaded on first use (PEP 562), so `import surgery.criteria` and `surgery --help`
# do not pay for the engine; `from surgery import prune` works as usual.
_LAZY = {
    "ChannelGraph": "surgery.groups", "Group": "surgery.groups", "Member": "surgery.groups",
    "ShapeError": "surgery.tracing", "TraceError": "surgery.tracing", "trace": "surgery.tracing",
    "PruneConfig": "surgery.pruner", "Pruner": "surgery.pruner", "prune": "surgery.pruner",
    "Surgeon": "surgery.surgeon", "Plan": "surgery.plan", "apply_plan": "surgery.replay",
    "keep_classes": "surgery.layers",
    "load": "surgery.saving", "save": "surgery.saving", "Verification": "surgery.verify",
    "VerificationError": "surgery.verify", "InPlaceError": "surgery.rewrite",
}
_SUBMODULES = ("extend", "layers", "metrics", "sparsity", "testing", "pipeline", "criteria", "models",
               "architectures")

__all__ = ["trace", "prune", "Pruner", "PruneConfig", "Surgeon", "Plan", "apply_plan", "save", "load",
           "report", "Report", "keep_classes", "ChannelGraph", "Group", "Member", "TraceError", "ShapeError",
           "VerificationError", "Verification", "InPlaceError"]

# old top-level names -> (module, attribute); kept for one release with a DeprecationWarning
_DEPRECATED = {
    "apply": ("surgery.replay", "apply_plan"), "oracle": ("surgery.testing", None),
    "remove_filters": ("surgery.layers", "remove_filters"), "remove_bn": ("surgery.layers", "remove_bn"),
    "remove_kernels": ("surgery.layers", "remove_kernels"),
    "sparsify": ("surgery.sparsity", "sparsify"), "make_permanent": ("surgery.sparsity", "make_permanent"),
    "sparsity_report": ("surgery.sparsity", "sparsity_report"),
    "SparsityReport": ("surgery.sparsity", "SparsityReport"),
    **{n: ("surgery.extend", n) for n in ("Handler", "handler_for", "register_handler", "register_module_rule",
                                           "register_function_rule", "register_method_rule", "RuleContext",
                                           "passthrough", "elementwise", "per_channel")},
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"surgery.{name}")
    if name not in _DEPRECATED:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    module, attr = _DEPRECATED[name]
    new = f"{module}.{attr}" if attr else module
    warnings.warn(f"surgery.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
