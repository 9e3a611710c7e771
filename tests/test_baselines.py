"""Imbalance baselines: losses, weights, sampling, mixing, averaging, TRADES/MART, evaluation."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from robx.core import engine
from robx.core.rundir import load_checkpoint
from robx.core.attacks import margin_loss
from robx.core.errors import OptionError, PluginConflictError
from robx.core.data import Split, TaskData
from robx.core.evaluate import evaluate
from robx.core.registry import registry
from robx.core.plugins import PluginHost
from robx.core.report import aggregate, load_reports
from robx.plugins.balanced_softmax import balanced_softmax_loss
from robx.plugins.cb import class_balanced_weights
from robx.plugins.drw import DeferredReweighting
from robx.plugins.ema import EMA
from robx.plugins.focal import focal_loss
from robx.plugins.ldam import ldam_loss, ldam_margins
from robx.plugins.mart import boosted_cross_entropy
from robx.plugins.mixup import mix_targets
from robx.plugins.remix import remix_label_factor
from robx.plugins.swa import SWA
from robx.plugins.tasks.classification import Classification
from robx.plugins.trades import kl_per_sample

from conftest import tiny_config

LOGITS = torch.tensor([[2.0, 0.0, -1.0]])
LABEL = torch.tensor([0])


def softmax_list(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_focal_loss_by_hand():
    p = softmax_list([2.0, 0.0, -1.0])[0]
    expected = (1 - p) ** 2 * -math.log(p)
    assert focal_loss(LOGITS, LABEL, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(LOGITS, LABEL, gamma=0.0).item() == pytest.approx(-math.log(p), rel=1e-5)


def test_ldam_margins_and_loss_by_hand():
    margins = ldam_margins(torch.tensor([1000, 100, 10]), max_margin=0.5)
    assert margins[2].item() == pytest.approx(0.5)
    assert margins[0].item() == pytest.approx(0.5 * (10 / 1000) ** 0.25, rel=1e-5)
    m = margins.tolist()
    scale = 30.0
    z = [scale * (2.0 - m[0]), scale * 0.0, scale * -1.0]
    expected = -math.log(softmax_list(z)[0])
    assert ldam_loss(LOGITS, LABEL, margins, scale).item() == pytest.approx(expected, rel=1e-4)


def test_balanced_softmax_by_hand():
    counts = torch.tensor([100, 10, 1])
    z = [2.0 + math.log(100), math.log(10), -1.0]
    assert balanced_softmax_loss(LOGITS, LABEL, counts).item() == pytest.approx(-math.log(softmax_list(z)[0]), rel=1e-5)


def test_class_balanced_weights_by_hand():
    beta = 0.9
    counts = torch.tensor([10, 1])
    raw = [(1 - beta) / (1 - beta**10), (1 - beta) / (1 - beta)]
    expected = [r * 2 / sum(raw) for r in raw]
    assert class_balanced_weights(counts, beta).tolist() == pytest.approx(expected, rel=1e-5)
    assert class_balanced_weights(torch.tensor([5, 5, 5]), 0.9999).tolist() == pytest.approx([1, 1, 1])


def test_mart_boosted_ce_and_trades_kl_by_hand():
    p = softmax_list([2.0, 0.0, -1.0])
    expected = -math.log(p[0]) - math.log(1.0001 - p[1])
    assert boosted_cross_entropy(LOGITS, LABEL).item() == pytest.approx(expected, rel=1e-5)
    q = softmax_list([0.0, 1.0, 0.0])
    kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    assert kl_per_sample(LOGITS, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(kl, rel=1e-5)


def test_mart_kl_is_weighted_by_one_minus_the_clean_true_probability():
    from robx.core.state import Step
    from robx.plugins.mart import MART

    clean = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    adv = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    y = torch.tensor([0, 2])
    step = Step(x=torch.zeros(2, 1), y=y, labels=y)
    step.clean_outputs, step.adv_outputs = clean, adv
    expected = 0.0
    for c_row, a_row, label in zip(clean.tolist(), adv.tolist(), y.tolist()):
        p, q = softmax_list(c_row), softmax_list(a_row)
        kl = sum(a * math.log(a / b) for a, b in zip(p, q))
        expected += kl * (1 - p[label]) / 2  # the authors' mean over the batch
    got = MART(MART.Options(beta=6.0)).extra_loss(step, None).item()
    assert got == pytest.approx(6.0 * expected, rel=1e-5)


def test_mart_attacks_with_cross_entropy_from_x_plus_small_gaussian_noise(monkeypatch):
    import robx.plugins.mart as mart
    from robx.core.attacks import cross_entropy
    import robx.core.attacks as attacks
    from robx.core.state import Step

    calls = {}
    monkeypatch.setattr(attacks, "pgd", lambda model, x, y, **kwargs: calls.update(kwargs) or x)
    torch.manual_seed(0)
    x = torch.full((4, 3, 16, 16), 0.5)
    y = torch.tensor([0, 1, 0, 1])
    attack = attacks.Attack(model=None, x=x, y=y, eps=torch.full((4,), 8 / 255), alpha=torch.full((4,), 2 / 255),
                            steps=10, norm="linf", bounds=(0.0, 1.0), task_loss=cross_entropy)
    mart.MART(mart.MART.Options()).generate_adversary(Step(x=x, y=y, labels=y, attack=attack))
    noise = calls["x_init"] - x
    assert noise.std().item() == pytest.approx(0.001, rel=0.05) and abs(noise.mean().item()) < 1e-4
    assert calls["loss_fn"] is cross_entropy and calls["steps"] == 10


def test_cw_margin_loss():
    assert margin_loss(LOGITS, LABEL).item() == pytest.approx(-2.0)
    assert margin_loss(LOGITS, torch.tensor([2])).item() == pytest.approx(3.0)


def _state(epoch: int, epochs: int = 10, counts=(100, 10)):
    return SimpleNamespace(epoch=epoch, num_epochs=epochs, class_counts=torch.tensor(counts),
                           eval_model=None)


def test_drw_switches_exactly_at_its_epoch():
    plugin = DeferredReweighting(DeferredReweighting.Options(beta=0.999, start=0.8))
    assert plugin.class_policy(_state(epoch=7)).class_weights is None
    raw = [(1 - 0.999) / (1 - 0.999**n) for n in (100, 10)]  # Cui et al., by hand
    expected = [r * 2 / sum(raw) for r in raw]
    assert plugin.class_policy(_state(epoch=8)).class_weights.tolist() == pytest.approx(expected, rel=1e-5)
    explicit = DeferredReweighting(DeferredReweighting.Options(start_epoch=3))
    assert explicit.class_policy(_state(epoch=2)).class_weights is None
    assert explicit.class_policy(_state(epoch=3)).class_weights is not None


@pytest.mark.parametrize(
    ("count_i", "count_j", "lam", "expected"),
    [
        (300, 100, 0.3, 0.0),   # i frequent (ratio 3 >= kappa), image mostly j -> label j
        (300, 100, 0.7, 0.7),   # i frequent but image mostly i -> plain mixup label
        (100, 300, 0.7, 1.0),   # i rare (ratio 1/3 <= 1/kappa), image mostly i (1 - lam < tau) -> label i
        (100, 300, 0.3, 0.3),   # i rare but image mostly j -> plain
        (100, 150, 0.2, 0.2),   # ratio between 1/kappa and kappa -> plain
    ],
)
def test_remix_label_rule_every_branch(count_i, count_j, lam, expected):
    factor = remix_label_factor(torch.tensor([count_i]), torch.tensor([count_j]), lam, kappa=3.0, tau=0.5)
    assert factor.item() == pytest.approx(expected)


def test_mixed_targets_are_convex_combinations():
    targets = mix_targets(torch.tensor([0, 1]), torch.tensor([0.25, 1.0]), torch.tensor([1, 0]), 3)
    assert torch.allclose(targets, torch.tensor([[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]]))


def test_swa_average_equals_mean_of_snapshots():
    model = torch.nn.Linear(3, 2)
    state = SimpleNamespace(epoch=0, num_epochs=4, model=model, eval_model=None)
    plugin = SWA(SWA.Options(start=0.5))  # averages epochs 2 and 3
    snapshots = []
    for epoch in range(4):
        with torch.no_grad():
            model.weight.fill_(float(epoch + 1))
        snapshots.append(model.weight.clone())
        state.epoch = epoch
        plugin.epoch_end(state)
    averaged = plugin.state_dict()["average"]["parameters"]["weight"]
    assert torch.allclose(averaged, (snapshots[2] + snapshots[3]) / 2)


def test_swa_and_ema_in_training_evaluate_the_average(tmp_path):
    report = engine.train(tiny_config(epochs=3, plugins=["swa"], plugin_options={"swa": {"start": 0.3}}),
                          tmp_path / "swa")  # averages epochs 1 and 2
    payload = load_checkpoint(tmp_path / "swa" / "checkpoint.pt")
    assert "eval_model" in payload and report["plugins"] == ["swa", "pgd"]
    trained = payload["model"]["head.weight"]
    assert not torch.equal(payload["eval_model"]["head.weight"], trained)
    with pytest.raises(PluginConflictError, match="'swa' and 'ema' both choose the evaluated model"):
        engine.train(tiny_config(epochs=1, plugins=["swa", "ema"], n_eval=20), tmp_path / "both")
    assert not (tmp_path / "both").exists()  # rejected before anything was written


def test_swa_can_average_batchnorm_statistics_with_the_weights(tmp_path, monkeypatch):
    """``batchnorm = "average"``: the evaluated model's BN statistics are the mean of the
    last iterate's running statistics at the averaged epochs, not recomputed."""
    from robx import hookimpl
    from robx.core import discovery as plugin_module
    from robx.core.discovery import PluginSpec, available_plugins

    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshots:
        """Each epoch's running statistics, as SWA's own epoch_end sees them."""

        name = "snapshots"

        @hookimpl
        def epoch_end(self, state):
            snapshots.append({name: b.detach().clone() for name, b in state.model.named_buffers()
                              if b.is_floating_point()})

    monkeypatch.setattr(plugin_module, "available_plugins",
                        lambda: {**available_plugins(), "snapshots": PluginSpec("snapshots", "test", Snapshots)})
    engine.train(tiny_config(epochs=3, plugins=["swa", "snapshots"],
                             plugin_options={"swa": {"start": 0.3, "batchnorm": "average"}}),
                 tmp_path / "swa")  # averages epochs 1 and 2
    evaluated = load_checkpoint(tmp_path / "swa" / "checkpoint.pt")["eval_model"]
    assert snapshots and all(name in evaluated for name in snapshots[0])
    for name in snapshots[0]:
        torch.testing.assert_close(evaluated[name], (snapshots[1][name] + snapshots[2][name]) / 2)


