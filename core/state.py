"""The two objects hooks receive: ``Step`` (one batch) and ``TrainState`` (the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from robx.core.attacks import Attack
    from robx.core.config import TrainConfig
    from robx.core.stats import EpochStats
    from robx.core.task import Task

_PLAIN_SCALARS = (torch.Tensor, int, float, str, bool, type(None))


def check_plain(value: Any, where: str) -> None:
    """Raise a :class:`RobxError` unless ``value`` is plain data a checkpoint can hold:
    tensors, numbers, strings, ``None`` and lists, tuples or str/int-keyed dicts of these.
    Checkpoints load with ``torch.load(weights_only=True)``, which refuses any other object
    (a shared run directory must not be able to run code)."""
    from robx.core.errors import RobxError

    if isinstance(value, _PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, where)
        return
    if isinstance(value, dict) and all(isinstance(key, (str, int)) for key in value):
        for item in value.values():
            check_plain(item, where)
        return
    raise RobxError(f"{where} holds a {type(value).__name__}; a plugin's state_dict keeps tensors, numbers, "
                    "strings and lists/dicts of them only (checkpoints load without running code)")


#: What a plugin may declare in its ``reads`` attribute: the engine then computes that view.
VIEWS = ("clean", "adversarial")


@dataclass
class Step:
    """One training batch as it moves through the hooks.

    The clean batch, never changed: ``x`` (inputs), ``y`` (targets) and ``labels`` (the
    class of each example, or of each target where the task labels targets; for
    classification the targets themselves). ``victim_mask`` and
    ``x_adv`` come from the owners of victims and adversary. ``attack`` is the run's attack
    on this batch (:class:`robx.core.attacks.Attack`), bound by the engine to the model it
    attacks, each example's budget, the task's box and loss, the run's steps and norm, and
    (once chosen) the victims; adversaries and victim selectors use it and never build an
    attack from the run's settings themselves.

    Provenance is declared, never inferred from tensor identity: ``identity_adversary``
    says that x' is the clean batch (the adversary declares it: natural training), and
    ``rows_source`` what the trained rows started from (``"clean"`` or ``"adversarial"``)
    with ``rows_changed`` set once an ``augment`` plugin replaced them.

    The trained rows: ``inputs``, ``targets`` and ``row_labels`` start as ``(x_adv, y,
    labels)`` (or ``(x, y, labels)`` when the owner of ``trains_on`` declares ``"clean"``,
    or the adversary is the identity); ``augment`` plugins replace them with
    :meth:`set_rows`, so every row keeps the class it counts for (the dominant class of a
    mixed row) and ``weight_samples`` of any plugin composes with plugins that grow or mix
    the batch.

    The engine computes every forward pass (train mode, with gradients): ``outputs`` and
    ``features`` of the trained rows; ``clean_outputs``/``clean_features`` (f(x)) and
    ``adv_outputs``/``adv_features`` (f(x')) when a selected plugin declares
    ``reads = ("clean", ...)`` / ``("adversarial", ...)``. A view that coincides with the
    trained rows is the same tensor, not a second pass. Plugins never call the model in
    train mode themselves. After the backward, ``input_gradient`` holds the gradient of the
    step's loss with respect to the trained rows when a selected plugin declares
    ``reads_input_gradient`` (Free AT reads it in ``after_step``).
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    attack: Attack | None = None
    victim_mask: torch.Tensor | None = None
    x_adv: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    row_labels: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    features: torch.Tensor | None = None
    clean_outputs: torch.Tensor | None = None
    clean_features: torch.Tensor | None = None
    adv_outputs: torch.Tensor | None = None
    adv_features: torch.Tensor | None = None
    per_sample_loss: torch.Tensor | None = None
    input_gradient: torch.Tensor | None = None
    identity_adversary: bool = False
    rows_source: Literal["clean", "adversarial"] = "adversarial"
    rows_changed: bool = False

    def set_rows(self, inputs: torch.Tensor, targets: torch.Tensor, row_labels: torch.Tensor) -> None:
        """Replace the trained rows (from ``augment``): one input, target and class per row.

        Replace the tensors, never modify them in place: they may be ``x`` or ``x_adv``.
        """
        from robx.core.errors import RobxError

        if not len(inputs) == len(targets) == len(row_labels):
            raise RobxError(f"set_rows: {len(inputs)} inputs, {len(targets)} targets and "
                            f"{len(row_labels)} row labels; every row needs all three")
        self.inputs, self.targets, self.row_labels = inputs, targets, row_labels
        self.rows_changed = True


@dataclass
class ClassPolicy:
    """A ``class_policy`` answer: the per-class quantities its plugin owns for the coming
    epoch (each of length ``num_classes``); a field left ``None`` keeps the run's default."""

    attack_budget: tuple[torch.Tensor, torch.Tensor] | None = None  # (eps_c, alpha_c)
    class_weights: torch.Tensor | None = None
    regularizer_weights: torch.Tensor | None = None


@dataclass
class TrainState:
    """Everything a plugin may read across steps.

    The per-class quantities are decided by their owner plugin (see
    :mod:`robx.core.hookspecs`) and set by the engine; plugins read them:

    * ``class_counts``: the examples of each class the model trains on per epoch (the
      training set's counts, or those of the plugin that grows them), fixed for the run;
    * ``class_eps``/``class_alpha``: the per-class attack budget of the current epoch
      (length ``num_classes``); the engine binds each example's (``class_eps[y]``) to the
      step's attack, which every adversary calls;
    * ``class_weights``: per-class weights of the main loss this epoch, or ``None``;
    * ``regularizer_weights``: per-class weights b_c of a regulariser this epoch, or ``None``.

    ``task`` is the run's task (``task.data`` its :class:`robx.core.data.TaskData`);
    :meth:`log_diagnostic` the numbers a plugin reports about its own working, per epoch in
    metrics.jsonl. A plugin keeps its own state on itself and saves it with the run through
    ``state_dict()`` / ``load_state_dict()`` (docs/hooks.md), never here.
    """

    config: TrainConfig
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    num_classes: int
    class_counts: torch.Tensor
    class_eps: torch.Tensor
    class_alpha: torch.Tensor
    class_weights: torch.Tensor | None = None
    regularizer_weights: torch.Tensor | None = None
    epoch: int = 0
    global_step: int = 0
    epoch_stats: EpochStats | None = None
    history: list[EpochStats] = field(default_factory=list)
    diagnostics: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)

    def log_diagnostic(self, name: str, value: torch.Tensor | float) -> None:
        """Report a number about a plugin's working at this step (``"<plugin>.<what>"``);
        the engine writes its mean over the epoch's steps to metrics.jsonl (``diagnostics``).
        Tensors are summed where they are, so logging costs no host sync per step."""
        value = torch.as_tensor(value).detach().double()
        total, count = self.diagnostics.get(name, (torch.zeros_like(value), 0))
        self.diagnostics[name] = (total + value, count + 1)

    def take_diagnostics(self) -> dict[str, float]:
        """The epoch's diagnostic means (one host sync), emptied for the next epoch."""
        means = {name: float(total) / count for name, (total, count) in sorted(self.diagnostics.items())}
        self.diagnostics = {}
        return means

    @property
    def num_epochs(self) -> int:
        assert self.config.epochs is not None
        return self.config.epochs
