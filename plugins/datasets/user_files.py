"""``folder:PATH`` and ``npz:PATH``: train on your own images.

``--dataset folder:PATH`` reads torchvision's ImageFolder layout: ``PATH/<class>/<image>``
(the test split is a stratified ``dataset.test_fraction`` of each class, drawn with the data
seed), or ``PATH/train/<class>/...`` and ``PATH/test/<class>/...``. Class names are the
folder names, in sorted order. Images are decoded once (Pillow) into a uint8 cache under the
user cache dir, keyed by every file's path, size and modification time and the image size,
so later runs and epochs read arrays, never files. Every image must have one size unless
``--set dataset.image_size=S`` resizes them all to S x S; grayscale sets stay one channel.

``--dataset npz:PATH`` reads one ``.npz`` (never unpickled) with ``x_train``, ``y_train``,
``x_test``, ``y_test``: images as uint8 (N, H, W, C) or (N, H, W), or float32 inputs of any
shape (N, ...) used as they are; integer labels 0..C-1; optional ``class_names``.

Both keep the set's own class counts (the classification task's ``imbalance = "original"``)
unless ``--imbalance step|exp --ratio K`` subsamples them; the normalisation the model
applies is the training split's per-channel mean and std. Every problem with the files (an
empty class folder, an unreadable image, mixed sizes, a missing array) is one line.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from robx.core.data import Split, TaskData, user_cache_dir
from robx.core.errors import DataError, DataNotFoundError, OptionError
from robx.core.files import atomic_write
from robx.core.hookspecs import hookimpl
from robx.core.registry import RegisterDataset

#: what Pillow decodes that an image folder holds (anything else in a class folder is an error)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class FolderOptions:
    path: str = ""
    #: resize every image to image_size x image_size (needed when the images' sizes differ)
    image_size: Optional[int] = None
    #: the share of each class held out for testing when PATH has no train/ and test/
    test_fraction: float = 0.2


@dataclass
class NpzOptions:
    path: str = ""


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    return folders


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(f"{others[0]} is not an image ({', '.join(IMAGE_SUFFIXES)})")
    if not files:
        raise DataError(f"class folder {folder} holds no images")
    return files


def _decode(files: list[Path], image_size: Optional[int]) -> np.ndarray:
    """uint8 (N, C, H, W): one channel if every image is grayscale, else RGB."""
    from PIL import Image, UnidentifiedImageError

    images, sizes = [], {}
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                decoded = image.copy()
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
        if image_size is not None:
            decoded = decoded.resize((image_size, image_size), Image.Resampling.BILINEAR)
        sizes.setdefault(decoded.size, path)
        if len(sizes) > 1:
            (first, first_path), (second, second_path) = list(sizes.items())[:2]
            raise DataError(f"images differ in size ({first_path}: {first[0]}x{first[1]}, {second_path}: "
                            f"{second[0]}x{second[1]}); give --image-size S to resize them all to S x S")
        images.append(decoded)
    gray = all(image.mode in ("1", "L", "I", "I;16", "F") for image in images)
    arrays = [np.asarray(image.convert("L" if gray else "RGB"), dtype=np.uint8) for image in images]
    stacked = np.stack(arrays)
    return stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)


def _cache_key(files: list[Path], image_size: Optional[int]) -> str:
    hashed = hashlib.sha256(f"v1 {image_size}".encode())
    for path in files:
        stat = path.stat()
        hashed.update(f"\n{path} {stat.st_size} {stat.st_mtime_ns}".encode())
    return hashed.hexdigest()[:24]


def _decoded_once(files: list[Path], image_size: Optional[int]) -> np.ndarray:
    """The images as uint8 (N, C, H, W), decoded on the first run and read from the cache after."""
    cache = user_cache_dir() / "folders" / f"{_cache_key(files, image_size)}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache is decoded again and replaced
    images = _decode(files, image_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda handle: np.save(handle, images, allow_pickle=False))
    return images


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(torch.from_numpy(np.ascontiguousarray(images)), y, y)


def _held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified test mask: round(fraction x n_c) of each class (at least one of a class of
    two or more), drawn with the data seed."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        test[rng.choice(members, size=take, replace=False)] = True
    return test


def _with_statistics(name: str, classes: list[str], train: Split, test: Split) -> TaskData:
    """The training split's per-channel mean and std (unit scale), the normalisation the model applies."""
    x = train.x.float()
    if train.x.dtype == torch.uint8:
        x = x / 255.0
    channels = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() == 4 else x.reshape(1, -1)
    mean = tuple(channels.mean(dim=1).tolist())
    std = tuple(channels.std(dim=1).clamp(min=1e-3).tolist())
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if len(classes) < num_classes:
        raise DataError(f"{name}: labels go up to {num_classes - 1} but {len(classes)} classes are named")
    return TaskData(name, classes, train, test, mean, std)