def test_ema_batchnorm_statistics_by_choice():
    """"average": the EMA of the running mean (0.5 * 1 + 0.5 * 3); "last" (the default, as
    Gowal et al.'s code): the last iterate's (3); "recompute": none, the engine recomputes."""
    assert EMA.Options().batchnorm == "last"
    for batchnorm, expected in (("average", 2.0), ("last", 3.0), ("recompute", None)):
        model = torch.nn.BatchNorm1d(2)
        state = SimpleNamespace(epoch=0, num_epochs=1, model=model, eval_model=None)
        plugin = EMA(EMA.Options(decay=0.5, warmup=False, batchnorm=batchnorm))
        for value in (1.0, 3.0):
            with torch.no_grad():
                model.weight.fill_(value)
            model.running_mean.fill_(value)
            plugin.after_step(None, state)
        evaluated = plugin.averaged_weights(state)
        assert torch.allclose(evaluated["weight"], torch.full((2,), 2.0))  # the weights are averaged in every case
        if expected is None:
            assert "running_mean" not in evaluated
        else:
            assert torch.allclose(evaluated["running_mean"], torch.full((2,), expected))


def test_ema_updates_every_step():
    model = torch.nn.Linear(2, 1, bias=False)
    state = SimpleNamespace(epoch=0, num_epochs=1, model=model, eval_model=None)
    plugin = EMA(EMA.Options(decay=0.5, warmup=False))
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        plugin.after_step(None, state)
    assert torch.allclose(plugin.state_dict()["average"]["parameters"]["weight"], torch.full((1, 2), 2.0))  # 0.5*1 + 0.5*3


