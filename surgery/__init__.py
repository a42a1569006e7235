"""torch-surgery: structured pruning that physically removes channels.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> model = create("vgg16_bn", num_classes=10)
    >>> small = surgery.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
"""
from surgery.rules import (passthrough, elementwise, per_channel, register_function_rule,
                           register_method_rule, register_module_rule, RuleContext)
from surgery.handlers import Handler, handler_for, register_handler
from surgery.groups import ChannelGraph, Group, Member
from surgery.tracing import ShapeError, TraceError
from surgery.trace import trace
from surgery.rewrite import rewrite
from surgery.prune import prune
from surgery import oracle
from surgery.surgeon import Surgeon
from surgery.manual import keep_classes, remove_bn, remove_filters, remove_kernels
from surgery.sparsity import SparsityReport, make_permanent, sparsify, sparsity_report
from surgery.plan import Plan, apply
from surgery.pruner import PruneConfig, Pruner
from surgery.report import Report, report
from surgery.saving import load, save

__all__ = ["trace", "prune", "rewrite", "ChannelGraph", "Group", "Member", "Handler", "handler_for",
           "register_handler", "register_module_rule", "register_function_rule",
           "register_method_rule", "RuleContext", "passthrough", "elementwise", "per_channel", "TraceError",
           "ShapeError", "oracle", "Surgeon", "remove_filters", "remove_bn", "remove_kernels", "keep_classes",
           "sparsify", "make_permanent", "sparsity_report", "SparsityReport", "Plan", "apply",
           "PruneConfig", "Pruner", "Report", "report", "save", "load"]
