"""Tasks: what the engine trains and how it is scored.

The engine is task-agnostic: it orchestrates batches, attacks, forward passes, losses and
statistics, and asks the run's :class:`Task` for everything that depends on what is learnt.
Tasks are registered through the ``register_tasks`` hook (built-ins included: image
classification, and a small zero-inflated regression), so a new kind of problem is one new
task module plus its plugins, with no engine edit.

Every example has a **target** (what the loss compares the outputs with: a class index, a
count, soft labels...) and a **label**: the class, or group, it belongs to for the
per-class quantities (statistics, budgets, loss weights, imbalance). For classification the
two coincide; a regression task groups its targets (zero / non-zero). An example with many
targets (a crime grid's next-day count of every node and category) may label each of them:
labels of shape ``(examples, *target_shape)``; then the loss and the scores are per target
too, and each labelled target counts once in the per-class quantities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from robx.core.errors import RobxError

if TYPE_CHECKING:
    from robx.core.data import Split, TaskData
    from robx.core.stats import ScoreAccumulator


@dataclass(frozen=True)
class Metric:
    """The per-example score a task is judged by (averaged per class in every report)."""

    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class ModelInput:
    """What a registered model builder needs to know about the task's data."""

    shape: tuple[int, ...]  # one example's input shape: (channels, height, width), (features,), ...
    outputs: int  # output units: the classes, or 1 for a scalar regression
    mean: tuple[float, ...]  # per-channel normalisation the model applies to its inputs
    std: tuple[float, ...]
    head: str = "linear"  # "linear", or "cosine" (normalised features x normalised weights)
    graph: torch.Tensor | None = None  # (nodes, nodes) adjacency when examples are graph signals
    #: the mean training target of every output (count tasks: each cell's base rate), for
    #: models that start from it; None where the task has none
    target_mean: torch.Tensor | None = None


class Task(ABC):
    """One kind of learning problem. Subclasses set ``name`` and ``metric`` and implement
    :meth:`loss` and :meth:`scores`; the rest has defaults a task may override."""

    name: ClassVar[str]
    metric: ClassVar[Metric]
    #: the registered attacks (``register_attacks``) that apply to this task beside the
    #: default attack, which applies to every task (``robx eval --attack``); they ascend
    #: :meth:`attack_loss` inside :attr:`input_bounds`
    attacks: ClassVar[tuple[str, ...]] = ()
    #: the attack a run is evaluated with unless ``robx eval --attack`` names another
    #: (``None``: the registry's default attack)
    default_attack: ClassVar[str | None] = None
    #: the box every attack keeps inputs in: [0, 1] for pixels; (-inf, inf) for no box
    input_bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: the unit victim selection (``topk``, MinGRE) ranks, when the task has one of its own
    #: (crime: "node"); it then implements :meth:`unit_saliency` and :meth:`unit_mask`
    victim_unit: ClassVar[str | None] = None
    #: whether the task labels every target of an example (crime: each cell and category of
    #: the next day) instead of the example: then an example has no one class to take a
    #: per-class budget or a sampling weight from (the engine refuses both), and its
    #: datasets' labels have the targets' shape
    labels_per_target: ClassVar[bool] = False
    #: config values for the keys neither the dataset's registered defaults, the config file
    #: nor the command line set (a registered dataset then needs to name little more than
    #: its model); empty: every dataset of the task gives its own
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, data: TaskData) -> None:
        self.data = data

    @classmethod
    def check_labels(cls, labels: torch.Tensor, dataset: str) -> None:
        """One line when a dataset's labels do not have the shape the task declares: one
        class per example, or (``labels_per_target``) one per target."""
        if cls.labels_per_target != (labels.dim() > 1):
            per = "every target" if cls.labels_per_target else "every example"
            raise RobxError(f"dataset '{dataset}' gives labels of shape {tuple(labels.shape)}, but its task "
                            f"'{cls.name}' labels {per}")

    @property
    def num_classes(self) -> int:
        """Classes (or groups) of the labels."""
        return len(self.data.classes)

    # --- data ----------------------------------------------------------------------------

    def inputs(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored examples -> float model inputs (the space attacks perturb)."""
        return stored.float()

    def augment_batch(self, x: torch.Tensor, crop_padding: str = "zeros") -> torch.Tensor:
        """Random data augmentation of a training batch (when the config asks for it);
        ``crop_padding`` is the config's (how an image crop pads; tasks without crops ignore it)."""
        return x

    def model_input(self) -> ModelInput:
        data = self.data
        return ModelInput(tuple(data.train.x.shape[1:]), self.num_classes, data.mean, data.std)

    # --- learning --------------------------------------------------------------------------

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The default per-row training loss (``--loss`` plugins replace it); for a task
        whose labels are per target, the loss of every target (the labels' shape), so the
        per-class loss weights apply target by target."""

    def attack_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The per-example loss the default attacks ascend."""
        return self.loss(outputs, targets)

    def row_weights(self, class_weights: torch.Tensor, targets: torch.Tensor,
                    row_labels: torch.Tensor) -> torch.Tensor:
        """Each trained row's (or target's) weight from the per-class loss weights."""
        return class_weights[row_labels]

    def unit_saliency(self, grad: torch.Tensor) -> torch.Tensor:
        """(rows, units) saliency of the task's victim units from an input gradient; rows is
        1 where the units are shared by the whole batch (graph nodes)."""
        raise NotImplementedError(f"task '{self.name}' has no victim unit")

    def unit_mask(self, chosen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A (rows, units) boolean choice as a mask broadcastable to the inputs ``x``."""
        raise NotImplementedError(f"task '{self.name}' has no victim unit")

    # --- scoring -------------------------------------------------------------------------

    @abstractmethod
    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The :attr:`metric` of every example (1.0 / 0.0 for a correct / wrong class), or of
        every target, shaped like the labels, when the labels are per target."""

    def report_details(self, split: Split, clean_outputs: torch.Tensor, robust_outputs: torch.Tensor,
                       attack_name: str) -> dict[str, Any]:
        """Task-specific numbers for the report beside the per-class table (``report["details"]``),
        from the model's outputs on the evaluated split. ``tables``: a list of
        ``{"title", "columns", "rows"}`` the CLI prints; anything else is kept in the JSON."""
        return {}

    def statistics(self, device: torch.device) -> ScoreAccumulator:
        """A fresh accumulator of the per-class statistics of one split over one epoch."""
        from robx.core.stats import ScoreAccumulator

        return ScoreAccumulator(self, device)


#: ``register(TaskClass)`` inside a ``register_tasks`` hook
RegisterTask = Callable[[type[Task]], None]
