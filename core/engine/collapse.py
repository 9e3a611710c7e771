"""The catastrophic-overfitting check (``--collapse-check``): single-step adversarial training
can lose its robustness within an epoch (Wong et al., ICLR 2020: PGD accuracy falls to about
0 while FGSM accuracy climbs), and the epoch's training numbers, measured under the method's
own attack, do not show it.

After every epoch of a run with an adversary, PGD-5 (step eps / 4, the run's eps for every
class; Wong et al.'s early-stopping check is PGD-5 at step 2/255 for eps 8/255) attacks one
fixed batch of :data:`CHECK_SIZE` examples: drawn once, seeded, from the validation split,
or from the training split when the run has none (the authors' check also reads a training
batch). An epoch *falls* when its accuracy is below ``collapse_check`` times the best of
the epochs before, where that best was at least :data:`LEAST_BEFORE` (below it, a fall is
noise on a batch of 256). Against the best, not only the epoch before: at CPU scale the fall
can take several epochs (measured: FGSM from x at eps 16/255 on CIFAR-10, cnn4, the check
0.207 -> 0.129 -> 0.117 -> 0.066 -> ... -> 0.012 while the training FGSM accuracy climbed
0.17 -> 0.32), and no single epoch halves the one before. A *collapse* is a fall that the
next epoch confirms (it falls too), or a fall in the run's last epoch: catastrophic
overfitting does not recover, and a single dip does (measured: N-FGSM with class-balanced
weights on Step-10 CIFAR-10, the check 0.316 -> 0.281 -> 0.152 -> 0.313). Its first epoch
names it. The confirming epoch's metrics record ``collapsed``, with one warning line; with
``--keep-best`` the run's report evaluates the best checkpoint, kept before the collapse,
instead of the last.
"""

from __future__ import annotations

from typing import Any

import torch

from robx.core.data import Split
from robx.core.engine.build import Run
from robx.core.engine.evaluation import split_stats
from robx.core.engine.step import planned_attack
from robx.core.errors import warn
from robx.core.stats import EpochStats

CHECK_SIZE = 256
CHECK_STEPS = 5
LEAST_BEFORE = 0.1


def checked(run: Run) -> bool:
    """Whether the run checks: on, with an adversary, on a task whose score is higher-is-better."""
    return bool(run.config.collapse_check) and not run.host.identity_adversary and run.task.metric.higher_is_better


def check_batch(run: Run) -> Split:
    """The fixed examples the check attacks (the same every epoch and after a resume)."""
    data = run.data
    split = data.val if data.val is not None and len(data.val) else data.train
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(run.config.seed))
    return split.subset(order[:CHECK_SIZE].sort().values)


def check_accuracy(run: Run) -> float:
    """Robust accuracy of the check batch under PGD-5 (the model in eval mode; the training
    random stream is left as it was)."""
    config = run.config
    assert config.eps is not None
    attack = planned_attack(run, None, alpha=config.eps / 4, steps=CHECK_STEPS)
    stats = split_stats(run, check_batch(run), attack)
    assert stats.robust is not None
    counts = stats.counts.double()
    return float((stats.robust.double() * counts).sum() / counts.sum())


def collapse_check(run: Run, stats: EpochStats) -> dict[str, Any] | None:
    """The epoch's check, ``{robust, collapsed}``, stored on ``stats`` (and so in the history a
    resumed run reads); ``collapsed`` when this epoch confirms a collapse (or falls in the last
    epoch), with one warning line. ``None`` when the run does not check."""
    if not checked(run):
        return None
    stats.collapse_check = accuracy = check_accuracy(run)
    history, starts = run.state.history, collapses(run)
    # a collapse that began in the epoch before (confirmed now), or now in the run's last epoch
    begun = next((k for k in (len(history) - 2, len(history) - 1) if k >= 0 and history[k].epoch in starts), None)
    collapsed = begun is not None
    if begun is not None:
        first = history[begun]
        best = max(e.collapse_check for e in history[:begun] if e.collapse_check is not None)
        fell = (f"fell to {first.collapse_check:.3f} in epoch {first.epoch} and {accuracy:.3f} in epoch {stats.epoch}"
                if first is not stats else f"fell to {accuracy:.3f} in the run's last epoch")
        keep = ("the report evaluates the best checkpoint, kept before it" if run.config.keep_best is not None else
                "train with --keep-best robust-overall --val-fraction 0.1 to keep the model before it")
        warn(f"catastrophic overfitting from epoch {first.epoch}: PGD accuracy on the check batch {fell}, below "
             f"{run.config.collapse_check:g} x its best, {best:.3f}; {keep}")
    return {"robust": round(accuracy, 4), "collapsed": collapsed}


def collapse_starts(checks: list[float | None], fraction: float, last_epoch: bool) -> list[int]:
    """The positions in ``checks`` (one epoch's check each, in order) where a collapse begins:
    a fall below ``fraction`` times the best check before it (when that best was at least
    :data:`LEAST_BEFORE`) that the next check confirms by falling too, or a fall in the last
    position when it is the run's ``last_epoch``."""
    def falls(position: int) -> bool:
        if not 0 <= position < len(checks) or checks[position] is None:
            return False
        before = [check for check in checks[:position] if check is not None]
        return bool(before) and max(before) >= LEAST_BEFORE and checks[position] < fraction * max(before)

    return [k for k in range(len(checks)) if falls(k) and not falls(k - 1)
            and (falls(k + 1) or (k == len(checks) - 1 and last_epoch))]


def collapses(run: Run) -> list[int]:
    """The first epochs of the run's collapses so far (also after a resume: the history is in
    the checkpoint)."""
    history = run.state.history
    last_epoch = bool(history) and history[-1].epoch == run.config.epochs - 1
    starts = collapse_starts([e.collapse_check for e in history], run.config.collapse_check, last_epoch)
    return [history[k].epoch for k in starts]
