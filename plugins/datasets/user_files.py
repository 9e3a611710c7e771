"""``folder:PATH`` and ``npz:PATH``: train on your own images.

``--dataset folder:PATH`` reads torchvision's ImageFolder layout: ``PATH/<class>/<image>``
(the test split is a stratified ``dataset.test_fraction`` of each class, drawn with the data
seed), or ``PATH/train/<class>/...`` and ``PATH/test/<class>/...``. Class names are the
folder names, in sorted order. Images are decoded once (Pillow) into a uint8 cache under the
user cache dir, keyed by every file's path, size and modification time and the image size,
so later runs and epochs read arrays, never files. Every image must have one size unless
``--set dataset.image_size=S`` resizes them all to S x S; grayscale sets stay one channel.
Decoding follows the image's mode: 16-bit and 32-bit grayscale are scaled to 8 bits (not
clipped), palette images become RGB, and a transparent image is composited over black.
Hidden entries, files that are not images, broken links and links that leave PATH are
skipped, all of them named in one warning line.

``--dataset npz:PATH`` reads one ``.npz`` (never unpickled) with ``x_train``, ``y_train``,
``x_test``, ``y_test``: images as uint8 (N, H, W, C) or (N, H, W), or float inputs of any
shape (N, ...) used as they are; integer labels 0..C-1 (C: the optional ``class_names``, else
the number of distinct labels).

Both keep the set's own class counts (the classification task's ``imbalance = "original"``)
unless ``--imbalance step|exp --ratio K`` subsamples them; the normalisation the model
applies is the training split's per-channel mean and std. Both record a fingerprint of their
files (folder: per class, the count and a digest of names, sizes and modification times;
npz: the file's size and SHA-256), so a resumed or re-evaluated run refuses changed data.
Every problem with the files (an empty class folder, an unreadable image, mixed sizes, a
missing array, labels outside 0..C-1) is one line, checked before anything is sized by it.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from robx import (DataError, DataNotFoundError, OptionError, RegisterDataset, RobxError, Split, TaskData, WriteError,
                  atomic_write, first_line, hookimpl, user_cache_dir, warn)

#: what Pillow decodes that an image folder holds (anything else in a class folder is skipped)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: the largest --image-size: 4096 x 4096 RGB is 48 MiB an image
MAX_IMAGE_SIZE = 4096
#: the most pixels one image may have (Pillow's own decompression-bomb threshold, 89.5 million)
MAX_PIXELS = 89_478_485
#: the share of the machine's memory the decoded images may take
MEMORY_SHARE = 0.5
#: Pillow modes decoded as one grey channel
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


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


# ---------------------------------------------------------------------------
# the folder's entries
# ---------------------------------------------------------------------------


class Entries:
    """The usable entries under a folder root, and those skipped with why (named in one warning)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.skipped: list[str] = []

    def usable(self, path: Path, want_dir: bool) -> bool:
        """Whether ``path`` is a visible directory (``want_dir``) or image file inside the root;
        a skipped one is noted."""
        name = str(path.relative_to(self.root))
        reason = None
        if path.name.startswith("."):
            reason = "hidden"
        elif path.is_symlink() and not path.exists():
            reason = "broken link"
        elif path.is_symlink() and not path.resolve().is_relative_to(self.real_root):
            reason = f"link leaving {self.root}"
        elif want_dir and not path.is_dir():
            reason = "not a class folder"
        elif not want_dir and path.is_dir():
            reason = "a folder inside a class folder"
        elif not want_dir and path.suffix.lower() not in IMAGE_SUFFIXES:
            reason = "not an image"
        elif not want_dir and not path.is_file():
            reason = "not a regular file"
        if reason is not None:
            self.skipped.append(f"'{name}' ({reason})")
        return reason is None

    def class_folders(self, parent: Path) -> list[Path]:
        folders = [p for p in sorted(parent.iterdir()) if self.usable(p, want_dir=True)]
        if not folders:
            raise DataError(f"{parent} has no class folders (expected {parent}/<class>/<image>)")
        return folders

    def images(self, folder: Path) -> list[Path]:
        files = [p for p in sorted(folder.iterdir()) if self.usable(p, want_dir=False)]
        if not files:
            raise DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files

    def report(self) -> None:
        if self.skipped:
            shown = "; ".join(self.skipped[:6]) + (f"; and {len(self.skipped) - 6} more" if len(self.skipped) > 6
                                                   else "")
            warn(f"skipped {len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'} of {self.root}: {shown}")


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------


