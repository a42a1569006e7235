"""Apply a removal (a set of channel units) to a model: rebuild layers, patch literals."""
from __future__ import annotations

import ast
import contextlib
import copy
import functools
import inspect
import textwrap
import warnings
from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.frames import user_stacklevel
from surgery.groups.graph import ChannelGraph, Kind
from surgery.ops.context import AXES_KEY
from surgery.ops.handler import PerChannelHandler, replace_param
from surgery.ops.registry import handler_for
from surgery.rewrite.model_config import follow_config
from surgery.core.inputs import evaluating, flat_tensors, as_inputs
from surgery.groups.ties import retie, shared_owners
from surgery.core.transaction import transaction, untouched
from surgery.capture.fx import owning_module, width_owners
from surgery.capture.meta import run_meta
from surgery.core.errors import InPlaceError

__all__ = ["rewrite", "set_submodule", "keep_indices"]



def set_submodule(root: nn.Module, name: str, new: nn.Module, names: dict | None = None) -> None:
    """Replace submodule ``name`` (dotted path) of ``root`` with ``new``, under every name the
    same module object is registered (a layer used twice in a Sequential stays one layer).
    ``names`` ({id(module): [names]}, from :func:`module_names`) saves a walk per call."""
    old = root.get_submodule(name)
    if names is None:
        names = module_names(root)
    aliases = names.get(id(old), []) if name else []
    for alias in aliases or [name]:
        parent_name, _, attr = alias.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, attr, new)


def module_names(root: nn.Module) -> dict:
    """{id(module): every dotted name it is registered under}."""
    out: dict = defaultdict(list)
    for n, m in root.named_modules(remove_duplicate=False):
        out[id(m)].append(n)
    return out


def keep_indices(graph: ChannelGraph, removed: np.ndarray) -> dict:
    """For every slot, the kept positions: ``{(name, role): array}`` (only shrunk slots)."""
    gone = graph.removed_mask(removed)
    out = {}
    for slot in graph.slots:
        mask = ~gone[graph.roots[slot.vars]]
        if not mask.all():
            out[(slot.name, slot.role)] = np.nonzero(mask)[0]
    return out


def rewrite(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, *, inplace: bool = False,
            new_object_ok: bool = False, values: bool = True) -> nn.Module:
    """Return ``model`` with the ``removed`` units (variable roots) physically gone.

    The original class is kept unless a literal in traced code (a reshape to a stored
    size, a split size) had to change: then the patched ``torch.fx.GraphModule`` is
    returned, with a warning that says so. With ``inplace=True`` the model is edited
    in place, all or nothing: on any error it is restored as it was; the result is then
    the model object itself, or :class:`InPlaceError` is raised when it would have to be
    a GraphModule (``new_object_ok=True``: the caller owns the model and takes either).
    Whether the original class agrees with the patched graph is decided on the example inputs'
    values, or, with ``values=False`` (verification off: no forward on real tensors), on the
    output shapes of a run on the meta device.
    """
    keeps = keep_indices(graph, removed)
    kinds = {(s.name, s.role): s.kind for s in graph.slots}
    with transaction(model) if inplace else contextlib.nullcontext():
        target = model if inplace else copy.deepcopy(model, _replaced_memo(model, keeps, kinds))
        target = _rebuild(target, keeps, kinds)
        follow_config(target, graph, removed)
        before = _int_attributes(target)  # every follow compares with the values before any edit
        _follow_head_counts(target, graph, removed, before)
        changed = _patched_graph(graph, removed)
        if changed is not None:
            export = graph.front != "fx"  # then the user's forward runs as is (verified)
            _follow_attributes(target, changed[1], before, _names_a_size if export else (lambda attr: True))
        _follow_widths(target, graph, removed, before)
        if changed is None or graph.front != "fx":
            return target
        result = _graph_module(model, target, changed[0], graph, warn=not inplace or new_object_ok, values=values)
        if inplace and not new_object_ok and result is not target:
            raise InPlaceError(_in_place_message(model, graph, removed))
        return result


