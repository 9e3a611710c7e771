"""The engine owns every forward pass; its BatchNorm policy is one BN batch per input
distribution (clean, adversarial), clean first, each updating running statistics once."""

from __future__ import annotations

import pytest
import torch

from robx.core import engine
from robx.core.state import Step

from conftest import tiny_config

MAJORITY, MINORITY = 12, 4  # rows of the test batch from classes 0-4 and 5-9
B = MAJORITY + MINORITY
COPIES = 8  # Imb-Mix on digits Step-10: round(131 / 13) - 1 = 9, capped at 8


def one_recorded_step(tmp_path, plugins, options=None):
    """Build a digits run, take one training step, and record every train-mode forward."""
    run = engine.build_run(tiny_config(plugins=plugins, plugin_options=options or {}), tmp_path / "run")
    labels = run.data.train.labels
    idx = torch.cat([torch.nonzero(labels < 5).flatten()[:MAJORITY], torch.nonzero(labels >= 5).flatten()[:MINORITY]])
    x, y, _ = engine.training_batch(run, idx)
    model = run.state.model
    passes, steps = [], []
    real_forward = model.forward

    def recording(inputs):
        if model.training:
            passes.append(inputs.detach().clone())
        return real_forward(inputs)

    model.forward = recording
    real_prepared = engine.prepared_step

    def keep(run_, *args):
        steps.append(real_prepared(run_, *args))
        return steps[-1]

    engine.step.prepared_step = keep
    tracked = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = int(tracked.num_batches_tracked)
    try:
        engine.train_step(run, x, y, y, run.task.statistics(torch.device("cpu")), {})
    finally:
        engine.step.prepared_step = real_prepared
    return passes, steps[0], int(tracked.num_batches_tracked) - before


def same_rows(a, b):
    return a.shape == b.shape and torch.equal(a, b)


def test_pgd_at_is_one_pass_on_x_adv(tmp_path):
    passes, step, updates = one_recorded_step(tmp_path, ["pgd"])
    assert len(passes) == 1 and same_rows(passes[0], step.x_adv) and updates == 1


def eval_passes_of_one_step(tmp_path, plugins):
    """Eval-mode forwards of one training step: the attack's, and any for the statistics."""
    run = engine.build_run(tiny_config(plugins=plugins, steps=3), tmp_path / "eval-passes")
    x, y, labels = engine.training_batch(run, torch.arange(B))
    calls = []
    run.state.model.register_forward_hook(lambda module, inputs, output: calls.append(module.training))
    engine.train_step(run, x, y, labels, run.task.statistics(torch.device("cpu")), {})
    return calls.count(False), calls.count(True)


@pytest.mark.parametrize(("plugins", "eval_passes", "train_passes"), [
    (["pgd"], 3, 1),  # the 3 attack steps; the robust statistics read the trained pass on x'
    (["srat"], 3, 1),  # the same through the adversarial view
    (["imbmix"], 3 + 1, 1),  # the rows are mixed: one no-grad eval pass on x' for the statistics
])
def test_the_class_statistics_add_an_eval_pass_only_when_no_pass_saw_x_adv(tmp_path, plugins, eval_passes,
                                                                             train_passes):
    assert eval_passes_of_one_step(tmp_path, plugins) == (eval_passes, train_passes)


def test_natural_training_is_one_pass_on_x(tmp_path):
    passes, step, updates = one_recorded_step(tmp_path, ["natural"])
    assert len(passes) == 1 and same_rows(passes[0], step.x) and updates == 1


@pytest.mark.parametrize("plugins", [["trades"], ["mart"], ["trades", "srat"]])
def test_trades_and_mart_run_two_separate_passes_natural_first(tmp_path, plugins):
    """As the TRADES and MART authors' code: model(x_natural), then model(x_adv), each its own BN batch."""
    passes, step, updates = one_recorded_step(tmp_path, plugins)
    assert len(passes) == 2 and updates == 2
    assert same_rows(passes[0], step.x) and same_rows(passes[1], step.x_adv)
    assert step.clean_outputs is not None and step.adv_outputs is not None


def test_srat_reads_the_trained_pass_when_the_rows_are_x_adv(tmp_path):
    passes, step, updates = one_recorded_step(tmp_path, ["srat"])
    assert len(passes) == 1 and updates == 1
    assert step.adv_features is step.features  # the same tensor, no second pass


