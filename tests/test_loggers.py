"""Epoch loggers: metrics.csv, TensorBoard (read back with TensorBoard's own event reader), a
registered third-party logger, and one line per epoch without a terminal."""

from __future__ import annotations

import csv
import json
import types

import pytest

import robx
from robx.core import discovery
from robx.core.discovery import PluginSpec, available_plugins
from robx.core.engine import train
from robx.core.registry import registry

from conftest import tiny_config, train_killed_and_resumed


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _val_robust_mean(record):
    scored = [r for r, n in zip(record["val"]["robust"], record["val"]["counts"]) if n]
    return sum(scored) / len(scored)


def test_metrics_csv_holds_one_row_per_epoch_with_the_jsonl_numbers(tmp_path):
    train(tiny_config(epochs=3, val_fraction=0.2), tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    records = _records(tmp_path / "run")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for row, record in zip(rows, records):
        assert float(row["loss"]) == pytest.approx(record["loss"])
        assert float(row["val/robust/mean"]) == pytest.approx(_val_robust_mean(record))
        assert float(row["val/robust/worst"]) == pytest.approx(min(
            r for r, n in zip(record["val"]["robust"], record["val"]["counts"]) if n))
        assert float(row["train/robust/class_3"]) == pytest.approx(record["train"]["robust"][3])


def test_a_resumed_run_s_csv_and_tensorboard_hold_each_epoch_once(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, killed = train_killed_and_resumed(tiny_config(epochs=3, log=["csv", "tensorboard"]), tmp_path, monkeypatch,
                                         kill_in_epoch=2)
    rows = list(csv.DictReader((killed / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [event.step for event in losses] == [0, 1, 2]
    assert [event.value for event in losses] == pytest.approx([r["loss"] for r in _records(killed)], rel=1e-6)
    assert "train/robust/worst" in events.Tags()["scalars"]


def test_an_unknown_or_uninstalled_logger_is_one_line_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(robx.OptionError, match=r"unknown logger 'wandb' \(--log\); available: csv, tensorboard"):
        train(tiny_config(log=["wandb"]), tmp_path / "run")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(robx.OptionError, match=r"logger 'tensorboard' needs tensorboard, which is not installed: "
                                               r"pip install 'robx\[tensorboard\]'"):
        train(tiny_config(log=["tensorboard"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_installed_package_adds_a_logger(tmp_path, monkeypatch):
    """register_loggers from a third-party module: made once with the run's directory, called
    after every epoch with that epoch's record and the records so far, closed at the end."""
    calls: list = []

    class Memory:
        def log_epoch(self, record, history):
            calls.append((record["epoch"], [entry["epoch"] for entry in history]))

        def close(self):
            calls.append("closed")

    module = types.ModuleType("robx_memory_logger")

    @robx.hookimpl
    def register_loggers(register):
        register("memory", lambda run_dir, config, first_epoch: calls.append(("made", run_dir.name, first_epoch))
                 or Memory())

    module.register_loggers = register_loggers
    monkeypatch.setattr(discovery, "available_plugins", lambda: {
        **available_plugins(), "memory-logger": PluginSpec("memory-logger", "robx-memory 1.0", module)})
    registry.cache_clear()
    try:
        train(tiny_config(epochs=2, log=["memory"]), tmp_path / "run")
    finally:
        monkeypatch.undo()
        registry.cache_clear()
    assert calls == [("made", "run", 0), (0, [0]), (1, [0, 1]), "closed"]


def test_without_a_terminal_each_epoch_is_one_full_line(robx_here):
    result = robx_here("train", "--epochs", "2", "--steps", "1", "--eval-steps", "1", "--n-eval", "50",
                       "--val-fraction", "0.2", "--out", "run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("val robust accuracy" in line and line.endswith(" s") for line in lines)
    assert any(len(line) > 100 for line in lines)  # not cut at the console's 80 columns
