"""Channel-flow rules. Importing this package registers the built-in rules."""
from surgery.rules.registry import (FUNCTION_RULES, METHOD_RULES, MODULE_RULES, register_function_rule,
                                    register_method_rule, register_module_rule)
from surgery.rules.context import RuleContext
from surgery.rules.elementwise import broadcast_axes, elementwise, passthrough
from surgery.rules import shape_ops, reductions, modules, functional, attention, windowed, aten  # noqa: F401
from surgery.rules.modules import per_channel
from surgery import transposed_linear  # noqa: F401,E402  (registers transformers' Conv1D)

__all__ = ["FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES", "register_function_rule",
           "register_method_rule", "register_module_rule", "RuleContext", "passthrough",
           "elementwise", "broadcast_axes", "per_channel"]
