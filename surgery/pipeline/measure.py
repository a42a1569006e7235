"""What a run measures for a model: accuracy (top-1 and per class), parameters, FLOPs
(fvcore), latency, size on disk and channels per layer.

Latency: ``warmup`` untimed runs, then ``repeats`` timed forwards per batch size; the
median and 90th percentile in milliseconds, the thread count recorded, CUDA synchronised
around each run.

Example:
    >>> import torch
    >>> from surgery.models import create
    >>> from surgery.pipeline.measure import latency, size_on_disk
    >>> m = create("digits_cnn")
    >>> sorted(latency(m, (3, 16, 16), [1], repeats=3, warmup=1)["1"])
    ['median_ms', 'p90_ms']
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

__all__ = ["measure", "accuracy_by_class", "latency", "size_on_disk", "channels"]


def measure(model: nn.Module, test, input_shape: tuple, device: torch.device, num_classes: int, eval_cfg,
            batch_size: int = 256) -> dict:
    """All metrics of ``model`` as a JSON-ready dict (the schema of metrics.json)."""
    acc, per_class = accuracy_by_class(model, test, device, num_classes, batch_size)
    example = torch.zeros(1, *input_shape)
    cpu = model.to("cpu")
    out = {"accuracy": acc, "per_class_accuracy": per_class, "params": count_params(cpu),
           "flops": count_flops(cpu, example), "size_bytes": size_on_disk(cpu), "channels": channels(cpu)}
    model.to(device)
    if eval_cfg.latency:
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
    """{batch size: {"median_ms", "p90_ms"}} of forward passes on random inputs."""
    device = torch.device(device)
    model.eval()
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, device=device)
        times = []
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[str(b)] = {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1,
                                                                                 int(0.9 * len(times)))]}
    return out


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
