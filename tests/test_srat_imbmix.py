"""SRAT (dissertation ch. 4) and Imb-Mix (ch. 5)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robx.core import engine
from robx.core.rundir import load_checkpoint
from robx.core.state import Step
from robx.kernels import supcon
from robx.core.plugins import PluginHost
from robx.plugins.copies import Copies, copies_per_class, supplementary_examples
from robx.plugins.drw import DeferredReweighting

from conftest import tiny_config


def supcon_brute_force(z: torch.Tensor, labels: list[int], t: float, weights=None) -> float:
    """Eq. 4.12 as a double loop; anchors without positives contribute 0."""
    n = len(labels)
    losses = []
    for i in range(n):
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            losses.append(0.0)
            continue
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives)
                      / len(positives))
    if weights is None:
        return sum(losses) / n
    return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.floats(0.05, 1.0), st.integers(0, 2**16), st.booleans())
def test_separation_loss_equals_the_double_loop(n, classes, temperature, seed, weighted):
    generator = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 6, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, classes, (n,), generator=generator)
    weights = torch.rand(n, generator=generator, dtype=torch.float64) + 0.1 if weighted else None
    got = supcon(z, labels, temperature, weights).item()
    expected = supcon_brute_force(z, labels.tolist(), temperature, None if weights is None else weights.tolist())
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_anchor_without_positive_contributes_zero():
    z = F.normalize(torch.randn(3, 4), dim=1)
    assert supcon(z, torch.tensor([0, 1, 2]), 0.1).item() == 0.0


def cb_weights_by_hand(counts: list[int], beta: float) -> list[float]:
    """Cui et al. (2019): (1 - beta) / (1 - beta^n_c), normalised to sum to the number of classes."""
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [r * len(counts) / sum(raw) for r in raw]


def test_srat_is_the_deferred_weights_and_the_separation_loss_with_its_options_routed():
    """Recipe: srat = drw + separation; srat.start/lam/temperature reach the parts, the
    deferred weights switch at T_d and lambda scales L_sep (eq. 4.13)."""
    host = PluginHost(["srat"], {"srat": {"start": "0.5", "lam": "2.0", "temperature": "0.5"}})
    assert host.names == ["drw", "separation", "pgd"] and host.listed == ["srat", "pgd"]
    assert host.part_of == {"drw": "srat", "separation": "srat"}
    drw, separation = (host.manager.get_plugin(name) for name in ("drw", "separation"))
    assert (drw.options.start, drw.options.beta) == (0.5, 0.9999)  # srat's start, its default beta
    assert (separation.options.lam, separation.options.temperature) == (2.0, 0.5)
    state = SimpleNamespace(epoch=4, num_epochs=10, class_counts=torch.tensor([100, 10]))
    assert drw.class_policy(state).class_weights is None  # before T_d = 0.5 * 10
    state.epoch = 5
    assert drw.class_policy(state).class_weights.tolist() == pytest.approx(cb_weights_by_hand([100, 10], 0.9999), rel=1e-5)
    generator = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1])
    step = Step(x=torch.zeros(4, 1), y=y, labels=y)
    step.adv_features = torch.randn(4, 8, generator=generator, dtype=torch.float64)  # the engine's view of x'
    z = F.normalize(step.adv_features, dim=1)
    expected = 2.0 * supcon_brute_force(z, [0, 0, 1, 1], 0.5)
    assert separation.extra_loss(step, state).item() == pytest.approx(expected, rel=1e-5)
    off = PluginHost(["srat"], {"srat": {"lam": "0"}}).manager.get_plugin("separation")
    assert off.extra_loss(step, state) is None


def test_a_recipe_part_is_set_through_the_recipe_and_selected_once():
    from robx.core.errors import OptionError, PluginConflictError

    with pytest.raises(OptionError, match="option 'drw.beta' is part of 'srat': set srat.beta"):
        PluginHost(["srat"], {"drw": {"beta": "0.99"}})
    with pytest.raises(OptionError, match=r"plugin 'drw' listed twice \('srat' includes it\)"):
        PluginHost(["drw", "srat"], {})
    with pytest.raises(PluginConflictError, match="plugins 'dafa' and 'srat' \\(its part 'drw'\\) both set"):
        PluginHost(["dafa", "srat"], {})
    without_swa = PluginHost(["imbmix"], {"imbmix": {"swa": "false", "tau": "0.25"}})
    assert without_swa.names == ["copies", "remix", "pgd"] and "averaged_weights" not in without_swa.owners
    assert without_swa.manager.get_plugin("remix").options.tau == 0.25


def test_class_weights_under_imbmix_use_the_counts_it_trains_on():
    """Imb-Mix already rebalances the batch; SRAT's weights must not rebalance a second time."""
    dataset_counts = torch.tensor([1000, 1000, 100, 100])
    grown = Copies(Copies.Options()).trained_class_counts(dataset_counts=dataset_counts)
    assert grown.tolist() == [1000, 1000, 900, 900]  # t = round(1000 / 100) - 1 = 9, capped at 8
    weights_part = DeferredReweighting(DeferredReweighting.Options(start=0.5))
    state = SimpleNamespace(epoch=9, num_epochs=10, class_counts=grown)
    weights = weights_part.class_policy(state).class_weights
    assert weights.tolist() == pytest.approx(cb_weights_by_hand([1000, 1000, 900, 900], 0.9999), rel=1e-5)
    assert weights[2] / weights[0] < 1.2  # with the dataset's counts it would be about 9


