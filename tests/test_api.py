"""The Python API (docs/api.md): its walk-through run as a notebook would, the attack objects
against torchattacks, and the API's answers against values computed here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import robx

ROOT = Path(__file__).resolve().parent.parent


def _cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)


def test_the_api_walk_through_runs_cell_by_cell(tmp_path, monkeypatch):
    """Every cell of docs/api.md, in order, in one namespace (as a notebook), in a fresh
    directory; then what the cells made is checked against the files and by hand."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, cell in enumerate(_cells()):
        exec(compile(cell, f"docs/api.md cell {number}", "exec"), namespace)
    run = namespace["run"]
    assert isinstance(run, robx.Run) and run.path == Path("runs/api-demo")
    saved = __import__("json").loads((tmp_path / "runs/api-demo/report.json").read_text())
    assert [row["robust"] for row in run.report.rows] == saved["per_class"]["robust"]
    assert [row["count"] for row in run.report.rows] == saved["class_counts"]
    assert len(run.history) == 2 and (tmp_path / "runs/api-demo/per-class-again.png").stat().st_size > 0
    x, y, x_adv = namespace["x"], namespace["y"], namespace["x_adv"]
    budget = torch.linspace(0.02, 0.1, 10)[y]  # the per-class cell's: each example within its class's eps
    assert bool(((x_adv - x).abs().amax(dim=(1, 2, 3)) <= budget + 1e-6).all())
    assert [attack.split("-")[0] for attack in namespace["reports"]] == ["PGD", "CW"]


def test_an_unknown_option_names_the_closest_and_the_run_writes_nothing(tmp_path):
    with pytest.raises(robx.OptionError, match=r"unknown option 'epoch'; did you mean 'epochs'\?"):
        robx.train("digits", epoch=2, out=tmp_path / "run")
    with pytest.raises(robx.RobxError, match=r"unknown plugin 'sart' \(did you mean 'srat'\?\); available: "):
        robx.train("digits", plugins="sart", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).eval()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_matches_torchattacks_step_for_step(norm):
    """Without a random start both are deterministic: the same x' to float precision."""
    torchattacks = pytest.importorskip("torchattacks")
    model = _tiny_classifier()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps, alpha = (8 / 255, 2 / 255) if norm == "Linf" else (0.5, 0.1)
    reference = (torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2)(model, eps=eps, alpha=alpha, steps=7,
                                                                             random_start=False)(x, y)
    ours = robx.attacks.PGD(model, eps=eps, alpha=alpha, steps=7, norm=norm.lower(), random_start=False)(x, y)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_per_class_and_per_example_budgets_are_each_examples_own():
    """Per class: each class's examples get what torchattacks gives them with that class's
    scalar budget alone; per example: the same as per class with the budgets spread out."""
    torchattacks = pytest.importorskip("torchattacks")
    model = _tiny_classifier(2)
    x = torch.rand(9, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2] * 3)
    class_eps, class_alpha = torch.tensor([0.02, 0.05, 0.1]), torch.tensor([0.005, 0.0125, 0.025])
    ours = robx.attacks.PGD(model, eps=class_eps, alpha=class_alpha, steps=5, random_start=False, per_class=True)(x, y)
    for c in range(3):
        members = y == c
        reference = torchattacks.PGD(model, eps=float(class_eps[c]), alpha=float(class_alpha[c]), steps=5,
                                     random_start=False)(x[members], y[members])
        torch.testing.assert_close(ours[members], reference, atol=1e-6, rtol=0)
    per_example = robx.attacks.PGD(model, eps=class_eps[y], alpha=class_alpha[y], steps=5, random_start=False)(x, y)
    torch.testing.assert_close(per_example, ours, atol=0, rtol=0)


def test_the_random_start_stays_in_the_ball_and_the_box_and_cw_raises_the_margin():
    model = _tiny_classifier(4)
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(6))
    x_adv = robx.attacks.PGD(model, eps=0.1, alpha=0.03, steps=3)(x, y)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1

    def margin(inputs):
        logits = model(inputs)
        true = logits.gather(1, y[:, None]).squeeze(1)
        return (logits.scatter(1, y[:, None], float("-inf")).amax(dim=1) - true).mean()

    with torch.no_grad():
        before = margin(x)
    after = margin(robx.attacks.CW(model, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)).detach()
    assert after > before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"norm": "l3"}, "norm must be linf or l2"),
    ({"eps": -0.1}, "eps must be finite and >= 0"),
    ({"steps": 0}, "steps must be an int >= 1"),
    ({"eps": 0.1, "per_class": True}, "per_class=True takes eps and alpha as tensors"),
])
def test_bad_attack_settings_are_one_line(kwargs, message):
    with pytest.raises(robx.OptionError, match=message):
        robx.attacks.PGD(_tiny_classifier(), **kwargs)


def test_audit_scores_any_model_per_class_as_computed_here():
    """A plain nn.Module (logits only) on digits' test split: the standard per-class accuracy
    equals the model's accuracy computed here on the same inputs; robust is at most standard."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    reports = robx.audit(model, "digits", attacks=["pgd"], steps=2)
    (report,) = reports.values()
    from robx.core.registry import registry

    data = registry().dataset("digits").read(None, 0, {})  # the digits split the audit read (data seed 0)
    x, y = data.test.x.float(), data.test.labels
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float()
    by_class = [float(correct[y == c].mean()) for c in range(10)]
    assert [row["standard"] for row in report.rows] == pytest.approx(by_class)
    assert all(row["robust"] <= row["standard"] + 1e-9 for row in report.rows)
    with pytest.raises(robx.OptionError, match="unknown attack 'fgsm'"):
        robx.audit(model, "digits", attacks=["pgd", "fgsm"])
