"""``cifar10`` and ``cifar100``: from the npz layout of ``$ROBX_DATA`` / ``../shared/data``
(``<name>/{train,test}.npz``: uint8 HWC images and labels), else through torchvision's
download into the user cache. Images stay uint8 in memory (CHW) and become floats per batch.

Defaults: ``cifar10`` is the cifar10-lt-cpu protocol (Step-10, n_max 1000, 200 test images
per class, cnn4, 30 one-cycle epochs, PGD-5 training at eps 8/255); ``cifar100`` the
paper setting (Exp-10, ResNet-18, PGD-10, step schedule). ``cifar10-pair``: two classes (cat
majority, dog minority by default) built as GL-GAN's chapter builds its binary sets, at
its r = 0.01.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robx import (DataError, DataNotFoundError, OptionError, RegisterDataset, Split, TaskData, balanced_pair,
                  data_roots, hookimpl, user_cache_dir)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STATISTICS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
              "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def _load_npz_split(path: Path) -> tuple[Split, list[str] | None]:
    """(split, class names if stored) of one npz of the shared layout: ``x`` uint8 images
    (N, 32, 32, 3), ``y`` integer labels (N,), optional ``classes``; never unpickled, and
    anything else is one :class:`DataError` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x_np, y_np = np.asarray(data["x"]), np.asarray(data["y"])
            classes = [str(c) for c in np.asarray(data["classes"])] if "classes" in data.files else None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a CIFAR npz with x and y arrays: {error}") from error
    if x_np.dtype != np.uint8 or x_np.ndim != 4 or x_np.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: x must be uint8 images of shape (N, 32, 32, 3), got {x_np.dtype} {x_np.shape}")
    if not np.issubdtype(y_np.dtype, np.integer) or y_np.shape != (len(x_np),) or (y_np < 0).any():
        raise DataError(f"{path}: y must be {len(x_np)} non-negative integer labels, got {y_np.dtype} {y_np.shape}")
    x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(y_np.astype(np.int64))
    return Split(x, y, y), classes


def load_cifar(name: str, data_root: str | None = None, download: bool = True) -> TaskData:
    """CIFAR-10/100 from the npz layout of shared/data, else through torchvision."""
    looked: list[str] = []
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    mean, std = STATISTICS[name]
    for root in data_roots(data_root):
        folder = root / name
        looked.append(str(folder / "train.npz"))
        if (folder / "train.npz").exists() and (folder / "test.npz").exists():
            (train, stored), (test, _) = _load_npz_split(folder / "train.npz"), _load_npz_split(folder / "test.npz")
            classes = stored or classes
            num_classes = int(max(train.labels.max(), test.labels.max())) + 1
            if classes is not None and len(classes) < num_classes:
                raise DataError(f"{folder}: labels go up to {num_classes - 1} but {len(classes)} classes are named")
            return TaskData(name, classes or [str(c) for c in range(num_classes)], train, test, mean, std)
    from torchvision import datasets

    dataset_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    cache = user_cache_dir() / "torchvision"
    looked.append(f"torchvision {dataset_cls.__name__} in {cache}")
    try:
        train_set = dataset_cls(str(cache), train=True, download=download)
        test_set = dataset_cls(str(cache), train=False, download=download)
    except Exception as error:  # offline, corrupt archive, ...
        raise DataNotFoundError(
            f"{name} not found; looked in: {'; '.join(looked)} (download: {error})"
        ) from error

    def split(ds) -> Split:
        y = torch.tensor(ds.targets)
        return Split(torch.from_numpy(ds.data.transpose(0, 3, 1, 2).copy()), y, y)

    return TaskData(name, list(train_set.classes), split(train_set), split(test_set), mean, std)


@dataclass
class PairOptions:
    majority: str = "cat"
    minority: str = "dog"
    per_class: int = 1000  # images of each class drawn from train + test before the 80/20 split


def load_cifar10_pair(data_root: str | None, seed: int, options: PairOptions) -> TaskData:
    """Two CIFAR-10 classes as GL-GAN's and ICED's chapters build binary sets (balanced,
    80 % training candidates, a balanced 20 % test split), from train and test pooled."""
    full = load_cifar("cifar10", data_root)
    for name in (options.majority, options.minority):
        if name not in full.classes or options.majority == options.minority:
            raise OptionError(f"cifar10-pair needs two different classes of {', '.join(full.classes)}; got "
                              f"{options.majority!r} and {options.minority!r}")
    x = torch.cat([full.train.x, full.test.x])
    labels = torch.cat([full.train.labels, full.test.labels])
    train, test = balanced_pair(x, labels, full.classes.index(options.majority), full.classes.index(options.minority),
                                seed, per_class=options.per_class)
    return TaskData("cifar10-pair", [options.majority, options.minority], train, test, full.mean, full.std)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("cifar10", lambda root, seed: load_cifar("cifar10", root), task="classification", defaults=dict(
        model="cnn4", epochs=30, batch_size=128, lr=0.1, schedule="onecycle",
        eps=8 / 255, alpha=2 / 255, steps=5, eval_steps=20,
        imbalance="step", ratio=10.0, n_max=1000, n_test_per_class=200, augment=True,
    ))
    register("cifar100", lambda root, seed: load_cifar("cifar100", root), task="classification", defaults=dict(
        model="resnet18", epochs=100, batch_size=128, lr=0.1, schedule="step",
        eps=8 / 255, alpha=2 / 255, steps=10, eval_steps=20,
        imbalance="exp", ratio=10.0, augment=True,
    ))
    # GL-GAN's evaluation at r = 0.01: 800 majority candidates, 8 minority ones
    register("cifar10-pair", load_cifar10_pair, task="classification", options=PairOptions, defaults=dict(
        model="cnn4", epochs=30, batch_size=128, lr=0.1, schedule="onecycle",
        eps=8 / 255, alpha=2 / 255, steps=5, eval_steps=20,
        imbalance="step", ratio=100.0, augment=True,
    ))
