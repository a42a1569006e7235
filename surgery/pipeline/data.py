"""Datasets for the pipeline, all read locally (nothing is downloaded).

``digits`` (scikit-learn's bundled 8x8 digits, resized, 3 channels; the default) needs no
files. CIFAR-10/100, MNIST, FashionMNIST, SVHN, GTSRB come through torchvision with
``download=False`` from ``data.root``; ``folder`` is an ImageNet-style tree
(``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``). Grayscale sets are given 3
channels so every model in the zoo takes them. A missing dataset raises FileNotFoundError
naming the path that was expected.

Example:
    >>> from surgery.pipeline.config import DataSection
    >>> from surgery.pipeline.data import load
    >>> d = load(DataSection(classes=[3, 5, 7]), seed=0)
    >>> d.num_classes, d.input_shape, len(d.test) > 100
    (3, (3, 16, 16), True)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from surgery.core.errors import ArgumentError

__all__ = ["Data", "load", "loader", "DATASETS"]


@dataclass
class Data:
    """Train / validation / test / calibration splits and what a model needs to know."""
    train: Dataset
    val: Dataset | None
    test: Dataset
    calibration: Dataset
    num_classes: int
    input_shape: tuple
    class_names: list
    classes: list | None = None  # original indices of the kept classes, when a subset was asked


@dataclass(frozen=True)
class _Spec:
    build: Callable              # (root, train: bool, transform) -> dataset
    size: int
    mean: tuple
    std: tuple
    gray: bool = False
    crop_pad: int = 4            # random-crop padding for augmentation (0: resize-crop, for folders)
    flip: bool = True
    expected: str = ""           # what must exist under root


def _tv(name: str):
    import torchvision.datasets as tvd
    return getattr(tvd, name)


DATASETS: dict[str, _Spec] = {
    "cifar10": _Spec(lambda r, t, tf: _tv("CIFAR10")(r, train=t, transform=tf, download=False), 32,
                     (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), expected="cifar-10-batches-py/"),
    "cifar100": _Spec(lambda r, t, tf: _tv("CIFAR100")(r, train=t, transform=tf, download=False), 32,
                      (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), expected="cifar-100-python/"),
    "mnist": _Spec(lambda r, t, tf: _tv("MNIST")(r, train=t, transform=tf, download=False), 28,
                   (0.1307,) * 3, (0.3081,) * 3, gray=True, crop_pad=2, flip=False, expected="MNIST/raw/"),
    "fashionmnist": _Spec(lambda r, t, tf: _tv("FashionMNIST")(r, train=t, transform=tf, download=False), 28,
                          (0.2860,) * 3, (0.3530,) * 3, gray=True, crop_pad=2, expected="FashionMNIST/raw/"),
    "svhn": _Spec(lambda r, t, tf: _tv("SVHN")(r, split="train" if t else "test", transform=tf, download=False),
                  32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), flip=False,
                  expected="train_32x32.mat and test_32x32.mat"),
    "gtsrb": _Spec(lambda r, t, tf: _tv("GTSRB")(r, split="train" if t else "test", transform=tf, download=False),
                   32, (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669), flip=False, expected="gtsrb/"),
    "folder": _Spec(lambda r, t, tf: _tv("ImageFolder")(os.path.join(r, "train" if t else "val"), transform=tf),
                    224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_pad=0,
                    expected="train/<class>/ and val/<class>/ image folders"),
}
NAMES = ("digits", *DATASETS)


def load(cfg, seed: int = 0) -> Data:
    """The splits described by ``cfg`` (a :class:`~surgery.pipeline.config.DataSection`)."""
    if cfg.name not in NAMES:
        raise ArgumentError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(NAMES)}")
    if cfg.name == "digits":
        train_aug, train_plain, test, names, size = _digits(cfg, seed)
    else:
        train_aug, train_plain, test, names, size = _torchvision(cfg)
    classes = list(cfg.classes) if cfg.classes is not None else None
    targets_train, targets_test = _targets(train_plain), _targets(test)
    if classes is not None:
        bad = [c for c in classes if not 0 <= c < len(names)]
        if bad:
            raise ArgumentError(f"data.classes {bad} are not classes of {cfg.name} (0..{len(names) - 1})")
    keep_train = _indices(targets_train, classes)
    gen = torch.Generator().manual_seed(seed)
    order = keep_train[torch.randperm(len(keep_train), generator=gen).numpy()]
    n_val = int(round(cfg.val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    remap = {c: i for i, c in enumerate(classes)} if classes is not None else None
    return Data(
        train=_Labelled(train_aug, train_idx, remap), val=_Labelled(train_plain, val_idx, remap) if n_val else None,
        test=_Labelled(test, _indices(targets_test, classes), remap),
        calibration=_Labelled(train_plain, train_idx[:cfg.calibration_size], remap),
        num_classes=len(classes) if classes is not None else len(names), input_shape=(3, size, size),
        class_names=[names[c] for c in classes] if classes is not None else list(names), classes=classes)


def loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, workers: int = 0,
           distributed: bool = False) -> DataLoader:
    """A seeded DataLoader; with ``distributed`` each rank reads its own shard."""
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, generator=torch.Generator().manual_seed(seed))


class _Labelled(Dataset):
    """``base[indices]`` with labels renumbered to 0..k-1 when a class subset was asked."""

    def __init__(self, base: Dataset, indices, remap: dict | None) -> None:
        self.base, self.indices, self.remap = base, [int(i) for i in indices], remap

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        y = int(y)
        return x, self.remap[y] if self.remap is not None else y

    def targets(self) -> list:
        base = _targets(self.base)
        return [self.remap[base[i]] if self.remap else int(base[i]) for i in self.indices]


class _Augmented(Dataset):
    """In-memory images with random shifts (pad + crop) for the digits set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int) -> None:
        self.images, self.labels, self.pad = images, labels, pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.pad:
            h, w = x.shape[-2:]
            padded = F.pad(x, (self.pad,) * 4, value=float(x.min()))
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = padded[:, dy:dy + h, dx:dx + w]
        return x, self.labels[i]


