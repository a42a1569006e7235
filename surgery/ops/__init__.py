"""The engine's vocabulary: every layer type, function and tensor method it understands.

One file per family holds a layer type's channel rule and its rewrite handler, registered
together with :func:`register_layer` (conv, linear, embedding, norm, attention, windowed,
transposed_linear); shape_ops, elementwise, reductions, functional and aten hold the rules
of functions and methods. Importing this package registers them all.
"""
from surgery.ops import (aten, attention, conv, elementwise, embedding, functional, linear, norm,
                         reductions, shape_ops, transposed_linear, windowed)
from surgery.ops.registry import (function_rule, handler_for, layer_types, lookup_layer, method_rule,
                                  register_function, register_layer, register_method, rule_for)

FAMILIES = (aten, attention, conv, elementwise, embedding, functional, linear, norm, reductions, shape_ops,
            transposed_linear, windowed)  # importing them registers the built-ins

__all__ = ["register_layer", "register_function", "register_method", "lookup_layer", "rule_for", "handler_for",
           "function_rule", "method_rule", "layer_types"]
