"""Datasets, imbalance construction (PROTOCOLS.md) and batches.

All images are kept in memory as tensors (uint8 for CIFAR, float for digits) and
batched by index; the small datasets of the protocols fit easily, and this avoids a
DataLoader worker pool competing with training for two CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robx.core.errors import DataNotFoundError, OptionError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass
class ImageData:
    """A train/test pair of image tensors (N, C, H, W) with integer labels."""

    name: str
    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


# ---------------------------------------------------------------------------
# where data lives
# ---------------------------------------------------------------------------


def data_roots(explicit: str | None = None) -> list[Path]:
    """Places searched for data, in order: explicit root, $ROBX_DATA, ../shared/data
    (from the working directory and from the source checkout), the user cache dir."""
    roots: list[Path] = []
    if explicit:
        roots.append(Path(explicit))
    if os.environ.get("ROBX_DATA"):
        roots.append(Path(os.environ["ROBX_DATA"]))
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    roots.append(user_cache_dir())
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robx"


def _load_npz_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as data:
        x = torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2)))
        y = torch.from_numpy(data["y"].astype(np.int64))
    return x, y


def load_cifar(name: str, data_root: str | None = None, download: bool = True) -> ImageData:
    """CIFAR-10/100 from the npz layout of shared/data, else through torchvision."""
    looked: list[str] = []
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    for root in data_roots(data_root):
        folder = root / name
        looked.append(str(folder / "train.npz"))
        if (folder / "train.npz").exists() and (folder / "test.npz").exists():
            x_train, y_train = _load_npz_split(folder / "train.npz")
            x_test, y_test = _load_npz_split(folder / "test.npz")
            with np.load(folder / "train.npz") as data:
                if "classes" in data:
                    classes = [str(c) for c in data["classes"]]
            num_classes = int(y_train.max()) + 1
            return ImageData(name, classes or [str(c) for c in range(num_classes)],
                             x_train, y_train, x_test, y_test, mean, std)
    from torchvision import datasets

    dataset_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    cache = user_cache_dir() / "torchvision"
    looked.append(f"torchvision {dataset_cls.__name__} in {cache}")
    try:
        train = dataset_cls(str(cache), train=True, download=download)
        test = dataset_cls(str(cache), train=False, download=download)
    except Exception as error:  # offline, corrupt archive, ...
        raise DataNotFoundError(
            f"{name} not found; looked in: {'; '.join(looked)} (download: {error})"
        ) from error

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data.transpose(0, 3, 1, 2).copy()), torch.tensor(ds.targets)

    x_train, y_train = tensors(train)
    x_test, y_test = tensors(test)
    return ImageData(name, list(train.classes), x_train, y_train, x_test, y_test, mean, std)


def load_digits_data(seed: int) -> ImageData:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=0.25, stratify=digits.target, random_state=seed
    )
    # Pixels in [0, 1] with mean/std of about 0.3; normalising is left out on purpose
    # so that the model sees exactly what the attack perturbs.
    return ImageData("digits", [str(d) for d in range(10)], x[idx_train], y[idx_train],
                     x[idx_test], y[idx_test], (0.0,), (1.0,))


def load_dataset(name: str, data_root: str | None = None, data_seed: int = 0) -> ImageData:
    if name == "digits":
        return load_digits_data(data_seed)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_root)
    raise OptionError(f"unknown dataset '{name}'; available: digits, cifar10, cifar100")


# ---------------------------------------------------------------------------
# imbalance and splits
# ---------------------------------------------------------------------------


def imbalanced_class_sizes(num_classes: int, kind: str, ratio: float, n_max: int) -> list[int]:
    """Step-K: the first half of the classes keep n_max, the rest n_max / K.
    Exp-K: class c keeps n_max * K^(-c / (C - 1)). ``none``: n_max for every class."""
    if kind == "none" or ratio == 1:
        return [n_max] * num_classes
    if kind == "step":
        half = num_classes // 2
        return [n_max if c < half else max(1, int(n_max / ratio)) for c in range(num_classes)]
    if kind == "exp":
        return [max(1, int(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]
    raise OptionError(f"imbalance must be step, exp or none, got {kind!r}")


def per_class_subset(y: torch.Tensor, sizes: list[int], seed: int) -> torch.Tensor:
    """Indices of the first ``sizes[c]`` examples of each class under a seeded permutation."""
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    chosen = []
    for c, size in enumerate(sizes):
        members = np.flatnonzero(y_np == c)
        if size > len(members):
            raise OptionError(f"class {c} has {len(members)} examples, fewer than the {size} asked for")
        chosen.append(rng.permutation(members)[:size])
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices; each class gives round(fraction * n_c) examples (>= 1 when it can)."""
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    held = []
    for c in np.unique(y_np):
        members = rng.permutation(np.flatnonzero(y_np == c))
        take = int(round(fraction * len(members)))
        if fraction > 0 and len(members) > 1:
            take = min(max(take, 1), len(members) - 1)
        held.append(members[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    kept_idx = np.setdiff1d(np.arange(len(y_np)), held_idx)
    return torch.from_numpy(kept_idx), torch.from_numpy(held_idx)


def prepare_data(
    name: str,
    imbalance: str,
    ratio: float,
    n_max: int | None,
    n_test_per_class: int | None,
    val_fraction: float,
    data_seed: int,
    data_root: str | None = None,
) -> ImageData:
    """Load a dataset and apply the protocol: imbalanced training subset, balanced test
    subset, stratified validation split taken from the training subset."""
    data = load_dataset(name, data_root, data_seed)
    counts = data.class_counts()
    n_max = n_max or min(counts)
    sizes = imbalanced_class_sizes(data.num_classes, imbalance, ratio, n_max)
    keep = per_class_subset(data.y_train, sizes, data_seed)
    data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    if n_test_per_class:
        test_counts = torch.bincount(data.y_test, minlength=data.num_classes).tolist()
        keep_test = per_class_subset(data.y_test, [min(n_test_per_class, n) for n in test_counts], data_seed)
        data.x_test, data.y_test = data.x_test[keep_test], data.y_test[keep_test]
    if val_fraction > 0:
        kept, held = stratified_split(data.y_train, val_fraction, data_seed)
        data.x_val, data.y_val = data.x_train[held], data.y_train[held]
        data.x_train, data.y_train = data.x_train[kept], data.y_train[kept]
    return data


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """About ``n`` indices with the class proportions of ``y`` (for ``--n-eval``)."""
    if n >= len(y):
        return torch.arange(len(y))
    _, held = stratified_split(y, n / len(y), seed)
    return held


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Shuffled (when a generator is given) index batches covering 0..n-1 once."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip.

    Done on the batch tensor because torchvision's tensor transforms draw one set of
    parameters per call, i.e. one crop for the whole batch.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
