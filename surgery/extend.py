"""``surgery.extend``: teach the engine new layers, functions and tensor methods.

A layer type is registered once with its channel *rule* (how channels flow through its
forward) and its *handler* (how to rebuild it with fewer channels):
``register_layer(MyLayer, rule=my_rule, handler=MyHandler())``. Functions and tensor methods
have rules only (``register_function``, ``register_method``). The ``registered_*`` context
managers register for a ``with`` block and restore what was there (tests). See
``examples/custom_architecture.py``.

Example:
    >>> import torch, surgery.extend as ext
    >>> def soft_gate(x):
    ...     return x * torch.sigmoid(x)
    >>> _ = ext.register_function(soft_gate, rule=ext.passthrough)
    >>> ext.function_rule(soft_gate) is ext.passthrough
    True
"""
from surgery.ops.context import Kind, Role, RuleContext
from surgery.ops.elementwise import broadcast_axes, elementwise, passthrough
from surgery.ops.handler import Handler, PerChannelHandler, replace_param
from surgery.ops.norm import per_channel
from surgery.ops.registry import (LayerType, function_rule, functions, handler_for, layer_types, lookup_layer,
                                  method_rule, methods, register_function, register_layer, register_method,
                                  registered_function, registered_layer, registered_method, rule_for,
                                  unregister_function, unregister_layer, unregister_method)

__all__ = ["register_layer", "unregister_layer", "registered_layer", "register_function", "unregister_function",
           "registered_function", "register_method", "unregister_method", "registered_method", "LayerType",
           "lookup_layer", "rule_for", "handler_for", "function_rule", "method_rule", "layer_types", "functions",
           "methods", "RuleContext", "Kind", "Role", "passthrough", "elementwise", "broadcast_axes", "per_channel",
           "Handler", "PerChannelHandler", "replace_param"]
