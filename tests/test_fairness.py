"""DAFA and FAIR-TAT: class weights, margins reaching the attack, CFPS, target sampling."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from robx.core.registry import resolved_config
from robx.core import engine
from robx.core.rundir import load_checkpoint
from robx.core.stats import SplitStats
from robx.plugins.dafa import dafa_class_weights
from robx.plugins.fairtat import class_false_positive_scores, target_distribution

from conftest import tiny_config, while_training


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


def test_dafa_floors_weights_that_would_turn_negative():
    """An easy class that absorbs the others' mistakes can lose more than its whole weight."""
    from types import SimpleNamespace

    from robx.plugins.dafa import DAFA

    p = torch.tensor([[0.2, 0.8, 0.0],
                      [0.0, 1.0, 0.0],
                      [0.0, 0.9, 0.1]])
    raw = dafa_class_weights(p, lam=1.0)
    # class 1 is the easiest: W_1 = 1 - p_0(1)*p_1(1) - p_2(1)*p_1(1) = 1 - .8 - .9
    assert raw.tolist() == pytest.approx([1.8, -0.7, 1.9])
    assert raw.sum().item() == pytest.approx(3.0)  # the rule only moves weight between classes
    stats = SplitStats(torch.full((3,), 10), None, None, tables={"robust_mean_prob": p.double()})
    state = SimpleNamespace(epoch=0, num_epochs=1, epoch_stats=SimpleNamespace(train=stats),
                            config=SimpleNamespace(eps=0.1, alpha=0.02))
    plugin = DAFA(DAFA.Options(warmup=1.0))
    assert plugin.class_policy(state=state).attack_budget is None and plugin.class_policy(state=state).class_weights is None  # warm-up
    with pytest.warns(RuntimeWarning, match=r"class 1: -0\.700"):
        plugin.epoch_end(state=state)
    assert plugin.state_dict()["weights"].tolist() == pytest.approx([1.8, 0.1, 1.9])
    eps, alpha = plugin.class_policy(state=state).attack_budget
    assert eps.tolist() == pytest.approx([0.18, 0.01, 0.19]) and alpha.tolist() == pytest.approx([0.036, 0.002, 0.038])
    assert plugin.class_policy(state=state).class_weights.tolist() == pytest.approx([1.8, 0.1, 1.9])
    with pytest.raises(ValueError, match="min_weight"):
        DAFA.Options(min_weight=0.0)


def test_dafa_margins_reach_the_attack(tmp_path, monkeypatch):
    """The authors' PGD-AT path drops the class margins; robx's adversary must see W_y * eps."""
    import robx.core.attacks as attacks

    seen = []
    real_pgd, training = attacks.pgd, while_training(monkeypatch)

    def spy(model, x, y, **kwargs):
        if training[0]:
            seen.append((y.clone(), kwargs["eps"].clone(), kwargs["alpha"].clone()))
        return real_pgd(model, x, y, **kwargs)

    monkeypatch.setattr(attacks, "pgd", spy)  # every attack calls it: record the training steps' only
    config = tiny_config(epochs=3, plugins=["dafa"], plugin_options={"dafa": {"warmup": 0.34}}, n_eval=20)
    engine.train(config, tmp_path / "run")
    weights = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["plugins"]["dafa"]["weights"]
    assert not torch.allclose(weights, torch.ones_like(weights))
    eps, alpha = resolved_config(config).eps, resolved_config(config).alpha
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
    stats = SplitStats(counts, None, None, tables={"robust_confusion": confusion_counts / counts[:, None].double()})
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


@pytest.mark.parametrize("mode,expected_eps", [
    ("g-rob", [0.5 * 0.04, 0.8 * 0.04, 1.0 * 0.04]),   # (0.5 + RobAcc_c) eps
    ("g-cfps", [1.7 * 0.04, 1.1 * 0.04, 0.7 * 0.04]),  # (0.5 + 2 CFPS_c) eps, CFPS 0.6, 0.3, 0.1
])
def test_fairtat_class_wise_budgets_by_hand(mode, expected_eps):
    from types import SimpleNamespace

    from robx.plugins.fairtat import FairTAT

    counts = torch.tensor([10, 10, 20])
    confusion = torch.tensor([[6.0, 3.0, 1.0], [2.0, 8.0, 0.0], [4.0, 0.0, 16.0]]) / counts[:, None]
    robust = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64)
    train = SplitStats(counts, None, robust, tables={"robust_confusion": confusion.double()})
    state = SimpleNamespace(config=SimpleNamespace(eps=0.04, alpha=0.01),
                            epoch_stats=SimpleNamespace(train=train))
    plugin = FairTAT(FairTAT.Options(eps_mode=mode))
    assert plugin.class_policy(state=state).attack_budget is None  # epoch 0: the run's budget
    plugin.epoch_end(state=state)
    eps, alpha = plugin.class_policy(state=state).attack_budget
    assert eps.tolist() == pytest.approx(expected_eps) and alpha.tolist() == pytest.approx([0.01] * 3)


