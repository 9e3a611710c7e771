"""MinGRE (plugins/mingre.py): reweighted victims, the uncertainty-guided contrastive loss,
the two-stage step, and crime-cpu's methods on a tiny city."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import robx.plugins.datasets.city_crime as crime
from test_crime import tiny_city
from test_plugins import protocol_methods


@pytest.fixture
def tiny_city_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(crime, "data_roots", lambda explicit=None: [Path(explicit)])
    tiny_city(tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize(("val_fraction", "method"), list(protocol_methods("crime")))
def test_every_crime_protocol_method_trains_on_a_tiny_city(tmp_path, tiny_city_root, val_fraction, method):
    from robx.core.config import TrainConfig
    from robx.core.engine import train

    config = TrainConfig.from_dict({"dataset": "nyc-crime", "data_root": str(tiny_city_root), "epochs": 2,
                                    "batch_size": 8, "steps": 2, "eval_steps": 2, "dataset_options": {"history": 7},
                                    **method})
    report = train(config, tmp_path / "run")
    assert all(math.isfinite(v) and v >= 0 for kind in ("standard", "robust") for v in report["per_class"][kind])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(math.isfinite(line["loss"]) for line in metrics)
    reweights = "mingre" in method["plugins"] and method.get("plugin_options", {}).get("mingre", {}).get("reweight", True)
    for line in metrics:  # MinGRE's victim diagnostics are shares: in [0, 1], every epoch
        assert ("diagnostics" in line) == reweights
        assert all(0.0 <= value <= 1.0 + 1e-6 for value in line.get("diagnostics", {}).values())
