"""Property tests of the attack constraints (hypothesis)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robx.core.attacks import fgsm, logits_of, pgd
from robx.kernels.pgd_step import pgd_step_reference

TOL = 1e-5
FAST = settings(max_examples=40, deadline=None)


class TinyNet(nn.Module):
    """A linear model with a BatchNorm so that train/eval mode matters."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.bn(x.flatten(1))
        return features, self.fc(features)


@st.composite
def attack_case(draw):
    batch = draw(st.integers(1, 6))
    shape = (batch,) + tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**16))
    norm = draw(st.sampled_from(["linf", "l2"]))
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator)
    x = torch.where(torch.rand(shape, generator=generator) < draw(st.floats(0.0, 1.0)), x.round(), x)  # 0s and 1s
    dim = x[0].numel()
    scale = 1.0 if norm == "l2" else 0.1
    eps = torch.rand(batch, generator=generator) * scale + 1e-3
    eps = torch.where(torch.rand(batch, generator=generator) < draw(st.floats(0.0, 0.5)), 0.0, eps)  # no budget
    alpha = eps * draw(st.floats(0.1, 1.5))
    mask = torch.rand(shape, generator=generator) < draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        x, eps, alpha = x.double(), eps.double(), alpha.double()
    if draw(st.booleans()):  # a strided view, as a slice of a larger batch gives it
        x = torch.stack([x, x], dim=-1)[..., 0]
    return seed, x, dim, norm, eps, alpha, mask


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@FAST
@given(attack_case(), st.booleans(), st.integers(1, 5))
def test_pgd_stays_in_per_sample_ball_box_and_mask(case, use_mask, steps):
    seed, x, dim, norm, eps, alpha, mask = case
    torch.manual_seed(seed)
    model = TinyNet(dim, 3).to(x.dtype)
    y = torch.randint(0, 3, (x.shape[0],))
    x_adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm, mask=mask if use_mask else None)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert (_distance(x_adv - x, norm) <= eps + TOL).all()
    assert torch.equal(x_adv[eps == 0], x[eps == 0])  # no budget: x itself
    if use_mask:
        assert torch.equal(x_adv[~mask], x[~mask])


@FAST
@given(attack_case())
def test_pgd_step_reference_projects(case):
    seed, x, _, norm, eps, alpha, mask = case
    generator = torch.Generator().manual_seed(seed + 1)
    x_adv = (x + torch.randn(x.shape, generator=generator)).clamp(0, 1)  # far outside the ball
    grad = torch.randn(x.shape, generator=generator)
    out = pgd_step_reference(x_adv, grad, x, eps, alpha, norm, mask)
    assert (out >= 0).all() and (out <= 1).all()
    assert (_distance(out - x, norm) <= eps + TOL).all()


def test_pgd_step_linf_is_sign_step_inside_the_ball():
    x = torch.full((1, 4), 0.5)
    grad = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    out = pgd_step_reference(x, grad, x, eps=0.1, alpha=0.05, norm="linf")
    assert torch.allclose(out, torch.tensor([[0.55, 0.45, 0.5, 0.55]]))


def test_pgd_step_l2_moves_alpha_along_the_normalised_gradient():
    x = torch.full((1, 2), 0.5)
    grad = torch.tensor([[3.0, 4.0]])
    out = pgd_step_reference(x, grad, x, eps=1.0, alpha=0.1, norm="l2")
    assert torch.allclose(out, torch.tensor([[0.56, 0.58]]))


@FAST
@given(st.integers(0, 2**16), st.sampled_from(["linf", "l2"]))
def test_targeted_pgd_lowers_the_target_loss(seed, norm):
    torch.manual_seed(seed)
    model = TinyNet(16, 4)
    model.eval()
    x = torch.rand(8, 16)
    target = torch.randint(0, 4, (8,))
    eps = 0.2 if norm == "linf" else 1.0
    x_adv = pgd(model, x, target, eps=eps, alpha=eps / 10, steps=10, norm=norm, targeted=True, random_init=False)
    with torch.no_grad():
        before = F.cross_entropy(logits_of(model, x), target)
        after = F.cross_entropy(logits_of(model, x_adv), target)
    assert after < before