def test_srat_with_imbmix_is_one_joint_adversarial_pass(tmp_path):
    """L_sep's x' joins Imb-Mix's mixed rows in one BN batch (the old engine ran a second
    train-mode pass on x' alone and updated the running statistics twice)."""
    passes, step, updates = one_recorded_step(tmp_path, ["srat", "imbmix"])
    rows = B + COPIES * MINORITY
    assert len(passes) == 1 and updates == 1
    assert passes[0].shape[0] == rows + B and same_rows(passes[0][rows:], step.x_adv)
    assert same_rows(passes[0][:rows], step.inputs)
    assert len(step.row_labels) == rows and step.adv_features.shape[0] == B


def test_imbmix_alone_trains_on_its_rows_in_one_pass(tmp_path):
    passes, step, updates = one_recorded_step(tmp_path, ["imbmix"])
    assert len(passes) == 1 and updates == 1 and passes[0].shape[0] == B + COPIES * MINORITY


def test_trades_with_mixup_mixes_the_clean_rows_and_keeps_x_in_the_clean_batch(tmp_path):
    passes, step, updates = one_recorded_step(tmp_path, ["trades", "mixup"])
    assert len(passes) == 2 and updates == 2
    assert passes[0].shape[0] == 2 * B and same_rows(passes[0][B:], step.x)  # mixed clean rows + x
    assert same_rows(passes[1], step.x_adv)


def test_a_mixed_row_counts_for_its_dominant_class():
    from robx.plugins.common import mix_labels

    labels = torch.tensor([0, 1, 2])
    partner = torch.tensor([2, 0, 1])
    assert mix_labels(labels, 0.7, partner).tolist() == [0, 1, 2]
    assert mix_labels(labels, 0.3, partner).tolist() == [2, 0, 1]
    assert mix_labels(labels, torch.tensor([1.0, 0.0, 0.5]), partner).tolist() == [0, 0, 2]


def test_an_identity_adversary_is_one_distribution_whatever_tensor_it_returns(tmp_path, monkeypatch):
    """Natural training is declared (identity_adversary), not inferred from ``x_adv is x``: an
    identity adversary returning a copy still trains in one BN pass on x and records no robust
    statistics (the identity test took the copy for an attack)."""
    from robx.core.hookspecs import hookimpl
    from robx.plugins.natural import Natural

    monkeypatch.setattr(Natural, "generate_adversary", hookimpl(lambda self, step: step.x.clone()))
    passes, step, updates = one_recorded_step(tmp_path, ["natural"])
    assert step.x_adv is not step.x and step.identity_adversary and step.rows_source == "clean"
    assert len(passes) == 1 and updates == 1 and same_rows(passes[0], step.x)
    assert engine.statistics_views(step.x, step)[1] is None  # no adversarial predictions


def test_the_views_follow_the_declared_provenance_not_tensor_identity():
    """A hand-built step whose rows are an equal copy of x' that augment set: the engine must
    treat them as changed rows (one joint adversarial batch: rows + x'), as declared."""
    x = torch.rand(4, 3)
    step = Step(x=x, y=torch.zeros(4, dtype=torch.long), labels=torch.zeros(4, dtype=torch.long), x_adv=x + 0.1)
    step.inputs, step.targets, step.row_labels = step.x_adv, step.y, step.labels
    step.set_rows(step.x_adv.clone(), step.y, step.labels)
    seen = []

    def passes(*inputs):
        seen.extend(inputs)
        return [(batch, batch.sum(1, keepdim=True)) for batch in inputs]

    engine.forward_passes(passes, step, frozenset({"adversarial"}))
    assert len(seen) == 1 and seen[0].shape[0] == 8 and same_rows(seen[0][4:], step.x_adv)


def test_trains_on_has_one_owner():
    from robx.core.errors import PluginConflictError
    from robx.core.selection import select_plugins

    with pytest.raises(PluginConflictError, match=r"plugins 'trades' and 'imbmix' \(its part 'copies'\) both decide which rows the step "
                                                   "trains on"):
        select_plugins(["trades", "imbmix"])
    assert select_plugins(["trades", "mixup"]).owners["trains_on"] == "trades"
    assert "trains_on" not in select_plugins(["srat"]).owners
