"""``PruneConfig``: every pruning option, declared once.

Each field carries its help text (``PruneConfig.help(name)``) and how it is written on the
command line and in a YAML file. ``prune()``, ``Pruner``, ``Surgeon``, the pipeline's
``prune:`` section and the ``surgery prune`` flags are all built from these fields, so a new
option is written here and nowhere else. A config is validated when it is made (and by
``dataclasses.replace``); it is frozen, so it stays valid.

Example:
    >>> config = PruneConfig(ratio=0.5, round_to=4)
    >>> config.round_to
    4
    >>> PruneConfig.help("round_to")
    'kept channel counts are multiples of N'
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from surgery.core.errors import ArgumentError, ArgumentTypeError, UnknownOptionError, check_ratio

__all__ = ["PruneConfig", "check_tracer", "check_attention", "check_skip_blocks", "option"]

TRACERS = ("auto", "fx", "export", "run")
ATTENTION = ("dims", "heads")
NORMALIZE = ("none", "mean", "max", "lamp", "flops", "latency")
SCHEDULES = ("linear", "exponential")
RECONSTRUCT = ("none", "least_squares")
VERIFY_DTYPES = ("auto", "float64")


def option(default: Any = None, help: str = "", *, plain: Any = None, cli: str | None = "", flag: str = "",
           choices: tuple = (), metavar: str = "", factory: Callable | None = None) -> Any:
    """A :class:`PruneConfig` field: its default, help text, the type it has in a YAML file
    (``plain``), and its command-line form (``cli``: "" for the generated flag, None for
    Python only, with why in ``help``; ``flag``: an extra short spelling)."""
    meta = {"help": help, "plain": plain, "cli": cli, "flag": flag, "choices": choices, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_tracer(tracer: Any) -> str:
    """``tracer`` as given, or an ArgumentError naming the accepted values."""
    if tracer not in TRACERS:
        raise ArgumentError(f"tracer must be 'auto' (fx, then torch.export, then a recorded run), 'fx', "
                            f"'export' or 'run', got {tracer!r}")
    return tracer


def check_attention(attention: Any) -> str:
    """``attention`` as given, or an ArgumentError naming the accepted values."""
    if attention not in ATTENTION:
        raise ArgumentError(f"attention must be 'dims' (prune head dims, keep the head count) or 'heads' "
                            f"(remove whole heads), got {attention!r}")
    return attention


def check_skip_blocks(value: Any) -> tuple:
    """``n`` -> ``(n, n)``; ``(first, last)`` checked to be non-negative integers."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pair):
        raise ArgumentError(f"skip_blocks must be (first, last): how many of the first and last repeated blocks "
                            f"keep all their channels (non-negative integers), got {value!r}")
    return pair


