"""The model on the meta device, with real pieces materialised from a checkpoint on demand.

``skeleton`` builds the model from its ``config.json`` with every parameter on the meta
device (no memory, no initialisation cost) and buffers real: non-persistent buffers such as
rotary frequencies are computed by the model's own ``__init__``, as in a normal build.
``materialize`` loads one part (the embeddings, one decoder block) from the checkpoint in
float32, ``release`` sends it back to meta. ``block_inputs`` runs the model's own forward
up to the blocks once and records what each block receives, so that a block can later be
called alone, with no knowledge of the family's forward.

Example:
    >>> import torch.nn as nn
    >>> with parameters_on_meta():
    ...     layer = nn.Linear(4096, 4096)
    >>> layer.weight.device.type
    'meta'
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any

import torch
import torch.nn as nn

from surgery.blockwise.shards import Checkpoint
from surgery.core.errors import ArgumentError
from surgery.select.blocks import repeated_blocks

__all__ = ["parameters_on_meta", "skeleton", "materialize", "release", "block_inputs", "BlockCall"]


@contextlib.contextmanager
def parameters_on_meta():
    """Every parameter registered inside the block lands on the meta device (buffers stay
    real); what a module's ``__init__`` then does to its parameters costs nothing."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def skeleton(config: Any) -> tuple[nn.Module, str, list]:
    """``(model, blocks name, blocks)``: the causal LM ``config`` describes, parameters on meta."""
    from transformers import AutoModelForCausalLM
    with parameters_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError as err:
            raise ArgumentError(f"{type(config).__name__} is not a causal language model that transformers can "
                                f"build ({err}); prune_checkpoint reads decoder checkpoints (LLaMA, Qwen2, "
                                f"Mistral, Phi-3, ...)") from None
    name, blocks = repeated_blocks(model)
    return model.eval(), name, blocks


def _owned(module: nn.Module, recurse: bool):
    """(owner, attribute, qualified name, tensor, is parameter) of every parameter and persistent buffer."""
    for mod_name, mod in (module.named_modules() if recurse else [("", module)]):
        for attr, p in mod._parameters.items():
            if p is not None:
                yield mod, attr, f"{mod_name}.{attr}".lstrip("."), p, True
        for attr, b in mod._buffers.items():
            if b is not None and attr not in mod._non_persistent_buffers_set:
                yield mod, attr, f"{mod_name}.{attr}".lstrip("."), b, False


def materialize(module: nn.Module, prefix: str, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                skip: tuple = (), recurse: bool = True) -> list:
    """Load ``module``'s tensors (stored under ``prefix + name``) from ``checkpoint`` as ``dtype``;
    modules under the names in ``skip`` stay as they are. Returns the keys loaded. A tensor the
    checkpoint lacks raises, unless it is the same object as one already loaded (tied weights)."""
    loaded, done = [], {}
    for owner, attr, name, t, is_param in list(_owned(module, recurse)):
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        key = prefix + name
        if key not in checkpoint:
            if id(t) in done:  # a tied weight: point at the loaded one
                setattr(owner, attr, done[id(t)])
                continue
            if t.device.type != "meta":
                continue  # a real buffer the model computed itself
            raise ArgumentError(f"the checkpoint has no tensor {key!r} that {type(owner).__name__} "
                                f"'{prefix}{name.rpartition('.')[0]}' needs: the folder does not match its config.json")
        value = checkpoint.get(key)
        value = value.to(dtype) if value.is_floating_point() else value
        new = nn.Parameter(value, requires_grad=False) if is_param else value
        if tuple(new.shape) != tuple(t.shape):
            raise ArgumentError(f"checkpoint tensor {key!r} has shape {tuple(new.shape)}, config.json says "
                                f"{tuple(t.shape)}")
        done[id(t)] = new
        setattr(owner, attr, new)
        loaded.append(key)
    return loaded


def release(module: nn.Module) -> None:
    """Send ``module``'s parameters and buffers back to the meta device (frees their memory)."""
    module.to("meta")


class BlockCall:
    """What one block receives from the model's forward: the hidden states' argument name and
    the other arguments (rotary embeddings, masks, position ids), bound by name."""

    def __init__(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        sig = inspect.signature(block.forward)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as err:
            raise ArgumentError(f"cannot bind the arguments {type(block).__name__} received ({err})") from None
        params = sig.parameters
        self.hidden = next(iter(params))
        self.kwargs: dict = {}
        for name, value in bound.arguments.items():
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise ArgumentError(f"{type(block).__name__} received extra positional arguments; "
                                        f"block-by-block pruning needs named ones")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                self.kwargs.update({k: v for k, v in value.items() if v is not None})
            elif name != self.hidden and not (value is None and params[name].default is None):
                self.kwargs[name] = value
        self.samples = bound.arguments[self.hidden].shape[0]

    def inputs(self, hidden: torch.Tensor, rows: slice | None = None) -> dict:
        """Keyword inputs for ``hidden`` (samples ``rows`` of the recorded batch)."""
        kwargs = _rows(self.kwargs, rows, self.samples) if rows is not None else self.kwargs
        return {self.hidden: hidden, **kwargs}


def _rows(value: Any, rows: slice, samples: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() and value.shape[0] == samples and samples > 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, rows, samples) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, rows, samples) for k, v in value.items()}
    return value


class _Caught(Exception):
    pass


class _Recorder(nn.Module):
    def __init__(self, block: nn.Module, sink: list, last: bool) -> None:
        super().__init__()
        self.block, self.sink, self.last = [block], sink, last  # a list: not registered as a submodule

    def forward(self, *args, **kwargs):
        call = BlockCall(self.block[0], args, kwargs)
        self.sink.append(call)
        if self.last:
            raise _Caught
        return args[0] if args else kwargs[call.hidden]  # the block stands aside


def block_inputs(model: nn.Module, blocks: list, input_ids: torch.Tensor) -> tuple[torch.Tensor, list]:
    """``(hidden states entering the first block, [BlockCall per block])`` for ``input_ids``,
    from one run of the model's forward with every block standing aside (blocks pass their
    input through; the run stops at the last one). The blocks may be on the meta device; what
    runs before them must be materialised."""
    container = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))
                 and len(m) == len(blocks) and all(a is b for a, b in zip(m, blocks))]
    if not container:
        raise ArgumentError(f"cannot find the block list of {type(model).__name__}")
    holder, sink = container[0], []
    for i, block in enumerate(blocks):
        holder[i] = _Recorder(block, sink, last=i == len(blocks) - 1)
    first: list = []
    hook = holder[0].register_forward_pre_hook(
        lambda mod, args, kwargs: first.append(args[0] if args else kwargs[next(iter(
            inspect.signature(blocks[0].forward).parameters))]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _Caught:
        pass
    finally:
        hook.remove()
        for i, block in enumerate(blocks):
            holder[i] = block
    if len(sink) != len(blocks):
        raise ArgumentError(f"{type(model).__name__}'s forward called {len(sink)} of its {len(blocks)} blocks "
                            f"with these inputs; block-by-block pruning needs every block called once, in order")
    return first[0], sink
