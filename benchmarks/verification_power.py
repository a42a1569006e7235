"""How many rewrite bugs verification catches: one wrong rewrite per layer, four checks.

For every plain conv and linear layer of each model, a bug is planted after the rewrite: two
kept input columns of that layer change places (a wiring error of the kind a wrong channel
rule makes). Each bug is run through four checks:

- ``float64 outputs``: the model's outputs against the masked original in float64, tolerance
  1e-7 (the default before layer fingerprints: ``verify_dtype="float64"``, no layer check);
- ``float32 outputs``: the same in float32, tolerance 1e-5 (float64 when in doubt);
- ``float32 + layers``: the default, float32 outputs and the fingerprints of every layer's
  output (float64 when in doubt);
- ``float64 + layers``: ``verify_dtype="float64"``, outputs and layers in float64.

The table counts the bugs each check raised :class:`surgery.VerificationError` for, and those
that change their layer's output on the example input at all (a swap of two input channels
that are zero there changes nothing, and no check on that input can see it). Random
weights and BatchNorm statistics, seeded; 224x224, L1 at ratio 0.5.

    python benchmarks/verification_power.py [--models resnet50,mobilenet_v2] [--size 224]
"""
from __future__ import annotations

import argparse
import contextlib
import warnings

import torch
import torch.nn as nn
import torchvision

import surgery
import surgery.rewrite.reference as reference_mod
from surgery.testing import planted_bug, randomize

CHECKS = {"float64 outputs": dict(verify_dtype="float64", layers=False),
          "float32 outputs": dict(verify_dtype="auto", layers=False),
          "float32 + layers": dict(verify_dtype="auto", layers=True),
          "float64 + layers": dict(verify_dtype="float64", layers=True)}


@contextlib.contextmanager
def layer_checks(on: bool):
    watched = reference_mod.watched_layers
    if not on:
        reference_mod.watched_layers = lambda *args, **kwargs: {}
    try:
        yield
    finally:
        reference_mod.watched_layers = watched


def caught(model: nn.Module, x: torch.Tensor, layer: str, verify_dtype: str, layers: bool) -> bool:
    with planted_bug(layer), layer_checks(layers):
        try:
            surgery.prune(model, x, ratio=0.5, verify_dtype=verify_dtype)
        except surgery.VerificationError:
            return True
    return False


def candidates(model: nn.Module, x: torch.Tensor) -> tuple[list, set]:
    """Layers of the pruned model with two different input columns (plain conv or linear), and
    those where swapping them changes the layer's output on ``x`` (the others' inputs are zero
    on both channels there: no check on ``x`` can see such a bug)."""
    pruned = surgery.prune(model, x, ratio=0.5, verify=False)
    layers = [name for name, m in pruned.named_modules()
              if type(m) in (nn.Conv2d, nn.Linear) and m.weight.shape[1] >= 2
              and not torch.equal(m.weight[:, 0], m.weight[:, 1])]
    inputs: dict = {}

    def keep_input(name: str):
        def hook(module, args, output) -> None:
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [pruned.get_submodule(n).register_forward_hook(keep_input(n)) for n in layers]
    with torch.no_grad():
        pruned(x)
    for h in hooks:
        h.remove()
    visible = set()
    for name in layers:
        m = pruned.get_submodule(name)
        swapped = m.weight.detach().clone()
        swapped[:, [0, 1]] = swapped[:, [1, 0]]
        with torch.no_grad():
            out = m._conv_forward(inputs[name], swapped, m.bias) if isinstance(m, nn.Conv2d) else \
                nn.functional.linear(inputs[name], swapped, m.bias)
            if not torch.equal(out, m(inputs[name])):
                visible.add(name)
    return layers, visible


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2,regnet_y_400mf,vgg16_bn")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    print("| model | bugs planted | visible at their layer | " + " | ".join(CHECKS) + " |")
    print("|---|---:|---:|" + "---:|" * len(CHECKS))
    for name in args.models.split(","):
        model = randomize(torchvision.models.get_model(name, weights=None).eval())
        x = torch.randn(1, 3, args.size, args.size)
        layers, visible = candidates(model, x)
        counts = {check: sum(caught(model, x, layer, **how) for layer in layers) for check, how in CHECKS.items()}
        print(f"| {name} | {len(layers)} | {len(visible)} | " + " | ".join(str(counts[c]) for c in CHECKS) + " |",
              flush=True)


if __name__ == "__main__":
    main()