def test_minority_examples_get_exactly_t_copies_and_majority_none():
    counts = [100, 100, 10, 25]
    assert copies_per_class(counts, max_copies=8, fixed=None) == [0, 0, 8, 3]
    assert copies_per_class(counts, max_copies=8, fixed=2) == [0, 0, 2, 2]
    x = torch.rand(5, 3)
    x_adv = (x + 0.05).clamp(0, 1)
    y = torch.tensor([0, 2, 2, 3, 1])
    extra_x, extra_y = supplementary_examples(x, x_adv, y, torch.tensor([0, 0, 8, 3]), scale=1.0)
    assert extra_y.tolist() == [2] * 16 + [3] * 3
    assert len(extra_x) == 19 and (extra_x >= 0).all() and (extra_x <= 1).all()
    # eq. 5.2: each copy is x + a (x' - x) * N(0, 1): it moves only where x' moved
    same = x[1] == x_adv[1]
    assert torch.equal(extra_x[0][same], x[1][same])


@pytest.mark.parametrize("plugins,options", [
    (["srat", "imbmix"], {}),
    (["srat"], {"srat": {"lam": "0"}}),
    (["imbmix"], {"imbmix": {"swa": "false"}}),
    (["srat", "trades"], {}),
])
def test_compositions_train_end_to_end(tmp_path, plugins, options):
    report = engine.train(tiny_config(epochs=1, plugins=plugins, plugin_options=options, n_eval=40,
                                      loss="ldam" if plugins == ["srat"] else "ce"), tmp_path / "run")
    assert all(0 <= v <= 1 for v in report["per_class"]["robust"])
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ("eval_model" in payload) == (plugins == ["srat", "imbmix"])


@pytest.mark.parametrize("remix_counts,expected_row0", [
    ("trained", [0.3, 0.0, 0.7, 0.0]),  # eq. 5.4: n_0 / n_2 = 1000 / 900 < kappa: Mixup's labels
    ("dataset", [0.0, 0.0, 1.0, 0.0]),  # 1000 / 100 >= kappa and lam < tau: all to the minority
])
def test_remix_rule_counts_the_augmented_set_as_eq_5_4(monkeypatch, remix_counts, expected_row0):
    import robx.plugins.remix as remix

    host = PluginHost(["imbmix"], {"imbmix": {"remix_counts": remix_counts}})
    copies, mixing = host.manager.get_plugin("copies"), host.manager.get_plugin("remix")
    dataset_counts = torch.tensor([1000, 1000, 100, 100])
    augmented = copies.trained_class_counts(dataset_counts=dataset_counts)
    assert augmented.tolist() == [1000, 1000, 900, 900]
    y = torch.tensor([0, 2])
    x = torch.rand(2, 3)
    step = Step(x=x, y=y, labels=y)
    step.x_adv = x.clone()
    step.inputs, step.targets, step.row_labels = x.clone(), y, y
    rows = 2 + 8  # row 1 (class 2) gets t = 8 copies
    partner = torch.roll(torch.arange(rows), -1)  # row 0 pairs with row 1
    monkeypatch.setattr(remix, "draw_mix", lambda batch, concentration, device: (0.3, partner))
    state = SimpleNamespace(num_classes=4, class_counts=augmented,
                            task=SimpleNamespace(data=SimpleNamespace(class_counts=dataset_counts.tolist)))
    copies.augment(step, state)
    assert len(step.inputs) == rows and step.row_labels.tolist() == [0, 2] + [2] * 8
    mixing.augment(step, state)
    assert step.targets[0].tolist() == pytest.approx(expected_row0)
    assert step.row_labels[0].item() == 2  # the class the row counts for: its label weight 0.3 or 0 < 1/2


def test_supplementary_copies_scale_the_perturbation_by_a_times_standard_normal():
    torch.manual_seed(0)
    x = torch.full((1, 20000), 0.5)
    x_adv = x + 0.01
    extra, _ = supplementary_examples(x, x_adv, torch.tensor([0]), torch.tensor([1]), scale=2.0)
    noise = (extra[0] - x[0]) / (2.0 * 0.01)  # eq. 5.2: x + a (x' - x) * N(0, 1), a = 2
    assert abs(noise.mean().item()) < 0.03 and noise.std().item() == pytest.approx(1.0, abs=0.03)


def test_imbmix_s_average_from_before_it_was_a_recipe_resumes_in_its_swa_part():
    saved = {"parameters": {"weight": torch.full((2, 2), 3.0)}, "count": 4}
    host = PluginHost(["imbmix"], {})
    host.load_state_dicts({"imbmix": {"average": saved}})
    average = host.manager.get_plugin("swa").average
    assert average.count == 4 and torch.equal(average.parameters["weight"], torch.full((2, 2), 3.0))


def test_a_schedule_that_leaves_the_method_almost_unused_says_so(tmp_path, capsys):
    """SRAT's deferred weights start at 0.8 x epochs: in a 5-epoch run only the last epoch
    has them (the loss jumps there and two classes can end at 0), which the run now says."""
    from robx.core.engine import build_run

    def started(config):  # the warning comes when training starts, not when a run is loaded to evaluate
        run = build_run(config, tmp_path / "unused")
        assert capsys.readouterr().err == ""
        run.host.train_start(run.state)

    started(tiny_config(epochs=5, plugins=["srat"], loss="ldam"))
    assert capsys.readouterr().err.strip() == (
        "robx: warning: drw: the deferred class-balanced weights take effect only in the last of the run's 5 "
        "epochs: this run barely trains with them; give more --epochs or set drw.start")
    started(tiny_config(epochs=1, plugins=["dafa", "trades"]))
    assert capsys.readouterr().err.strip() == (
        "robx: warning: dafa: the class weights and budgets would take effect from epoch 2, after the run's 1 "
        "epoch(s): this run trains without them; give more --epochs or set dafa.warmup")
    started(tiny_config(epochs=10, plugins=["srat"], loss="ldam"))  # 2 of 10 epochs: fine
    assert capsys.readouterr().err == ""
