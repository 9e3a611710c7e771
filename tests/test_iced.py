"""ICED (dissertation ch. 3) and crowd-labelled data: certainty and warm-up groups by hand,
Dawid-Skene against crowd-kit, the synthetic workers against their formula, the learners
end to end, the task through the engine, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robx.plugins.crowd.evaluation import CrowdJob, run_crowd
from robx.plugins.crowd.labels import MISSING, check_crowd_labels, crowd_frame, dawid_skene_em, simulate_workers
from robx.core.engine import train
from robx.core.errors import OptionError
from robx.plugins.crowd.iced import certainty_groups, label_certainty
from robx.plugins.crowd.task import row_majority_vote

from conftest import tiny_config

FAST = {"iterations": 3, "warmup_epochs": 2, "decoder_epochs": 5}


def test_label_certainty_by_hand():
    crowd = np.array([[0, 0, 0, 0, 0],        # unanimous: variance 0 -> 1 / eps
                      [0, 0, 0, 1, 1],        # shares (0.6, 0.4): 1 - 0.36 - 0.16 = 0.48
                      [0, 1, MISSING, MISSING, MISSING],  # a tie of two labels: 1 - 0.25 - 0.25 = 0.5
                      [1, 1, 1, 1, 0]])       # (0.2, 0.8): 0.32
    certainty = label_certainty(crowd, 2, epsilon=1e-3)
    assert certainty == pytest.approx([1 / 1e-3, 1 / 0.481, 1 / 0.501, 1 / 0.321])
    assert certainty.argmax() == 0 and certainty.argmin() == 2  # unanimity maximal, the tie minimal


def test_warmup_groups_are_the_three_highest_certainty_levels():
    certainty = np.array([5.0, 1.0, 3.0, 5.0, 2.0, 3.0, 0.5, 2.0])
    third, second, highest = certainty_groups(certainty)
    assert highest.tolist() == [0, 3] and second.tolist() == [2, 5] and third.tolist() == [4, 7]
    # levels 1.0 and 0.5 form the unused low group


def test_row_majority_vote_by_hand():
    crowd = torch.tensor([[0, 1, 1], [1, 0, -1], [-1, -1, 1], [0, 0, 1]])
    assert row_majority_vote(crowd, 2).tolist() == [1, 0, 1, 0]  # the tie (row 2) goes to class 0


def test_estimated_prior_dawid_skene_agrees_with_crowd_kit_on_balanced_labels():
    from crowdkit.aggregation import DawidSkene

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 200)
    accuracy = np.array([0.9, 0.8, 0.7, 0.65, 0.6])
    correct = rng.random((400, 5)) < accuracy
    crowd = np.where(correct, truth[:, None], 1 - truth[:, None])
    crowd[rng.random(crowd.shape) < 0.2] = MISSING
    crowd[np.arange(400), rng.integers(0, 5, 400)] = np.where(correct[np.arange(400), 0], truth, 1 - truth)
    ours, prior = dawid_skene_em(crowd, 2, iterations=100, prior="estimated")
    reference = DawidSkene(n_iter=100).fit(crowd_frame(crowd)).probas_.sort_index()
    theirs = reference.reindex(columns=[0, 1]).to_numpy()
    assert np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)) >= 0.99
    # crowd-kit stops on its ELBO (tol 1e-5), ours on the posteriors: ambiguous items may differ a little
    assert np.abs(ours - theirs).mean() < 0.02 and prior == pytest.approx([0.5, 0.5], abs=0.05)
    from robx.plugins.crowd.labels import majority_vote

    # workers of unequal skill: weighting them (D&S) recovers more true labels than counting them
    assert np.mean(ours.argmax(axis=1) == truth) > np.mean(majority_vote(crowd) == truth)


def test_dawid_skene_holds_a_uniform_prior_unless_asked_to_estimate_it():
    """Eq. 3.1-3.2 by hand for one EM step from the majority-vote posteriors, and the
    imbalanced case: the uniform prior leaves Phi at 1/2 while the estimate follows the data."""
    crowd = np.array([[0, 0], [0, 1], [1, 1]])
    # start T = MV shares: [1, 0], [.5, .5], [0, 1]. M-step counts (+1e-6 floor), rows true a, columns given b:
    # worker 0 (labels 0, 0, 1): a=0: [1.5, 0], a=1: [.5, 1]; worker 1 (labels 0, 1, 1): a=0: [1, .5], a=1: [0, 1.5]
    floor = 1e-6
    psi0 = np.array([[1.5 + floor, floor], [0.5 + floor, 1 + floor]])
    psi1 = np.array([[1 + floor, 0.5 + floor], [floor, 1.5 + floor]])
    psi0, psi1 = psi0 / psi0.sum(1, keepdims=True), psi1 / psi1.sum(1, keepdims=True)
    expected = np.array([[0.5 * psi0[a, crowd[i, 0]] * psi1[a, crowd[i, 1]] for a in (0, 1)] for i in range(3)])
    expected /= expected.sum(axis=1, keepdims=True)
    posterior, prior = dawid_skene_em(crowd, 2, iterations=1)
    assert posterior == pytest.approx(expected, rel=1e-6) and prior.tolist() == [0.5, 0.5]
    assert posterior[1] == pytest.approx([0.5, 0.5])  # (1 x 1/3) vs (1/3 x 1): the disagreement stays a tie

    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(900, int), np.ones(100, int)]
    crowd = np.where(rng.random((1000, 7)) < 0.7, truth[:, None], 1 - truth[:, None])
    _, held = dawid_skene_em(crowd, 2, 100)
    _, estimated = dawid_skene_em(crowd, 2, 100, prior="estimated")
    assert held.tolist() == [0.5, 0.5] and estimated == pytest.approx([0.9, 0.1], abs=0.03)
    with pytest.raises(OptionError, match="the D&S prior must be uniform or estimated, got 'flat'"):
        dawid_skene_em(crowd, 2, 1, prior="flat")


def test_synthetic_workers_err_as_their_formula_says():
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 150)
    x = rng.normal(0, 1, (300, 4)) + 1.5 * truth[:, None]
    crowd, error = simulate_workers(x, truth, workers=400, seed=0, skill_spread=0.0)
    for c in (0, 1):  # per class: linear in the difficulty rank from 0.05 to 0.45
        assert sorted(error[truth == c]) == pytest.approx(np.linspace(0.05, 0.45, 150))
    observed = (crowd != truth[:, None]).mean(axis=1)
    assert np.abs(observed - error).max() < 0.1  # 400 workers: binomial noise around q_i
    assert np.corrcoef(observed, error)[0, 1] > 0.95
    hardest = np.argsort(error)[-30:]
    assert observed[hardest].mean() == pytest.approx(error[hardest].mean(), abs=0.02)


def test_crowd_learners_report_labels_and_test_scores():
    report = run_crowd(CrowdJob("digits-crowd", "iced", seed=0, method_options=FAST))
    assert report["train_counts"] == [143, 14] and report["workers"] == 9 and report["test_counts"] == [36, 36]
    assert len(report["history"]) == 3 and all(0 <= h["inferred_accuracy"] <= 1 for h in report["history"])
    from robx.core.registry import registry

    voted = registry().dataset("digits-crowd").read(None, 0).train.labels  # the labels of the first iteration
    counts = torch.bincount(voted, minlength=2)
    assert report["history"][0]["synthetic"] == int(counts.max() - counts.min())  # minority up to the majority
    assert 0 <= report["details"]["ds_original_accuracy"] <= 1 and sum(report["details"]["warmup_group_sizes"]) > 0
    mv = run_crowd(CrowdJob("digits-crowd", "mv-lr", seed=0))
    assert mv["inferred_label_accuracy"] == mv["majority_vote_accuracy"]  # MV+LR trains on the majority vote
    assert 0.5 <= mv["accuracy"] <= 1 and 0 <= mv["f1"] <= 1


def test_the_crowd_task_trains_through_the_engine_on_the_majority_vote(tmp_path):
    report = train(tiny_config(dataset="digits-crowd", model="mlp", n_eval=None), tmp_path / "run")
    assert report["task"] == "crowd-classification" and report["class_names"] == ["4", "7"]
    from robx.core.registry import registry

    crowd = registry().dataset("digits-crowd").read(None, 0).train.y
    voted = torch.bincount(row_majority_vote(crowd, 2), minlength=2).tolist()
    assert report["class_counts"] == voted and voted != [143, 14]  # MV's classes, not the truth's


def test_bad_crowd_labels_are_one_line():
    good = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 1]])
    check_crowd_labels(good, 2)
    empty_worker = good.copy()
    empty_worker[:, 1] = MISSING
    with pytest.raises(OptionError, match="worker 1 labelled no example"):
        check_crowd_labels(empty_worker, 2)
    with pytest.raises(OptionError, match="one class only"):
        check_crowd_labels(np.zeros((3, 3), dtype=int), 2)
    with pytest.raises(OptionError, match="classes 0..1 or -1"):
        check_crowd_labels(good + 1, 2)


def test_cli_crowd_bad_input_is_one_line_exit_2(monkeypatch, capsys):
    import robx.plugins.crowd.datasets as crowd_datasets
    from robx.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["crowd", "--method", "iced", "--set", "iced.k_neighbors=100"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robx: error: iced: the minority has ")
    assert err[0].endswith("majority-vote examples, but k_neighbors=100 needs more than that; lower iced.k_neighbors")

    real = crowd_datasets.crowd_dataset

    def without_worker_two(*args, **kwargs):
        data = real(*args, **kwargs)
        data.train.y[:, 2] = MISSING
        return data

    monkeypatch.setattr(crowd_datasets, "crowd_dataset", without_worker_two)
    with pytest.raises(SystemExit) as exit_info:
        main(["crowd", "--method", "mv-lr"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "robx: error: worker 2 labelled no example (a column of missing labels); drop it"]


def test_warmup_lengths_in_epochs_and_in_trad_i_steps():
    """Table 3.3 as written: 5 epochs per certainty group vs 15 for Trad-I; ``warmup_length
    = "steps"``: every warm-up takes Trad-I's optimiser steps, 3 x 5 x ceil(n / 32)."""
    from robx.core.registry import registry
    from robx.plugins.crowd.labels import majority_vote
    from robx.plugins.crowd.iced import ICED, ICEDOptions, certainty_groups

    data = registry().dataset("digits-crowd").read(None, 0)
    x, crowd = data.train.x.numpy(), data.train.y.numpy()
    groups = certainty_groups(label_certainty(crowd, 2))
    batches = [-(-len(g) // 32) for g in groups]
    trad_i = 3 * 5 * -(-len(x) // 32)
    quick = {"iterations": 0}  # the warm-up alone, as the protocol's Table 3.3 rows run it
    steps = {}
    for warmup in ("certainty", "together", "all"):
        for length in ("epochs", "steps"):
            learner = ICED(ICEDOptions(warmup=warmup, warmup_length=length, **quick)).fit(x, crowd, 2)
            steps[warmup, length] = learner.details["warmup_steps"]
            assert learner.history == [] and learner.inferred_labels.tolist() == majority_vote(crowd).tolist()
    assert steps["certainty", "epochs"] == 5 * sum(batches)
    assert steps["together", "epochs"] == 15 * -(-sum(len(g) for g in groups) // 32)
    assert steps["all", "epochs"] == steps["all", "steps"] == trad_i
    # rounded to whole epochs of each group: within half an epoch of each group of Trad-I's count
    assert abs(steps["certainty", "steps"] - trad_i) <= sum(batches) / 2 + 1
    assert abs(steps["together", "steps"] - trad_i) <= -(-sum(len(g) for g in groups) // 32) / 2 + 1


def test_iced_decodes_with_a_trained_autoencoder_and_records_its_synthetic_labels():
    from robx.core.registry import registry
    from robx.plugins.crowd.iced import ICED, ICEDOptions

    data = registry().dataset("digits-crowd").read(None, 0)
    x, crowd = data.train.x.numpy(), data.train.y.numpy()
    learner = ICED(ICEDOptions(iterations=2, warmup_epochs=2, decoder_epochs=30)).fit(x, crowd, 2)
    # reconstructs far better than the per-feature mean (the best constant decoder)
    assert learner.details["reconstruction_mse"] < 0.5 * x.var(axis=0).mean()
    shares = [entry["synthetic_minority_share"] for entry in learner.history]
    assert all(0 <= share <= 1 for share in shares)
    assert learner.details["synthetic_minority_share"] == pytest.approx(np.mean(shares))


def test_ds_baselines_hold_the_uniform_prior_and_dsck_is_crowd_kits():
    from robx.plugins.crowd.labels import dawid_skene
    from robx.core.registry import registry

    data = registry().dataset("digits-crowd").read(None, 0)
    x, crowd = data.train.x.numpy(), data.train.y.numpy()
    learners = registry()
    held = learners.entry("crowd learner", "ds-lr").build({}, 0).fit(x, crowd, 2).inferred_labels
    crowd_kit = learners.entry("crowd learner", "dsck-lr").build({}, 0).fit(x, crowd, 2).inferred_labels
    assert held.tolist() == dawid_skene_em(crowd, 2, 100)[0].argmax(axis=1).tolist()
    assert crowd_kit.tolist() == dawid_skene(crowd).tolist()
    # and that is crowd-kit's answer, asked here without robx's wrapper: a (task, worker, label)
    # table of the given labels (-1: a worker did not label the example)
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    tasks, workers = np.nonzero(crowd >= 0)
    frame = pd.DataFrame({"task": tasks, "worker": workers, "label": crowd[tasks, workers]})
    answered = DawidSkene(n_iter=100).fit_predict(frame).sort_index()
    assert crowd_kit.tolist() == answered.loc[range(len(crowd))].astype(int).tolist()


def test_crowd_sets_have_table_3_1s_workers():
    from robx.core.registry import registry

    # Gisette-Syn 7, USPS-Syn 9, GSAD-Syn 11 (Table 3.1); the sets that stand for them here
    for name, workers in (("cifar10-pair-crowd", 7), ("digits-crowd", 9), ("breast-cancer-crowd", 11)):
        assert registry().dataset(name).options().workers == workers  # the options class's default
