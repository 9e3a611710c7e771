"""Task data, where data lives, and the benchmark protocol applied to it (docs/protocols.md).

A registered dataset's loader returns a :class:`TaskData` of full train/test splits; the
engine then applies the protocol to the examples' labels, whatever the task: an imbalanced
training subset (Step-K / Exp-K), a class-balanced test subset, a stratified validation
split. Examples stay in memory as tensors and are batched by index; the small datasets of
the protocols fit easily, and this avoids a DataLoader worker pool competing with training
for two CPU cores.
"""

from __future__ import annotations

import math

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robx.core.errors import DataError, OptionError


@dataclass
class Split:
    """Stored inputs, targets and the label (class or group) of every example.

    ``labels`` has one entry per example, shape ``(examples,)``, or one per scored target of
    an example with several (shape ``(examples, *target_shape)``, e.g. the zero / non-zero
    group of every node and category of a crime grid). Every labelled entry then counts once
    in the class counts and statistics; such datasets keep their own splits (see
    :func:`apply_protocol`).
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx], self.labels[idx])

    def to(self, device: torch.device) -> Split:
        """The split on ``device``, stored as it is (uint8 images stay uint8)."""
        return Split(self.x.to(device), self.y.to(device), self.labels.to(device))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.labels))


@dataclass
class TaskData:
    """A dataset for a task: train/test (and, after the protocol, validation) splits, the
    names of the label classes, and the input normalisation its models apply."""

    name: str
    classes: list[str]
    train: Split
    test: Split
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    val: Split | None = None
    #: what the data was read from, ``{part: short description}`` (a dataset of the user's files:
    #: their counts and digests), kept in a run's config.json so that a resumed or re-evaluated
    #: run refuses changed data, naming the parts that differ
    fingerprint: dict[str, str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Labelled training examples (or targets) of each class."""
        return torch.bincount(self.train.labels.flatten(), minlength=self.num_classes).tolist()


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


# ---------------------------------------------------------------------------
# imbalance and splits
# ---------------------------------------------------------------------------


