"""Hook specifications of robx (pluggy project name ``"robx"``).

Every training step flows one way (see DESIGN.md)::

    select_victims -> generate_adversary -> augment -> forward
        -> loss = mean(w * per_sample_loss) + sum(extra_loss) -> backward -> step

Each hook receives the keyword arguments named in its spec; an implementation may
take any subset of them (pluggy passes only what it asks for). ``step`` is the
:class:`robx.core.state.Step` of the current batch, ``state`` the run-wide
:class:`robx.core.state.TrainState`. Plugins keep their own state in
``state.stash`` so that it is checkpointed with the run.

Only plugins the user selected are registered, so a hook runs only for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from robx.core.state import Step, TrainState

PROJECT_NAME = "robx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# data path: called once per training step, in this order
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_victims(step: Step, state: TrainState) -> torch.Tensor | None:
    """Choose which input coordinates (pixels, graph nodes) the adversary may perturb.

    Called before :func:`generate_adversary` on every training step.
    Return a boolean mask broadcastable to ``step.x`` (``True`` = may move) or
    ``None`` to leave the choice to the next plugin. First non-``None`` result wins;
    when no plugin answers every coordinate may move. The engine stores the result in
    ``step.victim_mask`` for the adversary to honour.
    """


@hookspec(firstresult=True)
def generate_adversary(step: Step, state: TrainState) -> torch.Tensor | None:
    """Return the adversarial inputs ``x'`` for ``step.x`` (same shape), or ``None``.

    Called after :func:`select_victims`. First non-``None`` result wins. The built-in
    ``pgd`` plugin is registered last (``trylast``) as the fallback when no selected
    plugin generates adversaries; selecting two plugins that both implement this hook
    is an error naming both. ``natural`` returns ``step.x`` unchanged. The attack must
    leave the model's train/eval mode as it found it.
    """


@hookspec
def augment(step: Step, state: TrainState) -> None:
    """Change the batch in place after the adversary: ``step.inputs`` and ``step.targets``.

    Called after :func:`generate_adversary`, in the order the user listed the plugins.
    ``step.inputs`` starts as ``x'``; ``step.targets`` starts as the hard labels ``y``.
    A plugin may add rows (both tensors grow together), replace ``targets`` by soft
    labels of shape (rows, classes), or train on other inputs (TRADES trains its main
    term on the clean batch). When ``inputs`` is no longer ``x'`` the engine gets the
    adversarial predictions for the class statistics from ``step.adv_outputs`` if a
    plugin set it, else from one extra no-grad forward pass. Returns nothing.
    """


@hookspec
def weight_samples(step: Step, state: TrainState) -> torch.Tensor | None:
    """Per-sample loss weights, shape ``(len(step.targets),)``, or ``None`` for no opinion.

    Called after the forward pass. The engine multiplies the results of all plugins,
    so weights compose (class-balanced x fairness weights ...). The loss is
    ``mean(w * per_sample_loss)``.
    """


@hookspec
def extra_loss(step: Step, state: TrainState) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """An additional loss term: a scalar tensor, a ``{name: scalar}`` dict, or ``None``.

    Called after the forward pass with ``step.outputs``, ``step.features`` and
    ``step.per_sample_loss`` filled in. All results are summed into the loss and logged
    under their names (the plugin name for a bare scalar).
    """


# ---------------------------------------------------------------------------
# lifecycle: plugin state that lives across steps
# ---------------------------------------------------------------------------


@hookspec
def train_start(state: TrainState) -> None:
    """Called once before the first epoch (also when a run resumes)."""


@hookspec
def epoch_start(state: TrainState) -> None:
    """Called at the start of every epoch, before its first step."""


@hookspec
def epoch_end(state: TrainState) -> None:
    """Called after every epoch's last step, once ``state.epoch_stats`` holds the
    epoch's class statistics (train, and validation when a split exists). Plugins
    update per-class budgets (``state.class_eps``/``class_alpha``) or their stash here."""


@hookspec
def train_end(state: TrainState) -> None:
    """Called once after the last epoch, before the final evaluation. A plugin may
    replace the evaluated weights here (weight averaging)."""


@hookspec
def after_step(step: Step, state: TrainState) -> None:
    """Called after every optimiser step (per-step weight averaging such as EMA)."""


# ---------------------------------------------------------------------------
# replacing parts of the recipe (at most one selected plugin implements each)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def sampling_weights(state: TrainState, labels: torch.Tensor) -> torch.Tensor | None:
    """Per-example sampling weights over the training set, shape ``(len(labels),)``, or None.

    Called at the start of every epoch with the training labels. When a plugin answers,
    the epoch's batches are drawn with replacement with these (unnormalised)
    probabilities instead of a shuffled pass (class-balanced resampling).
    """


@hookspec(firstresult=True)
def training_loss(step: Step, state: TrainState) -> torch.Tensor | None:
    """Per-sample training loss on ``step.outputs`` vs ``step.targets``, or ``None``.

    First non-``None`` result wins; without one the task's loss is used (cross-entropy
    for classification, with soft targets when ``targets`` are soft).
    """


def _all_hook_names() -> list[str]:
    return [name for name, obj in globals().items() if hasattr(obj, "robx_spec")]


HOOK_NAMES: tuple[str, ...] = tuple(_all_hook_names())
