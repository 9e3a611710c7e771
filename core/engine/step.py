"""One training step: the batch, its bound attack, the engine's forward passes, the loss and
the optimiser step (docs/engine.md, the data path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from robx.core.attack_plans import AttackPlan
from robx.core.attacks import Attack, eval_mode, logits_of
from robx.core.data import batch_indices
from robx.core.errors import RobxError
from robx.core.registry import registry
from robx.core.state import Step
from robx.core.stats import ScoreAccumulator
from robx.core.engine.build import Run, step_precision


def forward_passes(passes: torch.nn.Module, step: Step, views: frozenset[str]) -> None:
    """The step's train-mode forward passes: the trained rows and the views plugins read.

    BatchNorm policy: **one BatchNorm batch per input distribution**. The clean inputs (x,
    and rows made from it) go through the model together in one pass, the adversarial
    inputs (x', and rows made from it, such as Imb-Mix's mixed copies) in another; each pass
    normalises with its own batch statistics and updates the running statistics once, the
    clean pass first. This is what the authors of MART do (separate train-mode passes on x
    and x', natural first); TRADES' and CFA's code pass x a second time for the KL target,
    and DAFA's passes x' first, which changes only the running statistics (docs/parity.md).
    Where no paper decides (SRAT's L_sep on x' beside Imb-Mix's mixed rows), it keeps one
    BN batch for everything adversarial. A view of
    the rows' own distribution while the rows are unchanged is the rows' pass (no second
    pass); under an identity adversary (natural training) there is one distribution.
    Which is which comes from the step's declared provenance (``identity_adversary``,
    ``rows_source``, ``rows_changed``), not from comparing tensors.

    ``passes`` is a :class:`robx.core.distributed.BatchPasses` of the model (``run.passes``,
    under DDP across processes): both passes are one call, one DDP forward per step.
    """
    natural = step.identity_adversary
    rows_kind = step.rows_source
    base = {"clean": step.x, "adversarial": step.x if natural else step.x_adv}
    batches: dict[str, list[torch.Tensor]] = {"clean": [], "adversarial": []}
    batches[rows_kind].append(step.inputs)
    appended: dict[str, int] = {}  # kind -> index of its base tensor in that kind's batch
    wanted = {}  # view -> (kind, index of its tensor in that batch)
    for view in sorted(views):
        kind = "clean" if natural else view
        if kind == rows_kind and not step.rows_changed:
            wanted[view] = (kind, 0)
            continue
        if kind not in appended:
            batches[kind].append(base[view])
            appended[kind] = len(batches[kind]) - 1
        wanted[view] = (kind, appended[kind])
    kinds = [kind for kind in ("clean", "adversarial") if batches[kind]]
    inputs = [torch.cat(batches[kind]) if len(batches[kind]) > 1 else batches[kind][0] for kind in kinds]
    results: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for kind, (features, outputs) in zip(kinds, passes(*inputs)):
        if outputs.dtype in (torch.bfloat16, torch.float16):  # under autocast; losses want fp32 (fp64 stays)
            features, outputs = features.float(), outputs.float()
        sizes = [len(part) for part in batches[kind]]
        results[kind] = list(zip(features.split(sizes), outputs.split(sizes)))
    step.features, step.outputs = results[rows_kind][0]
    for view, (kind, index) in wanted.items():
        features, outputs = results[kind][index]
        if view == "clean":
            step.clean_features, step.clean_outputs = features, outputs
        else:
            step.adv_features, step.adv_outputs = features, outputs


def statistics_views(model: torch.nn.Module, step: Step) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Clean and adversarial predictions of the batch for the class statistics.

    From the step's passes where the engine ran them (no extra pass): the clean ones only
    then; the adversarial ones from the adversarial view, or from the trained rows when they
    are x' unchanged (PGD-AT), otherwise from one no-grad eval-mode pass on x' (needed when
    ``augment`` changed the rows and no plugin reads the adversarial view). Natural training
    records no adversarial predictions.
    """
    clean = None if step.clean_outputs is None else step.clean_outputs.detach()
    if step.identity_adversary:
        return (step.outputs.detach() if clean is None and not step.rows_changed else clean), None
    if step.adv_outputs is not None:
        return clean, step.adv_outputs.detach()
    if step.rows_source == "adversarial" and not step.rows_changed:
        return clean, step.outputs.detach()
    with eval_mode(model):
        return clean, logits_of(model, step.x_adv)


def planned_attack(run: Run, name: str | None, *, alpha: float, steps: int,
                   class_budget: tuple[torch.Tensor, torch.Tensor] | None = None,
                   options: dict[str, Any] | None = None, eps: float | None = None) -> AttackPlan:
    """The registered attack ``name`` (``None``: the default attack) on the run's task with
    the run's budget (or ``eps``), norm and seed: how validation and evaluation build their
    attack (training's is planned once, :attr:`Run.training_attack`)."""
    config = run.config
    assert config.eps is not None
    found = registry()
    return found.plan_attack(run.task, found.attack_name(name), eps=config.eps if eps is None else eps, alpha=alpha,
                             steps=steps, norm=config.norm, seed=config.seed, options=options,
                             class_budget=class_budget, example_shape=tuple(run.data.train.x.shape[1:]))


def bound_attack(run: Run, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 labels: torch.Tensor) -> Attack:
    """The run's attack on a batch: the training plan (the default attack with the run's
    steps and norm), each example's budget from the owner of the per-class budget, bound to
    ``model`` and the batch (no victims yet). Adversaries choose the loss, start and targets
    when they call it."""
    state = run.state
    assert run.training_attack is not None
    plan = dataclasses.replace(run.training_attack, class_budget=(state.class_eps, state.class_alpha))
    return plan.bind(model, run.task, x, y, labels)


def prepared_step(run: Run, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor,
                  model: torch.nn.Module | None = None) -> Step:
    """The data path up to the forward passes: victims, adversary, trained rows, augment;
    the attack aims at ``model`` (default: the model in training)."""
    state, host = run.state, run.host
    step = Step(x=x, y=y, labels=labels)
    step.attack = bound_attack(run, state.model if model is None else model, x, y, labels)
    step.victim_mask = host.select_victims(step, state)
    step.attack = step.attack.on_victims(step.victim_mask)
    step.x_adv = host.generate_adversary(step, state)
    step.identity_adversary = host.identity_adversary
    step.rows_source = "clean" if host.trains_on == "clean" or step.identity_adversary else "adversarial"
    source = step.x if step.rows_source == "clean" else step.x_adv
    step.inputs, step.targets, step.row_labels = source, step.y, step.labels
    host.augment(step, state)
    if not len(step.inputs) == len(step.targets) == len(step.row_labels):
        raise RobxError(f"augment left {len(step.inputs)} inputs, {len(step.targets)} targets and "
                        f"{len(step.row_labels)} row labels; change the rows with step.set_rows(...)")
    return step


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor,
               tracker: ScoreAccumulator, loss_sums: dict[str, torch.Tensor], share: float = 1.0) -> None:
    """One step on a batch; across processes, on this process's slice of the global batch,
    its loss weighted by ``share`` (:func:`robx.core.distributed.rank_shards`). With
    ``precision = "bf16"`` the attack, the forward passes and the loss run under bf16
    autocast; plugins see fp32 outputs and features."""
    state, host, model = run.state, run.host, run.state.model
    with step_precision(run.config, state.device):  # the backward runs outside autocast, as torch advises
        step = prepared_step(run, x, y, labels)
        if host.reads_input_gradient:  # the backward then also gives dL/d(rows) (Free AT)
            step.inputs = step.inputs.detach().requires_grad_(True)
        model.train()
        forward_passes(run.passes, step, host.views)
        per_sample = host.training_loss(step, state)
        if per_sample is None:
            per_sample = run.task.loss(step.outputs, step.targets)
        step.per_sample_loss = per_sample
        weights = host.weight_samples(step, state)  # checked there, naming the plugin
        if state.class_weights is None:
            loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
        else:
            by_class = run.task.row_weights(state.class_weights, step.targets, step.row_labels)
            weighted = per_sample * by_class * (weights if weights is not None else 1.0)
            # the owner's declared average: over the rows' class weights, or over the batch
            loss = weighted.sum() / by_class.sum() if host.class_weighted_mean else weighted.mean()
        terms = host.extra_losses(step, state)
        total = loss + sum(terms.values()) if terms else loss

        with torch.no_grad():
            clean_logits, robust_logits = statistics_views(model, step)
            tracker.update(labels, y, clean_logits, robust_logits)
    state.optimizer.zero_grad(set_to_none=True)
    (total * share if share != 1.0 else total).backward()
    step.input_gradient = step.inputs.grad if host.reads_input_gradient else None
    state.optimizer.step()
    if run.schedule_per_batch:
        run.scheduler.step()
    state.global_step += 1
    host.after_step(step, state)

    with torch.no_grad():  # a Python number, not a tensor made from one (a copy from the host on a GPU)
        batch = float(len(y))
        loss_sums["loss"] = loss_sums.get("loss", 0) + total.detach() * batch
        for name, value in terms.items():
            loss_sums[name] = loss_sums.get(name, 0) + value.detach() * batch