def test_untargeted_pgd_raises_the_loss_and_fgsm_is_one_full_step():
    torch.manual_seed(0)
    model = TinyNet(16, 4).eval()
    x, y = torch.rand(32, 16), torch.randint(0, 4, (32,))
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.02, steps=10)
    x_fgsm = fgsm(model, x, y, eps=0.1)
    with torch.no_grad():
        clean = F.cross_entropy(logits_of(model, x), y)
        assert F.cross_entropy(logits_of(model, x_adv), y) > clean
        assert F.cross_entropy(logits_of(model, x_fgsm), y) > clean
    moved = (x_fgsm - x).abs()
    interior = (x > 0.1) & (x < 0.9)
    assert torch.allclose(moved[interior], torch.full_like(moved[interior], 0.1), atol=1e-6)


def test_attack_uses_eval_mode_restores_mode_and_leaves_param_grads_alone():
    model = TinyNet(8, 3)
    model.train()
    seen = []
    model.bn.register_forward_hook(lambda module, *_: seen.append(module.training))
    running_mean = model.bn.running_mean.clone()
    pgd(model, torch.rand(4, 8), torch.zeros(4, dtype=torch.long), eps=0.1, alpha=0.05, steps=3)
    assert seen and not any(seen)  # BatchNorm ran in eval mode at every attack step
    assert model.training
    assert torch.equal(model.bn.running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_parameters_require_no_gradient_during_an_attack_and_get_their_flags_back():
    model = TinyNet(8, 3)
    model.bn.weight.requires_grad_(False)  # a frozen parameter stays frozen afterwards
    flags_before = [p.requires_grad for p in model.parameters()]
    during = []
    model.bn.register_forward_hook(lambda module, *_: during.append([p.requires_grad for p in model.parameters()]))
    x, y = torch.rand(4, 8), torch.zeros(4, dtype=torch.long)
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.05, steps=2, random_init=False)
    assert during and all(not any(flags) for flags in during)
    assert [p.requires_grad for p in model.parameters()] == flags_before
    # the input gradient is what it is with the parameters requiring gradients: by hand, one step
    point = x.clone().requires_grad_(True)
    model.eval()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(point)[1], y, reduction="sum"), point)
    model.train()
    expected = (x + 0.05 * grad.sign()).clamp(x - 0.1, x + 0.1).clamp(0, 1)
    first = pgd(model, x, y, eps=0.1, alpha=0.05, steps=1, random_init=False)
    assert torch.equal(first, expected) and x_adv.shape == x.shape


def test_per_sample_budget_and_zero_budget():
    torch.manual_seed(0)
    model = TinyNet(8, 3)
    x, y = torch.rand(3, 8), torch.zeros(3, dtype=torch.long)
    eps = torch.tensor([0.0, 0.05, 0.3])
    x_adv = pgd(model, x, y, eps=eps, alpha=eps / 2, steps=5)
    assert torch.equal(x_adv[0], x[0])
    linf = (x_adv - x).abs().amax(1)
    assert linf[1] <= 0.05 + TOL and linf[2] <= 0.3 + TOL and linf[2] > 0.05


# --- the attack object the engine binds on every step ----------------------------------


