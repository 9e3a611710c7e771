"""Data (imbalance, splits, loading), models and summary metrics."""

from __future__ import annotations

import pytest
import torch

from robx.core import data as data_module
from robx.core.data import apply_protocol, imbalanced_class_sizes, per_class_subset, stratified_split, stratified_subset
from robx.core.errors import DataNotFoundError, OptionError
from robx.core.metrics import majority_classes, summarize
from robx.core.registry import registry, resolved_config
from robx.core.task import ModelInput
from robx.plugins.datasets import cifar as cifar_module
from robx.plugins.tasks.classification import crop_flip


def prepare_data(name, imbalance, ratio, n_max, n_test_per_class, val_fraction, seed):
    """A registered dataset after the protocol, as the engine builds it."""
    data = registry().dataset(name).load(None, seed)
    return apply_protocol(data, imbalance, ratio, n_max, n_test_per_class, val_fraction, seed, per_target=False)


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
    assert torch.bincount(y[stratified_subset(y, 56, 0, per_target=False)]).tolist() == [50, 5, 1]


def test_digits_protocol():
    data = prepare_data("digits", "step", 10, None, None, 0.0, 0)
    assert data.class_counts() == [131] * 5 + [13] * 5
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1
    assert len(data.test) == 450 and data.train.x.shape[1:] == (1, 8, 8)
    assert torch.equal(data.train.labels, data.train.y)  # classification: the labels are the targets


def test_missing_cifar_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBX_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(cifar_module, "data_roots", lambda explicit=None: [tmp_path / "nowhere"])
    monkeypatch.setattr(cifar_module, "user_cache_dir", lambda: tmp_path / "cache")

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no network")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataNotFoundError, match="nowhere/cifar10/train.npz; torchvision .* in .*cache"):
        cifar_module.load_cifar("cifar10")


def test_cifar10_from_shared_npz():
    roots = [r for r in data_module.data_roots() if (r / "cifar10" / "train.npz").exists()]
    if not roots:
        pytest.skip("CIFAR-10 npz not found under ROBX_DATA or ../shared/data")
    data = prepare_data("cifar10", "step", 10, 100, 20, 0.0, 0)
    assert data.class_counts() == [100] * 5 + [10] * 5
    assert torch.bincount(data.test.labels).tolist() == [20] * 10
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape[1:] == (3, 32, 32)
    assert data.classes[0] == "airplane"


def test_crop_flip_is_per_sample_and_keeps_shape():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = crop_flip(x)
    assert out.shape == x.shape
    unchanged = [(out[i] == x[i]).all().item() or (out[i] == x[i].flip(2)).all().item() for i in range(64)]
    assert 0 < sum(unchanged) < 64  # some samples keep position, most are shifted