def training_batch(run: Run, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model inputs (augmented by the task when the config augments), targets and labels of
    the training examples ``idx`` (on the batch source's device, see :func:`on_batch_source`).
    Stored inputs reach the device as stored (uint8 images: a quarter of the bytes) and
    become model inputs there."""
    device = run.state.device
    part = run.batch_source.subset(idx)
    x = run.task.inputs(part.x.to(device))
    if run.config.augment:
        x = run.task.augment_batch(x, run.config.crop_padding)
    if x.dim() == 4:
        x = x.contiguous(memory_format=run.layout)
    return x, part.y.to(device), part.labels.to(device)


def on_batch_source(run: Run, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The epoch's index batches on the device of the batch source: one copy per epoch
    instead of one per step."""
    device = run.batch_source.x.device
    if device.type == "cpu" or not batches:
        return batches
    return list(torch.cat(batches).to(device).split([len(idx) for idx in batches]))


def epoch_batches(run: Run) -> Iterator[torch.Tensor]:
    """A shuffled pass over the training set, or, when a plugin gives sampling weights,
    as many examples drawn with replacement by those weights."""
    labels = run.data.train.labels
    assert run.config.batch_size is not None
    weights = run.host.sampling_weights(run.state, labels)
    if weights is None:
        return batch_indices(len(labels), run.config.batch_size, run.generator)
    if run.task.labels_per_target:
        raise RobxError(f"{run.host.owners['sampling_weights']} samples examples by class, but dataset "
                        f"'{run.config.dataset}' labels every target of an example, not the example")
    if weights.shape != labels.shape or not torch.isfinite(weights).all() or (weights < 0).any():
        raise RobxError("sampling_weights must be finite, non-negative, one per training example")
    drawn = torch.multinomial(weights.double().cpu(), len(labels), replacement=True, generator=run.generator)
    return iter(drawn.split(run.config.batch_size))
