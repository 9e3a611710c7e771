"""The best checkpoint (``--keep-best``): beside the last, the weights of the epoch with the
best validation score, the standard remedy for robust overfitting (Rice et al., ICML 2020:
adversarial training's best robust test accuracy comes early, then falls).

After every epoch the validation split's per-class scores (under the validation attack) are
summarised as the report summarises the test set's (``robust-worst``: the worst class's robust
score; ``robust-minority``: the minority half's mean; ...); an epoch that beats every earlier
one writes its model to ``best.pt`` before the epoch's checkpoint, which records which epoch
that is, so a resumed run goes on comparing with it. The weights are the iterate validation
scored (a weight average's BN recompute happens once, at the end, for the last model only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from robx.core import rundir
from robx.core.engine.build import Run
from robx.core.errors import CheckpointError
from robx.core.metrics import summarize
from robx.core.stats import EpochStats

BEST_FILE, BEST_REPORT_FILE = rundir.BEST_FILE, rundir.BEST_REPORT_FILE


def validation_score(run: Run, stats: EpochStats) -> float:
    """The epoch's validation score by ``config.keep_best`` (NaN without one)."""
    assert run.config.keep_best is not None
    if stats.val is None:
        return math.nan
    kind, _, summary = run.config.keep_best.partition("-")
    per_class = stats.val.robust if kind == "robust" else stats.val.clean
    if per_class is None:
        return math.nan
    values = [float(v) if n > 0 else None for v, n in zip(per_class.tolist(), stats.val.counts.tolist())]
    counts = run.real_class_counts or run.data.class_counts()
    return summarize(values, counts, run.task.metric.higher_is_better)[summary]


def is_new_best(run: Run, stats: EpochStats) -> bool:
    """Whether this epoch beats every earlier one (``run.best`` is then this epoch's)."""
    if run.config.keep_best is None:
        return False
    score = validation_score(run, stats)
    if math.isnan(score):
        return False
    earlier = run.best["score"] if run.best else None
    better = earlier is None or (score > earlier if run.task.metric.higher_is_better else score < earlier)
    if better:
        run.best = {"metric": run.config.keep_best, "epoch": stats.epoch, "score": score}
    return better


def save_best(run: Run) -> None:
    assert run.best is not None
    rundir.save_checkpoint(run.run_dir / BEST_FILE, {**run.best, "model": run.state.model.state_dict()})


def best_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, {metric, epoch, score}) of the run's best checkpoint; one line without one."""
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} keeps no best checkpoint ({BEST_FILE}); train with --keep-best and "
                              "--val-fraction")
    payload = rundir.load_checkpoint(path)
    return payload["model"], {key: payload[key] for key in ("metric", "epoch", "score")}
