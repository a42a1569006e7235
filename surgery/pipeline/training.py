"""Training and fine-tuning: one loop for both (tqdm per epoch with loss and accuracy).

SGD (Nesterov) or AdamW; linear warm-up then cosine to zero, stepped per batch; label
smoothing; early stopping on validation accuracy with the best weights restored;
mixed precision on CUDA; knowledge distillation from a teacher (the unpruned model);
DistributedDataParallel when ``torch.distributed`` is initialised; a checkpoint after each
epoch so a run can resume where it stopped.
"""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from surgery.pipeline.data import Data, loader

__all__ = ["fit", "evaluate_accuracy", "is_main", "distributed", "sync_from_rank0"]


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return not distributed() or dist.get_rank() == 0


def fit(model: nn.Module, data: Data, cfg, *, stage: str, device: torch.device, seed: int, batch_size: int,
        teacher: nn.Module | None = None, checkpoint: str | None = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Train ``model`` in place with the settings of ``cfg`` (a TrainSection); returns one
    row per epoch (stage, epoch, loss, train_acc, val_acc, lr, seconds). With ``checkpoint``
    the state after each epoch is written there, and training resumes from it if present."""
    if cfg.epochs == 0:
        return []
    model.to(device)
    net = _wrap(model, device)
    batches = loader(data.train, batch_size, shuffle=True, seed=seed, distributed=distributed())
    opt = _optimizer(model, cfg)
    steps = cfg.epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps, int(cfg.warmup_epochs * len(batches))))
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rows, start, best = [], 0, (-1.0, None, 0)
    if checkpoint and os.path.exists(checkpoint):
        start, rows, best = _resume(checkpoint, model, opt, sched, scaler)
        log(f"{stage}: resumed after epoch {start} from {checkpoint}")
    if teacher is not None:
        teacher = teacher.to(device).eval()
    for epoch in range(start, cfg.epochs):
        if hasattr(batches.sampler, "set_epoch"):
            batches.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss, acc = _epoch(net, batches, opt, sched, scaler, cfg, device, amp, teacher,
                           f"{stage} {epoch + 1}/{cfg.epochs}")
        sync_from_rank0(model)
        val = evaluate_accuracy(model, data.val, device, batch_size) if data.val is not None else None
        rows.append({"stage": stage, "epoch": epoch + 1, "loss": loss, "train_acc": acc, "val_acc": val,
                     "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0})
        log(f"{stage} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}, train acc {acc:.4f}"
            + (f", val acc {val:.4f}" if val is not None else ""))
        score = val if val is not None else acc
        if score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()), epoch + 1)
        if checkpoint and is_main():
            torch.save({"epoch": epoch + 1, "rows": rows, "model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "scaler": scaler.state_dict(),
                        "best": {"score": best[0], "state": best[1], "epoch": best[2]}}, checkpoint)
        if cfg.patience is not None and epoch + 1 - best[2] >= cfg.patience:
            log(f"{stage}: early stop after epoch {epoch + 1} (no better validation accuracy for {cfg.patience})")
            break
    if cfg.patience is not None and best[1] is not None:
        model.load_state_dict(best[1])
        log(f"{stage}: kept the weights of epoch {best[2]} (validation accuracy {best[0]:.4f})")
    return rows


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (eval mode; the mode is restored)."""
    was = model.training
    model.eval()
    correct = total = 0
    for x, y in loader(dataset, batch_size):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


def _epoch(net, batches, opt, sched, scaler, cfg, device, amp, teacher, desc) -> tuple[float, float]:
    net.train()
    total_loss = correct = seen = 0
    with tqdm(batches, desc=desc, unit="batch", leave=False, disable=not is_main()) as bar:
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, enabled=amp):
                logits = net(x)
                loss = _loss(logits, y, x, cfg, teacher)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _loss(logits, y, x, cfg, teacher) -> torch.Tensor:
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if teacher is None:
        return loss
    with torch.no_grad():
        target = teacher(x)
    t = cfg.temperature
    kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), log_target=True,
                  reduction="batchmean") * t * t
    return (1 - cfg.alpha) * loss + cfg.alpha * kd


def _optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def _warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@torch.no_grad()
def sync_from_rank0(model: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (BatchNorm statistics are updated
    locally by each rank's last forward, so they drift apart under DDP)."""
    if distributed():
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def _resume(path: str, model, opt, sched, scaler) -> tuple:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    scaler.load_state_dict(state["scaler"])
    b = state["best"]
    return state["epoch"], state["rows"], (b["score"], b["state"], b["epoch"])