def imbalanced_class_sizes(num_classes: int, kind: str, ratio: float, n_max: int) -> list[int]:
    """Step-K: the first half of the classes keep n_max, the rest n_max / K.
    Exp-K: class c keeps n_max * K^(-c / (C - 1)). ``none``: n_max for every class (balanced).
    A ratio that is not a finite number >= 1, or that leaves the smallest class less than one
    example (K > n_max), is an :class:`OptionError`: rounding it up to one example would train
    on another ratio than the one asked for."""
    if not math.isfinite(ratio) or ratio < 1:
        raise OptionError(f"the imbalance ratio must be a finite number >= 1, got {ratio:g}")
    if kind == "none" or ratio == 1:
        return [n_max] * num_classes
    check_smallest_class(ratio, n_max)
    if kind == "step":
        half = num_classes // 2
        return [n_max if c < half else max(1, int(n_max / ratio)) for c in range(num_classes)]
    if kind == "exp":
        return [max(1, int(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]
    raise OptionError(f"imbalance must be step, exp or none, got {kind!r}")


def check_smallest_class(ratio: float, n_max: int) -> None:
    if n_max / ratio < 1 - 1e-9:
        raise OptionError(f"ratio {ratio:g} leaves the smallest class {n_max} / {ratio:g} < 1 training example; "
                          f"with {n_max} examples in the largest class the ratio can be at most {n_max}")


def per_class_subset(labels: torch.Tensor, sizes: list[int], seed: int) -> torch.Tensor:
    """Indices of the first ``sizes[c]`` examples of each class under a seeded permutation."""
    rng = np.random.default_rng(seed)
    y_np = labels.numpy()
    chosen = []
    for c, size in enumerate(sizes):
        members = np.flatnonzero(y_np == c)
        if size > len(members):
            raise OptionError(f"class {c} has {len(members)} examples, fewer than the {size} asked for")
        chosen.append(rng.permutation(members)[:size])
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices; each class gives round(fraction * n_c) examples (>= 1 when it can)."""
    rng = np.random.default_rng(seed)
    y_np = labels.numpy()
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


def apply_protocol(
    data: TaskData,
    imbalance: str,
    ratio: float,
    n_max: int | None,
    n_test_per_class: int | None,
    val_fraction: float,
    data_seed: int,
    *,
    per_target: bool,
) -> TaskData:
    """The protocol on the labels: imbalanced training subset (``original``: every training
    example, the dataset's own class distribution), balanced test subset, stratified
    validation split taken from the training subset.

    A dataset whose task labels every target of an example (``per_target``, the task's
    ``labels_per_target``) has no per-example class to subsample by: it keeps the dataset's
    own splits, and asking for anything else is an :class:`OptionError`."""
    check_class_labels(data)
    if per_target:
        asked = [what for what, given in (("imbalance=" + imbalance, imbalance != "original"),
                                          (f"n_test_per_class={n_test_per_class}", bool(n_test_per_class)),
                                          (f"val_fraction={val_fraction:g}", val_fraction > 0)) if given]
        if asked:
            raise OptionError(f"dataset '{data.name}' labels every target, so it keeps its own splits; "
                              f"drop {', '.join(asked)} (imbalance must be 'original')")
        return data
    if imbalance != "original":
        n_max = n_max or min(data.class_counts())
        sizes = imbalanced_class_sizes(data.num_classes, imbalance, ratio, n_max)
        data.train = data.train.subset(per_class_subset(data.train.labels, sizes, data_seed))
    if n_test_per_class:
        test_counts = torch.bincount(data.test.labels, minlength=data.num_classes).tolist()
        data.test = data.test.subset(
            per_class_subset(data.test.labels, [min(n_test_per_class, n) for n in test_counts], data_seed))
    if val_fraction > 0:
        kept, held = stratified_split(data.train.labels, val_fraction, data_seed)
        data.val = data.train.subset(held)
        data.train = data.train.subset(kept)
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
    if 0 in counts:
        empty = counts.index(0)
        raise OptionError(f"class {data.classes[empty]!r} is left with 0 training examples (training counts "
                          f"{counts}); raise n_max, lower the ratio or the val_fraction")
    return data


def check_class_labels(data: TaskData) -> None:
    """Labels index the named classes, checked before anything is sized by them (a class
    count, a confusion matrix): at least two classes, integer labels in 0..C-1 in both splits,
    and every class among the training examples. A class may lack test examples: its report
    says so. One :class:`DataError` line otherwise."""
    names = ", ".join(f"'{name}'" for name in data.classes[:5])
    if data.num_classes < 2:
        raise DataError(f"dataset '{data.name}' has {data.num_classes} class{'' if data.num_classes == 1 else 'es'}"
                        f"{f' ({names})' if names else ''}; robx compares classes, so it needs at least two")
    for split, part in (("training", data.train), ("test", data.test)):
        labels = part.labels
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise DataError(f"dataset '{data.name}': the {split} labels are {str(labels.dtype).removeprefix('torch.')}"
                            "; labels are integer class indices")
        if labels.numel() == 0:
            raise DataError(f"dataset '{data.name}' has no {split} examples")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= data.num_classes:
            raise DataError(f"dataset '{data.name}': a {split} label is {low if low < 0 else high}, but labels must be "
                            f"0..{data.num_classes - 1}, one per class ({data.num_classes} classes are named)")
    counts = torch.bincount(data.train.labels.flatten(), minlength=data.num_classes).tolist()
    if 0 in counts:
        missing = [name for name, count in zip(data.classes, counts) if not count]
        raise DataError(f"dataset '{data.name}': class{'es' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(name) for name in missing[:5])} "
                        f"{'have' if len(missing) > 1 else 'has'} no training examples; every class needs some")


def check_subset_size(n: int | None, num_classes: int, *, per_target: bool, flag: str = "--n-eval") -> None:
    """A stratified subset of ``n`` examples (``--n-eval``) scores every class only when ``n``
    is at least the number of classes: refused in one line before any work otherwise (where
    the task labels every target, an example holds several classes)."""
    if n is not None and not per_target and n < num_classes:
        raise OptionError(f"{flag} {n} is fewer than the {num_classes} classes; a per-class evaluation needs at "
                          f"least one test example of each (give {flag} {num_classes} or more)")


def stratified_subset(labels: torch.Tensor, n: int, seed: int, *, per_target: bool) -> torch.Tensor:
    """About ``n`` indices with the class proportions of ``labels`` (for ``--n-eval``);
    a seeded uniform subset of the examples when the task labels every target."""
    if n >= len(labels):
        return torch.arange(len(labels))
    if per_target:
        return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(labels))[:n]))
    _, held = stratified_split(labels, n / len(labels), seed)
    return held


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Shuffled (when a generator is given) index batches covering 0..n-1 once."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def balanced_pair(x: torch.Tensor, labels: torch.Tensor, majority: int, minority: int, seed: int,
                  per_class: int | None = None, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """The binary construction of the dissertation's chapters 2 and 3 (2.4.1.1): two classes
    of a dataset, balanced (each cut to the smaller count, or to ``per_class``), split into
    ``1 - test_fraction`` training candidates and a balanced test set; ``majority`` becomes
    label 0 and ``minority`` label 1 (the protocol then removes minority candidates)."""
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels.numpy() == c)) for c in (majority, minority)]
    keep = min(len(m) for m in members) if per_class is None else per_class
    if min(len(m) for m in members) < keep or keep < 2:
        raise OptionError(f"classes {majority} and {minority} have {[len(m) for m in members]} examples; "
                          f"{keep} of each asked for")
    n_test = int(round(test_fraction * keep))
    train_idx = np.concatenate([m[:keep - n_test] for m in members])
    test_idx = np.concatenate([m[keep - n_test:keep] for m in members])
    binary = torch.full_like(labels, -1)
    binary[labels == majority], binary[labels == minority] = 0, 1

    def split(idx: np.ndarray) -> Split:
        idx_t = torch.from_numpy(np.sort(idx))
        return Split(x[idx_t], binary[idx_t], binary[idx_t].clone())

    return split(train_idx), split(test_idx)
