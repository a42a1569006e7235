"""What a run measures for a model: accuracy (top-1 and per class), parameters, FLOPs
(fvcore), latency, size on disk and channels per layer.

Latency: ``warmup`` untimed runs, then ``repeats`` timed forwards per batch size; the
median, 10th and 90th percentile in milliseconds and the spread ((p90 - p10) / median), the
thread count held fixed and recorded, CUDA synchronised around each run. Models compared
with each other are timed interleaved (:func:`latency_interleaved`: one forward of each in
turn), so a busy machine slows both alike; a spread above ``BUSY_SPREAD`` says the machine
was busy and the numbers are not to be trusted (:func:`busy_warning`).

Example:
    >>> import torch
    >>> from surgery.models import create
    >>> from surgery.pipeline.measure import latency, size_on_disk
    >>> m = create("digits_cnn")
    >>> sorted(latency(m, (3, 16, 16), [1], repeats=3, warmup=1)["1"])
    ['median_ms', 'p10_ms', 'p90_ms', 'spread']
    >>> size_on_disk(m) > 4 * sum(p.numel() for p in m.parameters())
    True
"""
from __future__ import annotations

import io
import statistics
import time

import torch
import torch.nn as nn

from surgery.core.metrics import count_flops, count_params
from surgery.pipeline.data import loader
from surgery.sparsity import sparsity_report

__all__ = ["measure", "accuracy_by_class", "latency", "latency_interleaved", "busy_warning", "size_on_disk",
           "channels", "BUSY_SPREAD"]

BUSY_SPREAD = 0.5  # (p90 - p10) / median above this: the machine was busy while timing


def measure(model: nn.Module, test, input_shape: tuple, device: torch.device, num_classes: int, eval_cfg,
            batch_size: int = 256, timed: bool = True) -> dict:
    """All metrics of ``model`` as a JSON-ready dict (the schema of metrics.json); latency only
    with ``timed`` (a run times its two models together, interleaved, at the end)."""
    acc, per_class = accuracy_by_class(model, test, device, num_classes, batch_size)
    example = torch.zeros(1, *input_shape)
    cpu = model.to("cpu")
    out = {"accuracy": acc, "per_class_accuracy": per_class, "params": count_params(cpu),
           "flops": count_flops(cpu, example), "size_bytes": size_on_disk(cpu), "channels": channels(cpu),
           "sparsity": sparsity_report(cpu).overall}
    model.to(device)
    if eval_cfg.latency and timed:
        out["latency_ms"] = latency(model, input_shape, eval_cfg.batch_sizes, eval_cfg.repeats, eval_cfg.warmup,
                                    device)
        out["latency_threads"] = torch.get_num_threads()
        out["latency_device"] = str(device)
    return out


@torch.no_grad()
def accuracy_by_class(model: nn.Module, dataset, device: torch.device, num_classes: int,
                      batch_size: int = 256) -> tuple[float, list]:
    """Top-1 accuracy and the accuracy of each class (None for a class absent from ``dataset``)."""
    model.eval()
    hits, counts = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)
    for x, y in loader(dataset, batch_size):
        pred = model(x.to(device)).argmax(1).cpu()
        counts += torch.bincount(y, minlength=num_classes)[:num_classes]
        hits += torch.bincount(y[pred == y], minlength=num_classes)[:num_classes]
    per_class = [float(h / c) if c else None for h, c in zip(hits, counts)]
    return float(hits.sum() / counts.sum().clamp(min=1)), per_class


@torch.no_grad()
def latency(model: nn.Module, input_shape: tuple, batch_sizes, repeats: int = 20, warmup: int = 3,
            device: torch.device | str = "cpu") -> dict:
    """{batch size: {"median_ms", "p10_ms", "p90_ms", "spread"}} of forward passes on random inputs."""
    return latency_interleaved({"m": model}, input_shape, batch_sizes, repeats, warmup, device)["m"]


@torch.no_grad()
def latency_interleaved(models: dict, input_shape: tuple, batch_sizes, repeats: int = 20, warmup: int = 3,
                        device: torch.device | str = "cpu") -> dict:
    """{name: {batch size: stats}}: the models timed in turn (one forward each, ``repeats``
    rounds), in one process with the thread count held fixed, so that contention hits all."""
    device = torch.device(device)
    threads = torch.get_num_threads()
    times: dict = {name: {b: [] for b in batch_sizes} for name in models}
    for m in models.values():
        m.eval()
    try:
        torch.set_num_threads(threads)
        for b in batch_sizes:
            x = torch.randn(b, *input_shape, device=device)
            for i in range(warmup + repeats):
                for name, m in models.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    m(x)
                    _sync(device)
                    if i >= warmup:
                        times[name][b].append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    return {name: {str(b): _stats(ts) for b, ts in per.items()} for name, per in times.items()}


def _stats(times: list) -> dict:
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    median = statistics.median(times)
    return {"median_ms": median, "p10_ms": pick(0.1), "p90_ms": pick(0.9),
            "spread": (pick(0.9) - pick(0.1)) / median if median else 0.0}


def busy_warning(*latencies: dict) -> str:
    """A warning when any timing's spread says the machine was busy, else ""."""
    worst = max((s["spread"] for lat in latencies for s in (lat or {}).values() if "spread" in s), default=0.0)
    if worst <= BUSY_SPREAD:
        return ""
    return (f"latency is not reliable: the timings spread by {worst:.0%} of their median (p90 - p10; above "
            f"{BUSY_SPREAD:.0%} means other work shared the CPU); measure again on a quiet machine")


def size_on_disk(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def channels(model: nn.Module) -> dict:
    """{layer name: output channels} for conv and linear layers."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
