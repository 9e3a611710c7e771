"""Fast adversarial training (FGSM-RS, N-FGSM, GradAlign, Free AT) and the catastrophic-
overfitting check: the perturbations against the authors' update rules written out here,
their constraints as properties (hypothesis), the GradAlign regulariser against a hand
computation, the engine's batch replay, and the check on a scripted and on a real collapse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from robx.core.attacks import Attack, cross_entropy, logits_of
from robx.core.config import TrainConfig
from robx.core.engine import train
from robx.core.errors import RobxError
from robx.core.state import Step
from robx.plugins.fgsm import FGSM
from robx.plugins.free import Free
from robx.plugins.gradalign import GradAlign
from robx.plugins.nfgsm import NFGSM
from test_attacks import FAST, TOL, TinyNet, _distance, attack_case
from conftest import tiny_config, train_killed_and_resumed


def bound(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str = "linf",
          mask: torch.Tensor | None = None, steps: int = 10) -> Step:
    """A step whose attack is bound as the engine binds it (run steps and alpha that the
    single-step methods must replace with their own)."""
    attack = Attack(model=model, x=x, y=y, eps=eps, alpha=eps / 4, steps=steps, norm=norm, bounds=(0.0, 1.0),
                    task_loss=cross_entropy, mask=mask)
    return Step(x=x, y=y, labels=y, attack=attack)


def input_grad(model: torch.nn.Module, point: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    point = point.detach().requires_grad_(True)
    model.eval()
    (grad,) = torch.autograd.grad(F.cross_entropy(logits_of(model, point), y, reduction="sum"), point)
    return grad


def case_model(case):
    seed, x, dim, norm, eps, _, mask = case
    torch.manual_seed(seed)
    model = TinyNet(dim, 3).to(x.dtype)
    return model, torch.randint(0, 3, (x.shape[0],)), eps.to(x.dtype)


@FAST
@given(attack_case(), st.booleans())
def test_fgsm_stays_in_each_examples_ball_and_the_box(case, random_start):
    model, y, eps = case_model(case)
    x, norm = case[1], case[3]
    plugin = FGSM(FGSM.Options(random_start=random_start))
    x_adv = plugin.generate_adversary(bound(model, x, y, eps, norm))
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert (_distance(x_adv - x, norm) <= eps + TOL).all()
    assert torch.equal(x_adv[eps == 0], x[eps == 0])


@FAST
@given(attack_case(), st.sampled_from([None, 1.0, 2.0]))
def test_nfgsm_stays_within_noise_plus_step_or_its_clip(case, clip):
    model, y, eps = case_model(case)
    x, norm = case[1], case[3]
    x_adv = NFGSM(NFGSM.Options(clip=clip)).generate_adversary(bound(model, x, y, eps, norm))
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    reach = 3.0 if clip is None else clip
    assert (_distance(x_adv - x, norm) <= reach * eps + TOL).all()


@FAST
@given(attack_case(), st.integers(1, 4))
def test_free_stays_in_each_examples_ball_and_the_box_over_replays(case, replays):
    model, y, eps = case_model(case)
    x, mask = case[1], case[6]
    plugin = Free(Free.Options(replays=replays))
    generator = torch.Generator().manual_seed(case[0])
    for _ in range(replays):
        step = bound(model, x, y, eps, mask=mask)
        x_adv = plugin.generate_adversary(step)
        assert (x_adv >= 0).all() and (x_adv <= 1).all()
        assert (_distance(x_adv - x, "linf") <= eps + TOL).all()
        assert torch.equal(x_adv[~mask.expand_as(x)], x[~mask.expand_as(x)])  # victims only
        step.rows_source, step.input_gradient = "adversarial", torch.randn(x.shape, generator=generator).to(x.dtype)
        plugin.after_step(step)


def test_fgsm_rs_is_wong_et_al_update():
    """delta ~ U(-eps, eps) clamped to the box; delta + 1.25 eps sign(g) clipped to eps, then to the box."""
    torch.manual_seed(0)
    model, x, y = TinyNet(12, 3), torch.rand(16, 12), torch.randint(0, 3, (16,))
    eps = torch.linspace(0.01, 0.2, 16)  # per example, as DAFA's class budgets give
    torch.manual_seed(7)
    x_adv = FGSM(FGSM.Options()).generate_adversary(bound(model, x, y, eps))
    torch.manual_seed(7)
    e = eps[:, None]
    delta = (torch.rand_like(x) * 2 - 1) * e
    delta = torch.clamp(delta, -x, 1 - x)
    grad = input_grad(model, x + delta, y)
    delta = torch.maximum(torch.minimum(delta + 1.25 * e * grad.sign(), e), -e)
    expected = torch.clamp(x + delta, 0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_nfgsm_is_de_jorge_et_al_update_and_leaves_the_ball():
    """eta ~ U(-2 eps, 2 eps) clamped to the box; delta = eta + eps sign(g), clamped to the box only."""
    torch.manual_seed(0)
    model, x, y = TinyNet(12, 3), torch.rand(64, 12), torch.randint(0, 3, (64,))
    eps = torch.full((64,), 8 / 255)
    torch.manual_seed(3)
    x_adv = NFGSM(NFGSM.Options()).generate_adversary(bound(model, x, y, eps))
    torch.manual_seed(3)
    e = eps[:, None]
    eta = (torch.rand_like(x) * 2 - 1) * 2 * e
    eta = torch.clamp(eta, -x, 1 - x)
    grad = input_grad(model, x + eta, y)
    expected = torch.clamp(x + eta + e * grad.sign(), 0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert (x_adv - x).abs().max() > 2 * 8 / 255  # not projected back onto the eps-ball


def test_gradalign_regulariser_is_one_minus_the_cosine_by_hand():
    """A linear model's input gradient of the summed CE is W^T (softmax(Wx + b) - onehot(y))."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 1, 0])
    eps = torch.full((5,), 0.1)
    step = bound(linear, x, y, eps)
    torch.manual_seed(11)
    term = GradAlign(GradAlign.Options(lam=0.2)).extra_loss(step)
    torch.manual_seed(11)
    eta = (torch.rand_like(x) * 2 - 1) * 0.1
    W, b = linear.weight.detach().double(), linear.bias.detach().double()

    def grad(z):
        p = torch.softmax(z.double() @ W.T + b, dim=1)
        return (p - F.one_hot(y, 3).double()) @ W

    g1, g2 = grad(x), grad(x + eta)
    cos = (g1 * g2).sum(1) / (g1.norm(dim=1) * g2.norm(dim=1))
    assert term.item() == pytest.approx(0.2 * (1 - cos.mean().item()), abs=1e-6)
    term.backward()  # double backpropagation reaches the weights
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


