"""The registries of the engine's vocabulary: layer types, functions and tensor methods.

A layer type is registered once, with its channel *rule* (how channels flow through its
forward, for tracing) and its *handler* (how to rebuild it with fewer channels)::

    register_layer(nn.Conv2d, rule=conv, handler=ConvHandler())

A rule is ``rule(ctx, node) -> axes`` where ``ctx`` is a :class:`surgery.ops.context.RuleContext`;
functions (``torch.cat``, yours) and tensor methods (``"view"``) have rules only. Keys are
checked: module types (or a qualified class name such as
``"transformers.pytorch_utils.Conv1D"``, so its package need not be imported), callables or
qualified function names, method names.

Lookup has one meaning for every layer: the entry of the module's nearest registered base
class (:func:`lookup_layer`). Its handler rebuilds the module's tensors whatever its forward;
its rule describes the registered class's forward, so a subclass that overrides ``forward``
(torchvision's ``LayerNorm2d``) is traced through instead of using it (:func:`rule_for`).

Example:
    >>> import torch
    >>> from surgery.ops.elementwise import passthrough
    >>> def my_act(x):
    ...     return x * torch.sigmoid(x)
    >>> with registered_function(my_act, rule=passthrough):
    ...     function_rule(my_act) is passthrough
    True
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch.nn as nn

from surgery.core.errors import ArgumentTypeError
from surgery.core.frames import user_stacklevel

__all__ = ["LayerType", "register_layer", "unregister_layer", "registered_layer", "lookup_layer", "rule_for",
           "handler_for", "layer_types", "register_function", "unregister_function", "registered_function",
           "function_rule", "functions", "register_method", "unregister_method", "registered_method",
           "method_rule", "methods", "register_leaf_function", "leaf_functions", "qualified_name"]

Rule = Callable  # (RuleContext, torch.fx.Node) -> axes
_QUALIFIED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


@dataclass(frozen=True)
class LayerType:
    """One registered layer type: its channel rule and its rewrite handler (either may be None)."""
    key: object
    rule: Rule | None = None
    handler: object | None = None


_LAYERS: dict = {}
_FUNCTIONS: dict = {}
_METHODS: dict = {}
_OPS: dict = {}  # an operator's schema name ("torchvision::roi_align") -> rule, for every overload
_LEAF_FUNCTIONS: list = []  # Python functions torch.fx keeps as one call (their rules see the call)


def qualified_name(obj: object) -> str:
    """``module.qualname`` of a class or function."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _key_name(key: object) -> str:
    return key if isinstance(key, str) else getattr(key, "__qualname__", None) or repr(key)


# --------------------------------------------------------------------------- layers
def _check_layer_key(key: object) -> None:
    if isinstance(key, str) and _QUALIFIED.match(key):
        return
    if isinstance(key, type) and issubclass(key, nn.Module):
        return
    raise ArgumentTypeError(f"register_layer takes nn.Module subclasses or qualified class names "
                            f"('package.module.Class'), got {key!r}")


def register_layer(*types: type | str, rule: Rule | None = None, handler: object = None) -> None:
    """Register the channel ``rule`` and/or the rewrite ``handler`` (a :class:`Handler` instance
    or class) of module ``types``; a part not given keeps what was registered before."""
    if rule is None and handler is None:
        raise ArgumentTypeError("register_layer needs rule=..., handler=... or both")
    if rule is not None and not callable(rule):
        raise ArgumentTypeError(f"rule must be a function (ctx, node) -> axes, got {rule!r}")
    if isinstance(handler, type):
        handler = handler()
    if handler is not None and not (callable(getattr(handler, "prune", None))
                                    and callable(getattr(handler, "slices", None))):
        raise ArgumentTypeError(f"handler must be a Handler (with prune and slices), got {handler!r}")
    for key in types:
        _check_layer_key(key)
    for key in types:
        old = _LAYERS.get(key, LayerType(key))
        _warn_replacing(key, "rule", old.rule, rule)
        _warn_replacing(key, "handler", old.handler, handler, same=lambda a, b: type(a) is type(b))
        _LAYERS[key] = LayerType(key, rule if rule is not None else old.rule,
                                 handler if handler is not None else old.handler)


def _warn_replacing(key: object, part: str, old: object, new: object, same=lambda a, b: a is b) -> None:
    if old is not None and new is not None and not same(old, new):
        warnings.warn(f"replacing the {part} of {_key_name(key)} ({_key_name(old)} -> {_key_name(new)})",
                      stacklevel=user_stacklevel())


def unregister_layer(*types: type | str) -> None:
    """Forget module ``types`` (rule and handler)."""
    for key in types:
        _LAYERS.pop(key, None)


@contextlib.contextmanager
def registered_layer(*types: type | str, rule: Rule | None = None, handler: object = None) -> Iterator[None]:
    """``register_layer`` for the ``with`` block; what was registered before comes back after it."""
    saved = {key: _LAYERS.get(key) for key in types}
    register_layer(*types, rule=rule, handler=handler)
    try:
        yield
    finally:
        for key, entry in saved.items():
            _LAYERS.pop(key, None) if entry is None else _LAYERS.__setitem__(key, entry)


