"""Method formulas against independent values: a hand computation from the paper's formula,
a reference library (torchattacks, scipy), or exact replays of the random draws the formula
is given. Each test runs robx's own code path (the engine step, the hook, the sampler) and
checks its numbers, not that it runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.parity import steps  # noqa: E402

from conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return steps.initial_weights("linear")


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return steps.case_inputs(steps.IMBALANCED, seed=4)


# --- mixup: the mixing and the Beta draw ---------------------------------------------------


def test_mixup_mixes_inputs_and_targets_with_one_beta_draw():
    """Zhang et al. 2018: x~ = lam x_i + (1 - lam) x_j, t~ = lam e_i + (1 - lam) e_j, lam ~
    Beta(a, a). Rows of the identity matrix as inputs make lam and j readable from x~; the
    lams of many steps must follow Beta(0.4, 0.4) (scipy's distribution function, KS test)."""
    from scipy import stats

    from robx.core.state import Step
    from robx.plugins.mixup import Mixup

    plugin = Mixup(Mixup.Options(concentration=0.4))
    n, classes = 6, 3
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    lams = []
    torch.manual_seed(0)
    for _ in range(1500):
        step = Step(x=torch.eye(n), y=labels, labels=labels)
        step.inputs, step.targets, step.row_labels = torch.eye(n), labels, labels
        plugin.augment(step, SimpleNamespace(num_classes=classes))
        mixed = step.inputs
        own = mixed.diagonal()
        if bool((own == 1).all()):  # every row drew itself (a permutation with no move): lam unreadable
            continue
        lam = float(own.min())  # a row mixed with another keeps lam of itself
        for i in range(n):
            off = mixed[i].clone()
            off[i] = 0
            partner = i if float(off.max()) == 0 else int(off.argmax())
            expected = lam * torch.eye(n)[i] + (1 - lam) * torch.eye(n)[partner]
            assert torch.allclose(mixed[i], expected, atol=1e-6)
            target = lam * F.one_hot(labels[i], classes) + (1 - lam) * F.one_hot(labels[partner], classes)
            assert torch.allclose(step.targets[i], target.float(), atol=1e-6)
        lams.append(lam)
    kept = lams
    assert len(kept) > 1400
    assert stats.kstest(kept, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    # the same against the uniform Beta(1, 1) is rejected: the concentration is used
    assert stats.kstest(kept, stats.beta(1.0, 1.0).cdf).pvalue < 1e-6


# --- resample: the exact per-example probabilities -----------------------------------------


def test_resample_draws_each_example_with_its_class_balanced_probability(tmp_path):
    """Cui et al. 2019: p(example of class c) proportional to (1 - beta) / (1 - beta^n_c).
    With beta 0.99 on the digits default (Step-10), the class shares over 40 epochs of draws
    match the hand values to within 4 standard errors, and not those of 1 / n_c."""
    from robx.core.engine import build_run, epoch_batches

    beta = 0.99
    run = build_run(tiny_config(plugins=["resample"], plugin_options={"resample": {"beta": beta}}), tmp_path / "r")
    labels = run.data.train.labels
    counts = torch.bincount(labels, minlength=10).double()
    weight = (1 - beta) / (1 - beta ** counts)  # per example of class c
    expected = counts * weight / (counts * weight).sum()
    uniform_classes = torch.full((10,), 0.1, dtype=torch.float64)  # what 1 / n_c would give
    drawn = torch.cat([torch.cat(list(epoch_batches(run))) for _ in range(40)])
    share = torch.bincount(labels[drawn], minlength=10).double() / len(drawn)
    standard_error = (expected * (1 - expected) / len(drawn)).sqrt()
    assert ((share - expected).abs() < 4 * standard_error).all(), (share, expected)
    assert ((share - uniform_classes).abs() > 4 * standard_error).any()
    # within a class every example is equally likely: the most and least drawn of class 0
    first = (labels == 0).nonzero().flatten()
    per_example = torch.bincount(drawn, minlength=len(labels))[first].double()
    mean = float(per_example.mean())
    assert per_example.max() < mean + 5 * math.sqrt(mean) and per_example.min() > mean - 5 * math.sqrt(mean)


# --- losses on the engine's step ------------------------------------------------------------


def train_mode_logits(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = steps.model_with(weights)
    model.train()
    with torch.no_grad():
        return model(x)[1]


def test_a_balanced_softmax_training_step_minimises_ce_on_logits_plus_log_counts(weights, batch):
    """Ren et al. 2020: L = CE(z + log n, y), trained through the engine (PGD-AT rows)."""
    found = steps.robx_step(batch, weights, ["pgd"], loss="balanced_softmax")
    counts = found["class_counts"].double()
    logits = train_mode_logits(weights, found["x_adv"])
    expected = F.cross_entropy(logits + counts.log(), batch["y"])
    assert found["loss"] == pytest.approx(float(expected), rel=1e-9)
    # and it is not plain CE on these rows
    assert abs(found["loss"] - float(F.cross_entropy(logits, batch["y"]))) > 1e-3


def test_focal_and_ldam_on_soft_targets_by_hand():
    """A mixed target t = (0.7, 0.3, 0): focal (Lin et al. 2017) is (1 - sum_c t_c p_c)^gamma
    times the soft CE; LDAM (Cao et al. 2019) takes m_c t_c off each logit before s."""
    from robx.plugins.focal import focal_loss
    from robx.plugins.ldam import ldam_loss

    z = [1.0, -0.5, 0.2]
    t = [0.7, 0.3, 0.0]
    logits, targets = torch.tensor([z]), torch.tensor([t])
    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    soft_ce = -sum(tc * math.log(pc) for tc, pc in zip(t, p))
    p_target = sum(tc * pc for tc, pc in zip(t, p))
    assert focal_loss(logits, targets, gamma=2.0).item() == pytest.approx((1 - p_target) ** 2 * soft_ce, rel=1e-6)
    margins, s = [0.5, 0.3, 0.2], 30.0
    shifted = [s * (zc - mc * tc) for zc, mc, tc in zip(z, margins, t)]
    log_norm = math.log(sum(math.exp(v) for v in shifted))
    expected = -sum(tc * (v - log_norm) for tc, v in zip(t, shifted))
    assert ldam_loss(logits, targets, torch.tensor(margins), s).item() == pytest.approx(expected, rel=1e-6)


# --- FAIR-TAT: the targets' distribution and the targeted attack ----------------------------


def test_fairtat_draws_targets_by_softmax_of_2_cfps_and_attacks_them_as_torchattacks_does(weights, batch):
    """Medi et al. 2025: y_t ~ softmax(2 CFPS) with the true class removed; x' is targeted PGD
    toward y_t from U(-eps, eps), here the same as torchattacks' targeted PGD from the same
    start. The draw of y_t is recorded and replaced by fixed targets."""
    import torchattacks

    cfps = torch.tensor([0.30, 0.05, 0.20, 0.0, 0.10, 0.05, 0.10, 0.05, 0.10, 0.05], dtype=torch.float64)
    y = batch["y"]
    targets = (y + 3) % 10
    asked = []

    def multinomial(probs: torch.Tensor, num_samples: int, *args: object, **kwargs: object) -> torch.Tensor:
        asked.append(probs.clone())
        return targets[:, None]

    with mock.patch("torch.multinomial", multinomial):
        found = steps.robx_step(batch, weights, ["fairtat"], plugin_options={"fairtat": {"eps_mode": "none"}},
                                plugin_states={"fairtat": {"cfps": cfps, "robust_acc": torch.full((10,), 0.5)}})
    (probs,) = asked
    for row, label in zip(probs, y.tolist()):
        numerators = [0.0 if c == label else math.exp(2 * float(cfps[c])) for c in range(10)]
        assert row.tolist() == pytest.approx([v / sum(numerators) for v in numerators], rel=1e-6)

    model = steps.Logits(steps.model_with(weights))
    attack = torchattacks.PGD(model, eps=steps.EPS, alpha=steps.ALPHA, steps=steps.STEPS, random_start=True)
    attack.set_mode_targeted_by_label(quiet=True)
    with steps.drawn(batch["normal"], batch["uniform"], batch["radius"]):
        reference = attack(batch["x"], targets)
    assert steps.max_abs(found["x_adv"], reference) < 1e-6
    # it moved toward the targets: their probability went up for most rows
    with torch.no_grad():
        before = torch.softmax(model.eval()(batch["x"]), 1).gather(1, targets[:, None])
        after = torch.softmax(model(found["x_adv"]), 1).gather(1, targets[:, None])
    assert (after > before).double().mean() > 0.8


# --- PGD's start radius ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_the_uniform_start_is_x_plus_scale_eps_times_2u_minus_1_in_the_box(batch, scale):
    """STPGD's U(-eps/10, eps/10) start (``pgd.start_scale = 0.1``) and Madry's full ball:
    with the uniform draw u supplied, the start is clamp(x + scale eps (2u - 1), 0, 1)."""
    from robx.core.attacks import Attack, cross_entropy

    model = steps.model_with(steps.initial_weights("linear"))
    n = len(batch["y"])
    attack = Attack(model=model, x=batch["x"], y=batch["y"], eps=torch.full((n,), 0.3, dtype=torch.float64),
                    alpha=torch.full((n,), 0.1, dtype=torch.float64), steps=0, norm="linf", bounds=(0.0, 1.0),
                    task_loss=cross_entropy)
    with steps.drawn(batch["normal"], batch["uniform"], batch["radius"]) as draws:
        start = attack(start_scale=scale)
    expected = (batch["x"] + scale * 0.3 * (2 * batch["uniform"] - 1)).clamp(0, 1)
    assert draws["uniform"] == 1
    assert steps.max_abs(start, expected) < 1e-12
    assert float((start - batch["x"]).abs().max()) <= scale * 0.3 + 1e-12


def test_the_gaussian_start_stays_unclamped_unless_asked(batch):
    from robx.core.attacks import gaussian_start

    with steps.drawn(batch["normal"]):
        free = gaussian_start(batch["x"], 0.001, None, None)
    with steps.drawn(batch["normal"]):
        boxed = gaussian_start(batch["x"], 0.001, None, (0.0, 1.0))
    assert steps.max_abs(free, batch["x"] + 0.001 * batch["normal"]) == 0
    assert float(free.min()) < 0 and float(free.max()) > 1  # saturated pixels moved out of the box
    assert steps.max_abs(boxed, (batch["x"] + 0.001 * batch["normal"]).clamp(0, 1)) == 0


def test_the_pgd_plugin_starts_where_its_start_scale_says(weights, batch):
    """``--set pgd.start_scale=0.1`` reaches the attack: one step of 1e-9 from the start
    leaves x' at clamp(x + 0.1 eps (2u - 1), 0, 1), the start drawn from u."""
    found = steps.robx_step(batch, weights, ["pgd"], plugin_options={"pgd": {"start_scale": 0.1}}, steps=1,
                            alpha=1e-9)
    expected = (batch["x"] + 0.1 * steps.EPS * (2 * batch["uniform"] - 1)).clamp(0, 1)
    assert steps.max_abs(found["x_adv"], expected) < 1e-6


def test_topk_pixel_saliency_is_the_l2_norm_of_the_positive_gradient_over_channels():
    """STPGD (Liu et al. 2022): s_u = ||ReLU(dL/dx_u)||_2 over a pixel's channels. Pixel A's
    gradient (2.5, 0, -4) gives 2.5; pixel B's (1, 1, 1) gives sqrt(3) (an L1 norm would rank
    B first, 3 > 2.5); the top-1 victim is A."""
    from robx.kernels import topk_victims
    from robx.plugins.topk import unit_saliency

    grad = torch.tensor([[2.5, 0.0, -4.0], [1.0, 1.0, 1.0]]).T.reshape(1, 3, 1, 2)  # (batch, channels, H, W)
    saliency = unit_saliency(grad, "pixel")
    assert saliency.tolist() == [[pytest.approx(2.5), pytest.approx(math.sqrt(3))]]
    assert topk_victims(saliency, 1).tolist() == [[True, False]]