def test_free_carries_its_perturbation_as_shafahi_et_al():
    """x' = clamp(x + delta); then delta <- clip(delta + eps sign(g), eps), g zero where the clamp cut."""
    x = torch.tensor([[0.5, 0.99, 0.0]])
    y = torch.tensor([0])
    eps = torch.tensor([0.05])
    model = torch.nn.Linear(3, 2)
    plugin = Free(Free.Options(replays=2))
    step = bound(model, x, y, eps)
    assert torch.equal(plugin.generate_adversary(step), x)  # zeros at the start
    step.rows_source, step.input_gradient = "adversarial", torch.tensor([[1.0, 2.0, -3.0]])
    plugin.after_step(step)
    assert torch.allclose(plugin.delta, torch.tensor([[0.05, 0.05, -0.05]]))
    step = bound(model, x, y, eps)
    x_adv = plugin.generate_adversary(step)
    assert torch.allclose(x_adv, torch.tensor([[0.55, 1.0, 0.0]]))
    step.rows_source, step.input_gradient = "adversarial", torch.tensor([[-1.0, 5.0, 5.0]])
    plugin.after_step(step)
    # 0.99 + 0.05 left the box: no move there; 0.0 - 0.05 did too
    assert torch.allclose(plugin.delta, torch.tensor([[0.0, 0.05, -0.05]]))


def test_free_replays_each_batch_and_counts_every_step_in_the_schedule(tmp_path: Path):
    train(tiny_config(plugins=["pgd"], epochs=1), tmp_path / "once")
    train(tiny_config(plugins=["free"], plugin_options={"free": {"replays": 3}}, epochs=1), tmp_path / "free")
    once, free = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True) for name in ("once", "free"))
    assert free["global_step"] == 3 * once["global_step"]
    # OneCycle counts every replay: stepping past its total would raise, and it ends at its floor
    assert free["scheduler"]["total_steps"] == free["global_step"]