def test_the_step_s_attack_is_bound_to_the_owners_budget_the_victims_and_the_given_model(tmp_path):
    """step.attack carries each example's budget from state.class_eps/class_alpha (set by hand
    here, as an attack_budget owner would), the victims chosen for the step, and the model
    the engine names, so attacking a weight average needs no swap of state.model."""
    import copy

    from robx.core import engine

    from conftest import tiny_config

    run = engine.build_run(tiny_config(plugins=["topk"], steps=2), tmp_path / "run")
    run.state.class_eps = torch.linspace(0.01, 0.10, 10)
    run.state.class_alpha = torch.linspace(0.001, 0.010, 10)
    x, y, labels = engine.training_batch(run, torch.arange(32))
    step = engine.prepared_step(run, x, y, labels)
    assert torch.allclose(step.attack.eps, 0.01 * (labels + 1).float())
    assert torch.allclose(step.attack.alpha, 0.001 * (labels + 1).float())
    assert step.attack.mask is step.victim_mask and step.victim_mask is not None
    assert step.attack.model is run.state.model
    other = copy.deepcopy(run.state.model)
    trained = run.state.model
    step = engine.prepared_step(run, x, y, labels, model=other)
    assert step.attack.model is other and run.state.model is trained
    moved = (step.x_adv - step.x).abs()
    assert torch.all(moved <= step.attack.eps.view(-1, 1, 1, 1) + 1e-6)
    assert torch.all(moved[~step.victim_mask.expand_as(moved)] == 0)  # only victims move


def test_attack_starts_and_targets():
    """"none" starts at x (one step from x is FGSM's), "gaussian" is x + std N(0, 1) in the
    box, and targets make the attack descend toward them."""
    from robx.core.attacks import Attack, cross_entropy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(16, 12), torch.randint(0, 3, (16,))
    attack = Attack(model=model, x=x, y=y, eps=torch.full((16,), 0.05), alpha=torch.full((16,), 0.05), steps=1,
                    norm="linf", bounds=(0.0, 1.0), task_loss=cross_entropy)
    assert torch.equal(attack(start="none"), fgsm(model, x, y, eps=0.05))
    zero_steps = Attack(**{**attack.__dict__, "steps": 0})
    torch.manual_seed(1)
    start = zero_steps(start="gaussian", start_std=0.01)
    torch.manual_seed(1)
    assert torch.equal(start, (x + 0.01 * torch.randn_like(x)).clamp(0, 1))
    targets = (y + 1) % 3
    towards = Attack(**{**attack.__dict__, "steps": 10, "alpha": torch.full((16,), 0.01)})(targets=targets)
    assert cross_entropy(model(towards), targets).mean() < cross_entropy(model(x), targets).mean()


def test_budgets_are_written_as_people_write_them():
    from robx.core.attack_plans import budget_text

    assert [budget_text(v) for v in (8 / 255, 2 / 255, 16 / 255, 0.1, 0.5, 0.0)] == \
        ["8/255", "2/255", "16/255", "0.1", "0.5", "0"]


def test_a_plan_binds_each_example_to_its_class_budget():
    """Validation under the run's budgets: example i gets class y_i's eps and alpha (read off
    the per-class tensors by hand); without per-class budgets, every example the plan's."""
    from robx.core.data import Split, TaskData
    from robx.core.registry import registry
    from robx.plugins.tasks.classification import Classification

    x, labels = torch.rand(4, 1, 2, 2), torch.tensor([2, 0, 1, 2])
    task = Classification(TaskData("tiny", ["a", "b", "c"], Split(x, labels, labels), Split(x, labels, labels)))
    class_eps, class_alpha = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.01, 0.02, 0.03])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    plan = registry().plan_attack(task, "pgd", eps=0.5, alpha=0.05, steps=3, class_budget=(class_eps, class_alpha))
    bound = plan.bind(model, task, x, labels, labels)
    assert bound.eps.tolist() == pytest.approx([0.3, 0.1, 0.2, 0.3]) and bound.alpha.tolist() == pytest.approx(
        [0.03, 0.01, 0.02, 0.03])
    assert plan.describe() == "PGD-3 linf eps=per-class alpha=per-class"
    uniform = registry().plan_attack(task, "pgd", eps=0.5, alpha=0.05, steps=3).bind(model, task, x, labels, labels)
    assert uniform.eps.tolist() == [0.5] * 4 and uniform.alpha.tolist() == pytest.approx([0.05] * 4)
    x_adv = plan(model, task, x, labels, labels)
    assert ((x_adv - x).abs().flatten(1).amax(1) <= class_eps[labels] + 1e-6).all()