def lookup_layer(module: nn.Module) -> tuple[LayerType | None, bool]:
    """``(entry of the nearest registered base class, whether that class's forward is the one
    this module runs)``; ``(None, False)`` for an unregistered type."""
    own_forward = True
    for cls in type(module).__mro__:
        entry = _LAYERS.get(cls) or _LAYERS.get(qualified_name(cls))
        if entry is not None:
            return entry, own_forward
        if "forward" in vars(cls):
            own_forward = False
    return None, False


def rule_for(module: nn.Module) -> Rule | None:
    """The channel rule describing this module's forward, or None (traced through)."""
    entry, own_forward = lookup_layer(module)
    return entry.rule if entry is not None and own_forward else None


def handler_for(module: nn.Module):
    """The handler that rebuilds this module, or a TypeError saying how to register one."""
    entry, _ = lookup_layer(module)
    if entry is None or entry.handler is None:
        name = type(module).__name__
        raise ArgumentTypeError(
            f"no rewrite handler for {name}. Register one with surgery.extend.register_layer({name}, "
            f"handler=MyHandler()), a Handler subclass that implements prune(module, keep_in, keep_out) "
            f"and slices(module, role)")
    return entry.handler


def layer_types() -> dict:
    """A copy of the layer registry: ``{type or qualified name: LayerType}``."""
    return dict(_LAYERS)


# --------------------------------------------------------------------------- functions and methods
def _register(table: dict, keys: tuple, rule: Rule | None, check: Callable) -> Callable:
    for key in keys:
        check(key)

    def deco(fn: Rule) -> Rule:
        if not callable(fn):
            raise ArgumentTypeError(f"a rule must be a function (ctx, node) -> axes, got {fn!r}")
        for key in keys:
            _warn_replacing(key, "rule", table.get(key), fn)
            table[key] = fn
        return fn
    return deco if rule is None else deco(rule)


def _check_function_key(key: object) -> None:
    if not (callable(key) or (isinstance(key, str) and _QUALIFIED.match(key))):
        raise ArgumentTypeError(f"register_function takes functions or qualified names "
                                f"('package.module.function'), got {key!r}")


def _check_method_key(key: object) -> None:
    if not (isinstance(key, str) and key.isidentifier()):
        raise ArgumentTypeError(f"register_method takes tensor method names such as 'view', got {key!r}")


def register_function(*functions: object, rule: Rule | None = None) -> Callable:
    """Register ``rule`` for functions called in forward (``torch.cat``, ``operator.add``, yours,
    or ``"package.module.function"``). Without ``rule`` it is a decorator."""
    return _register(_FUNCTIONS, functions, rule, _check_function_key)


def register_method(*names: str, rule: Rule | None = None) -> Callable:
    """Register ``rule`` for tensor methods by name (``"view"``, ``"add_"``). Without ``rule``
    it is a decorator."""
    return _register(_METHODS, names, rule, _check_method_key)


def unregister_function(*functions: object) -> None:
    for key in functions:
        _FUNCTIONS.pop(key, None)


def unregister_method(*names: str) -> None:
    for key in names:
        _METHODS.pop(key, None)


@contextlib.contextmanager
def _registered(table: dict, keys: tuple, register: Callable, rule: Rule) -> Iterator[None]:
    saved = {key: table.get(key) for key in keys}
    register(*keys, rule=rule)
    try:
        yield
    finally:
        for key, old in saved.items():
            table.pop(key, None) if old is None else table.__setitem__(key, old)


def registered_function(*functions: object, rule: Rule) -> contextlib.AbstractContextManager:
    """``register_function`` for the ``with`` block only."""
    return _registered(_FUNCTIONS, functions, register_function, rule)


def registered_method(*names: str, rule: Rule) -> contextlib.AbstractContextManager:
    """``register_method`` for the ``with`` block only."""
    return _registered(_METHODS, names, register_method, rule)


def function_rule(fn: object) -> Rule | None:
    """The rule of a function (by identity, else by qualified name), or None."""
    try:
        rule = _FUNCTIONS.get(fn)
    except TypeError:  # unhashable target
        return None
    if rule is None and callable(fn):
        rule = _FUNCTIONS.get(qualified_name(fn))
    schema = getattr(fn, "_schema", None)  # an operator overload (aten graphs)
    if rule is None and schema is not None:
        rule = _OPS.get(schema.name)
    return rule


def register_op(*names: str, rule: Rule | None = None) -> Callable:
    """Register ``rule`` for every overload of the operators named ``"namespace::op"`` (their
    schema name), as they appear in aten-level graphs, without importing the library that
    defines them (``"torchvision::roi_align"``). Without ``rule`` it is a decorator."""
    return _register(_OPS, names, rule, _check_op_key)


def _check_op_key(key: object) -> None:
    if not (isinstance(key, str) and re.match(r"^\w+::\w+$", key)):
        raise ArgumentTypeError(f"register_op takes operator names such as 'torchvision::roi_align', got {key!r}")


def method_rule(name: str) -> Rule | None:
    return _METHODS.get(name)


def functions() -> dict:
    """A copy of the function registry."""
    return dict(_FUNCTIONS)


def methods() -> dict:
    """A copy of the method registry."""
    return dict(_METHODS)


def register_leaf_function(fn: Callable) -> Callable:
    """Keep ``fn`` as one call when torch.fx traces (its rule then sees the call)."""
    if fn not in _LEAF_FUNCTIONS:
        _LEAF_FUNCTIONS.append(fn)
    return fn


def leaf_functions() -> tuple:
    return tuple(_LEAF_FUNCTIONS)