def test_free_resumes_its_carried_perturbation_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from robx.core.rundir import load_checkpoint

    config = tiny_config(plugins=["free"], plugin_options={"free": {"replays": 2}}, epochs=3)
    straight_dir, killed_dir = train_killed_and_resumed(config, tmp_path, monkeypatch, kill_in_epoch=2)
    straight, resumed = (load_checkpoint(path / "checkpoint.pt") for path in (straight_dir, killed_dir))
    assert torch.equal(straight["plugins"]["free"]["delta"], resumed["plugins"]["free"]["delta"])
    assert straight["plugins"]["free"]["delta"].abs().max() > 0
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_free_refuses_a_plugin_that_trains_on_the_clean_batch(tmp_path: Path):
    with pytest.raises(RobxError, match="free trains on its own x'"):
        train(tiny_config(plugins=["free", "trades"]), tmp_path / "run")


def test_single_step_methods_compose_with_the_imbalance_methods(tmp_path: Path):
    for plugins, loss in ((["nfgsm", "drw"], "ldam"), (["fgsm", "cb"], "ce"), (["trades", "nfgsm", "dafa"], "ce")):
        report = train(tiny_config(plugins=plugins, loss=loss, epochs=1), tmp_path / "-".join(plugins))
        assert 0.0 <= report["summary"]["robust"]["overall"] <= 1.0


def test_two_adversaries_are_the_usual_one_line(tmp_path: Path):
    from robx.core.errors import PluginConflictError

    with pytest.raises(PluginConflictError, match="'fgsm' and 'nfgsm' both generate adversarial examples"):
        train(tiny_config(plugins=["fgsm", "nfgsm"]), tmp_path / "run")


def test_gradalign_refuses_l2(tmp_path: Path):
    with pytest.raises(RobxError, match="gradalign is an Linf method"):
        train(tiny_config(plugins=["gradalign"], norm="l2", eps=1.0, alpha=0.25), tmp_path / "run")


# --- the catastrophic-overfitting check -------------------------------------------------------


def test_a_scripted_collapse_warns_is_recorded_and_reports_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    """The check's accuracies 0.40, 0.42, 0.10, 0.12: epoch 2 falls below 0.5 x 0.42 and epoch 3
    stays there, which confirms the collapse that began in epoch 2."""
    import robx.core.engine.collapse as collapse

    scripted = iter([0.40, 0.42, 0.10, 0.12])
    monkeypatch.setattr(collapse, "check_accuracy", lambda run: next(scripted))
    config = tiny_config(plugins=["fgsm"], epochs=4, val_fraction=0.2, keep_best="robust-overall")
    from robx.cli.app import console
    from robx.cli.train import _train_on
    from robx.core.distributed import current

    with console.capture() as printed:
        _train_on(current(), config, tmp_path / "run")
    assert "test accuracy" in printed.get() and "best checkpoint" in printed.get()
    assert "catastrophic overfitting in epoch(s) 2: the report is the best checkpoint's" in printed.get()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["collapse_check"]["collapsed"] for m in metrics] == [False, False, False, True]
    warned = capsys.readouterr().err
    assert "catastrophic overfitting from epoch 2: PGD accuracy on the check batch fell to 0.100 in epoch 2 and 0.120 " \
        "in epoch 3, below 0.5 x its best, 0.420" in warned and warned.count("catastrophic") == 1
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["checkpoint"] == "best" and saved["collapse"] == {"epochs": [2]}
    assert saved["last"]["checkpoint"] == "last" and saved["best"]["report"] == "report-best.json"
    assert saved["per_class"] == json.loads((tmp_path / "run" / "report-best.json").read_text())["per_class"]


def test_a_gradual_fall_is_a_collapse_once_below_half_the_best(tmp_path, monkeypatch):
    """0.30, 0.25, 0.20, 0.14, 0.10: no epoch halves the one before, but 0.14 < 0.5 x 0.30
    (and 0.10 confirms it)."""
    import robx.core.engine.collapse as collapse

    scripted = iter([0.30, 0.25, 0.20, 0.14, 0.10])
    monkeypatch.setattr(collapse, "check_accuracy", lambda run: next(scripted))
    train(tiny_config(plugins=["fgsm"], epochs=5), tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["collapse_check"]["collapsed"] for line in lines] == [False, False, False, False, True]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["collapse"] == {"epochs": [3]}