@pytest.mark.parametrize("plugins", [["dafa", "trades"], ["fairtat"], ["trades", "fairtat"]])
def test_fairness_plugins_train_end_to_end(tmp_path, plugins):
    report = engine.train(tiny_config(epochs=2, plugins=plugins, n_eval=40), tmp_path / "run")
    # as listed: each brings or replaces the adversary, so PGD is not added
    assert report["plugins"] == plugins
    assert all(0 <= v <= 1 for v in report["per_class"]["robust"])


# --------------------------------------------------------------------------- CFA


def test_cfa_margin_and_beta_formulas_by_hand():
    from robx.plugins.cfa import calibrated_beta, calibrated_eps

    robust_acc = torch.tensor([0.0, 0.3, 0.5])
    assert calibrated_eps(robust_acc, 0.04, 0.5).tolist() == pytest.approx([0.02, 0.032, 0.04])
    # beta 6: (0.5 + A) * 6 = 3, 4.8, 6 -> 3/4, 4.8/5.8, 6/7
    assert calibrated_beta(robust_acc, 6.0, 0.5).tolist() == pytest.approx([0.75, 4.8 / 5.8, 6 / 7])


def _stats(robust_acc: list[float]) -> SplitStats:
    acc = torch.tensor(robust_acc, dtype=torch.float64)
    n = len(robust_acc)
    eye = torch.eye(n, dtype=torch.float64)
    return SplitStats(torch.full((n,), 10), acc, acc,
                      tables={"clean_confusion": eye, "robust_confusion": eye, "robust_mean_prob": eye})


def test_cfa_calibrates_budgets_and_regulariser_weights_and_gates_fawa():
    """As the authors' train.py: TRADES as beta/(1+beta) from epoch 0, alpha fixed, the FAWA
    gate checked every epoch, BatchNorm statistics averaged with the weights."""
    from types import SimpleNamespace

    from robx.plugins.cfa import CFA

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    state = SimpleNamespace(epoch=0, model=model, num_classes=3,
                            config=SimpleNamespace(eps=0.04, alpha=0.01, val_fraction=0.1))
    plugin = CFA(CFA.Options(start_epoch=2))
    assert plugin.options.fawa_threshold == 0.24  # the authors' --thershold default
    assert plugin.class_policy(state=state).attack_budget is None  # the run's eps and alpha
    assert plugin.class_policy(state=state).regularizer_weights.tolist() == pytest.approx([6 / 7] * 3)  # beta / (1 + beta)
    state.epoch_stats = SimpleNamespace(train=_stats([0.0, 0.3, 0.5]), val=_stats([0.1, 0.3, 0.5]))
    plugin.epoch_end(state=state)  # epoch 0 ended; epoch 1 < start: nothing to calibrate
    assert plugin.class_policy(state=state).attack_budget is None
    assert plugin.class_policy(state=state).regularizer_weights.tolist() == pytest.approx([6 / 7] * 3)
    assert plugin.state_dict()["fawa"] is None  # worst val class 0.1 < 0.24: gate closed
    state.epoch = 1
    state.epoch_stats.val = _stats([0.24, 0.3, 0.5])
    plugin.epoch_end(state=state)  # calibrates epoch 2; the gate opens before start_epoch
    eps, alpha = plugin.class_policy(state=state).attack_budget
    assert eps.tolist() == pytest.approx([0.02, 0.032, 0.04])  # (0.5 + A_c) * 0.04
    assert alpha.tolist() == pytest.approx([0.01, 0.01, 0.01])  # fixed
    # beta 6: (0.5 + A) * 6 = 3, 4.8, 6 -> b = 3/4, 4.8/5.8, 6/7
    assert plugin.class_policy(state=state).regularizer_weights.tolist() == pytest.approx([0.75, 4.8 / 5.8, 6 / 7])
    first = {k: v.clone() for k, v in plugin.state_dict()["fawa"]["parameters"].items()}
    assert set(first) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    state.epoch = 2
    plugin.epoch_end(state=state)
    for name, current in (("0.weight", model[0].weight), ("1.running_mean", model[1].running_mean)):
        expected = 0.88 * first[name] + 0.12 * current  # weight_average(FAWA, model, 0.88)
        torch.testing.assert_close(plugin.state_dict()["fawa"]["parameters"][name], expected)
        torch.testing.assert_close(plugin.averaged_weights(state=state)[name], expected)
    state.epoch_stats.val = _stats([0.1, 0.3, 0.5])
    before = {k: v.clone() for k, v in plugin.state_dict()["fawa"]["parameters"].items()}
    plugin.epoch_end(state=state)  # gate closed: the average stays
    for name, value in before.items():
        torch.testing.assert_close(plugin.state_dict()["fawa"]["parameters"][name], value)