def test_the_reflect_crop_is_torchvision_s_reflect_padding_then_a_window():
    """CFA's authors crop with RandomCrop(32, padding=4, padding_mode="reflect"): the padded
    image mirrors its border without repeating the edge pixel (row -1 is row 1). Each output
    is a 4 x 4 window of that padding by hand (or its mirror image), and no zero comes in."""
    import numpy as np
    import torchvision.transforms.functional as TF

    torch.manual_seed(1)
    x = torch.rand(32, 1, 4, 4) + 0.5  # no zeros: a zero in the output would come from zero padding
    out = crop_flip(x, padding=2, mode="reflect")
    assert float(out.min()) >= 0.5
    for image, result in zip(x, out):
        padded = torch.from_numpy(np.pad(image.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect"))
        assert torch.equal(padded, TF.pad(image, [2], padding_mode="reflect"))  # numpy's reflect is torchvision's
        windows = [padded[:, top:top + 4, left:left + 4] for top in range(5) for left in range(5)]
        assert any(torch.equal(result, w) or torch.equal(result, w.flip(2)) for w in windows)
    assert float(crop_flip(x, padding=2).min()) == 0.0  # zero padding, as before


# graph inputs: test_crime; families named by an argument (torchvision:ARCH): test_own_model
@pytest.mark.parametrize("name", sorted(m for m, spec in registry().models.items()
                                        if not m.startswith("stgnn") and not spec.takes_argument))
def test_models_return_features_and_outputs(name):
    channels, size = (1, 8) if name.startswith(("smallcnn", "mlp")) else (3, 32)
    spec = ModelInput((channels, size, size), 10, (0.5,) * channels, (0.25,) * channels)
    model = registry().build_model(name, spec).eval()
    with torch.no_grad():
        features, logits = model(torch.rand(2, channels, size, size))
    assert logits.shape == (2, 10) and features.shape == (2, model.feature_dim)


def test_image_models_refuse_vector_inputs_with_one_line():
    with pytest.raises(OptionError, match=r"smallcnn needs image inputs \(channels, height, width\), got shape \(8,\)"):
        registry().build_model("smallcnn", ModelInput((8,), 1, (0.5,) * 8, (0.3,) * 8))


def test_original_imbalance_keeps_every_training_example():
    data = prepare_data("synthetic", "original", 1.0, None, None, 0.0, 0)
    assert len(data.train) == 1200 and data.class_counts()[0] > 2 * data.class_counts()[1]  # zero-inflated
    balanced = prepare_data("synthetic", "none", 1.0, None, None, 0.0, 0)
    assert balanced.class_counts() == [data.class_counts()[1]] * 2  # 'none': every class at the smallest size


def test_summary_metrics():
    per_class = [0.9, 0.8, 0.3, 0.1]
    counts = [100, 100, 10, 10]
    assert majority_classes(counts) == [0, 1]
    summary = summarize(per_class, counts)
    assert summary["overall"] == pytest.approx(0.525)
    assert summary["majority"] == pytest.approx(0.85) and summary["minority"] == pytest.approx(0.2)
    assert summary["worst"] == pytest.approx(0.1) and summary["disparity"] == pytest.approx(0.65)
    assert majority_classes([5, 5, 5]) == [0]  # balanced and odd: the first half
    errors = summarize([0.1, 0.2, 0.9, 1.1], counts, higher_is_better=False)  # an error metric
    assert errors["worst"] == pytest.approx(1.1) and errors["disparity"] == pytest.approx(1.0 - 0.15)


def test_imbalance_none_from_a_file_means_balanced_not_the_dataset_default(tmp_path):
    """'none' is a value of `imbalance`, not the empty value (a coercion once read it as None,
    so the dataset's default, Step-10, silently replaced a balanced protocol)."""
    from robx.core.config import TrainConfig, load_toml

    (tmp_path / "fair.toml").write_text('dataset = "digits"\nimbalance = "none"\nn_max = 13\n')
    config = resolved_config(TrainConfig.from_dict(load_toml(tmp_path / "fair.toml")))
    assert config.imbalance == "none"
    data = prepare_data(config.dataset, config.imbalance, config.ratio, config.n_max, None, 0.0, 0)
    assert data.class_counts() == [13] * 10
    assert TrainConfig.from_dict({"n_test_per_class": "none"}).n_test_per_class is None  # the empty value


# --------------------------------------------------------------------------- labels per target


def test_labels_per_target_count_and_score_every_target_once():
    """An example with several targets may label each (a crime grid: zero / non-zero per cell)."""
    from robx.core.data import Split, TaskData
    from robx.core.evaluate import EvalResult
    from robx.plugins.tasks.regression import Regression

    class GridRegression(Regression):
        def scores(self, outputs, targets):
            return (outputs - targets).abs()

    y = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])  # two examples of three targets
    labels = (y > 0).long()
    data = TaskData("grid", ["zero", "non-zero"], Split(torch.zeros(2, 4), y, labels), Split(torch.zeros(2, 4), y, labels))
    assert data.class_counts() == [4, 2]
    outputs = torch.tensor([[0.5, 1.0, 0.0], [4.0, 1.0, 0.0]])
    # by hand: zero targets have errors 0.5, 0, 1, 0 -> 0.375; non-zero targets 1 and 3 -> 2
    tracker = GridRegression(data).statistics(torch.device("cpu"))
    tracker.update(labels, y, clean_outputs=outputs)
    stats = tracker.result()
    assert stats.counts.tolist() == [4, 2] and stats.clean.tolist() == pytest.approx([0.375, 2.0])
    clean, robust, counts = EvalResult(labels, (outputs - y).abs(), torch.zeros(2, 3)).per_class(2)
    assert clean == pytest.approx([0.375, 2.0]) and robust == [0.0, 0.0] and counts == [4, 2]

    assert apply_protocol(data, "original", 1.0, None, None, 0.0, 0, per_target=True) is data  # its own splits
    for asked, named in ((("step", 10.0, None, None, 0.0), "imbalance=step"),
                         (("original", 1.0, None, 50, 0.0), "n_test_per_class=50"),
                         (("original", 1.0, None, None, 0.2), "val_fraction=0.2")):
        with pytest.raises(OptionError, match=f"labels every target, so it keeps its own splits; drop {named}"):
            apply_protocol(data, *asked, 0, per_target=True)
    assert stratified_subset(torch.zeros(10, 3, dtype=torch.long), 4, seed=1, per_target=True).unique().numel() == 4


def test_a_dataset_declares_its_own_options(tmp_path):
    """``--set dataset.KEY=VALUE`` (TOML: [dataset_options]) reaches a loader registered with options."""
    from dataclasses import dataclass

    from robx.core.config import load_toml
    from robx.core.errors import PluginError
    from robx.core.registry import Registry

    @dataclass
    class Window:
        history: int = 30

    seen = []
    found = Registry()
    found.add_dataset("test", "windows", lambda root, seed, options: seen.append(options.history), task="regression",
                      options=Window)
    found.add_dataset("test", "plain", lambda root, seed: seen.append("plain"), task="regression")
    found.datasets["windows"].read(None, 0, {"history": "14"})
    found.datasets["windows"].read(None, 0)
    found.datasets["plain"].read(None, 0)
    assert seen == [14, 30, "plain"]
    with pytest.raises(OptionError, match=r"unknown option 'dataset.days'; valid: dataset.history"):
        found.datasets["windows"].read(None, 0, {"days": 3})
    with pytest.raises(OptionError, match=r"option 'dataset.history' expects int, got 'long'"):
        found.datasets["windows"].read(None, 0, {"history": "long"})
    with pytest.raises(OptionError, match=r"dataset 'plain' takes no options \(got history\)"):
        found.datasets["plain"].read(None, 0, {"history": 3})
    with pytest.raises(PluginError, match="give a dataclass"):
        found.add_dataset("test", "bad", lambda root, seed, options: None, task="regression", options=dict)
    path = tmp_path / "run.toml"
    path.write_text('dataset = "windows"\n[dataset_options]\nhistory = 7\n[srat]\nlam = 0.5\n')
    assert load_toml(path)["dataset_options"] == {"history": 7}
    assert load_toml(path)["plugin_options"] == {"srat": {"lam": 0.5}}
