"""The pipeline's configuration: typed sections, presets, and layering with clear errors.

Layers, later wins: the defaults below, a YAML file, a preset, environment variables
(``SURGERY_PRUNE__RATIO=0.5``: prefix ``SURGERY_``, ``__`` between levels), then dotted
overrides (``prune.ratio=0.4``). Values are parsed as YAML (``data.classes=[3,5,7]``).
OmegaConf does the merging and type checks (a kept library: structured configs from
dataclasses, YAML values in dotted overrides, type errors naming the full key); unknown keys
are caught first so the error names the closest valid key.

Every value is checked when the configuration is resolved, before any data is loaded or
any epoch runs (the criterion name and its options, the whole prune section, learning
rates, epochs, batch sizes...). YAML aliases that would expand past ``YAML_NODE_LIMIT``
values (an "alias bomb") are refused.

The budget keys ``prune.ratio``, ``prune.target_flops`` and ``prune.target_params`` exclude
one another: the latest layer that sets one of them decides, and the others are cleared.
With none set, the pipeline keeps half the FLOPs (``target_flops=0.5``).

Example:
    >>> from surgery.pipeline.config import resolve
    >>> cfg = resolve(preset="aggressive", overrides=["prune.ratio=0.4"], env={})
    >>> cfg.prune.ratio, cfg.prune.target_flops
    (0.4, None)
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import surgery.criteria as criteria
from surgery.core.architectures import build
from surgery.core.config import PruneConfig
from surgery.core.inputs import layer_names
from surgery.core.errors import ArgumentError

__all__ = ["RunConfig", "ConfigError", "resolve", "to_yaml", "PRESETS", "keys", "check_values", "prune_config",
           "safe_yaml"]

BUDGET_KEYS = ("ratio", "target_flops", "target_params")
DEFAULT_TARGET_FLOPS = 0.5  # the budget when no budget key is given: keep half the FLOPs
DEFAULT_MASK_RATIO = 0.5  # for the mask kinds (kernel, intra_kernel, weight): zero half the weights
KINDS = {"channel": None, "kernel": "kernel", "intra_kernel": "pattern", "weight": "weight"}  # -> sparsify
ENV_PREFIX = "SURGERY_"
YAML_NODE_LIMIT = 100_000  # values in a YAML document once its aliases are expanded


class ConfigError(ArgumentError):
    """A bad configuration: unknown key, wrong type or value; the message names the key."""


@dataclass
class ModelSection:
    name: str = "digits_cnn"             # surgery.models name, torchvision:NAME, timm:NAME, module:function
    checkpoint: Optional[str] = None     # trained weights (state_dict file) for it; skips training
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    name: str = "digits"                 # digits, cifar10, cifar100, mnist, fashionmnist, svhn, gtsrb, folder
    root: str = "data"                   # where the local copy lives (nothing is downloaded)
    classes: Optional[List[int]] = None  # keep only these classes (classifier reduced to them)
    image_size: Optional[int] = None     # default per dataset
    batch_size: int = 64
    val_fraction: float = 0.1            # held out of the training split for early stopping
    calibration_size: int = 256          # training images for data criteria (no augmentation)
    augment: bool = True
    workers: int = 0


@dataclass
class TrainSection:
    epochs: int = 15
    optimizer: str = "sgd"               # sgd or adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0           # linear warm-up, then cosine to zero
    label_smoothing: float = 0.0
    patience: Optional[int] = None       # early stopping on validation accuracy (best weights kept)
    amp: bool = True                     # mixed precision (CUDA only)
    distill: bool = False                # knowledge distillation from the unpruned model (fine-tuning)
    temperature: float = 4.0
    alpha: float = 0.5                   # weight of the distillation term


PIPELINE_DEFAULTS = {"recalibrate": True}  # the pipeline always has calibration data: re-estimate BN statistics


def _section_field(f: dataclasses.Field) -> tuple:
    """A PruneConfig field as a prune-section field: its file type, with the budget keys unset
    (the pipeline keeps half the FLOPs when none is given)."""
    plain = Optional[float] if f.name in BUDGET_KEYS else f.metadata["plain"]
    default = None if f.name in BUDGET_KEYS else PIPELINE_DEFAULTS.get(f.name, (
        f.default if f.default is not dataclasses.MISSING else f.default_factory()))
    if isinstance(default, (tuple, list, dict)):
        return f.name, plain, field(default_factory=lambda d=default: type(d)(d) if isinstance(d, dict) else list(d))
    return f.name, plain, field(default=default)


# The prune section: every PruneConfig option that a file can hold (not inplace: the pipeline
# keeps its own copies), plus what only the pipeline uses.
PruneSection = dataclasses.make_dataclass("PruneSection", [
    *(_section_field(f) for f in dataclasses.fields(PruneConfig) if f.metadata["cli"] is not None),
    ("kind", str, field(default="channel")),  # channel (structured) or masks: kernel, intra_kernel, weight
    ("criterion_options", Dict[str, Any], field(default_factory=dict)),  # e.g. {mode: target} for ocap
    ("epochs_between", int, field(default=0)),  # fine-tuning epochs between iterative steps
    ("max_batches", int, field(default=8)),  # calibration batches for data criteria
])
PruneSection.__module__ = __name__
PRUNE_OPTIONS = tuple(f.name for f in dataclasses.fields(PruneConfig) if f.metadata["cli"] is not None)


@dataclass
class EvalSection:
    latency: bool = True
    batch_sizes: List[int] = field(default_factory=lambda: [1, 32])
    repeats: int = 20
    warmup: int = 3


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"                 # auto, cpu, cuda
    out: Optional[str] = None            # run folder; default runs/<model>-<dataset>-<timestamp>
    report: bool = True                  # write report.html and report.pdf
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    prune: PruneSection = field(default_factory=PruneSection)
    finetune: TrainSection = field(default_factory=lambda: TrainSection(epochs=10, lr=0.01, warmup_epochs=0.0))
    eval: EvalSection = field(default_factory=EvalSection)


PRESETS: dict[str, dict] = {
    "conservative": {"prune": {"target_flops": 0.7}},
    "balanced": {"prune": {"target_flops": 0.5}},
    "aggressive": {"prune": {"target_flops": 0.3, "global_pruning": True}, "finetune": {"epochs": 15}},
}


def keys(section: Any = RunConfig, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. ``prune.ratio``."""
    out = []
    for f in dataclasses.fields(section):
        name = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out += keys(type(default), name + ".") if dataclasses.is_dataclass(default) else [name]
    return out