def _eight_bit(image: Any) -> Any:
    """The image as 8-bit ``L`` or ``RGB``, by its mode: 16/32-bit grey scaled (not clipped),
    float grey in [0, 1] scaled, palette expanded, transparency composited over black."""
    from PIL import Image

    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        if mode.startswith("I;16") or (mode == "I" and top > 255):
            values = values / 257.0  # 65535 -> 255
        elif mode == "F" and top <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        pixels = np.asarray(image.convert("RGBA" if mode.startswith("RGB") else "LA"), dtype=np.float64)
        colour, alpha = pixels[..., :-1], pixels[..., -1:] / 255.0
        composed = np.rint(colour * alpha).astype(np.uint8)
        return Image.fromarray(composed[..., 0], "L") if mode.startswith("L") else Image.fromarray(composed, "RGB")
    if mode in ("L", "RGB"):
        return image
    return image.convert("L" if mode == "1" else "RGB")


def _open_image(path: Path, image_size: Optional[int]) -> tuple[Any, bool]:
    """(the decoded 8-bit image, whether it was grey), or one :class:`DataError` line."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below says it
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"image {path} has {width} x {height} pixels, more than robx decodes "
                                    f"({MAX_PIXELS:,}, Pillow's guard against decompression bombs); shrink it or "
                                    "move it out of the folder")
                gray = image.mode in GRAY_MODES
                image.load()
                decoded = _eight_bit(image)
    except RobxError:
        raise
    except Image.DecompressionBombError as error:  # over twice Pillow's limit: refused while opening
        raise DataError(f"image {path} has more pixels than robx decodes ({MAX_PIXELS:,}, Pillow's guard against "
                        f"decompression bombs: {first_line(error, 80)}); shrink it or move it out of the folder") \
            from error
    except Exception as error:  # OSError, UnidentifiedImageError, a broken codec
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    if image_size is not None:
        decoded = decoded.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return decoded, gray


def _decode(files: list[Path], image_size: Optional[int]) -> np.ndarray:
    """uint8 (N, C, H, W): one channel if every image is grayscale, else RGB."""
    images, grays, sizes = [], [], {}
    for path in files:
        decoded, gray = _open_image(path, image_size)
        sizes.setdefault(decoded.size, path)
        if len(sizes) > 1:
            (first, first_path), (second, second_path) = list(sizes.items())[:2]
            raise DataError(f"images differ in size ({first_path}: {first[0]}x{first[1]}, {second_path}: "
                            f"{second[0]}x{second[1]}); give --image-size S to resize them all to S x S")
        images.append(decoded)
        grays.append(gray)
    gray = all(grays)
    arrays = [np.asarray(image if gray or image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
              for image in images]
    stacked = np.stack(arrays)
    return stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)


def _check_memory(files: list[Path], image_size: Optional[int]) -> None:
    """Refuse, before decoding, a set whose decoded arrays would not fit in memory (the first
    image's size stands for all: they must share one, or be resized to image_size)."""
    from PIL import Image

    if image_size is not None:
        width = height = image_size
    else:
        try:
            with Image.open(files[0]) as image:
                width, height = image.size
        except Exception:
            return  # decoding names the unreadable file
    needed = len(files) * 3 * width * height
    try:
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if needed > MEMORY_SHARE * available:
        raise DataError(f"{len(files)} images of {width} x {height} pixels need {needed / 2**30:.1f} GiB decoded, more "
                        f"than half of this machine's {available / 2**30:.1f} GiB; give a smaller --image-size")


# ---------------------------------------------------------------------------
# the decoded-image cache
# ---------------------------------------------------------------------------


def _file_digest(files: list[Path]) -> str:
    hashed = hashlib.sha256()
    for path in files:
        stat = path.stat()
        hashed.update(f"\n{path} {stat.st_size} {stat.st_mtime_ns}".encode())
    return hashed.hexdigest()


def _cache_key(files: list[Path], image_size: Optional[int]) -> str:
    return hashlib.sha256(f"v2 {image_size} {_file_digest(files)}".encode()).hexdigest()[:24]


def _cached(cache: Path, count: int, image_size: Optional[int]) -> np.ndarray | None:
    """The cached images when the file holds what it must: uint8 (count, 1 or 3, H, W), square
    when resized; None for a missing, damaged or foreign file (it is decoded again)."""
    if not cache.is_file():
        return None
    try:
        images = np.load(cache, allow_pickle=False)
    except Exception:  # empty, truncated, not an npy file
        return None
    fits = (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[0] == count and images.shape[1] in (1, 3)
            and (image_size is None or images.shape[2:] == (image_size, image_size)))
    return images if fits else None


def _decoded_once(files: list[Path], image_size: Optional[int]) -> np.ndarray:
    """The images as uint8 (N, C, H, W), decoded on the first run and read from the cache after.
    A damaged cache file is decoded again and replaced; a cache directory that cannot be used
    means no cache (one warning line), never a failure."""
    folder = user_cache_dir() / "folders"
    cache = folder / f"{_cache_key(files, image_size)}.npy"
    images = _cached(cache, len(files), image_size)
    if images is not None:
        return images
    _check_memory(files, image_size)
    images = _decode(files, image_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda handle: np.save(handle, images, allow_pickle=False))
    except (OSError, WriteError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        warn(f"cannot cache the decoded images in {folder} ({reason}); they are decoded again on every run")
    return images


# ---------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------


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


def _with_statistics(name: str, classes: list[str], train: Split, test: Split,
                     fingerprint: dict[str, str]) -> TaskData:
    """The training split's per-channel mean and std (unit scale), the normalisation the model applies."""
    x = train.x.float()
    if train.x.dtype == torch.uint8:
        x = x / 255.0
    channels = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() == 4 else x.reshape(1, -1)
    mean = tuple(channels.mean(dim=1).tolist())
    std = tuple(channels.std(dim=1).nan_to_num(1.0).clamp(min=1e-3).tolist())
    return TaskData(name, classes, train, test, mean, std, fingerprint=fingerprint)


def _folder_fingerprint(groups: dict[str, list[Path]], image_size: Optional[int]) -> dict[str, str]:
    """Per class folder, its number of images and a digest of their names, sizes and times."""
    return {"image size": str(image_size or "as stored"),
            **{f"class folder '{group}'": f"{len(files)} images [{_file_digest(files)[:12]}]"
               for group, files in groups.items()}}


def load_folder(data_root: str | None, seed: int, options: FolderOptions) -> TaskData:
    root = Path(options.path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    if options.image_size is not None and not 1 <= options.image_size <= MAX_IMAGE_SIZE:
        raise OptionError(f"dataset.image_size (--image-size) must be in 1..{MAX_IMAGE_SIZE}, got {options.image_size}")
    if not 0 < options.test_fraction < 1:
        raise OptionError(f"dataset.test_fraction must be in (0, 1), got {options.test_fraction:g}")
    name = f"folder:{root}"
    entries = Entries(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [folder.name for folder in entries.class_folders(root / "train")]
        test_classes = [folder.name for folder in entries.class_folders(root / "test")]
        if test_classes != classes:
            raise DataError(f"{root}/train and {root}/test name other classes ({', '.join(classes)} vs "
                            f"{', '.join(test_classes)})")
        groups = {f"{split}/{c}": entries.images(root / split / c) for split in ("train", "test") for c in classes}
        entries.report()
        parts = []
        for split in ("train", "test"):
            files = [groups[f"{split}/{c}"] for c in classes]
            labels = np.concatenate([np.full(len(f), c) for c, f in enumerate(files)])
            parts.append(_split(_decoded_once([p for f in files for p in f], options.image_size), labels))
        return _with_statistics(name, classes, parts[0], parts[1], _folder_fingerprint(groups, options.image_size))
    classes = [folder.name for folder in entries.class_folders(root)]
    if len(classes) < 2:  # before any decoding (the same rule holds for every dataset: robx.core.data)
        raise DataError(f"dataset '{name}' has 1 class ('{classes[0]}'); robx compares classes, so it needs at "
                        "least two")
    groups = {c: entries.images(root / c) for c in classes}
    entries.report()
    files = list(groups.values())
    labels = np.concatenate([np.full(len(f), c) for c, f in enumerate(files)])
    images = _decoded_once([p for f in files for p in f], options.image_size)
    test = _held_out(labels, options.test_fraction, seed)
    if not test.any():
        raise DataError(f"{root}: every class has one image, so none can be held out for testing; add images or "
                        f"give {root}/train and {root}/test")
    return _with_statistics(name, classes, _split(images[~test], labels[~test]), _split(images[test], labels[test]),
                            _folder_fingerprint(groups, options.image_size))


# ---------------------------------------------------------------------------
# npz files
# ---------------------------------------------------------------------------


def _npz_array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in data.files:
        raise DataError(f"{path} has no array '{key}' (it needs x_train, y_train, x_test, y_test)")
    return np.asarray(data[key])


def _npz_inputs(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{path}: {key} holds no examples (shape {x.shape})")
    if x.dtype == np.uint8:
        if x.ndim == 3:
            return torch.from_numpy(np.ascontiguousarray(x[:, None]))
        if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        raise DataError(f"{path}: uint8 {key} must be images (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):
            inputs = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(inputs).all():
            raise DataError(f"{path}: {key} holds values that are NaN, infinite or beyond float32's range (3.4e38)")
        return torch.from_numpy(inputs)
    raise DataError(f"{path}: {key} must be uint8 images or float inputs, got {x.dtype}")


def _npz_labels(arrays: dict[str, np.ndarray], lengths: dict[str, int], names: list[str] | None,
                path: Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The class names and both splits' labels, checked before anything is sized by them:
    integers in 0..C-1, C the number of class_names or else of distinct labels."""
    for key, n in lengths.items():
        y = arrays[key]
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
            raise DataError(f"{path}: {key} must be {n} integer labels, one per example, got {y.dtype} {y.shape}")
        if n and y.min() < 0:
            raise DataError(f"{path}: {key} holds the label {y.min()}; labels are class indices 0..C-1")
    distinct = np.unique(np.concatenate([arrays[key].astype(np.uint64) for key in lengths]))
    count = len(names) if names is not None else len(distinct)
    high = int(distinct[-1])
    if high >= count:
        shown = ", ".join(str(v) for v in distinct[:6]) + (", ..." if len(distinct) > 6 else "")
        named = f"class_names names {count} classes" if names is not None else \
            f"there are {count} distinct labels ({shown})"
        raise DataError(f"{path}: a label is {high}, but {named}; labels must be 0..{count - 1}"
                        + ("" if names is not None else " (or give class_names to name the classes)"))
    classes = names if names is not None else [str(c) for c in range(count)]
    return classes, {key: torch.from_numpy(arrays[key].astype(np.int64)) for key in lengths}


def _sha256(path: Path) -> str:
    hashed = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hashed.update(block)
    return hashed.hexdigest()


def load_npz(data_root: str | None, seed: int, options: NpzOptions) -> TaskData:
    path = Path(options.path)
    if not path.is_file():
        raise DataNotFoundError(f"npz file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: _npz_array(data, key, path) for key in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(c) for c in np.asarray(data["class_names"]).ravel()] if "class_names" in data.files else None
    except RobxError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation) as error:
        raise DataError(f"{path} is not a readable npz: {error}") from error
    x = {split: _npz_inputs(arrays[f"x_{split}"], f"x_{split}", path) for split in ("train", "test")}
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise DataError(f"{path}: x_train and x_test differ in shape ({tuple(x['train'].shape[1:])} vs "
                        f"{tuple(x['test'].shape[1:])})")
    classes, y = _npz_labels(arrays, {f"y_{split}": len(x[split]) for split in ("train", "test")}, names, path)
    splits = [Split(x[split], y[f"y_{split}"], y[f"y_{split}"]) for split in ("train", "test")]
    fingerprint = {"file": f"{path.stat().st_size} bytes, SHA-256 {_sha256(path)[:16]}"}
    return _with_statistics(f"npz:{path}", classes, *splits, fingerprint=fingerprint)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    # the classification task gives the rest (its own class counts, PGD-AT at 8/255, ...)
    register("folder", load_folder, task="classification", options=FolderOptions, defaults={"model": "smallcnn"})
    register("npz", load_npz, task="classification", options=NpzOptions, defaults={"model": "smallcnn"})