def test_averaged_bn_statistics_are_used_as_given():
    from robx.core.averaging import holds_buffers, with_parameters

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    average = {name: torch.full_like(t, 7.0) for name, t in model.state_dict().items() if t.is_floating_point()}
    assert holds_buffers(model, average) and not holds_buffers(model, dict(model.named_parameters()))
    copied = with_parameters(model, average)
    assert (copied[1].running_var == 7.0).all() and (copied[0].weight == 7.0).all()
    assert (model[1].running_var == 1.0).all()  # the original is untouched


def test_trades_honours_per_class_regulariser_weights():
    """CFA's calibrated form: (1 - b_y) CE on the natural term, b_y KL."""
    from types import SimpleNamespace

    from robx.core.state import Step
    from robx.plugins.tasks.classification import Classification
    from robx.plugins.trades import TRADES

    torch.manual_seed(0)
    state = SimpleNamespace(regularizer_weights=None, num_classes=3, task=Classification(None))
    y = torch.tensor([0, 1, 2, 2])
    step = Step(x=torch.rand(4, 4), y=y, labels=y)
    step.clean_outputs, step.adv_outputs = torch.randn(4, 3), torch.randn(4, 3)  # the engine's views
    step.targets, step.row_labels = y, y
    plugin = TRADES(TRADES.Options(beta=6.0))
    p, q = torch.softmax(step.clean_outputs, 1), torch.softmax(step.adv_outputs, 1)
    kl = (p * (p.log() - q.log())).sum(1)  # KL(f(x) || f(x')) by its definition
    torch.testing.assert_close(plugin.extra_loss(step=step, state=state), 6.0 * kl.mean())
    assert plugin.weight_samples(step=step, state=state) is None
    state.regularizer_weights = torch.tensor([0.5, 0.7, 0.9])
    torch.testing.assert_close(plugin.extra_loss(step=step, state=state),
                               (torch.tensor([0.5, 0.7, 0.9, 0.9]) * kl).mean())
    torch.testing.assert_close(plugin.weight_samples(step=step, state=state), torch.tensor([0.5, 0.3, 0.1, 0.1]))


def test_trades_cfa_trains_end_to_end_and_needs_a_validation_split(tmp_path):
    from robx.core.errors import RobxError

    options = {"cfa": {"start_epoch": 1, "fawa_threshold": 0.0}}
    report = engine.train(tiny_config(epochs=3, plugins=["trades", "cfa"], val_fraction=0.2,
                                      plugin_options=options), tmp_path / "run")
    assert report["plugins"] == ["trades", "cfa"]
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert "eval_model" in payload  # the FAWA average was evaluated
    with pytest.raises(RobxError, match="--val-fraction"):
        engine.train(tiny_config(epochs=1, plugins=["trades", "cfa"]), tmp_path / "run2")


def test_fairness_score_rho_by_hand_and_against_a_named_baseline():
    from robx.core.errors import RobxError
    from robx.core.report import add_fairness_scores, fairness_score

    # DAFA vs TRADES (docs/methods.md, dafa): avg 49.05 vs 49.80, worst 30.53 vs 21.31 -> rho 0.42
    assert fairness_score(0.4905, 0.3053, 0.4980, 0.2131) == pytest.approx(0.4176, abs=1e-4)
    assert fairness_score(0.5, 0.3, 0.5, 0.0) != fairness_score(0.5, 0.3, 0.5, 0.0)  # nan: undefined
    rows = [{"method": m, f"{k}.overall": (avg, 0.0), f"{k}.worst": (worst, 0.0)}
            for m, avg, worst in [("trades", 0.5, 0.2), ("dafa", 0.45, 0.3)] for k in ("standard",)]
    for row in rows:
        row["robust.overall"], row["robust.worst"] = row["standard.overall"], row["standard.worst"]
    add_fairness_scores(rows, "trades")
    assert rows[0]["robust.rho"] == 0.0 and rows[1]["robust.rho"] == pytest.approx(0.5 - 0.1)
    with pytest.raises(RobxError, match="not among the methods"):
        add_fairness_scores(rows, "pgd-at")
