"""Class statistics: one tracker shared by every fairness and imbalance method.

Per split and epoch, for every class (or group) of the labels: how many examples, and the
mean of the task's metric on clean and on adversarial inputs (accuracy for
classification), plus whatever class x class tables the task records (classification: the
confusion matrices and the mean adversarial class probabilities that DAFA and FAIR-TAT read). Sums accumulate on the training device during the epoch
(no host sync in the step loop) and are read once at epoch end into a :class:`SplitStats`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class Named(Protocol):
    name: str


class ScoredTask(Protocol):
    """What the statistics need of a task (:class:`robx.core.task.Task` has it): its classes
    and its per-example (or per-target) metric."""

    metric: Named

    @property
    def num_classes(self) -> int: ...

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SplitStats:
    """Per-class statistics of one split over one epoch (CPU tensors).

    ``clean``/``robust``: per-class mean of the task's ``metric`` (accuracy for
    classification) on clean and adversarial inputs, ``None`` when not recorded.
    ``tables``: the task's own per-class tables by name, one row per true class (the
    classification task records ``clean_confusion``/``robust_confusion``, [i, j] = P(prediction
    j | true class i), and ``robust_mean_prob``, [i, j] = mean softmax probability of class j
    over the adversarial examples of class i); a method that needs one says so when it is
    missing.
    """

    counts: torch.Tensor
    clean: torch.Tensor | None
    robust: torch.Tensor | None
    metric: str = "accuracy"
    tables: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def listify(t: torch.Tensor | None) -> Any:
            return None if t is None else [round(v, 6) for v in t.tolist()]

        return {"metric": self.metric, "counts": self.counts.tolist(), "clean": listify(self.clean),
                "robust": listify(self.robust)}


#: checkpoints written before the task's tables had a field of their own kept these three by name
_NAMED_TABLES = ("clean_confusion", "robust_confusion", "robust_mean_prob")


def _split_stats_from_state(values: dict[str, Any]) -> SplitStats:
    values = dict(values)
    tables = dict(values.pop("tables", {}))
    for name in _NAMED_TABLES:
        table = values.pop(name, None)
        if table is not None:
            tables[name] = table
    return SplitStats(**values, tables=tables)


@dataclass
class EpochStats:
    epoch: int
    train: SplitStats
    val: SplitStats | None = None
    #: the validation attack, described (``val`` was measured under it)
    val_attack: str | None = None
    loss: float = float("nan")
    loss_terms: dict[str, float] = field(default_factory=dict)
    lr: float = float("nan")
    seconds: float = float("nan")
    #: the CPU time of the epoch's training (every thread of the process): with one thread, its
    #: cost whatever else the machine runs; with a GPU, the host's share only
    cpu_seconds: float = float("nan")
    #: robust accuracy of the catastrophic-overfitting check's batch (``--collapse-check``)
    collapse_check: float | None = None

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain values only, for checkpoints that load with ``weights_only=True``."""
        return {**dataclasses.asdict(self), "train": dataclasses.asdict(self.train),
                "val": None if self.val is None else dataclasses.asdict(self.val)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochStats:
        values = dict(state)
        values["train"] = _split_stats_from_state(values["train"])
        values["val"] = None if values["val"] is None else _split_stats_from_state(values["val"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "loss_terms": self.loss_terms,
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "train": self.train.to_json(),
            "val": None if self.val is None else self.val.to_json(),
            **({"val_attack": self.val_attack} if self.val_attack else {}),
        }


class ScoreAccumulator:
    """Per-class example counts and sums of the task's metric, on the device of the outputs."""

    def __init__(self, task: ScoredTask, device: torch.device) -> None:
        self.task = task
        self.num_classes = task.num_classes
        self.counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        self.clean_sum = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
        self.robust_sum = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
        # whether clean / robust outputs were seen, as a tensor so that the processes of a
        # distributed run combine it with the sums (a process without a batch of a small
        # split saw neither, and must still report what the others saw)
        self.seen = torch.zeros(2, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, targets: torch.Tensor, clean_outputs: torch.Tensor | None = None,
               robust_outputs: torch.Tensor | None = None) -> None:
        labels = labels.flatten()  # one entry per labelled target (tasks with several per example)
        # index_add_, not bincount: bincount sizes its result from the labels' maximum, a host sync on a GPU
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))
        if clean_outputs is not None:
            self.seen[0] = 1
            self.clean_sum.index_add_(0, labels, self.task.scores(clean_outputs, targets).double().flatten())
        if robust_outputs is not None:
            self.seen[1] = 1
            self.robust_sum.index_add_(0, labels, self.task.scores(robust_outputs, targets).double().flatten())

    def summed_tensors(self) -> list[torch.Tensor]:
        """The running counts and sums, which the processes of a distributed run add up
        (``robx.core.distributed.sum_across``) before :meth:`result`."""
        return [self.counts, self.clean_sum, self.robust_sum, self.seen]

    @property
    def has_clean(self) -> bool:
        return bool(self.seen[0])

    @property
    def has_robust(self) -> bool:
        return bool(self.seen[1])

    def result(self) -> SplitStats:
        counts = self.counts.cpu()
        denominator = counts.clamp(min=1).double()
        clean = self.clean_sum.cpu() / denominator if self.has_clean else None
        robust = self.robust_sum.cpu() / denominator if self.has_robust else None
        return SplitStats(counts, clean, robust, self.task.metric.name)
