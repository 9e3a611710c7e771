"""Your own data: ``--dataset folder:PATH`` (an ImageFolder tree the test writes) and
``--dataset npz:PATH``; every problem with the files is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

QUICK = ["--epochs", "1", "--steps", "1", "--eval-steps", "1", "--batch-size", "8"]


def write_images(folder: Path, count: int, color: tuple[int, int, int], size: int = 8, mode: str = "RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.zeros((size, size, 3), dtype=np.uint8)
        pixels[...] = color
        pixels[i % size, :, :] = 255 - np.array(color, dtype=np.uint8)  # a row that tells images apart
        PIL.fromarray(pixels).convert(mode).save(folder / f"{i:03d}.png")


@pytest.fixture
def pets(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "pets"
    write_images(root / "cat", 12, (200, 40, 40))
    write_images(root / "dog", 4, (40, 40, 200))
    return root


def load(name: str, **options):
    from robx.core.registry import registry

    return registry().dataset(name).read(None, 0, options)


def test_a_folder_trains_with_its_class_names_and_its_own_counts(robx_here, pets, tmp_path):
    result = robx_here("train", "--dataset", f"folder:{pets}", *QUICK, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_names"] == ["cat", "dog"]
    # test_fraction 0.2 per class: cat round(2.4) = 2 held out of 12, dog round(0.8) = 1 of 4
    assert report["class_counts"] == [10, 3] and report["n_test"] == 3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["dataset"] == f"folder:{pets.resolve()}"  # absolute: a resume finds it from anywhere


def test_the_folder_is_decoded_once_and_normalised_by_its_training_split(pets, monkeypatch):
    import robx.plugins.datasets.user_files as user_files

    first = load(f"folder:{pets}")
    assert first.train.x.dtype == torch.uint8 and tuple(first.train.x.shape[1:]) == (3, 8, 8)
    train = first.train.x.double().numpy() / 255  # the mean and std by hand, per channel
    assert first.mean == pytest.approx(tuple(train.mean(axis=(0, 2, 3))), abs=1e-6)
    assert first.std == pytest.approx(tuple(train.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1, ddof=1)), abs=1e-5)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(user_files, "_decode", no_decoding)
    again = load(f"folder:{pets}")
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.labels, first.test.labels)


def test_train_and_test_subfolders_and_resizing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "split"
    write_images(root / "train" / "a", 5, (10, 10, 10), size=8, mode="L")
    write_images(root / "train" / "b", 2, (240, 240, 240), size=12, mode="L")
    write_images(root / "test" / "a", 3, (10, 10, 10), size=8, mode="L")
    write_images(root / "test" / "b", 3, (240, 240, 240), size=8, mode="L")
    data = load(f"folder:{root}", image_size=6)
    assert tuple(data.train.x.shape) == (7, 1, 6, 6) and tuple(data.test.x.shape) == (6, 1, 6, 6)
    assert data.train.labels.tolist() == [0] * 5 + [1] * 2 and data.classes == ["a", "b"]


def _empty_class(root: Path) -> None:
    for image in (root / "dog").iterdir():
        image.unlink()


def _no_class_folders(root: Path) -> None:
    for name in ("cat", "dog"):
        (root / name).rename(root.parent / f"moved-{name}")


@pytest.mark.parametrize("damage, message", [
    (_empty_class, "holds no images"),
    (lambda root: (root / "dog" / "bad.png").write_bytes(b"not an image"), "cannot read image"),
    (lambda root: write_images(root / "dog", 1, (0, 0, 0), size=9), "images differ in size"),
    (_no_class_folders, "has no class folders"),
], ids=["empty-class", "unreadable", "mixed-sizes", "no-classes"])
def test_a_bad_folder_is_one_line_and_exit_2(robx_here, pets, tmp_path, damage, message):
    damage(pets)
    result = robx_here("train", "--dataset", f"folder:{pets}", *QUICK, "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_an_npz_file_trains_and_a_bad_one_is_one_line(robx_here, tmp_path):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), y_train=np.array([0] * 24 + [1] * 6),
                  x_test=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8), y_test=np.array([0, 1] * 5),
                  class_names=np.array(["ok", "defect"]))
    np.savez(tmp_path / "parts.npz", **arrays)
    result = robx_here("train", "--dataset", f"npz:{tmp_path / 'parts.npz'}", *QUICK, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_names"] == ["ok", "defect"] and report["class_counts"] == [24, 6]
    del arrays["y_test"]
    np.savez(tmp_path / "broken.npz", **arrays)
    broken = robx_here("train", "--dataset", f"npz:{tmp_path / 'broken.npz'}", *QUICK, "--out", tmp_path / "r2")
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines() == [
        f"robx: error: {tmp_path / 'broken.npz'} has no array 'y_test' (it needs x_train, y_train, x_test, y_test)"]
    missing = robx_here("train", "--dataset", "digits:somewhere", "--out", tmp_path / "r3")
    assert missing.returncode == 2 and "dataset 'digits' reads no files of yours" in missing.stderr


def test_image_size_resizes_a_folder_of_mixed_sizes(robx_here, pets, tmp_path):
    write_images(pets / "dog", 1, (0, 0, 0), size=9)  # one 9x9 among 8x8 images
    result = robx_here("train", "--dataset", f"folder:{pets}", "--image-size", "6", *QUICK, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["dataset_options"] == {"image_size": 6}
    refused = robx_here("train", "--image-size", "6", "--out", tmp_path / "digits")
    assert refused.returncode == 2 and "dataset 'digits' takes no options (got image_size)" in refused.stderr
