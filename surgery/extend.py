"""``surgery.extend``: teach the engine new layers and ops.

A *rule* says how channels flow through a module type, function or tensor method
(registered with ``register_module_rule`` / ``register_function_rule`` /
``register_method_rule``); a *handler* rebuilds a module type with fewer channels
(``register_handler`` on a :class:`Handler` subclass). See ``examples/custom_architecture.py``.

Example:
    >>> import torch, surgery.extend as ext
    >>> def soft_gate(x):
    ...     return x * torch.sigmoid(x)
    >>> _ = ext.register_function_rule(soft_gate)(ext.passthrough)
"""
from surgery.handlers import HANDLERS, Handler, PerChannelHandler, handler_for, register_handler, replace_param
from surgery.rules import (FUNCTION_RULES, METHOD_RULES, MODULE_RULES, RuleContext, broadcast_axes, elementwise,
                           passthrough, per_channel, register_function_rule, register_method_rule,
                           register_module_rule)
from surgery.rules.context import Kind, Role

__all__ = ["register_module_rule", "register_function_rule", "register_method_rule", "RuleContext",
           "passthrough", "elementwise", "broadcast_axes", "per_channel", "Kind", "Role",
           "Handler", "PerChannelHandler", "register_handler", "handler_for", "replace_param",
           "MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "HANDLERS"]
