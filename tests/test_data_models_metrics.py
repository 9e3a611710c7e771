"""Data (imbalance, splits, loading), models and summary metrics."""

from __future__ import annotations

import pytest
import torch

from robx.core import data as data_module
from robx.core.data import (crop_flip, imbalanced_class_sizes, per_class_subset, prepare_data,
                            stratified_split, stratified_subset)
from robx.core.errors import DataNotFoundError, OptionError
from robx.core.metrics import majority_classes, summarize
from robx.core.models import MODELS, build_model


def test_step_and_exp_imbalance_sizes():
    assert imbalanced_class_sizes(10, "step", 10, 1000) == [1000] * 5 + [100] * 5
    exp = imbalanced_class_sizes(10, "exp", 100, 1000)
    assert exp[0] == 1000 and exp[-1] == 10 and exp == sorted(exp, reverse=True)
    assert imbalanced_class_sizes(4, "none", 10, 7) == [7] * 4
    with pytest.raises(OptionError):
        imbalanced_class_sizes(4, "zipf", 10, 7)


def test_subsets_are_seeded_and_sized():
    y = torch.arange(10).repeat_interleave(50)
    a = per_class_subset(y, [50, 5] * 5, seed=3)
    assert torch.equal(a, per_class_subset(y, [50, 5] * 5, seed=3))
    assert not torch.equal(a, per_class_subset(y, [50, 5] * 5, seed=4))
    assert torch.bincount(y[a]).tolist() == [50, 5] * 5
    with pytest.raises(OptionError, match="fewer"):
        per_class_subset(y, [51] * 10, seed=0)


def test_stratified_split_keeps_every_class():
    y = torch.tensor([0] * 100 + [1] * 10 + [2] * 2)
    kept, held = stratified_split(y, 0.1, seed=0)
    assert torch.bincount(y[held]).tolist() == [10, 1, 1]
    assert len(set(kept.tolist()) & set(held.tolist())) == 0 and len(kept) + len(held) == len(y)
    assert torch.bincount(y[stratified_subset(y, 56, 0)]).tolist() == [50, 5, 1]


def test_digits_protocol():
    data = prepare_data("digits", "step", 10, None, None, 0.0, 0)
    assert data.class_counts() == [131] * 5 + [13] * 5
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert len(data.y_test) == 450 and data.x_train.shape[1:] == (1, 8, 8)


def test_missing_cifar_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBX_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data_module, "data_roots", lambda explicit=None: [tmp_path / "nowhere"])
    monkeypatch.setattr(data_module, "user_cache_dir", lambda: tmp_path / "cache")

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no network")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataNotFoundError, match="nowhere/cifar10/train.npz; torchvision .* in .*cache"):
        data_module.load_cifar("cifar10")


def test_cifar10_from_shared_npz():
    roots = [r for r in data_module.data_roots() if (r / "cifar10" / "train.npz").exists()]
    if not roots:
        pytest.skip("CIFAR-10 npz not found under ROBX_DATA or ../shared/data")
    data = prepare_data("cifar10", "step", 10, 100, 20, 0.0, 0)
    assert data.class_counts() == [100] * 5 + [10] * 5
    assert torch.bincount(data.y_test).tolist() == [20] * 10
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (3, 32, 32)
    assert data.classes[0] == "airplane"


def test_crop_flip_is_per_sample_and_keeps_shape():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = crop_flip(x)
    assert out.shape == x.shape
    unchanged = [(out[i] == x[i]).all().item() or (out[i] == x[i].flip(2)).all().item() for i in range(64)]
    assert 0 < sum(unchanged) < 64  # some samples keep position, most are shifted


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_return_features_and_logits(name):
    channels, size = (1, 8) if name.startswith("smallcnn") else (3, 32)
    model = build_model(name, channels, 10, (0.5,) * channels, (0.25,) * channels).eval()
    with torch.no_grad():
        features, logits = model(torch.rand(2, channels, size, size))
    assert logits.shape == (2, 10) and features.shape == (2, model.feature_dim)


def test_summary_metrics():
    per_class = [0.9, 0.8, 0.3, 0.1]
    counts = [100, 100, 10, 10]
    assert majority_classes(counts) == [0, 1]
    summary = summarize(per_class, counts)
    assert summary["overall"] == pytest.approx(0.525)
    assert summary["majority"] == pytest.approx(0.85) and summary["minority"] == pytest.approx(0.2)
    assert summary["worst"] == pytest.approx(0.1) and summary["disparity"] == pytest.approx(0.65)
    assert majority_classes([5, 5, 5]) == [0]  # balanced and odd: the first half
