"""DAFA and FAIR-TAT: class weights, margins reaching the attack, CFPS, target sampling."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import robx.plugins.pgd as pgd_plugin
from robx.core import engine
from robx.core.plugins import PluginHost
from robx.core.stats import SplitStats
from robx.plugins.dafa import WEIGHTS, dafa_class_weights
from robx.plugins.fairtat import class_false_positive_scores, target_distribution

from conftest import tiny_config


def test_dafa_weights_on_a_hand_made_matrix():
    p = torch.tensor([[0.6, 0.3, 0.1],
                      [0.2, 0.7, 0.1],
                      [0.05, 0.05, 0.9]])
    # class 0 (p00 .6) is harder than 1 (.7) and 2 (.9): W_0 = 1 + .3*.7 + .1*.9
    # class 1 is easier than 0, harder than 2:      W_1 = 1 - p_0(1)*p_1(1) + p_1(2)*p_2(2) = 1 - .3*.7 + .1*.9
    # class 2 is the easiest:                        W_2 = 1 - p_0(2)*p_2(2) - p_1(2)*p_2(2) = 1 - .1*.9 - .1*.9
    expected = [1 + 0.21 + 0.09, 1 - 0.21 + 0.09, 1 - 0.09 - 0.09]
    assert dafa_class_weights(p, lam=1.0).tolist() == pytest.approx(expected)
    assert dafa_class_weights(p, lam=0.0).tolist() == pytest.approx([1, 1, 1])


def test_dafa_margins_reach_the_attack(tmp_path, monkeypatch):
    """The authors' PGD-AT path drops the class margins; robx's adversary must see W_y * eps."""
    seen = []
    real_pgd = pgd_plugin.pgd

    def spy(model, x, y, **kwargs):
        seen.append((y.clone(), kwargs["eps"].clone(), kwargs["alpha"].clone()))
        return real_pgd(model, x, y, **kwargs)

    monkeypatch.setattr(pgd_plugin, "pgd", spy)
    config = tiny_config(epochs=3, plugins=["dafa"], plugin_options={"dafa": {"warmup": 0.34}}, n_eval=20)
    engine.train(config, tmp_path / "run")
    weights = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["stash"][WEIGHTS.name]
    assert not torch.allclose(weights, torch.ones_like(weights))
    eps, alpha = config.resolved().eps, config.resolved().alpha
    warmup_batches = len(seen) // 3
    y, eps_seen, alpha_seen = seen[-1]  # an epoch after warm-up
    assert torch.allclose(eps_seen, weights[y] * eps) and torch.allclose(alpha_seen, weights[y] * alpha)
    y0, eps0, _ = seen[0]  # during warm-up: the global budget
    assert torch.allclose(eps0, torch.full_like(eps0, eps)) and warmup_batches > 0


def test_cfps_on_a_hand_made_confusion():
    counts = torch.tensor([10, 10, 20])
    confusion_counts = torch.tensor([[6.0, 3.0, 1.0],
                                     [2.0, 8.0, 0.0],
                                     [4.0, 0.0, 16.0]])
    stats = SplitStats(counts, None, None, None, confusion_counts / counts[:, None].double(), None)
    cfps = class_false_positive_scores(stats)
    # wrong predictions: 3 + 1 + 2 + 4 = 10; predicted 0 wrongly: 2 + 4, 1: 3, 2: 1
    assert cfps.tolist() == pytest.approx([0.6, 0.3, 0.1])


def test_targets_never_equal_the_label_and_follow_softmax_2_cfps():
    torch.manual_seed(0)
    cfps = torch.tensor([0.6, 0.3, 0.1, 0.0])
    labels = torch.full((20000,), 1)
    probs = target_distribution(labels, cfps, 4, temperature=2.0)
    targets = torch.multinomial(probs, 1).squeeze(1)
    assert (targets != labels).all()
    weights = torch.softmax(2 * cfps, 0)
    weights[1] = 0
    expected = (weights / weights.sum() * len(labels))[[0, 2, 3]]
    observed = torch.bincount(targets, minlength=4)[[0, 2, 3]]
    expected = expected.double() * observed.sum() / expected.double().sum()
    assert chisquare(observed.double().numpy(), expected.numpy()).pvalue > 0.001
    uniform = target_distribution(torch.tensor([2]), None, 4, 2.0)
    assert uniform.tolist()[0] == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])


@pytest.mark.parametrize("plugins", [["dafa", "trades"], ["fairtat"], ["trades", "fairtat"]])
def test_fairness_plugins_train_end_to_end(tmp_path, plugins):
    report = engine.train(tiny_config(epochs=2, plugins=plugins, n_eval=40), tmp_path / "run")
    assert report["plugins"] == PluginHost(plugins, {}).names
    assert all(0 <= v <= 1 for v in report["per_class"]["robust"])
