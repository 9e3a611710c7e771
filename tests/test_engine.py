"""Engine: run directory, report, checkpoints, resume, errors, class statistics."""

from __future__ import annotations

import json

import pytest
import torch

from robx.core.registry import resolved_config
import robx.core.engine as engine
from robx.core.errors import CheckpointError, NonFiniteLossError, RunDirError
from robx.core.rundir import load_checkpoint, save_checkpoint
from robx.core.data import Split, TaskData
from robx.plugins.tasks.classification import Classification

from conftest import tiny_config, train_killed_and_resumed


def test_run_directory_holds_config_metrics_checkpoint_report_and_plot(tmp_path):
    report = engine.train(tiny_config(epochs=3), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "report.json", "per_class.png"} <= files
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    eps = resolved_config(tiny_config()).eps
    assert json.loads(lines[-1])["class_eps"] == pytest.approx([eps] * 10, abs=1e-6)  # budgets per epoch
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    for kind in ("standard", "robust"):
        values = report["per_class"][kind]
        assert len(values) == 10 and all(0 <= v <= 1 for v in values)
        assert set(report["summary"][kind]) == {"overall", "majority", "minority", "worst", "disparity"}
    assert report["class_counts"][:5] == [131] * 5 and report["class_counts"][5:] == [13] * 5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["plugins"] == {"pgd": {"random_start": True, "start_scale": 1.0}}
    assert config["kernels"] == {"pgd_step": "numba", "supcon": "torch-reference, numba from 2048",
                                 "topk_victims": "numba"}


def test_existing_run_directory_is_never_overwritten_without_force(tmp_path):
    run_dir = tmp_path / "run"
    engine.train(tiny_config(epochs=1), run_dir)
    before = (run_dir / "report.json").read_text()
    with pytest.raises(RunDirError, match="--force"):
        engine.train(tiny_config(epochs=1, seed=1), run_dir)
    assert (run_dir / "report.json").read_text() == before
    engine.train(tiny_config(epochs=1, seed=1), run_dir, force=True)
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(RunDirError, match="not a robx run directory"):
        engine.train(tiny_config(epochs=1), other, force=True)
    assert (other / "precious.txt").read_text() == "keep"


def test_resume_after_a_kill_is_bit_exact(tmp_path, monkeypatch):
    straight_dir, killed_dir = train_killed_and_resumed(tiny_config(epochs=3, val_fraction=0.1), tmp_path, monkeypatch)
    straight = load_checkpoint(straight_dir / "checkpoint.pt")
    resumed = load_checkpoint(killed_dir / "checkpoint.pt")
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert (json.loads((straight_dir / "report.json").read_text())["per_class"]
            == json.loads((killed_dir / "report.json").read_text())["per_class"])


def test_a_checkpoint_with_the_old_shared_stash_is_refused_in_one_line(tmp_path, monkeypatch):
    """Plugins' states were kept in one stash keyed '<plugin>.<what>' before 2026-12-06 (a run
    of 0d61491, the layout after it, still resumes: tests/test_plugin_api.py). Rewritten into
    the stash layout, a killed run's resume is one CheckpointError line, and the run directory
    is left as it was."""
    from robx.core.errors import CheckpointError

    config = tiny_config(epochs=3, plugins=["swa", "fairtat"], plugin_options={"swa": {"start": 0.3}}, n_eval=40)
    real_epoch = engine.train_epoch

    def killed(run, progress):
        if run.state.epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(run, progress)

    monkeypatch.setattr(engine.loop, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        engine.train(config, tmp_path / "killed")
    monkeypatch.setattr(engine.loop, "train_epoch", real_epoch)
    payload = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    states = payload.pop("plugins")
    payload["stash"] = {f"{plugin}.{key}": value for plugin, saved in states.items() for key, value in saved.items()
                        if value is not None}
    save_checkpoint(tmp_path / "killed" / "checkpoint.pt", payload)
    before = (tmp_path / "killed" / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"keeps its plugins' state in one shared stash, the layout of robx "
                                              r"before 2026-12-06, which this robx no longer reads"):
        engine.train(config, tmp_path / "killed", resume=True)
    assert (tmp_path / "killed" / "checkpoint.pt").read_bytes() == before


def test_a_deadline_pauses_between_epochs_and_the_run_continues_to_the_same_result(tmp_path):
    import time

    from robx.core.errors import TrainingPaused

    config = tiny_config(epochs=3)
    straight = engine.train(config, tmp_path / "straight")
    with pytest.raises(TrainingPaused) as paused:
        engine.train(config, tmp_path / "paused", deadline=time.monotonic())  # epoch 0 runs: no time known yet
    assert paused.value.next_epoch == 1
    assert not (tmp_path / "paused" / "report.json").exists()
    continued = engine.train(config, tmp_path / "paused", resume=True)
    assert continued["per_class"] == straight["per_class"]


def test_checkpoint_write_is_atomic_and_corruption_is_reported(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "epoch": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        engine.train(tiny_config(epochs=2, lr=1e30, schedule="constant"), tmp_path / "run")


def test_class_statistics_tracker():
    empty = Split(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    tracker = Classification(TaskData("t", ["a", "b", "c"], empty, empty)).statistics(torch.device("cpu"))
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    clean = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 0]), 3).float() * 10
    robust = torch.nn.functional.one_hot(torch.tensor([0, 0, 2, 2, 0, 0]), 3).float() * 10
    tracker.update(y[:3], y[:3], clean[:3], robust[:3])
    tracker.update(y[3:], y[3:], clean[3:], robust[3:])
    stats = tracker.result()
    assert stats.counts.tolist() == [2, 1, 3]
    assert torch.allclose(stats.clean, torch.tensor([0.5, 1.0, 2 / 3], dtype=torch.float64))
    assert torch.allclose(stats.robust, torch.tensor([1.0, 0.0, 1 / 3], dtype=torch.float64))
    assert torch.allclose(stats.tables["robust_confusion"][2], torch.tensor([2 / 3, 0, 1 / 3], dtype=torch.float64))
    assert torch.allclose(stats.tables["robust_mean_prob"].sum(1), torch.ones(3, dtype=torch.float64))