def test_ema_warms_up_its_decay_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    state = SimpleNamespace(epoch=0, num_epochs=1, model=model, eval_model=None)
    plugin = EMA(EMA.Options(decay=0.999))
    for value in (1.0, 3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        plugin.after_step(None, state)
    d1, d2 = 2 / 11, 3 / 12  # min(0.999, (1 + t) / (10 + t)) for t = 1, 2 models averaged
    expected = d2 * (d1 * 1.0 + (1 - d1) * 3.0) + (1 - d2) * 5.0
    assert plugin.state_dict()["average"]["parameters"]["weight"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("plugins", [["trades"], ["mart"], ["mixup"], ["remix"], ["cb"], ["ema"]])
def test_each_baseline_trains_end_to_end(tmp_path, plugins):
    report = engine.train(tiny_config(epochs=1, plugins=plugins, n_eval=40), tmp_path / "run")
    assert all(0 <= v <= 1 for v in report["per_class"]["robust"])
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert math.isfinite(line["loss"]) and line["train"]["robust"] is not None


def test_trades_trains_on_the_clean_batch_and_weights_hit_the_natural_term(tmp_path):
    host = PluginHost(["trades"], {})
    assert host.names == ["trades"]  # TRADES replaces the PGD adversary
    report = engine.train(tiny_config(epochs=1, plugins=["trades"], loss="ldam", n_eval=40), tmp_path / "run")
    assert report["plugins"] == ["trades", "ldam"]


def test_loss_selection_and_meaningless_combinations():
    assert PluginHost(["drw", "trades"], {}, loss="ldam").names == ["drw", "trades", "ldam"]
    with pytest.raises(OptionError, match="not a loss"):
        PluginHost([], {}, loss="cb")
    with pytest.raises(PluginConflictError, match="'mart' and 'focal' both define the training loss"):
        PluginHost(["mart"], {}, loss="focal")


def test_autoattack_wrapper_on_a_tiny_model():
    pytest.importorskip("pyautoattack", reason="the reference AutoAttack is the autoattack extra")
    torch.manual_seed(0)
    # the standard version's targeted attacks use the 9 runner-up classes: 10 classes
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)  # every point starts correctly classified
    split = Split(x, y, y)
    task = Classification(TaskData("tiny", [str(c) for c in range(10)], split, split))
    settings = dict(eps=0.05, alpha=0.01, steps=20)
    pgd_result = evaluate(model, task, split, registry().plan_attack(task, "pgd", **settings), device=torch.device("cpu"))
    aa_result = evaluate(model, task, split, registry().plan_attack(task, "autoattack", **settings, seed=0),
                         device=torch.device("cpu"))
    assert aa_result.clean_scores.all()
    assert aa_result.robust_scores.mean() <= pgd_result.robust_scores.mean()


def test_report_aggregation(tmp_path):
    def fake(method, seed, robust_minority):
        report = {"class_names": ["a", "b"], "class_counts": [10, 1], "majority_classes": [0], "plugins": ["x"],
                  "per_class": {"standard": [0.9, 0.5], "robust": [0.5, robust_minority]},
                  "summary": {k: {"overall": 0.7, "majority": 0.9, "minority": 0.5, "worst": 0.5, "disparity": 0.4}
                              for k in ("standard", "robust")}, "seed": seed}
        report["summary"]["robust"]["minority"] = robust_minority
        (tmp_path / f"{method}-seed{seed}.json").write_text(json.dumps({"method": method, "report": report}))

    fake("pgd-at", 0, 0.1)
    fake("pgd-at", 1, 0.3)
    fake("cb", 0, 0.4)
    rows = {row["method"]: row for row in aggregate(load_reports([tmp_path]))}
    mean, std = rows["pgd-at"]["robust.minority"]
    assert mean == pytest.approx(0.2) and std == pytest.approx(math.sqrt(0.02))
    assert rows["cb"]["runs"] == 1 and rows["cb"]["robust.minority"] == (0.4, 0.0)
    assert rows["pgd-at"]["per_class.robust"] == pytest.approx([0.5, 0.2])


def test_reports_of_a_lower_is_better_metric_are_tabulated_as_they_are(tmp_path):
    """Crime runs score absolute error: `robx report` prints it unscaled (not as %), and
    refuses, in one line, to put it in a table beside accuracy runs."""
    from robx.cli.listing import markdown_table
    from robx.core.errors import RobxError

    def fake(folder, method, seed, metric, names, minority):
        report = {"class_names": names, "class_counts": [90, 10], "majority_classes": [0], "plugins": ["x"],
                  "metric": metric, "per_class": {"standard": [0.1, minority], "robust": [0.2, minority]},
                  "summary": {k: {"overall": 0.3, "majority": 0.1, "minority": minority, "worst": minority,
                                  "disparity": minority - 0.1} for k in ("standard", "robust")}, "seed": seed}
        folder.mkdir(exist_ok=True)
        (folder / f"{method}-seed{seed}.json").write_text(json.dumps({"method": method, "report": report}))

    error = {"name": "absolute error", "higher_is_better": False}
    fake(tmp_path / "crime", "mingre", 0, error, ["zero", "non-zero"], 1.0)
    fake(tmp_path / "crime", "mingre", 1, error, ["zero", "non-zero"], 1.2)
    rows = aggregate(load_reports([tmp_path / "crime"]))
    line = markdown_table(rows).splitlines()[2]
    assert line.startswith("| mingre | 0,1 | 0.300 ± 0.000 | 0.100 ± 0.000 | 1.100 ± 0.141 |")  # std of 1.0, 1.2
    fake(tmp_path / "images", "pgd", 0, {"name": "accuracy", "higher_is_better": True}, ["a", "b"], 0.5)
    with pytest.raises(RobxError, match="^cannot put runs of different classes or metrics in one table"):
        aggregate(load_reports([tmp_path / "crime", tmp_path / "images"]))


def test_balanced_runs_show_average_and_worst_only(tmp_path):
    """On balanced data the majority/minority halves are arbitrary; tables drop them."""
    from rich.console import Console

    from robx.cli.display import report_table
    from robx.cli.listing import markdown_table

    report = {"class_names": ["a", "b", "c", "d"], "class_counts": [5, 5, 5, 5], "majority_classes": [0, 1],
              "plugins": ["x"], "per_class": {"standard": [0.9, 0.8, 0.7, 0.6], "robust": [0.5, 0.4, 0.3, 0.2]},
              "summary": {"standard": {"overall": 0.75, "majority": 0.85, "minority": 0.65, "worst": 0.6,
                                       "disparity": 0.2},
                          "robust": {"overall": 0.35, "majority": 0.45, "minority": 0.25, "worst": 0.2,
                                     "disparity": 0.2}}, "seed": 0}
    (tmp_path / "m-seed0.json").write_text(json.dumps({"method": "m", "report": report}))
    rows = aggregate(load_reports([tmp_path]))
    header, _, row = markdown_table(rows).splitlines()
    assert header == "| method | seeds | sta overall | sta worst | rob overall | rob worst |"
    assert row == "| m | 0 | 75.0 ± 0.0 | 60.0 ± 0.0 | 35.0 ± 0.0 | 20.0 ± 0.0 |"
    console = Console(width=200, record=True)
    console.print(report_table(report, "t"))
    text = console.export_text()
    assert "worst" in text and "majority" not in text and "minority" not in text
    report["class_counts"] = [9, 9, 1, 1]
    console.print(report_table(report, "t"))
    assert "minority" in console.export_text()


def _loss_of_one_step(tmp_path, plugins, options):
    """One natural-training step (x' = x, no augmentation): the batch's outputs and labels
    as the training pass saw them, and the loss the engine minimised."""
    from robx.core import engine

    config = tiny_config(plugins=plugins, plugin_options=options, augment=False)
    run = engine.build_run(config, tmp_path / "run")
    engine.refresh_class_quantities(run)
    labels = run.data.train.labels
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:n] for c, n in ((0, 6), (3, 5), (7, 2), (9, 1))])
    x, y, _ = engine.training_batch(run, idx)
    reference = copy.deepcopy(run.state.model).train()
    with torch.no_grad():
        outputs = reference(x)[1]
    sums: dict[str, torch.Tensor] = {}
    engine.train_step(run, x, y, y, run.task.statistics(torch.device("cpu")), sums)
    return outputs, y, float(sums["loss"]) / len(y), run.state.class_counts


