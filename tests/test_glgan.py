"""GL-GAN (dissertation ch. 2) and the oversampling machinery: losses against hand values,
SMOTE-in-latent geometry, the chapter's evaluation, the plugin inside adversarial training,
and one-line errors for data it cannot serve."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from robx.core.data import Split
from robx.core.engine import build_run, train
from robx.core.errors import OptionError, RobxError
from robx.core.hookspecs import hookimpl
from robx.plugins.oversampling import check_minority_neighbours
from robx.plugins.oversampling.evaluation import OversampleJob, interleaving_share, run_oversample
from robx.core.rundir import load_checkpoint
from robx.plugins.oversampling.glgan import brier, clustering_loss, latent_smote, least_squares_discriminator_loss

from conftest import tiny_config, train_killed_and_resumed

FAST = {"ae_epochs": 40, "gan_epochs": 2, "hidden": 32, "latent_dim": 8}


def test_clustering_loss_by_hand():
    # majority (0): (0,0), (2,0) -> mean (1,0), mean squared distance 1
    # minority (1): (0,4), (0,6) -> mean (0,5), mean squared distance 1
    # eq. 2.2 with lambda_1 = 2, lambda_2 = 0.5: 1 + 2 * 1 - 0.5 * ||(1,-5)||^2 = 3 - 13 = -10
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert clustering_loss(z, labels, majority=0, minority_weight=2.0, separation_weight=0.5).item() == pytest.approx(-10.0)
    # three classes: scatters 1 + 2 + 2 (third class at (10,0),(10,2): mean (10,1), scatter 1)
    # minus 0.5 x the mean of the pairs' squared mean distances (26, 82, 116) / 3
    z3 = torch.cat([z, torch.tensor([[10.0, 0.0], [10.0, 2.0]])])
    labels3 = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = 1 + 2 * 1 + 2 * 1 - 0.5 * (26 + 82 + 116) / 3
    assert clustering_loss(z3, labels3, 0, 2.0, 0.5).item() == pytest.approx(expected)


def test_least_squares_and_classifier_losses_by_hand():
    # eq. 2.4: ((1-1)^2 + (0.5-1)^2) / 2 + 2 * (0.2^2 + 0^2) / 2 = 0.125 + 0.04
    real, fake = torch.tensor([[1.0], [0.5]]), torch.tensor([[0.2], [0.0]])
    assert least_squares_discriminator_loss(real, fake, 2.0).item() == pytest.approx(0.165)
    # softmax(0, ln 3) = (0.25, 0.75); against class 1: 0.25^2 + 0.25^2
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert brier(logits, torch.tensor([1])).item() == pytest.approx(0.125)


def test_smote_in_latent_space_puts_points_on_segments_between_minority_neighbours():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (8, 3))]).astype(np.float32)
    labels = np.array([0] * 40 + [1] * 8)
    k = 3
    synthetic, synthetic_labels = latent_smote(z, labels, k, seed=0)
    assert len(synthetic) == 32 and (synthetic_labels == 1).all()
    minority = z[labels == 1]
    distances = np.linalg.norm(minority[:, None] - minority[None], axis=2)
    neighbours = np.argsort(distances, axis=1)[:, 1:k + 1]
    for point in synthetic:
        on_a_segment = False
        for i in range(len(minority)):
            for j in neighbours[i]:
                direction = minority[j] - minority[i]
                eta = float(np.dot(point - minority[i], direction) / np.dot(direction, direction))
                if -1e-5 <= eta <= 1 + 1e-5 and np.allclose(minority[i] + eta * direction, point, atol=1e-4):
                    on_a_segment = True
        assert on_a_segment, f"{point} lies on no segment between a minority latent and its {k} neighbours"


def test_interleaving_share_by_hand():
    real = np.array([[0.0], [1.0], [10.0]])
    real_y = np.array([0, 0, 1])
    synthetic = np.array([[9.0], [2.0], [6.0]])  # nearest: 10 (class 1), 1 (class 0), 10 (class 1)
    assert interleaving_share(real, real_y, synthetic, np.array([1, 1, 1])) == pytest.approx(1 / 3)
    assert interleaving_share(real, real_y, synthetic[:0], np.array([], dtype=int)) is None


def test_glgan_oversampling_is_balanced_keeps_the_originals_and_is_evaluated():
    report, arrays = run_oversample(OversampleJob("digits-binary", "glgan", seed=0, method_options=FAST,
                                                  classifiers=("linearsvc",)))
    majority, minority = report["train_counts"]
    assert (majority, minority) == (143, 7)  # 80 % of 179, and 1 in 20 of the minority candidates
    assert report["generated"] == majority - minority
    assert np.bincount(arrays["y"]).tolist() == [majority, majority]
    assert (arrays["y"][arrays["generated"]] == 1).all() and arrays["generated"].sum() == majority - minority
    assert arrays["x"].shape[1] == 64 and arrays["x"].min() >= 0 and arrays["x"].max() <= 1
    scores = report["classifiers"]["linearsvc"]
    assert 0 <= scores["macro_f1"] <= 1 and -1 <= scores["mcc"] <= 1 and 0 <= report["interleaving"] <= 1
    assert sum(report["test_counts"]) == 72 and report["test_counts"][0] == report["test_counts"][1]


def test_glgan_is_a_function_of_its_seed():
    x = np.random.default_rng(1).random((30, 5)).astype(np.float32)
    y = np.array([0] * 24 + [1] * 6)
    from robx.plugins.oversampling.glgan import GLGAN, GLGANOptions

    first = GLGAN(GLGANOptions(**FAST), seed=3).fit_resample(x, y)[0]
    torch.manual_seed(99)  # the global stream does not matter
    again = GLGAN(GLGANOptions(**FAST), seed=3).fit_resample(x, y)[0]
    other = GLGAN(GLGANOptions(**FAST), seed=4).fit_resample(x, y)[0]
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_data_it_cannot_serve_is_one_line():
    with pytest.raises(OptionError, match="one class only"):
        check_minority_neighbours(np.zeros(6, dtype=int), 5, "glgan")
    with pytest.raises(OptionError, match=r"class 1 has 3 training examples, but k_neighbors=5"):
        check_minority_neighbours(np.array([0] * 10 + [1] * 3), 5, "glgan")


def test_cli_oversample_bad_input_is_one_line_exit_2(robx_here, tmp_path):
    # ratio 48 keeps 2 minority candidates of 143: SMOTE's 5 neighbours cannot exist
    result = robx_here("oversample", "--method", "glgan", "--ratio", "48", "--out", tmp_path / "o")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "robx: error: glgan: class 1 has 2 training examples, but k_neighbors=5 needs more than that; "
        "lower glgan.k_neighbors"]
    assert not (tmp_path / "o").exists()
    for args, message in ((["--method", "nosuch"], "unknown oversampler 'nosuch'"),
                          (["--method", "smote", "--classifiers", "knn"], "unknown classifier 'knn'"),
                          (["--method", "smote", "--set", "glgan.k_neighbors=2"], "only smote.KEY or dataset.KEY")):
        result = robx_here("oversample", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr


def test_cli_oversample_writes_plain_arrays(robx_here, tmp_path):
    out = tmp_path / "smote"
    result = robx_here("oversample", "--method", "smote", "--dataset", "breast-cancer", "--classifiers", "linearsvc",
                       "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["train_counts"] == [170, 8] and report["generated"] == 162
    with np.load(out / "augmented.npz", allow_pickle=False) as arrays:
        assert arrays["x"].shape == (340, 30) and arrays["generated"].sum() == 162
    again = robx_here("oversample", "--method", "smote", "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_glgan_plugin_balances_a_run_and_composes_with_pgd(tmp_path):
    config = tiny_config(plugins=["glgan", "pgd"], plugin_options={"glgan": FAST}, epochs=1)
    run = build_run(config, tmp_path / "unused")
    counts = run.state.class_counts.tolist()
    assert len(set(counts)) == 1 and counts[0] == max(run.data.class_counts())  # every class at the majority's
    assert run.data.train.x.shape[1:] == (1, 8, 8) and run.data.train.x.dtype == torch.float32
    report = train(config, tmp_path / "run")
    # digits under Step-10: 131 training examples in each majority class, 13 in each minority one; the
    # report's majority / minority stay those of the real examples
    assert report["plugins"] == ["glgan", "pgd"] and report["trained_counts"] == [131] * 10
    assert report["class_counts"] == [131] * 5 + [13] * 5 and report["majority_classes"] == [0, 1, 2, 3, 4]


def test_glgan_run_resumes_bit_exactly(tmp_path, monkeypatch):
    config = tiny_config(plugins=["glgan"], plugin_options={"glgan": FAST}, epochs=2)
    straight, resumed = train_killed_and_resumed(config, tmp_path, monkeypatch, kill_in_epoch=1)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class Halves:
    """A test plugin: trains on the first half of the training split."""

    name = "halves"

    @hookimpl
    def training_set(self, state, train: Split) -> Split:
        keep = torch.arange(len(train)) % 2 == 0
        return train.subset(keep.nonzero().flatten())


class Reshapes:
    name = "reshapes"

    @hookimpl
    def training_set(self, state, train: Split) -> Split:
        return Split(train.x.flatten(1), train.y, train.labels)


def test_training_set_hook_replaces_the_split_and_is_checked(tmp_path, monkeypatch):
    from robx.core import discovery as plugin_module
    from robx.core.discovery import PluginSpec

    specs = dict(plugin_module.available_plugins())
    specs["halves"] = PluginSpec("halves", "test", Halves)
    specs["reshapes"] = PluginSpec("reshapes", "test", Reshapes)
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: specs)
    plain = build_run(tiny_config(), tmp_path / "a")
    halved = build_run(tiny_config(plugins=["halves"]), tmp_path / "b")
    assert len(halved.data.train) == (len(plain.data.train) + 1) // 2
    expected = torch.bincount(plain.data.train.labels[::2], minlength=10)
    assert torch.equal(halved.state.class_counts.cpu(), expected)
    with pytest.raises(RobxError, match=r"training_set of 'reshapes' changed the examples' shape: \(1, 8, 8\) -> \(64,\)"):
        build_run(tiny_config(plugins=["reshapes"]), tmp_path / "c")


def test_the_separation_term_stops_rewarding_distance_at_the_margin():
    # class means (0, 0) and (3, 4): distance 5; no scatter (each class one point)
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    assert clustering_loss(z, labels, 0, 1.0, 1.0).item() == pytest.approx(-25.0)  # eq. 2.2 as written
    assert clustering_loss(z, labels, 0, 1.0, 1.0, margin=2.0).item() == pytest.approx(-4.0)  # min(5, 2)^2
    clustering_loss(z, labels, 0, 1.0, 1.0, margin=2.0).backward()
    assert z.grad.abs().sum() == 0  # past the margin nothing pushes the means further apart
    near = torch.tensor([[0.0, 0.0], [0.6, 0.8]])  # distance 1 < margin: the unbounded term's value
    assert clustering_loss(near, labels, 0, 1.0, 1.0, margin=2.0).item() == pytest.approx(-1.0)


def test_oversampling_spreads_by_hand():
    from robx.plugins.oversampling import centroid_spread
    from robx.plugins.oversampling.evaluation import spreads

    square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # every corner sqrt(2) from (1, 1)
    assert centroid_spread(square) == pytest.approx(math.sqrt(2)) and centroid_spread(square[:1]) == 0.0
    real_y = np.array([0, 0, 1, 1])
    result = spreads(square, real_y, np.array([[5.0, 5.0], [5.0, 5.0]]), np.array([1, 1]))
    assert result == {"synthetic_spread": 0.0, "real_minority_spread": pytest.approx(1.0)}  # (0,2), (2,2): 1 each


def test_glgan_v2_keeps_the_minority_latents_apart_where_v1_collapses_them():
    """The issue-30 measurement in small: eq. 2.2 unbounded with weight 1 saturates the tanh
    latents and piles the minority onto one point; the margin and Lambda_1 = 0.01 do not."""
    from robx.plugins.oversampling.glgan import GLGAN, GLGANOptions

    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0.3, 0.1, (200, 6)), rng.normal(0.6, 0.1, (12, 6))].astype(np.float32)
    y = np.r_[np.zeros(200, int), np.ones(12, int)]
    quick = {"ae_epochs": 1000, "gan_epochs": 0, "hidden": 32, "latent_dim": 8}
    v1 = GLGAN(GLGANOptions(**quick, clustering_weight=1.0, separation_margin=0.0), seed=0)
    v1.fit_resample(x, y)
    v2 = GLGAN(GLGANOptions(**quick), seed=0)
    v2.fit_resample(x, y)
    assert v1.details["latent_saturated_share"] > 0.5 and v2.details["latent_saturated_share"] < 0.05  # |z| > 0.99
    assert v2.details["minority_latent_spread"] > 10 * v1.details["minority_latent_spread"]
    assert v2.details["synthetic_latent_spread"] > 10 * v1.details["synthetic_latent_spread"]


def test_the_discriminator_sees_class_balanced_real_batches(monkeypatch):
    """With ``discriminator_real = "balanced"`` D's real examples are drawn with weight
    1 / n_class, so a 200 : 12 set gives each class half of them; with ``"all"`` there is
    no weighted draw (D sees the batch's real examples, drawn uniformly)."""
    from robx.plugins.oversampling.glgan import GLGAN, GLGANOptions

    rng = np.random.default_rng(0)
    x = (np.r_[np.zeros((200, 4)), np.ones((12, 4))] + rng.normal(0, 0.01, (212, 4))).astype(np.float32)
    y = np.r_[np.zeros(200, int), np.ones(12, int)]
    draws: list[torch.Tensor] = []
    multinomial = torch.multinomial

    def recording(weights, n, replacement=False):  # type: ignore[no-untyped-def]
        draws.append(multinomial(weights, n, replacement=replacement))
        return draws[-1]

    monkeypatch.setattr(torch, "multinomial", recording)
    shares = {}
    for mode in ("balanced", "all"):
        draws.clear()
        GLGAN(GLGANOptions(ae_epochs=5, gan_epochs=3, hidden=8, latent_dim=4, discriminator_real=mode),
              seed=0).fit_resample(x, y)
        shares[mode] = (torch.cat(draws) >= 200).float().mean().item() if draws else None
    assert shares["all"] is None
    assert shares["balanced"] == pytest.approx(0.5, abs=0.05)
