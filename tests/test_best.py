"""--keep-best: the checkpoint with the best validation score, kept beside the last."""

from __future__ import annotations

import json

import pytest
import torch

import robx
from robx.core.engine import train
from robx.core.rundir import load_checkpoint

from conftest import tiny_config, train_killed_and_resumed

KEPT = dict(epochs=4, val_fraction=0.2, keep_best="robust-overall", n_eval=90)


def _val_overall(record: dict) -> float:
    """An epoch's validation robust accuracy averaged over the classes with validation
    examples, from metrics.jsonl alone."""
    val = record["val"]
    scored = [r for r, n in zip(val["robust"], val["counts"]) if n > 0]
    return sum(scored) / len(scored)


def test_the_kept_checkpoint_is_the_epoch_with_the_best_validation_score(tmp_path):
    train(tiny_config(**KEPT), tmp_path / "run")
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [_val_overall(record) for record in records]
    best_epoch = scores.index(max(scores))  # the first of the best: a tie keeps the earlier epoch
    kept = load_checkpoint(run_dir / "best.pt")
    assert kept["epoch"] == best_epoch and kept["score"] == pytest.approx(scores[best_epoch])
    assert [record["best"]["new"] for record in records] == [
        scores[e] > max(scores[:e], default=-1.0) for e in range(len(scores))]
    report = json.loads((run_dir / "report.json").read_text())
    best_report = json.loads((run_dir / "report-best.json").read_text())
    assert report["checkpoint"] == "last" and best_report["checkpoint"] == "best"
    assert report["best"] == {"metric": "robust-overall", "epoch": best_epoch, "score": kept["score"],
                              "report": "report-best.json"}
    # the best weights are not the last ones unless the last epoch was the best
    last = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert any(not torch.equal(value, last[key]) for key, value in kept["model"].items()) == (best_epoch != 3)
    # evaluating the best checkpoint again, as robx eval --checkpoint best does, gives its report
    again = robx.evaluate(run_dir, checkpoint="best")
    assert again.data["per_class"] == best_report["per_class"] and again.data["best"]["epoch"] == best_epoch
    assert robx.load_run(run_dir).best_report.data["per_class"] == best_report["per_class"]


def test_keep_best_without_a_validation_split_is_one_line_before_any_work(tmp_path):
    with pytest.raises(robx.OptionError, match=r"--keep-best robust-worst needs a validation split to score the "
                                                r"epochs by: give --val-fraction"):
        train(tiny_config(keep_best="robust-worst"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(robx.OptionError, match="keep_best"):
        train(tiny_config(keep_best="robust-best", val_fraction=0.2), tmp_path / "run")
    with pytest.raises(robx.RobxError, match="keeps no best checkpoint"):
        train(tiny_config(epochs=1), tmp_path / "plain")
        robx.evaluate(tmp_path / "plain", checkpoint="best")


def test_a_resumed_run_goes_on_comparing_with_the_best_so_far(tmp_path, monkeypatch):
    straight, killed = train_killed_and_resumed(tiny_config(**KEPT), tmp_path, monkeypatch, kill_in_epoch=2)
    for name in ("report.json",):
        assert json.loads((straight / name).read_text())["best"] == json.loads((killed / name).read_text())["best"]
    a, b = load_checkpoint(straight / "best.pt"), load_checkpoint(killed / "best.pt")
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