def _names(value: Any, name: str) -> tuple:
    """One layer (name, module or type) as a one-element tuple; any other iterable as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, type)) or hasattr(value, "named_modules"):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be a layer, a layer name or a list of them, got {value!r}") from None


@dataclass(frozen=True)
class PruneConfig:
    """Settings of a pruning run (all optional; see each field's help: ``PruneConfig.help()``)."""

    ratio: float = option(0.5, "fraction of each channel group's channels to remove (of all channels with "
                          "global_pruning)", plain=float)
    criterion: Any = option("l1", "a criteria name (l1, fpgm, taylor, ...) or a Criterion object", plain=str)
    global_pruning: bool = option(False, "rank channels across groups by normalised score", plain=bool,
                                  flag="--global")
    normalize: str = option("mean", "score normalisation used to rank across groups with global_pruning; "
                            "flops: importance (mean-normalised) per FLOP a channel's removal saves, so a FLOPs "
                            "target removes the cheapest-to-lose compute; latency: per second of measured "
                            "per-layer latency (timed on the example inputs on this machine)", plain=str, choices=NORMALIZE)
    ratios: dict = option(help="{layer or name: ratio} for the groups those layers produce; a container "
                          "(model.layer1) sets every layer inside it", plain=Dict[str, float], metavar="LAYER=R",
                          factory=dict)
    max_ratio: float = option(1.0, "no group loses more than this fraction of its channels", plain=float)
    min_channels: int = option(1, "no group keeps fewer channels than this (never fewer than one)", plain=int)
    round_to: Optional[int] = option(None, "kept channel counts are multiples of N", plain=Optional[int],
                                     metavar="N")
    ignored_layers: tuple = option((), "layers (modules or names) whose output channels stay whole",
                                   plain=List[str], flag="--ignore", metavar="LAYER")
    leaf_modules: tuple = option((), "module types, names or instances traced as black boxes",
                                 plain=List[str], metavar="NAME")
    target_flops: Optional[float] = option(None, "fraction of FLOPs to keep (instead of a ratio)",
                                           plain=Optional[float])
    target_params: Optional[float] = option(None, "fraction of parameters to keep (instead of a ratio)",
                                            plain=Optional[float])
    iterative_steps: int = option(1, "reach the budget in this many steps", plain=int)
    schedule: Any = option("linear", "how the budget grows over the steps: linear, exponential, or (Python) a "
                           "callable (step, steps, final) -> fraction removed", plain=str, choices=SCHEDULES)
    inplace: bool = option(False, "edit the given model (all or nothing) instead of returning a pruned copy",
                           plain=bool, cli=None)
    verify: bool = option(True, "check the rewrite against the original with the removed channels masked "
                          "(VerificationError on a mismatch); off: output shapes only", plain=bool)
    verify_dtype: str = option("auto", "auto: check in float32 (float64 models in float64), again in float64 "
                               "where float32 rounding could explain a difference; float64: in float64 from the "
                               "start (when two float64 copies of the weights fit in 2 GB)", plain=str,
                               choices=VERIFY_DTYPES)
    attention: str = option("dims", "dims: every head loses the same head dims; heads: whole heads go",
                            plain=str, choices=ATTENTION)
    head_ratio: Optional[float] = option(None, "fraction of attention heads to remove (default: ratio)",
                                         plain=Optional[float])
    skip_blocks: tuple = option((0, 0), "(first, last): the first and last repeated blocks (transformer "
                                "layers) keep every channel they produce", plain=List[int], metavar="FIRST,LAST")
    tracer: str = option("auto", "auto: torch.fx, then torch.export, then a recorded run; or fx, export, run",
                         plain=str, choices=TRACERS)
    recalibrate: bool = option(False, "after each step, re-estimate the running statistics of the norm layers it "
                               "touched on the calibration data (needs data)", plain=bool)
    reconstruct: str = option("none", "least_squares: after each step, refit every pruned Conv/Linear consumer "
                              "on the calibration data to reproduce the layer's output before the step (needs data)",
                              plain=str, choices=RECONSTRUCT)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("ratio", check_ratio(self.ratio))
        if self.head_ratio is not None:
            check_ratio(self.head_ratio, "head_ratio")
        check_attention(self.attention)
        check_tracer(self.tracer)
        set_("skip_blocks", check_skip_blocks(self.skip_blocks))
        set_("ignored_layers", _names(self.ignored_layers, "ignored_layers"))
        set_("leaf_modules", _names(self.leaf_modules, "leaf_modules"))
        if not isinstance(self.ratios, dict):
            raise ArgumentTypeError(f"ratios must be a dict {{layer or name: ratio}}, got {self.ratios!r}")
        for key, r in self.ratios.items():
            check_ratio(r, f"ratios[{key!r}]")
        self._check_bounds()
        self._check_choices()

    def _check_bounds(self) -> None:
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) \
                or not 0.0 < self.max_ratio <= 1.0:
            raise ArgumentError(f"max_ratio must be in (0, 1] (largest fraction a group may lose), "
                                f"got {self.max_ratio!r}")
        for name in ("min_channels", "iterative_steps") + (("round_to",) if self.round_to is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ArgumentError(f"{name} must be a positive integer, got {v!r}")
        if self.target_flops is not None and self.target_params is not None:
            raise ArgumentError("target_flops and target_params: set either target_flops or target_params, not both")
        for name in ("target_flops", "target_params"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0
                                  or math.isnan(v)):
                raise ArgumentError(f"{name} must be in (0, 1] (the fraction to keep), got {v!r}")

    def _check_choices(self) -> None:
        if self.schedule not in SCHEDULES and not callable(self.schedule):
            raise ArgumentError(f"schedule must be 'linear', 'exponential' or a callable, got {self.schedule!r}")
        if self.normalize not in NORMALIZE:
            raise ArgumentError(f"normalize must be one of {', '.join(NORMALIZE)}; got {self.normalize!r}")
        if self.verify_dtype not in VERIFY_DTYPES:
            raise ArgumentError(f"verify_dtype must be 'auto' or 'float64', got {self.verify_dtype!r}")
        if self.reconstruct not in RECONSTRUCT:
            raise ArgumentError(f"reconstruct must be one of {', '.join(RECONSTRUCT)}, got {self.reconstruct!r}")
        for name in ("global_pruning", "inplace", "verify", "recalibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentTypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def target(self) -> float | None:
        """The cost fraction to keep (``target_flops`` or ``target_params``), or None."""
        return self.target_flops if self.target_flops is not None else self.target_params

    @classmethod
    def fields(cls) -> list:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls, name: str | None = None) -> str:
        """One option's help text, or every option's as ``name: help`` lines."""
        if name is None:
            return "\n".join(f"{f.name}: {f.metadata['help']}" for f in dataclasses.fields(cls))
        return cls._field(name).metadata["help"]

    @classmethod
    def _field(cls, name: str) -> dataclasses.Field:
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {', '.join(by_name)}"
            raise UnknownOptionError(f"unknown pruning option {name!r}{hint}")
        return by_name[name]

    @classmethod
    def check_names(cls, names: Any) -> None:
        """Refuse any name that is not an option, naming the closest one."""
        for name in names:
            cls._field(name)

    def to_dict(self) -> dict:
        """Plain values (layers by name; a criterion object or callable schedule cannot be
        written and raises): what ``from_dict`` and YAML files hold."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("criterion", "schedule") and not isinstance(v, str):
                raise ArgumentError(f"{f.name}={v!r} is an object; only names can be written to a config file")
            if isinstance(v, tuple):
                v = list(v)
            if f.name == "ratios":
                v = {k if isinstance(k, str) else repr(k): r for k, r in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        """A validated config from plain values; an unknown key raises naming the closest one."""
        if not isinstance(data, dict):
            raise ArgumentTypeError(f"a PruneConfig is read from a dict, got {type(data).__name__}")
        cls.check_names(data)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str) -> "PruneConfig":
        """``PruneConfig.from_dict`` of a YAML file (PyYAML)."""
        import yaml
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_yaml(self, path: str) -> None:
        """Write ``to_dict()`` as YAML."""
        import yaml
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def _document(cls: type) -> None:
    lines = [f"    {f.name} (default {f.default!r}): {f.metadata['help']}" if f.default is not dataclasses.MISSING
             else f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(cls)]
    cls.__doc__ = cls.__doc__ + "\n\n    Options:\n" + "\n".join(lines) + "\n"


_document(PruneConfig)