def resolve(config_file: str | os.PathLike | dict | None = None, preset: str | None = None,
            overrides: list[str] | tuple = (), env: Mapping[str, str] | None = None) -> RunConfig:
    """The run configuration from its layers (see the module docstring). ``config_file``
    may also be a dict of sections, as the file would hold."""
    layers = []
    if isinstance(config_file, dict):
        layers.append(("given configuration", config_file))
    elif config_file is not None:
        layers.append((f"config file {config_file}", _from_yaml(config_file)))
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        layers.append((f"preset {preset}", PRESETS[preset]))
    layers += _from_env(os.environ if env is None else env)
    layers += [(f"override {o!r}", _from_dotted(o)) for o in overrides]
    merged = OmegaConf.structured(RunConfig)
    for where, layer in layers:
        _check_keys(layer, where)
        if any(k in layer.get("prune", {}) for k in BUDGET_KEYS):
            for k in BUDGET_KEYS:
                merged.prune[k] = None
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {_short(err)}") from None
    cfg = OmegaConf.to_object(merged)
    if all(getattr(cfg.prune, k) is None for k in BUDGET_KEYS):  # stated, so config.yaml and reports show what runs
        if cfg.prune.kind == "channel":
            cfg.prune.target_flops = DEFAULT_TARGET_FLOPS
        else:
            cfg.prune.ratio = DEFAULT_MASK_RATIO
    return check_values(cfg)


def to_yaml(cfg: RunConfig) -> str:
    """The resolved configuration as YAML (what ``surgery config show`` prints)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def _from_yaml(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = safe_yaml(f.read(), f"config file {path}") or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def safe_yaml(text: str, where: str = "YAML") -> Any:
    """``yaml.safe_load`` of ``text``, refusing documents whose aliases expand past
    ``YAML_NODE_LIMIT`` values (counted on the composed node graph, before building anything).

    Example:
        >>> safe_yaml("[&x [1, 2], *x]")
        [[1, 2], [1, 2]]
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if node is not None and _expanded_size(node, {}) > YAML_NODE_LIMIT:
        raise ConfigError(f"{where}: its YAML aliases expand to more than {YAML_NODE_LIMIT:,} values; "
                          f"write the values out instead of nesting aliases")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None


