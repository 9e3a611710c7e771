"""The evaluation of a registered crowd learner (``robx crowd``; ICED's protocol,
dissertation 3.3): fit on the training features and crowd labels, score the predictions on
the test split's true labels and the inferred training labels against the truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robx import OptionError, WRITTEN_BY, make_directory, registry, write_json
from robx.plugins.crowd import KIND
from robx.plugins.crowd.labels import check_crowd_labels, majority_vote


@dataclass
class CrowdJob:
    """One evaluation: a crowd-labelled dataset, one learner, one seed."""

    dataset: str
    method: str
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None


def run_crowd(job: CrowdJob) -> dict[str, Any]:
    """Fit the learner on the training features and crowd labels; score its predictions on
    the test split (true labels) and its inferred training labels against the truth."""
    from sklearn.metrics import f1_score

    found = registry()
    spec = found.entry(KIND, job.method)
    data = found.dataset(job.dataset).read(job.data_root, job.seed, job.dataset_options)
    if data.train.y.dim() != 2 or data.train_truth is None:
        raise OptionError(f"dataset '{job.dataset}' has no crowd labels (an examples x workers label matrix as its "
                          "training targets, and the true training labels)")
    x = data.train.x.reshape(len(data.train.x), -1).float().numpy()
    x_test = data.test.x.reshape(len(data.test.x), -1).float().numpy()
    crowd, truth, y_test = data.train.y.numpy(), data.train_truth.numpy(), data.test.y.numpy()
    check_crowd_labels(crowd, data.num_classes)
    started = time.perf_counter()
    learner = spec.build(job.method_options, job.seed).fit(x, crowd, data.num_classes)
    seconds = time.perf_counter() - started
    predicted = learner.predict(x_test)
    return {
        "dataset": job.dataset, "method": job.method, "seed": job.seed, "classes": data.classes,
        "method_options": job.method_options, "dataset_options": job.dataset_options,
        "train_counts": np.bincount(truth, minlength=data.num_classes).tolist(),
        "workers": int(crowd.shape[1]), "test_counts": np.bincount(y_test, minlength=data.num_classes).tolist(),
        "accuracy": float(np.mean(predicted == y_test)),
        "f1": float(f1_score(y_test, predicted, average="macro")),
        "inferred_label_accuracy": float(np.mean(learner.inferred_labels == truth)),
        "majority_vote_accuracy": float(np.mean(majority_vote(crowd) == truth)),
        "fit_seconds": round(seconds, 2),
        "history": [_scored(entry, truth) for entry in getattr(learner, "history", [])],
        "details": _scored(getattr(learner, "details", {}), truth),
    }


def _scored(record: dict[str, Any], truth: np.ndarray) -> dict[str, Any]:
    """A learner's record with every list of inferred training labels (a key ending in
    ``_labels``) replaced by its accuracy against the truth (``<name>_accuracy``)."""
    scored = {}
    for key, value in record.items():
        if key.endswith("_labels") and isinstance(value, list) and len(value) == len(truth):
            scored[key.removesuffix("_labels") + "_accuracy"] = float(np.mean(np.asarray(value) == truth))
        else:
            scored[key] = value
    return scored


#: What ``robx crowd --out`` writes, naming its writer (``--force`` checks it)
OUTPUTS = ("report.json",)
WRITER = "robx crowd"


def write_crowd_report(out: Path, report: dict[str, Any]) -> None:
    make_directory(out)
    write_json(out / "report.json", {**report, WRITTEN_BY: WRITER})
