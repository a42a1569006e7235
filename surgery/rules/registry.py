"""Registries of channel-flow rules, keyed by module type, function and method name.

A rule is ``rule(ctx, node) -> axes`` where ``ctx`` is a
:class:`surgery.rules.context.RuleContext` and the return value describes the
output's channel axes (see :mod:`surgery.rules.context`). Register your own:

    >>> import torch
    >>> from surgery.rules import register_function_rule, passthrough
    >>> def my_act(x):
    ...     return x * torch.sigmoid(x)
    >>> _ = register_function_rule(my_act)(passthrough)
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch.nn as nn

__all__ = [
    "MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "LEAF_FUNCTIONS",
    "register_module_rule", "register_function_rule", "register_method_rule",
    "module_rule_for", "function_rule_for", "method_rule_for",
]

Rule = Callable  # (RuleContext, torch.fx.Node) -> axes

MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[object, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}
LEAF_FUNCTIONS: list = []  # Python functions torch.fx keeps as one call (their rules see the call)


def _registrar(table: dict, keys: tuple) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for key in keys:
            old = table.get(key)
            if old is not None and old is not rule:
                warnings.warn(f"replacing the channel rule for {_key_name(key)} "
                              f"({getattr(old, '__qualname__', old)} -> {getattr(rule, '__qualname__', rule)})",
                              stacklevel=3)
            table[key] = rule
        return rule
    return deco


def _key_name(key: object) -> str:
    return key if isinstance(key, str) else getattr(key, "__qualname__", None) or repr(key)


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_module_rule(*types: type | str) -> Callable[[Rule], Rule]:
    """Register a rule for module types (subclasses inherit it), or for a type by its
    qualified name (``"transformers.pytorch_utils.Conv1D"``) so its package need not be imported."""
    for t in types:
        if not (isinstance(t, str) or (isinstance(t, type) and issubclass(t, nn.Module))):
            raise TypeError(f"register_module_rule expects nn.Module subclasses or qualified names, got {t!r}")
    return _registrar(MODULE_RULES, types)


def register_function_rule(*functions: object) -> Callable[[Rule], Rule]:
    """Register a rule for functions called in forward (``torch.cat``, ``operator.add``, yours),
    or for a function by its qualified name (``"package.module.function"``) so that its
    package need not be imported to register it."""
    return _registrar(FUNCTION_RULES, functions)


def register_method_rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for tensor methods by name (``"view"``, ``"add_"``)."""
    return _registrar(METHOD_RULES, names)


def module_rule_for(module: nn.Module) -> Rule | None:
    """The rule of the module's class or its nearest registered base class. A subclass
    that overrides ``forward`` does not inherit its base's rule (its forward may move
    channels differently, like torchvision's LayerNorm2d); it is traced through instead."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
        if qualified_name(cls) in MODULE_RULES:
            return MODULE_RULES[qualified_name(cls)]
        if "forward" in vars(cls):
            return None
    return None


def function_rule_for(fn: object) -> Rule | None:
    try:
        rule = FUNCTION_RULES.get(fn)
    except TypeError:  # unhashable target
        return None
    if rule is None and callable(fn):
        rule = FUNCTION_RULES.get(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}")
    return rule


def method_rule_for(name: str) -> Rule | None:
    return METHOD_RULES.get(name)