def _expanded_size(node: yaml.Node, memo: dict) -> int:
    """Values under ``node`` with every alias expanded (a shared node counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = YAML_NODE_LIMIT + 1  # a node that contains itself expands forever
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, YAML_NODE_LIMIT + 1)
    return memo[id(node)]


def _from_dotted(text: str) -> dict:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. prune.ratio=0.4)")
    return _nest(key.strip(), safe_yaml(value, f"override {text!r}") if value.strip() else None)


def _from_env(env: Mapping[str, str]) -> list:
    layers = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower().replace("__", ".")
            layers.append((f"environment variable {name}", _nest(key, safe_yaml(env[name], f"environment variable {name}"))))
    return layers


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        out += _flatten(v, name + ".") if isinstance(v, dict) and name not in _DICT_KEYS else [name]
    return out


_DICT_KEYS = {"model.kwargs", "prune.criterion_options", "prune.ratios"}


def _check_keys(layer: dict, where: str) -> None:
    valid = keys()
    sections = {k.split(".")[0] for k in valid if "." in k}
    for key in _flatten(layer):
        if key in valid or any(key.startswith(d + ".") for d in _DICT_KEYS):
            continue
        if key in sections:
            raise ConfigError(f"{where}: {key!r} is a section; set its keys (e.g. {key}.{_first(valid, key)}=...)")
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; `surgery config show` lists the keys"
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _first(valid: list, section: str) -> str:
    return next(k for k in valid if k.startswith(section + ".")).split(".", 1)[1]


def _short(err: OmegaConfBaseException) -> str:
    return str(err).split("\n")[0] + (f" (key {err.full_key})" if getattr(err, "full_key", None) else "")


def check_values(cfg: RunConfig) -> RunConfig:
    """Refuse, naming the key, any value the run would fail on or silently misuse; all of
    it before the first epoch (the prune section as the pruner would check it)."""
    p, d = cfg.prune, cfg.data
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    for sec in ("train", "finetune"):
        _check_training(getattr(cfg, sec), sec)
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    for key in ("batch_size", "calibration_size"):
        _at_least(getattr(d, key), 1, f"data.{key}")
    _at_least(d.workers, 0, "data.workers")
    if d.image_size is not None:
        _at_least(d.image_size, 1, "data.image_size")
    if d.classes is not None and (len(d.classes) < 2 or len(set(d.classes)) != len(d.classes)):
        raise ConfigError(f"data.classes must list at least two distinct class indices, got {d.classes}")
    e = cfg.eval
    if not e.batch_sizes:
        raise ConfigError("eval.batch_sizes must list at least one batch size, e.g. [1, 32]")
    for b in e.batch_sizes:
        _at_least(b, 1, "eval.batch_sizes entries")
    _at_least(e.repeats, 1, "eval.repeats")
    _at_least(e.warmup, 0, "eval.warmup")
    _at_least(p.max_batches, 1, "prune.max_batches")
    if p.kind not in KINDS:
        raise ConfigError(f"prune.kind must be one of {', '.join(KINDS)} (channel: remove channels; the others zero "
                          f"weights with masks), got {p.kind!r}")
    if p.kind != "channel" and p.ratio is None:
        raise ConfigError(f"prune.kind={p.kind} zeroes a fraction of weights: give prune.ratio (FLOPs and parameter "
                          f"targets apply to channel pruning, which removes them)")
    _at_least(p.epochs_between, 0, "prune.epochs_between")
    prune_config(p)
    check_layer_names(cfg)
    return cfg


def check_layer_names(cfg: RunConfig) -> None:
    """Layer names in the prune section (``ignored_layers``, ``leaf_modules``, ``ratios`` keys)
    name submodules of the model: checked on a skeleton built once on the meta device (no
    weights allocated), before any epoch runs."""
    p = cfg.prune
    named = {"prune.ignored_layers": list(p.ignored_layers), "prune.leaf_modules": list(p.leaf_modules),
             "prune.ratios": list(p.ratios)}
    if not any(named.values()):
        return
    model = _skeleton(cfg)
    for key, names in named.items():
        try:
            layer_names(model, names, key)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{err} (model {cfg.model.name!r}; names are module paths as in "
                              f"model.named_modules())") from None


def _skeleton(cfg: RunConfig) -> torch.nn.Module:
    classes = len(cfg.data.classes) if cfg.data.classes else 10
    try:
        with torch.device("meta"):
            return build(cfg.model.name, num_classes=classes, **cfg.model.kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.name / model.kwargs: {err}") from None
    except Exception:  # a builder that cannot run on the meta device: build it for real, once
        return build(cfg.model.name, num_classes=classes, **cfg.model.kwargs)


def _check_training(t: TrainSection, sec: str) -> None:
    if t.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"{sec}.optimizer must be sgd or adamw, got {t.optimizer!r}")
    _at_least(t.epochs, 0, f"{sec}.epochs")
    if t.patience is not None:
        _at_least(t.patience, 1, f"{sec}.patience")
    for key, low, high, open_low, open_high in (("lr", 0.0, math.inf, True, True), ("momentum", 0.0, 1.0, False, True),
                                                ("weight_decay", 0.0, math.inf, False, True),
                                                ("warmup_epochs", 0.0, math.inf, False, True),
                                                ("label_smoothing", 0.0, 1.0, False, True),
                                                ("temperature", 0.0, math.inf, True, True),
                                                ("alpha", 0.0, 1.0, False, False)):
        v = float(getattr(t, key))
        ok = math.isfinite(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        if not ok:
            where = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            raise ConfigError(f"{sec}.{key} must be a finite number in {where}, got {getattr(t, key)!r}")


def _at_least(v: Any, low: int, key: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {v!r}")


def prune_config(p: PruneSection):
    """The :class:`surgery.PruneConfig` of a prune section (criterion built and checked;
    without a budget key, half the FLOPs are kept); ConfigError names the bad key."""
    try:
        criterion = criteria.get(p.criterion, **p.criterion_options)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"prune.criterion / prune.criterion_options: {err}") from None
    budget = {k: getattr(p, k) for k in BUDGET_KEYS if getattr(p, k) is not None} or {
        "target_flops": DEFAULT_TARGET_FLOPS}
    options = {k: getattr(p, k) for k in PRUNE_OPTIONS if k not in BUDGET_KEYS and k != "criterion"}
    try:
        return PruneConfig(criterion=criterion, **options, **budget)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"prune.{err}") from None  # the message starts with the option's name
