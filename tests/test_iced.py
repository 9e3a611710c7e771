"""ICED (dissertation ch. 3) and crowd-labelled data: certainty and warm-up groups by hand,
Dawid-Skene against crowd-kit, the synthetic workers against their formula, the learners
end to end, the task through the engine, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robx.core.crowd import (MISSING, CrowdJob, check_crowd_labels, crowd_frame, label_certainty, run_crowd,
                             simulate_workers)
from robx.core.engine import train
from robx.core.errors import OptionError
from robx.plugins.iced import certainty_groups, dawid_skene_em
from robx.plugins.tasks.crowd import row_majority_vote

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


def test_dawid_skene_agrees_with_crowd_kit_on_balanced_labels():
    from crowdkit.aggregation import DawidSkene

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 200)
    accuracy = np.array([0.9, 0.8, 0.7, 0.65, 0.6])
    correct = rng.random((400, 5)) < accuracy
    crowd = np.where(correct, truth[:, None], 1 - truth[:, None])
    crowd[rng.random(crowd.shape) < 0.2] = MISSING
    crowd[np.arange(400), rng.integers(0, 5, 400)] = np.where(correct[np.arange(400), 0], truth, 1 - truth)
    ours, prior = dawid_skene_em(crowd, 2, iterations=100)
    reference = DawidSkene(n_iter=100).fit(crowd_frame(crowd)).probas_.sort_index()
    theirs = reference.reindex(columns=[0, 1]).to_numpy()
    assert np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)) >= 0.99
    # crowd-kit stops on its ELBO (tol 1e-5), ours on the posteriors: ambiguous items may differ a little
    assert np.abs(ours - theirs).mean() < 0.02 and prior == pytest.approx([0.5, 0.5], abs=0.05)
    from robx.core.crowd import majority_vote

    # workers of unequal skill: weighting them (D&S) recovers more true labels than counting them
    assert np.mean(ours.argmax(axis=1) == truth) > np.mean(majority_vote(crowd) == truth)


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
    assert report["train_counts"] == [143, 14] and report["workers"] == 5 and report["test_counts"] == [36, 36]
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
    assert sum(report["class_counts"]) == 157 and report["class_counts"][0] > 143 - 20  # MV's classes, not the truth's


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
    import robx.plugins.datasets.digits as digits
    from robx.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["crowd", "--method", "iced", "--set", "iced.k_neighbors=100"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robx: error: iced: the minority has ")
    assert err[0].endswith("majority-vote examples, but k_neighbors=100 needs more than that; lower iced.k_neighbors")

    real = digits.crowd_dataset

    def without_worker_two(*args, **kwargs):
        data = real(*args, **kwargs)
        data.train.y[:, 2] = MISSING
        return data

    monkeypatch.setattr(digits, "crowd_dataset", without_worker_two)
    with pytest.raises(SystemExit) as exit_info:
        main(["crowd", "--method", "mv-lr"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "robx: error: worker 2 labelled no example (a column of missing labels); drop it"]