def _digits(cfg, seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    size = cfg.image_size or 16
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=seed, stratify=y.numpy())
    train_aug = _Augmented(x[tr], y[tr], pad=max(1, size // 16) if cfg.augment else 0)
    train_plain = TensorDataset(x[tr], y[tr])
    return train_aug, train_plain, TensorDataset(x[te], y[te]), [str(i) for i in range(10)], size


def _torchvision(cfg):
    import torchvision.transforms as T
    spec = DATASETS[cfg.name]
    size = cfg.image_size or spec.size
    norm = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    gray = [T.Grayscale(3)] if spec.gray else []
    if spec.crop_pad:
        plain = T.Compose(gray + [T.Resize(size)] * (size != spec.size) + norm)
        aug = T.Compose(gray + [T.Resize(size)] * (size != spec.size) + [T.RandomCrop(size, padding=spec.crop_pad)]
                        + [T.RandomHorizontalFlip()] * spec.flip + norm)
    else:
        plain = T.Compose(gray + [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)] + norm)
        aug = T.Compose(gray + [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + norm)
    if not cfg.augment:
        aug = plain
    try:
        train_aug, train_plain, test = (spec.build(cfg.root, True, aug), spec.build(cfg.root, True, plain),
                                        spec.build(cfg.root, False, plain))
    except (RuntimeError, FileNotFoundError) as err:
        why = re.sub(r"\s*You can use download=True to download it\.?", "", str(err)).strip()
        raise FileNotFoundError(
            f"{cfg.name} not found under {os.path.abspath(cfg.root)!r}: expected {spec.expected} there "
            f"(nothing is downloaded; put a local copy there or set data.root) [{why}]") from None
    names = getattr(test, "classes", None) or [str(i) for i in range(max(_targets(test)) + 1)]
    return train_aug, train_plain, test, list(names), size


def _targets(ds) -> list:
    if isinstance(ds, _Labelled):
        return ds.targets()
    if isinstance(ds, (TensorDataset, _Augmented)):
        return (ds.tensors[1] if isinstance(ds, TensorDataset) else ds.labels).tolist()
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            t = getattr(ds, attr)
            return t.tolist() if hasattr(t, "tolist") else list(t)
    if hasattr(ds, "_samples"):  # GTSRB
        return [int(s[1]) for s in ds._samples]
    return [int(ds[i][1]) for i in range(len(ds))]


def _indices(targets: list, classes: list | None) -> np.ndarray:
    t = np.asarray(targets)
    return np.arange(len(t)) if classes is None else np.flatnonzero(np.isin(t, classes))