def test_natural_training_records_no_robust_train_statistics(tmp_path):
    engine.train(tiny_config(epochs=1, plugins=["natural"]), tmp_path / "run")
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["train"]["robust"] is None and line["train"]["clean"] is not None


def test_training_is_seeded(tmp_path):
    a = engine.train(tiny_config(epochs=1), tmp_path / "a")
    b = engine.train(tiny_config(epochs=1), tmp_path / "b")
    assert a["per_class"] == b["per_class"]


def test_epoch_statistics_saved_before_the_task_tables_load_into_them():
    """Checkpoints from before SplitStats.tables kept the classification tables as fields."""
    from robx.core.stats import EpochStats

    confusion = torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64)
    old_split = {"counts": torch.tensor([4, 2]), "clean": None, "robust": torch.tensor([0.75, 0.5]),
                 "metric": "accuracy", "clean_confusion": None, "robust_confusion": confusion,
                 "robust_mean_prob": None}
    stats = EpochStats.from_state({"epoch": 3, "train": old_split, "val": None, "loss": 0.5, "loss_terms": {},
                                   "lr": 0.1, "seconds": 1.0})
    assert stats.epoch == 3 and list(stats.train.tables) == ["robust_confusion"]
    assert torch.equal(stats.train.tables["robust_confusion"], confusion)
    assert EpochStats.from_state(stats.to_state()).train.tables.keys() == {"robust_confusion"}


def test_warmup_and_step_schedule_give_ldam_drw_authors_rates(tmp_path):
    """LDAM-DRW's cifar_train.py (adjust_learning_rate): lr * (e + 1) / 5 in the first five
    epochs, lr from then on, lr * 0.01 after epoch 160 and lr * 0.0001 after 180 (e from 0:
    epoch e + 1 > 160). Their values by hand, against robx's scheduler."""
    from robx.core.config import TrainConfig

    config = TrainConfig(epochs=200, lr=0.1, schedule="step", milestones=[0.8, 0.9], gamma=0.01, warmup_epochs=5)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler, per_batch = engine.build_scheduler(config, optimizer, steps_per_epoch=3)
    rates = []
    for _ in range(200):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert not per_batch
    expected = {0: 0.02, 1: 0.04, 2: 0.06, 3: 0.08, 4: 0.1, 5: 0.1, 159: 0.1, 160: 0.001, 179: 0.001,
                180: 1e-5, 199: 1e-5}
    assert {e: pytest.approx(rates[e], rel=1e-12) for e in expected} == expected
    # without warm-up the step schedule is torch's MultiStepLR, as before
    config = TrainConfig(epochs=10, lr=0.1, schedule="step", milestones=[0.5], gamma=0.1)
    scheduler, _ = engine.build_scheduler(config, optimizer, steps_per_epoch=3)
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)


@pytest.mark.parametrize("bad", [{"warmup_epochs": -1}, {"warmup_epochs": 3, "schedule": "onecycle"}])
def test_a_warmup_the_schedule_cannot_take_is_one_clear_error(bad):
    from robx.core.config import TrainConfig
    from robx.core.errors import OptionError

    with pytest.raises(OptionError, match="warmup_epochs"):
        resolved_config(TrainConfig(dataset="digits", epochs=10, lr=0.1, **bad))


def test_a_signal_before_the_first_checkpoint_is_written_says_none_was_kept(tmp_path, monkeypatch):
    """The epoch had ended (its statistics were in the history) but its checkpoint was not yet
    on disk: the message must not promise a checkpoint, and the new run directory goes."""
    import signal

    from robx.core import rundir
    from robx.core.errors import Interrupted

    def interrupted(path, payload):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(rundir, "save_checkpoint", interrupted)
    with pytest.raises(Interrupted) as stopped:
        engine.train(tiny_config(epochs=2), tmp_path / "run")
    assert "no epoch had finished, so there was no checkpoint to keep" in str(stopped.value)
    assert "--resume" not in str(stopped.value) and not (tmp_path / "run").exists()