def _in_place_message(model: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> str:
    gone = graph.removed_mask(removed)
    where = [f"node '{p.node}' ({len(p.vars)} -> {int((~gone[graph.roots[p.vars]]).sum())})"
             for p in graph.patches if gone[graph.roots[p.vars]].any()][:3]
    what = ", ".join(where) or "a swapped function"
    return (f"{type(model).__name__}'s forward holds literal sizes that this pruning changes ({what}), so the "
            f"pruned model is a new torch.fx.GraphModule and your object cannot be edited in place; it was left "
            f"as it was. Use inplace=False (surgery.prune, apply_plan) and keep the returned model, or compute "
            f"those sizes from the tensor in the forward (x.flatten(1), x.shape[1])")


def _rebuild(target: nn.Module, keeps: dict, kinds: dict) -> nn.Module:
    ties = shared_owners(target)
    by_layer: dict = defaultdict(dict)
    for (name, role), keep in keeps.items():
        by_layer[(name, kinds[(name, role)] == Kind.PARAM)][role] = keep
    owned: dict = defaultdict(dict)
    names = module_names(target)  # replacing a leaf module changes no other module's names
    for (name, is_param), roles in by_layer.items():
        if is_param:
            owner, _, attr = name.rpartition(".")
            owned[owner][attr] = roles
        else:
            module = target.get_submodule(name)
            new = handler_for(module).prune(module, roles.get("in"), roles.get("out"))
            set_submodule(target, name, new, names)
    rebuilt = {name for name, is_param in by_layer if not is_param}
    for owner, attrs in owned.items():
        _slice_owned(target, owner, attrs, owner in rebuilt)
    retie(target, ties)
    return target


def _graph_module(model: nn.Module, target: nn.Module, changed, graph: ChannelGraph, warn: bool = True,
                  values: bool = True) -> nn.Module:
    """The patched GraphModule, unless the original class's forward still works and agrees."""
    gm = fx.GraphModule(target, changed, type(model).__name__ + "Pruned")
    if (_same_outputs if values else _same_shapes)(target, gm, graph.example_inputs):
        return target
    if warn:
        warnings.warn(
            f"pruning changed literal sizes in {type(model).__name__}'s forward (reshape/split "
            f"constants); returning a torch.fx.GraphModule with those constants patched instead "
            f"of the original class, whose forward would still use the old sizes. Its forward keeps the "
            f"branches on self.training taken when it was traced.", stacklevel=user_stacklevel())
    return gm


def _replaced_memo(model: nn.Module, keeps: dict, kinds: dict) -> dict:
    """deepcopy memo mapping tensors that will be replaced to themselves (no copy).

    Only tensors referenced once in the model qualify (tied weights are always copied)."""
    refs: dict = defaultdict(int)
    for m in model.modules():
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                refs[id(t)] += 1
    memo = {}
    for name, role in keeps:
        if kinds[(name, role)] == Kind.PARAM:
            continue
        module = model.get_submodule(name)
        for attr in handler_for(module).replaces:
            t = module._parameters.get(attr, module._buffers.get(attr))
            if t is not None and refs[id(t)] == 1:
                memo[id(t)] = t
    return memo


def _slice_owned(root: nn.Module, owner_name: str, attrs: dict, rebuilt: bool = False) -> None:
    """Slice parameters read through get_attr. When they are a per-channel layer's own
    tensors (a LayerNorm subclass with its own forward), its handler rebuilds the layer so
    attributes such as ``normalized_shape`` follow."""
    owner = root.get_submodule(owner_name) if owner_name else root
    keeps = [roles.get("dim0") for roles in attrs.values()]
    try:
        handler = handler_for(owner)
    except TypeError:
        handler = None
    if (isinstance(handler, PerChannelHandler) and all(set(r) == {"dim0"} for r in attrs.values())
            and set(attrs) <= set(handler.tensors) and all(np.array_equal(k, keeps[0]) for k in keeps)):
        set_submodule(root, owner_name, handler.prune(owner, None, keeps[0]))
        return
    sides = _sides(handler, owner, attrs) if handler is not None and not rebuilt else None
    if sides is not None:  # a layer's own weights read by a function (F.linear(x, self.qkv.weight))
        set_submodule(root, owner_name, handler.prune(owner, sides.get("in"), sides.get("out")))
        return
    for attr, roles in attrs.items():
        t = getattr(owner, attr)
        for role, keep in roles.items():
            if t.shape[role.dim] != len(keep):  # not already sliced by the owner's handler (tied slots)
                t = t.index_select(role.dim, torch.as_tensor(keep, device=t.device))
        if t is not getattr(owner, attr):
            replace_param(owner, attr, t)


def _sides(handler, owner: nn.Module, attrs: dict) -> dict | None:
    """``{"in": keep, "out": keep}`` when every sliced (tensor, dim) is one the handler indexes
    for a side and each side's slices agree; None otherwise."""
    where = {}
    for side in ("in", "out"):
        for attr, dim in handler.tensor_dims(owner, side) or []:
            where[(attr, dim)] = side
    sides: dict = {}
    for attr, roles in attrs.items():
        for role, keep in roles.items():
            side = where.get((attr, role.dim))
            if side is None or (side in sides and not np.array_equal(sides[side], keep)):
                return None
            sides[side] = keep
    return sides


def _same_outputs(a: nn.Module, b: nn.Module, example_inputs) -> bool:
    if example_inputs is None:
        return False
    args, kwargs = as_inputs(example_inputs)
    try:
        with evaluating(a, b), torch.no_grad(), untouched(a), untouched(b):
            out_a, out_b = flat_tensors(a(*args, **kwargs)), flat_tensors(b(*args, **kwargs))
        return len(out_a) == len(out_b) and all(
            x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(out_a, out_b))
    except Exception:  # the original forward uses an old size: keep the patched graph
        return False


def _same_shapes(a: nn.Module, b: fx.GraphModule, example_inputs) -> bool:
    """The original class's forward (``a``) and the patched graph (``b``, over ``a``'s layers)
    run on the meta device and give outputs of the same shapes."""
    if example_inputs is None:
        return False
    try:
        with untouched(a):
            mine = [t.shape for t in flat_tensors(run_meta(a, example_inputs))]
        return mine == [t.shape for t in flat_tensors(run_meta(a, example_inputs, b.graph))]
    except Exception:  # the original forward uses an old size (or reads values): keep the patched graph
        return False


def _patched_graph(graph: ChannelGraph, removed: np.ndarray):
    gone = graph.removed_mask(removed)
    edits = []
    for p in graph.patches:
        new = int((~gone[graph.roots[p.vars]]).sum())
        if new != len(p.vars):
            edits.append((p, new))
    swaps = {node: fn for node, fn, vars_ in graph.swaps if gone[graph.roots[vars_]].any()}
    if not edits and not swaps:
        return None
    g = copy.deepcopy(graph.gm.graph)
    owners = [(_owner(graph.gm.graph, p.node), len(p.vars), new) for p, new in edits]
    for n in g.nodes:  # analysis results hold references to nodes; the returned module needs none
        for key in [k for k in n.meta if k.startswith("surgery.")]:
            del n.meta[key]
    nodes = {n.name: n for n in g.nodes}
    for name, fn in swaps.items():
        nodes[name].target = fn
    for p, value in edits:
        node = nodes[p.node]
        where = p.path[0]
        container = node.args if where == "args" else node.kwargs
        updated = _set_path(container, p.path[1:], value)
        if where == "args":
            node.args = updated
        else:
            node.kwargs = updated
    return g, owners


def _owner(g: fx.Graph, node_name: str) -> str | None:
    """The innermost module whose forward holds the node (from fx's ``nn_module_stack``)."""
    return owning_module(next((n for n in g.nodes if n.name == node_name), None))


def _int_attributes(root: nn.Module) -> dict:
    """``{(module name, attribute): value}`` of every public int attribute."""
    return {(name, attr): v for name, m in root.named_modules() for attr, v in vars(m).items()
            if type(v) is int and not attr.startswith("_")}


def _follow_head_counts(target: nn.Module, graph: ChannelGraph, removed: np.ndarray, before: dict) -> None:
    """Head-count attributes (``num_heads``, ``num_key_value_heads``, ...) of the module that
    splits channels into heads follow the heads kept; ``head_dim`` stays."""
    gone = graph.removed_mask(removed)
    edits = []
    for name, vars_ in zip(graph.head_nodes, graph.head_vars):
        kept = int((~gone[graph.roots[vars_]]).sum())
        if kept != len(vars_):
            edits.append((_owner(graph.gm.graph, name), len(vars_), kept))
    _follow_attributes(target, edits, before, lambda attr: "head" in attr and "dim" not in attr and "size" not in attr)


def _follow_widths(target: nn.Module, graph: ChannelGraph, removed: np.ndarray, before: dict) -> None:
    """An int attribute that the module's class uses as a size (``split((self.c, self.c), 1)``,
    ``view(b, self.c, -1)``, ``x[:, :self.c]``) and that equals a channel width its own
    forward handles (including the outputs of the torch.nn layers it calls) follows that width, when every dim of that size in the module's traced
    forward changed to one new size: code the trace never ran (``C2f.forward_split``) keeps
    working. When they changed differently (or some did not) it is left, with a warning.
    Attributes never used as sizes (``layer_idx``) are never touched."""
    gone = graph.removed_mask(removed)
    sizes: dict = defaultdict(lambda: defaultdict(set))  # owner -> old width -> new widths
    relevant: dict = {}  # owner -> its module, when its class uses int attributes as sizes
    for node in graph.gm.graph.nodes:
        arrays = _axis_vars(node.meta.get(AXES_KEY))
        if not arrays:
            continue
        for owner in width_owners(node):
            if owner not in relevant:
                relevant[owner] = _sized_module(target, owner)
            if relevant[owner] is None:
                continue
            for vars_ in arrays:
                sizes[owner][len(vars_)].add(int((~gone[graph.roots[vars_]]).sum()))
    unclear = []
    for owner, widths in sizes.items():
        module = relevant[owner]
        used_as_size = size_attributes(type(module))
        for attr, value in list(vars(module).items()):
            if attr not in used_as_size or type(value) is not int or before.get((owner, attr)) != value:
                continue
            news = widths.get(value)
            if not news or news == {value}:
                continue
            if len(news) == 1:
                setattr(module, attr, next(iter(news)))
            else:
                unclear.append(f"'{owner or type(module).__name__}'.{attr} = {value}")
    if unclear:
        warnings.warn(f"int attributes equal to channel widths that pruning changed in different ways were left "
                      f"as they were: {', '.join(unclear[:5])}; if code the trace does not run (another method, "
                      f"a branch) reads them, set them yourself", stacklevel=user_stacklevel())


def _sized_module(root: nn.Module, name: str) -> nn.Module | None:
    """The module at ``name`` when its class (outside torch) uses int attributes as sizes."""
    try:
        module = root.get_submodule(name)
    except AttributeError:
        return None
    if type(module).__module__.startswith(("torch.nn.", "torch.fx.")):
        return None  # torch's layers: their handlers set their attributes
    return module if size_attributes(type(module)) else None


_SIZE_CALLS = {"split", "view", "reshape", "narrow", "unflatten", "expand", "tensor_split", "split_with_sizes",
               "new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones", "empty", "full", "randn", "rand"}
_GROUPS_ARG = {"conv1d": (6, "groups"), "conv2d": (6, "groups"), "conv3d": (6, "groups"),
               "group_norm": (1, "num_groups")}  # call -> where it takes a count of channel groups


@functools.lru_cache(maxsize=None)
def size_attributes(cls: type) -> frozenset:
    """Names ``self.<name>`` that the class's code (any method, its bases outside torch) passes
    to a size-taking call or uses as a slice bound."""
    names: set = set()
    for node in _class_nodes(cls):
        if isinstance(node, ast.Call) and _callee(node.func) in _SIZE_CALLS:
            for arg in list(node.args) + [k.value for k in node.keywords]:
                names |= _self_attributes(arg)
        elif isinstance(node, ast.Slice):
            names |= _self_attributes(node)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def groups_attributes(cls: type) -> frozenset:
    """Names ``self.<name>`` that the class's code passes as a functional conv's ``groups`` or a
    group norm's ``num_groups``: counts that pruning changes (a depthwise conv's groups is its
    width), so a patched literal follows into them."""
    names: set = set()
    for node in _class_nodes(cls):
        if isinstance(node, ast.Call) and _callee(node.func) in _GROUPS_ARG:
            position, keyword = _GROUPS_ARG[_callee(node.func)]
            for arg in node.args[position:position + 1] + [k.value for k in node.keywords if k.arg == keyword]:
                names |= _self_attributes(arg)
    return frozenset(names)


def _class_nodes(cls: type):
    """Every AST node of the class's source and of its bases outside torch."""
    for klass in cls.__mro__:
        if klass is object or klass.__module__.startswith("torch."):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        yield from ast.walk(tree)


def _callee(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _self_attributes(expr: ast.AST) -> set:
    return {n.attr for n in ast.walk(expr)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"}


def _axis_vars(axes) -> list:
    """The channel-variable arrays of a node's axes annotation (a dict per tensor, nested)."""
    if isinstance(axes, dict):
        return [v for v in axes.values() if isinstance(v, np.ndarray)]
    if isinstance(axes, (list, tuple)):
        return [v for a in axes for v in _axis_vars(a)]
    return []


_SIZE_WORDS = ("dim", "size", "head", "group", "width", "features", "channels", "hidden", "embed", "rep")


def _names_a_size(attr: str) -> bool:
    """Export front, where no patched graph checks the edit: only attributes named like a
    size follow a literal (``num_key_value_groups`` does, ``layer_idx`` never)."""
    return any(w in attr.lower() for w in _SIZE_WORDS)


def _follow_attributes(target: nn.Module, edits: list, before: dict, wanted_attr=lambda attr: True) -> None:
    """A literal that changed in a module's forward (``reshape(B, N, 3, self.num_heads, D)``)
    usually came from an int attribute of that module: set the attributes holding the old
    value to the new one, so the module's own class keeps working (checked afterwards by
    comparing it with the patched graph). Ambiguous edits (one old value, two new ones) are
    left alone."""
    wanted: dict = defaultdict(set)
    for owner, old, new in edits:
        if owner is not None:
            wanted[(owner, old)].add(new)
    by_owner: dict = defaultdict(dict)
    for (owner, old), news in wanted.items():
        if len(news) == 1:
            by_owner[owner][old] = next(iter(news))
    for owner, new_of in by_owner.items():
        try:
            module = target.get_submodule(owner)
        except AttributeError:
            continue
        own = _handled_attributes(module)
        for attr in list(vars(module)):  # values from before any edit: 4 -> 2 and 2 -> 1 never chain
            value = before.get((owner, attr))
            if value in new_of and wanted_attr(attr) and attr not in own:
                setattr(module, attr, new_of[value])


def _handled_attributes(module: nn.Module) -> set:
    """The int attributes a handler already set (a Conv2d subclass's ``in_channels`` when the
    literal that changed was its ``out_channels``): those of a layer with a handler that the
    subclass's own code never uses as a size."""
    try:
        handler_for(module)
    except TypeError:
        return set()
    return {attr for attr, value in vars(module).items() if type(value) is int} - size_attributes(type(module)) \
        - groups_attributes(type(module))


def _set_path(obj, path: tuple, value):
    """Return a copy of nested tuples/lists/dicts/slices with ``path`` set to ``value``."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, slice):
        parts = {"start": obj.start, "stop": obj.stop, "step": obj.step}
        parts[key] = _set_path(parts[key], rest, value)
        return slice(parts["start"], parts["stop"], parts["step"])
    if isinstance(obj, dict):
        out = dict(obj)
        out[key] = _set_path(obj[key], rest, value)
        return out
    items = list(obj)
    items[key] = _set_path(items[key], rest, value)
    return type(obj)(items) if isinstance(obj, tuple) else items