def test_a_dip_the_next_epoch_recovers_from_is_no_collapse_but_a_fall_in_the_last_epoch_is(tmp_path, monkeypatch,
                                                                                               capsys):
    """The check of N-FGSM with class-balanced weights on Step-10 CIFAR-10 (seed 0, epochs 7-10):
    0.316, 0.281, 0.152, 0.313. 0.152 < 0.5 x 0.316, but the next epoch is back: a dip, not
    catastrophic overfitting, which does not recover. A fall in the run's last epoch has no
    next epoch to confirm it and is reported."""
    import robx.core.engine.collapse as collapse

    scripted = iter([0.316, 0.281, 0.152, 0.313, 0.30])
    monkeypatch.setattr(collapse, "check_accuracy", lambda run: next(scripted))
    train(tiny_config(plugins=["nfgsm", "cb"], epochs=5), tmp_path / "dip")
    lines = (tmp_path / "dip" / "metrics.jsonl").read_text().splitlines()
    assert not any(json.loads(line)["collapse_check"]["collapsed"] for line in lines)
    assert "collapse" not in json.loads((tmp_path / "dip" / "report.json").read_text())
    assert "catastrophic" not in capsys.readouterr().err
    scripted = iter([0.30, 0.32, 0.12])
    train(tiny_config(plugins=["fgsm"], epochs=3), tmp_path / "last")
    lines = (tmp_path / "last" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["collapse_check"]["collapsed"] for line in lines] == [False, False, True]
    assert json.loads((tmp_path / "last" / "report.json").read_text())["collapse"] == {"epochs": [2]}
    assert "catastrophic overfitting from epoch 2: PGD accuracy on the check batch fell to 0.120 in the run's last " \
        "epoch, below 0.5 x its best, 0.320" in capsys.readouterr().err


def test_no_collapse_below_the_floor_or_without_an_adversary(tmp_path, monkeypatch):
    import robx.core.engine.collapse as collapse

    scripted = iter([0.08, 0.01, 0.02])  # a fall from under 0.1 is noise on 256 examples
    monkeypatch.setattr(collapse, "check_accuracy", lambda run: next(scripted))
    train(tiny_config(plugins=["fgsm"], epochs=3), tmp_path / "low")
    lines = (tmp_path / "low" / "metrics.jsonl").read_text().splitlines()
    assert not any(json.loads(line)["collapse_check"]["collapsed"] for line in lines)
    train(tiny_config(plugins=["natural"], epochs=1), tmp_path / "natural")
    assert "collapse_check" not in json.loads((tmp_path / "natural" / "metrics.jsonl").read_text().splitlines()[0])


CIFAR = Path(os.environ.get("ROBX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "cifar10"


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.exists(), reason=f"CIFAR-10 not found at {CIFAR} (set ROBX_DATA)")
def test_the_check_fires_on_fgsm_without_random_start_at_a_large_eps(tmp_path, capsys):
    """FGSM from x at eps 16/255 on CIFAR-10 (cnn4, a constant rate of 0.2) overfits
    catastrophically: the training (FGSM) accuracy climbs while PGD accuracy on the check batch
    falls to about nothing, and the check says so."""
    config = TrainConfig(dataset="cifar10", model="cnn4", imbalance="none", n_max=500, n_test_per_class=20,
                         plugins=["fgsm"], plugin_options={"fgsm": {"random_start": False}}, eps=16 / 255,
                         alpha=4 / 255, steps=1, eval_steps=5, epochs=10, schedule="constant", lr=0.2,
                         batch_size=32)
    train(config, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    checks = [m["collapse_check"]["robust"] for m in metrics]
    fgsm = [sum(m["train"]["robust"]) / len(m["train"]["robust"]) for m in metrics]  # balanced classes
    fell = json.loads((tmp_path / "run" / "report.json").read_text())["collapse"]["epochs"]
    assert fell and metrics[fell[0] + 1]["collapse_check"]["collapsed"], checks  # confirmed the epoch after
    peak = checks.index(max(checks[: fell[0]]))
    assert max(checks[fell[0]:fell[0] + 2]) < 0.5 * checks[peak], checks  # two epochs below half the best
    assert max(fgsm[fell[0]:]) > fgsm[peak], (fgsm, checks)  # FGSM accuracy up while PGD accuracy falls
    assert f"catastrophic overfitting from epoch {fell[0]}" in capsys.readouterr().err