def _cb_weights_by_hand(counts, beta):
    raw = [(1 - beta) / (1 - beta ** int(n)) for n in counts]
    return [w * len(raw) / sum(raw) for w in raw]


def test_drw_averages_over_the_row_weights_like_cross_entropy_weight(tmp_path):
    outputs, y, loss, counts = _loss_of_one_step(tmp_path, ["natural", "drw"], {"drw": {"start_epoch": 0}})
    weights = _cb_weights_by_hand(counts.tolist(), 0.9999)
    ce = [-math.log(math.exp(float(o[t])) / sum(math.exp(float(v)) for v in o)) for o, t in zip(outputs, y.tolist())]
    w = [weights[t] for t in y.tolist()]
    expected = sum(wi * li for wi, li in zip(w, ce)) / sum(w)  # LDAM-DRW: F.cross_entropy(weight=)
    assert loss == pytest.approx(expected, rel=1e-5)
    batch_mean = sum(wi * li for wi, li in zip(w, ce)) / len(ce)
    assert abs(expected - batch_mean) > 0.1 * expected  # the two rules differ on this batch


def test_cb_averages_over_the_batch_like_cui_et_al(tmp_path):
    outputs, y, loss, counts = _loss_of_one_step(tmp_path, ["natural", "cb"], {})
    weights = _cb_weights_by_hand(counts.tolist(), 0.9999)
    ce = [-math.log(math.exp(float(o[t])) / sum(math.exp(float(v)) for v in o)) for o, t in zip(outputs, y.tolist())]
    expected = sum(weights[t] * li for t, li in zip(y.tolist(), ce)) / len(ce)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_ldam_trains_a_cosine_head_with_scale_30(tmp_path):
    from robx.core import engine

    run = engine.build_run(tiny_config(loss="ldam", plugins=["drw"]), tmp_path / "run")
    assert run.host.options["ldam"].scale == 30.0  # the authors' s
    model = run.state.model.eval()
    x, _, _ = engine.training_batch(run, torch.arange(6))
    features, outputs = model(x)
    weights = [p for name, p in model.named_parameters() if name.startswith("head")]
    assert len(weights) == 1  # no bias
    (w,) = weights
    for i in range(6):
        for c in range(outputs.shape[1]):
            f, wc = features[i].tolist(), w[:, c].tolist()
            cosine = sum(a * b for a, b in zip(f, wc)) / (math.sqrt(sum(a * a for a in f)) * math.sqrt(sum(b * b for b in wc)))
            assert outputs[i, c].item() == pytest.approx(cosine, abs=1e-5)
    plain = engine.build_run(tiny_config(plugins=["drw"]), tmp_path / "plain").state.model
    assert isinstance(plain.head, torch.nn.Linear)


def test_a_model_without_the_needed_head_is_one_line(tmp_path):
    from robx.core import engine
    from robx.core.registry import registry
    from robx.core.task import ModelInput

    class Bare(torch.nn.Module):
        def forward(self, x):
            return x, x

    found = registry()
    found.models["bare-test"] = type(found.models["mlp"])("bare-test", lambda spec: Bare(), "test")
    try:
        with pytest.raises(OptionError, match="model 'bare-test' has no cosine head"):
            engine.build_model(found, "bare-test", ModelInput((4,), 2, (0.0,) * 4, (1.0,) * 4, head="cosine"))
    finally:
        del found.models["bare-test"]