def load_folder(data_root: str | None, seed: int, options: FolderOptions) -> TaskData:
    root = Path(options.path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    if options.image_size is not None and options.image_size < 1:
        raise OptionError(f"dataset.image_size must be >= 1, got {options.image_size}")
    if not 0 < options.test_fraction < 1:
        raise OptionError(f"dataset.test_fraction must be in (0, 1), got {options.test_fraction:g}")
    name = f"folder:{root}"
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [folder.name for folder in _class_folders(root / "train")]
        test_classes = [folder.name for folder in _class_folders(root / "test")]
        if test_classes != classes:
            raise DataError(f"{root}/train and {root}/test name other classes ({', '.join(classes)} vs "
                            f"{', '.join(test_classes)})")
        parts = []
        for split in ("train", "test"):
            files = [_image_files(root / split / c) for c in classes]
            labels = np.concatenate([np.full(len(f), c) for c, f in enumerate(files)])
            parts.append(_split(_decoded_once([p for f in files for p in f], options.image_size), labels))
        return _with_statistics(name, classes, parts[0], parts[1])
    classes = [folder.name for folder in _class_folders(root)]
    files = [_image_files(root / c) for c in classes]
    labels = np.concatenate([np.full(len(f), c) for c, f in enumerate(files)])
    images = _decoded_once([p for f in files for p in f], options.image_size)
    test = _held_out(labels, options.test_fraction, seed)
    if not test.any():
        raise DataError(f"{root}: every class has one image, so none can be held out for testing; add images or "
                        f"give {root}/train and {root}/test")
    return _with_statistics(name, classes, _split(images[~test], labels[~test]), _split(images[test], labels[test]))


def _npz_array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in data.files:
        raise DataError(f"{path} has no array '{key}' (it needs x_train, y_train, x_test, y_test)")
    return np.asarray(data[key])


def _npz_inputs(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if x.dtype == np.uint8:
        if x.ndim == 3:
            return torch.from_numpy(np.ascontiguousarray(x[:, None]))
        if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        raise DataError(f"{path}: uint8 {key} must be images (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    raise DataError(f"{path}: {key} must be uint8 images or float inputs, got {x.dtype}")


def _npz_labels(y: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,) or (y < 0).any():
        raise DataError(f"{path}: {key} must be {n} non-negative integer labels, got {y.dtype} {y.shape}")
    return y


def load_npz(data_root: str | None, seed: int, options: NpzOptions) -> TaskData:
    path = Path(options.path)
    if not path.is_file():
        raise DataNotFoundError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: _npz_array(data, key, path) for key in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(c) for c in np.asarray(data["class_names"])] if "class_names" in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation) as error:
        raise DataError(f"{path} is not a readable npz: {error}") from error
    splits = []
    for split in ("train", "test"):
        x = _npz_inputs(arrays[f"x_{split}"], f"x_{split}", path)
        y = _npz_labels(arrays[f"y_{split}"], len(x), f"y_{split}", path)
        splits.append(Split(x, torch.from_numpy(y.astype(np.int64)), torch.from_numpy(y.astype(np.int64))))
    if splits[0].x.shape[1:] != splits[1].x.shape[1:]:
        raise DataError(f"{path}: x_train and x_test differ in shape ({tuple(splits[0].x.shape[1:])} vs "
                        f"{tuple(splits[1].x.shape[1:])})")
    num_classes = int(max(splits[0].labels.max(), splits[1].labels.max())) + 1
    return _with_statistics(f"npz:{path}", names or [str(c) for c in range(num_classes)], *splits)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    # the classification task gives the rest (its own class counts, PGD-AT at 8/255, ...)
    register("folder", load_folder, task="classification", options=FolderOptions, defaults={"model": "smallcnn"})
    register("npz", load_npz, task="classification", options=NpzOptions, defaults={"model": "smallcnn"})
