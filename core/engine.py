"""The training loop: one way through the data for every method (docs/engine.md).

    batch -> select_victims -> generate_adversary -> augment -> forward
          -> loss = mean(w * per_sample_loss) + sum(extra_loss) -> backward -> step
          -> class statistics (on device; read at epoch end)

The engine is task-agnostic: the run's registered task (``robx.core.task``) supplies the
inputs, the augmentation, the losses, the scores and the statistics; the dataset and the
model come from the registry. Nothing here depends on which task it is.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from robx import __version__
from robx.core import run as rundir
from robx.core.attacks import Attack, AttackPlan, check_budget, eval_mode, logits_of
from robx.core.averaging import cumulative_batchnorm, holds_buffers, with_parameters
from robx.core.config import TrainConfig, migrated
from robx.core import distributed
from robx.core.data import Split, TaskData, apply_protocol, batch_indices, check_subset_size, stratified_subset
from robx.core.distributed import BatchPasses, Processes
from robx.core.errors import (CheckpointError, Interrupted, NonFiniteLossError, OptionError, PluginError, RobxError,
                              RunDirError, TrainingPaused, warn)
from robx.core.evaluate import evaluate, seeded_batches
from robx.core.plugins import PluginHost, options_as_dict
from robx.core.models import NormedLinear, load_initial_weights, normalises
from robx.core.registry import Registry, registry
from robx.core.files import write_json, write_text_atomically
from robx.core.report import build_report, plot_per_class
from robx.core.state import Step, TrainState
from robx.core.stats import EpochStats, ScoreAccumulator, SplitStats
from robx.core.task import ModelInput, Task
from robx.kernels import OPS as KERNEL_OPS
from robx.kernels import dispatch_rule


class Progress(Protocol):
    """What the engine tells its caller (the CLI draws rich progress bars from it)."""

    def start_training(self, epochs: int, first_epoch: int) -> None: ...
    def start_epoch(self, epoch: int, batches: int) -> None: ...
    def advance_batch(self) -> None: ...
    def end_epoch(self, stats: EpochStats) -> None: ...
    def start_eval(self, total: int, description: str) -> None: ...
    def advance_eval(self, n: int) -> None: ...
    def end_eval(self) -> None: ...


class SilentProgress:
    def start_training(self, epochs: int, first_epoch: int) -> None: ...
    def start_epoch(self, epoch: int, batches: int) -> None: ...
    def advance_batch(self) -> None: ...
    def end_epoch(self, stats: EpochStats) -> None: ...
    def start_eval(self, total: int, description: str) -> None: ...
    def advance_eval(self, n: int) -> None: ...
    def end_eval(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise RobxError(f"unknown device {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobxError("device 'cuda' asked for but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (checkpoints load with
    ``weights_only=True``, which refuses numpy arrays)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """(scheduler, steps_per_batch). Step milestones are fractions of the epochs."""
    assert config.epochs is not None and config.lr is not None
    if config.schedule == "onecycle":
        total = config.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total), True
    milestones = sorted({max(1, int(round(m * config.epochs))) for m in config.milestones})
    if config.schedule == "step" and not config.warmup_epochs:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma), False
    decays = milestones if config.schedule == "step" else []
    warmup, gamma = config.warmup_epochs, config.gamma

    def factor(epoch: int) -> float:  # the rate at ``epoch`` (from 0) over the peak
        warm = min(1.0, (epoch + 1) / warmup) if warmup else 1.0
        return warm * gamma ** bisect.bisect_right(decays, epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), False


@dataclass
class Run:
    """Everything built from a config: data, model, optimiser, plugins, state."""

    config: TrainConfig
    data: TaskData
    task: Task
    host: PluginHost
    state: TrainState
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule_per_batch: bool
    generator: torch.Generator
    run_dir: Path
    #: this process's place in the job (one process: rank 0 of 1)
    processes: Processes
    #: the training passes' module: BatchPasses of the model, under DDP across processes
    trainer: torch.nn.Module
    #: where training batches are cut: ``data.train`` itself, or its copy on the device
    #: (:func:`keeps_data_on_device`); plugins read ``data.train``, which stays on the host
    batch_source: Split
    #: the layout of image batches (channels_last where the model and device want it)
    layout: torch.memory_format = torch.contiguous_format
    #: the protocol split's class counts: the run's majority / minority in every report, also
    #: when a data-level plugin (``training_set``) balanced the examples it trains on
    real_class_counts: list[int] = dataclasses.field(default_factory=list)
    #: the fewest examples a training batch (each process's slice) may hold: 2 for a model
    #: with BatchNorm, whose training statistics need two (:func:`smallest_slice`)
    smallest_batch: int = 1


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the image protocols), or Adam (the crime task's graph model, as
    spatiotemporal crime forecasters train); weight decay as L2 in both."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def build_model(found: Registry, name: str, spec: ModelInput) -> torch.nn.Module:
    """The registered model, checked to have the head the selected plugins need."""
    model = found.build_model(name, spec)
    if spec.head != "linear" and not isinstance(getattr(model, "head", None), NormedLinear):
        raise OptionError(f"model '{name}' has no {spec.head} head (the selected loss needs one); build it with "
                          "robx.core.models.classifier, which honours ModelInput.head")
    return model


#: channels_last for convolutional models unless the config says otherwise, per device type.
#: CPU, measured (benchmarks/e2e.py, results/e2e/cpu.json, robx's fp32 PGD-10 AT step, variants
#: interleaved): PreAct ResNet-18 7.75 vs 7.49 images/s (+3 %), WRN-34-10 0.691 vs 0.696 (-1 %);
#: an earlier run: +6 % / -7 %: no layout wins, so NCHW stays. CUDA: channels_last is the layout
#: cuDNN's tensor-core convolutions use (not yet measured by robx on a GPU: benchmarks/e2e.py
#: --device cuda decides it)
CHANNELS_LAST_BY_DEVICE = {"cpu": False, "cuda": True}


def memory_format(config: TrainConfig, device: torch.device, model: torch.nn.Module) -> torch.memory_format:
    """The layout of the run's input batches and convolution weights: channels_last for a
    model with 2-D convolutions when the config (or the device's default) asks for it."""
    wanted = config.channels_last if config.channels_last is not None else \
        CHANNELS_LAST_BY_DEVICE.get(device.type, False)
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if wanted and convolutional else torch.contiguous_format


#: the largest share of a GPU's memory the training split may take to be kept there by default
DEVICE_DATA_SHARE = 0.25


def keeps_data_on_device(config: TrainConfig, device: torch.device, train: Split) -> bool:
    """Whether training batches are cut from a copy of the split on the device: then a step
    copies nothing from the host (a copy from pageable host memory waits for the device),
    and the uint8 -> float conversion and crop/flip run on the device. Default (``None``):
    on a GPU when the split takes at most :data:`DEVICE_DATA_SHARE` of its memory (CIFAR-10:
    150 MB as uint8); on the CPU the split is on the device already."""
    if device.type == "cpu":
        return False
    if config.data_on_device is not None:
        return config.data_on_device
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    return train.nbytes <= DEVICE_DATA_SHARE * total


def placed_model(config: TrainConfig, device: torch.device,
                 model: torch.nn.Module) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model on ``device`` in the run's layout (:func:`memory_format`), its forward
    compiled when the config asks (``torch.compile`` through ``Module.compile``: in place, so
    parameter names, checkpoints and copies stay the model's)."""
    layout = memory_format(config, device, model)
    model = model.to(device, memory_format=layout)
    if config.compile != "off":
        model.compile(mode=None if config.compile == "default" else config.compile)
    return model, layout


def step_precision(config: TrainConfig, device: torch.device) -> torch.autocast:
    """The training step's autocast: bf16 for ``precision = "bf16"``, else off (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def build_run(config: TrainConfig, run_dir: Path) -> Run:
    config = config.resolved()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    host = PluginHost(config.plugins, config.plugin_options, config.loss)
    assert config.dataset is not None and config.model is not None
    assert config.imbalance is not None and config.ratio is not None
    found = registry()
    task_type = found.task_for(config.dataset)
    data = found.dataset(config.dataset).read(config.data_root, config.data_seed, config.dataset_options)
    task_type.check_labels(data.train.labels, config.dataset)
    data = apply_protocol(data, config.imbalance, config.ratio, config.n_max, config.n_test_per_class,
                          config.val_fraction, config.data_seed)
    check_subset_size(config.n_eval, data.test.labels, data.num_classes)
    task = task_type(data)
    spec = dataclasses.replace(task.model_input(), head=host.head)
    model = build_model(found, config.model, spec)
    if config.weights is not None:
        loaded = load_initial_weights(model, Path(config.weights))
        if distributed.current().main:
            print(f"robx: {loaded}", file=sys.stderr)
    check_model_contract(model, config.model, task.inputs(data.train.x[:2]))
    if not normalises(model, spec) and distributed.current().main:
        warn(f"model '{config.model}' has no robx.core.models.Normalize, so it sees inputs in [0, 1] units, not "
             f"normalised by the dataset's mean {spec.mean} and std {spec.std}; build it with "
             "robx.core.models.classifier (or normalise inside it and ignore this)")
    processes = distributed.current()
    smallest = smallest_slice(model)
    if config.batch_size < smallest * processes.world_size:
        raise OptionError(f"--batch-size {config.batch_size}: model '{config.model}' has BatchNorm layers, whose "
                          f"training statistics need at least {smallest} examples per batch"
                          + (f" on each of {processes.world_size} processes" if processes.distributed else ""))
    model, layout = placed_model(config, device, model)
    optimizer = build_optimizer(config, model)
    state = TrainState(
        config=config,
        task=task,
        model=model,
        optimizer=optimizer,
        device=device,
        num_classes=data.num_classes,
        class_counts=torch.tensor(data.class_counts(), device=device),
        class_eps=torch.full((data.num_classes,), float(config.eps), device=device),
        class_alpha=torch.full((data.num_classes,), float(config.alpha), device=device),
    )
    real_class_counts = data.class_counts()
    replaced = host.training_set(state, data.train)
    if replaced is not None:
        data.train = _checked_training_set(replaced, data.train, data.num_classes, host.owners["training_set"])
    dataset_counts = torch.tensor(data.class_counts())
    state.class_counts = dataset_counts.to(device)
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    scheduler, per_batch = build_scheduler(config, optimizer, steps_per_epoch)
    trained_counts = host.trained_class_counts(state, dataset_counts)
    if trained_counts is not None:
        state.class_counts = _per_class(trained_counts, state, "trained_class_counts")
    host.check_run(state)
    generator = torch.Generator().manual_seed(config.seed)
    if config.sync_bn:
        distributed.check_sync_bn(device)
        if processes.distributed:
            state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trainer = distributed.data_parallel(state.model, device, processes)
    batch_source = data.train.to(device) if keeps_data_on_device(config, device, data.train) else data.train
    return Run(config, data, task, host, state, scheduler, per_batch, generator, run_dir, processes, trainer,
               batch_source, layout, real_class_counts, smallest)


def smallest_slice(model: torch.nn.Module) -> int:
    """2 for a model with BatchNorm layers (a batch of one example has no variance to
    normalise by: torch refuses it in training), else 1."""
    return 2 if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1


def check_model_contract(model: torch.nn.Module, name: str, x: torch.Tensor) -> None:
    """One line, before anything is written, when the model does not keep robx's contract:
    ``model(x)`` returns ``(features, outputs)``, two tensors with one row per example
    (``x``: two training examples as model inputs; eval mode, no gradients)."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise PluginError(f"model '{name}' fails on two training examples of shape {tuple(x.shape[1:])}: "
                          f"{type(error).__name__}: {detail}") from error
    if isinstance(out, torch.Tensor):
        got = f"one tensor of shape {tuple(out.shape)}"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)}: " + ", ".join(
            str(tuple(part.shape)) if isinstance(part, torch.Tensor) else type(part).__name__ for part in out)
    else:
        got = type(out).__name__
    fits = (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(part, torch.Tensor) and part.dim() >= 1 and part.shape[0] == len(x) for part in out))
    if not fits:
        raise PluginError(f"model '{name}' returned {got} for a batch of {len(x)}; robx models return (features, "
                          "outputs), each with one row per example (build it with robx.core.models.classifier)")


def _checked_training_set(replaced: Split, original: Split, num_classes: int, owner: str) -> Split:
    """A plugin's replacement training split, checked against the one it replaces."""
    if not isinstance(replaced, Split):
        raise RobxError(f"training_set of '{owner}' must return a robx.core.data.Split, got {type(replaced).__name__}")
    if replaced.x.shape[1:] != original.x.shape[1:] or replaced.labels.dim() != original.labels.dim():
        raise RobxError(f"training_set of '{owner}' changed the examples' shape: {tuple(original.x.shape[1:])} -> "
                        f"{tuple(replaced.x.shape[1:])}")
    if not (len(replaced.x) == len(replaced.y) == len(replaced.labels)) or len(replaced) == 0:
        raise RobxError(f"training_set of '{owner}' returned inputs, targets and labels of different lengths")
    if replaced.labels.min() < 0 or replaced.labels.max() >= num_classes:
        raise RobxError(f"training_set of '{owner}' returned labels outside 0..{num_classes - 1}")
    return replaced


def _per_class(values: torch.Tensor, state: TrainState, hook: str, owner: str = "") -> torch.Tensor:
    """An owner's per-class answer, checked for shape and finiteness, on the run's device."""
    values = torch.as_tensor(values)
    if values.shape != (state.num_classes,) or not torch.isfinite(values.double()).all():
        raise RobxError(f"{hook}{f' of {owner!r}' if owner else ''} must give one finite value per class "
                        f"({state.num_classes}), got shape {tuple(values.shape)}")
    return values.to(state.device)


def refresh_class_quantities(run: Run) -> None:
    """Ask the owners of the per-class attack budget, loss weights and regulariser weights
    for the coming epoch's values (``None``: the run's defaults)."""
    state, host, config = run.state, run.host, run.config
    answers = host.class_policy(state)
    budget = answers.get("attack_budget")
    if budget is None:
        state.class_eps = torch.full((state.num_classes,), float(config.eps), device=state.device)
        state.class_alpha = torch.full((state.num_classes,), float(config.alpha), device=state.device)
    else:
        owner = host.owners["attack_budget"]
        state.class_eps = _per_class(budget[0], state, "attack_budget", owner).float()
        state.class_alpha = _per_class(budget[1], state, "attack_budget", owner).float()
        if run.task.labels_per_target and not bool(
                (state.class_eps == state.class_eps[0]).all() and (state.class_alpha == state.class_alpha[0]).all()):
            raise RobxError(f"{owner} sets a per-class attack budget, but dataset '{config.dataset}' labels every "
                            "target of an example, so an example has no one class to take it from")
    weights = answers.get("class_weights")
    state.class_weights = None if weights is None else _per_class(
        weights, state, "class_weights", host.owners["class_weights"]).float()
    regularizer = answers.get("regularizer_weights")
    state.regularizer_weights = None if regularizer is None else _per_class(
        regularizer, state, "regularizer_weights", host.owners["regularizer_weights"]).float()


# ---------------------------------------------------------------------------
# one step, one epoch
# ---------------------------------------------------------------------------


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

    ``passes`` is a :class:`robx.core.distributed.BatchPasses` of the model (``run.trainer``,
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
    the run's budget (or ``eps``), norm and seed: how training, validation and evaluation all
    build their attack."""
    config = run.config
    assert config.eps is not None
    found = registry()
    return found.plan_attack(run.task, found.attack_name(name), eps=config.eps if eps is None else eps, alpha=alpha, steps=steps,
                                  norm=config.norm, seed=config.seed, options=options, class_budget=class_budget,
                                  example_shape=tuple(run.data.train.x.shape[1:]))


def bound_attack(run: Run, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 labels: torch.Tensor) -> Attack:
    """The run's attack on a batch: the default attack planned with the run's steps and norm, each
    example's budget from the owner of the per-class budget, bound to ``model`` and the
    batch (no victims yet). Adversaries choose the loss, start and targets when they call it."""
    config, state = run.config, run.state
    assert config.steps is not None and config.alpha is not None
    plan = planned_attack(run, None, alpha=config.alpha, steps=config.steps,
                          class_budget=(state.class_eps, state.class_alpha))
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
        model.train()
        forward_passes(run.trainer, step, host.views)
        per_sample = host.training_loss(step, state)
        if per_sample is None:
            per_sample = run.task.loss(step.outputs, step.targets)
        step.per_sample_loss = per_sample
        weights = host.sample_weights(step, state)  # checked there, naming the plugin
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


def validation_attack(run: Run) -> AttackPlan:
    """The default attack (PGD) with the run's steps and step size, at the budget ``config.val_budget`` states:
    ``uniform``, the run's eps for every class (what the test evaluation measures, and the
    CFA authors' FAWA gate reads), or ``run``, the per-class budgets of the run's budget owner."""
    config, state = run.config, run.state
    assert config.steps is not None and config.alpha is not None
    budget = (state.class_eps.clone(), state.class_alpha.clone()) if config.val_budget == "run" else None
    return planned_attack(run, None, alpha=config.alpha, steps=config.steps, class_budget=budget)


def split_stats(run: Run, split: Split, attack: AttackPlan) -> SplitStats:
    """Clean and robust statistics of a held-out split under ``attack`` (the model in eval
    mode). As in :func:`robx.core.evaluate.evaluate`, batch k has a random stream seeded
    from (seed, k) and runs on process k mod W; the processes' sums are added up."""
    config, state, processes = run.config, run.state, run.processes
    tracker = run.task.statistics(state.device)
    with eval_mode(state.model):
        for _, idx in seeded_batches(len(split), config.eval_batch_size, config.seed, processes, state.device):
            part = split.subset(idx)
            x, y, labels = run.task.inputs(part.x.to(state.device)), part.y.to(state.device), part.labels.to(state.device)
            x_adv = attack(state.model, run.task, x, y, labels)
            with torch.no_grad():
                tracker.update(labels, y, logits_of(state.model, x), logits_of(state.model, x_adv))
    distributed.sum_across(tracker.summed_tensors(), processes)
    return tracker.result()


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


def train_epoch(run: Run, progress: Progress) -> EpochStats:
    """One pass over the training set; across processes, each trains on its slice of every
    global batch, and the epoch's statistics, losses and BatchNorm statistics are then
    combined, so every process ends the epoch with the same numbers and the same model."""
    config, state, data, processes = run.config, run.state, run.data, run.processes
    started = time.perf_counter()
    tracker = run.task.statistics(state.device)
    loss_sums: dict[str, torch.Tensor] = {}
    assert config.batch_size is not None
    shards = distributed.rank_shards(list(epoch_batches(run)), processes, run.smallest_batch)
    progress.start_epoch(state.epoch, len(shards))
    indices = on_batch_source(run, [idx for idx, _ in shards])
    for idx, (_, share) in zip(indices, shards):
        x, y, labels = training_batch(run, idx)
        train_step(run, x, y, labels, tracker, loss_sums, share)
        progress.advance_batch()
    if not run.schedule_per_batch:
        run.scheduler.step()
    distributed.sum_across([*tracker.summed_tensors(), *(loss_sums[name] for name in sorted(loss_sums))], processes)
    if not config.sync_bn:
        distributed.sync_batchnorm_statistics(state.model, config.dist_bn, processes)
    seen = float(len(data.train))
    totals = {name: float(value) / seen for name, value in loss_sums.items()}  # one host sync
    if not all(np.isfinite(v) for v in totals.values()):
        raise NonFiniteLossError(
            f"loss became non-finite in epoch {state.epoch} ({totals}); lower the learning rate "
            "or check the plugins' options (the last good checkpoint is kept)"
        )
    val, val_attack = None, None
    if data.val is not None and len(data.val):
        attack = validation_attack(run)
        val, val_attack = split_stats(run, data.val, attack), attack.describe()
    return EpochStats(
        epoch=state.epoch,
        train=tracker.result(),
        val=val,
        val_attack=val_attack,
        loss=totals.pop("loss"),
        loss_terms=totals,
        lr=state.optimizer.param_groups[0]["lr"],
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def checkpoint_payload(run: Run) -> dict[str, Any]:
    state = run.state
    return {
        "robx_version": __version__,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "plugins": run.host.state_dicts(),
        "history": [stats.to_state() for stats in state.history],
        "generator": run.generator.get_state(),
        "rng": _rng_state(),
    }


def restore(run: Run, payload: dict[str, Any], source: Path) -> None:
    """The run's state from a checkpoint; one :class:`CheckpointError` line when the
    checkpoint was written for another model or configuration."""
    state = run.state
    rundir.check_state_fits(state.model.state_dict(), payload["model"], source, f"model '{run.config.model}'")
    try:
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        try:
            run.host.load_state_dicts(saved_plugin_states(payload))
        except RobxError as error:
            raise CheckpointError(f"checkpoint {source}: {error}") from error
        state.history = [EpochStats.from_state(stats) for stats in payload["history"]]
        state.global_step = int(payload["global_step"])
        state.epoch = int(payload["epoch"]) + 1
        run.generator.set_state(payload["generator"])
        _set_rng_state(payload["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {source} does not fit the run configured in {source.parent / rundir.CONFIG_FILE}"
                              f" ({type(error).__name__}: {detail[:200]})") from error
    state.epoch_stats = state.history[-1] if state.history else None


def saved_plugin_states(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plugins' states in a checkpoint. Older checkpoints kept them in one shared
    stash keyed ``"<plugin>.<what>"``; those keys become ``{plugin: {what: value}}``,
    which is the layout each built-in plugin's ``state_dict()`` has."""
    if "plugins" in payload:
        return payload["plugins"]
    states: dict[str, dict[str, Any]] = {}
    for key, value in payload["stash"].items():
        plugin, _, what = key.partition(".")
        states.setdefault(plugin, {})[what] = value
    return states


def kept_metrics(path: Path, before_epoch: int) -> list[str]:
    """The metric lines of epochs before ``before_epoch`` (those after it are trained again
    on resume); one line naming the first line that is not a robx metrics record."""
    if not path.exists():
        return []
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            epoch = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"{path} line {number} is not a robx metrics record ({type(error).__name__}); "
                              "repair or remove that line to resume") from error
        if epoch < before_epoch:
            kept.append(line)
    return kept


def write_metrics(path: Path, lines: list[str]) -> None:
    write_text_atomically(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def run_dir_held(run_dir: Path, command: str, processes: Processes) -> Iterator[None]:
    """The run directory's lock (:class:`robx.core.run.RunDirLock`), held by process 0 for the
    block; when another process holds it, every process fails with that one line."""
    with contextlib.ExitStack() as held:
        distributed.on_main(lambda: held.enter_context(rundir.RunDirLock(run_dir, command)), processes,
                            "the run directory")
        yield


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    force: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, evaluate on the test set; returns the report.

    With ``resume=True``, ``config`` is ignored and the run continues from the
    checkpoint in ``run_dir`` with the configuration it was started with. With a
    ``deadline`` (a ``time.monotonic()`` value), an epoch that would end after it (judged
    by the last epoch's time) is not started: :class:`TrainingPaused` is raised with the
    checkpoint in place (for device sessions with a time limit per command).

    The run directory has one writer: this process holds its lock from before the first
    file is written to the end (a second robx process gets one line naming this one). A new
    run that fails before its first checkpoint leaves nothing behind (no run directory
    holding a config only). Every file is written atomically.

    Under torchrun (a process group set up, :func:`robx.core.distributed.start`) every
    process calls this with the same arguments; process 0 holds the lock and writes the run
    directory. A process that loses the others raises
    :class:`robx.core.distributed.PeerLostError` naming the checkpoint to resume from.
    """
    progress = progress or SilentProgress()
    run_dir = Path(run_dir)
    processes = distributed.current()
    if resume:
        config_path = run_dir / rundir.CONFIG_FILE
        if not config_path.exists():
            raise RobxError(f"cannot resume: {config_path} does not exist")
        rundir.check_no_links(run_dir)
    else:
        run = build_run(config, run_dir)  # validate everything before touching the disk
        check_budget(config.eps, config.norm, run.task.input_bounds, tuple(run.data.train.x.shape[1:]), "eps")
        distributed.on_main(lambda: rundir.check_new_run_dir(run_dir, force), processes, "the run directory")
    created = not run_dir.exists()
    with run_dir_held(run_dir, "train --resume" if resume else "train", processes):
        if resume:
            run = build_run(saved_config(run_dir), run_dir)
            check_same_data(run)
            restore(run, rundir.load_checkpoint(run_dir / rundir.CHECKPOINT_FILE), run_dir / rundir.CHECKPOINT_FILE)
            metrics = distributed.on_main(lambda: kept_metrics(run_dir / rundir.METRICS_FILE, run.state.epoch),
                                          processes, "the metrics") or []
            distributed.on_main(lambda: write_metrics(run_dir / rundir.METRICS_FILE, metrics), processes,
                                "the metrics")
        else:
            metrics = []
            distributed.on_main(lambda: _start_run_dir(run, force), processes, "the run directory")
        try:
            return _train_and_evaluate(run, progress, deadline, metrics)
        except distributed.PeerLostError as error:
            raise distributed.PeerLostError(f"{error}; {kept_checkpoint(run)}") from error
        except Interrupted as interruption:
            raise interruption.keeping(kept_checkpoint(run)) from None
        finally:
            if not resume and processes.main and not (run_dir / rundir.CHECKPOINT_FILE).exists():
                rundir.discard_new_run(run_dir, created)


def kept_checkpoint(run: Run) -> str:
    """What a run stopped on its way leaves behind, and how to continue it."""
    assert run.config.epochs is not None
    if not run.state.history:
        return f"no epoch had finished, so there was no checkpoint to keep and {run.run_dir} was cleared"
    done = run.state.history[-1].epoch + 1
    stage = "training was done but not its evaluation" if done == run.config.epochs else \
        f"{done} of {run.config.epochs} epochs had finished"
    return f"{stage}; their checkpoint in {run.run_dir} is intact: continue with robx train --resume {run.run_dir}"


def saved_config(run_dir: Path) -> TrainConfig:
    """The config a run directory was started with; one line when it is not one."""
    path = run_dir / rundir.CONFIG_FILE
    try:
        return TrainConfig.from_dict(migrated(json.loads(path.read_text(encoding="utf-8"))["config"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{path} is not a robx run config ({type(error).__name__}: {error})") from error


def check_same_data(run: Run) -> None:
    """Refuse to continue or evaluate a run whose dataset now reads other files than it was
    trained on (its config.json's ``data`` fingerprint), naming what changed: the training
    split, the test split and the normalisation would all be drawn anew without a word."""
    path = run.run_dir / rundir.CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return  # saved_config has already read it; an unreadable file is its error
    now = run.data.fingerprint
    if saved is None or now is None or saved == now:
        return
    raise RunDirError(f"the data of {run.config.dataset} changed since the run {run.run_dir} started: "
                      f"{data_changes(saved, now)}; start a new run (or restore the files) to use it")


def data_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two dataset fingerprints ({part: description}), in words."""
    changed = [f"{part}: {now.get(part, 'absent')} now, {saved.get(part, 'absent')} then"
               for part in dict.fromkeys([*saved, *now]) if saved.get(part) != now.get(part)]
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def _start_run_dir(run: Run, force: bool) -> None:
    rundir.prepare_run_dir(run.run_dir, force)
    write_json(run.run_dir / rundir.CONFIG_FILE, {
        "config": run.config.to_dict(),
        "plugins": {name: options_as_dict(opts)
                    for name, opts in {**run.host.recipe_options, **run.host.options}.items()},
        "kernels": {op: dispatch_rule(op, run.state.device) for op in KERNEL_OPS},
        "device": str(run.state.device),
        "processes": run.processes.world_size,
        **({"data": run.data.fingerprint} if run.data.fingerprint is not None else {}),
        "robx_version": __version__,
        "torch_version": torch.__version__,
    })


def _train_and_evaluate(run: Run, progress: Progress, deadline: float | None, metrics: list[str]) -> dict[str, Any]:
    config, state, processes, run_dir = run.config, run.state, run.processes, run.run_dir
    assert config.epochs is not None
    run.host.train_start(state)
    progress.start_training(config.epochs, state.epoch)
    metrics_path = run_dir / rundir.METRICS_FILE
    for epoch in range(state.epoch, config.epochs):
        late = deadline is not None and bool(state.history) and \
            time.monotonic() + state.history[-1].seconds > deadline
        if distributed.from_main(late, processes):
            raise TrainingPaused(epoch)
        state.epoch = epoch
        if processes.distributed:
            distributed.seed_rank_streams(config.seed, epoch, processes)
        refresh_class_quantities(run)
        used_eps = [round(v, 6) for v in state.class_eps.tolist()]
        stats = train_epoch(run, progress)
        state.epoch_stats = stats
        state.history.append(stats)
        run.host.epoch_end(state)
        distributed.check_agreement(agreed_state(run), processes, f"epoch {epoch}")
        record = {**stats.to_json(), "class_eps": used_eps}
        diagnostics = epoch_diagnostics(run)
        if diagnostics:
            record["diagnostics"] = diagnostics
        payload = checkpoint_payload(run)

        def write_epoch() -> None:
            write_metrics(metrics_path, metrics + [json.dumps(record)])
            rundir.save_checkpoint(run_dir / rundir.CHECKPOINT_FILE, payload)
            metrics.append(json.dumps(record))

        distributed.on_main(write_epoch, processes, "the checkpoint")
        progress.end_epoch(stats)
    model = state.model
    parameters = run.host.averaged_weights(state)
    if parameters is not None:
        model = averaged_eval_model(run, parameters)
        payload = checkpoint_payload(run)
        payload["eval_model"] = model.state_dict()
        distributed.on_main(lambda: rundir.save_checkpoint(run_dir / rundir.CHECKPOINT_FILE, payload),
                            processes, "the checkpoint")
    report = evaluate_run(run, model, progress)

    def write_report() -> None:
        write_json(run_dir / rundir.REPORT_FILE, report)
        plot_per_class(report, run_dir / rundir.PLOT_FILE, plot_title(run.config, report))

    distributed.on_main(write_report, processes, "the report")
    return report


def agreed_state(run: Run) -> dict[str, Any]:
    """What every process must hold identically at epoch end."""
    state = run.state
    return {
        "the model's weights and BatchNorm statistics": state.model.state_dict(),
        "the epoch's statistics": {**state.epoch_stats.to_state(), "seconds": None} if state.epoch_stats else None,
        "the per-class budget and weights": [state.class_eps, state.class_alpha, state.class_weights,
                                             state.regularizer_weights],
        **{f"plugin '{name}' state '{key}'": value
           for name, saved in run.host.state_dicts().items() for key, value in saved.items()},
    }


def epoch_diagnostics(run: Run) -> dict[str, float]:
    """The plugins' diagnostics of the epoch, over every process's steps."""
    state = run.state
    if run.processes.distributed:
        mine = {name: (total.cpu(), count) for name, (total, count) in state.diagnostics.items()}
        combined: dict[str, tuple[torch.Tensor, int]] = {}
        for part in distributed.gather_objects(mine, run.processes):
            for name, (total, count) in part.items():
                before, seen = combined.get(name, (torch.zeros_like(total), 0))
                combined[name] = (before + total, seen + count)
        state.diagnostics = combined
    return state.take_diagnostics()


def averaged_eval_model(run: Run, parameters: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The evaluated weight average, its BatchNorm statistics from the distribution the
    model trained on (docs/engine.md: never silently from clean images), unless the average
    holds them already (CFA's FAWA, as its authors average the whole state).

    One pass over the training set, shuffled with the run's seed, through the step's own
    data path: victims, the adversary attacking the averaged weights (with the last
    iterate's BN statistics for its eval-mode passes), ``augment``, then the step's
    train-mode :func:`forward_passes` without gradients, into cumulative BN averages.
    Across processes each passes its slice of every batch, and the averages then agree by
    the run's BN policy (``dist_bn``).
    """
    state, host, config = run.state, run.host, run.config
    attacked = with_parameters(state.model, parameters)
    if holds_buffers(state.model, parameters):  # the owner averaged BN statistics too (CFA)
        distributed.sync_batchnorm_statistics(attacked, config.dist_bn, run.processes)
        return attacked.eval()
    averaged = copy.deepcopy(attacked)
    generator = torch.Generator().manual_seed(config.seed)
    assert config.batch_size is not None
    batches = list(batch_indices(len(run.data.train), config.batch_size, generator))
    with cumulative_batchnorm(averaged):
        averaged.train()
        shards = distributed.rank_shards(batches, run.processes, run.smallest_batch)
        for idx in on_batch_source(run, [idx for idx, _ in shards]):
            step = prepared_step(run, *training_batch(run, idx), model=attacked)  # the average is attacked
            with torch.no_grad():
                forward_passes(BatchPasses(averaged), step, host.views)
    if not config.sync_bn:
        distributed.sync_batchnorm_statistics(averaged, config.dist_bn, run.processes)
    return averaged.eval()


def eval_attack(run: Run, name: str | None = None, *, eps: float | None = None, alpha: float | None = None,
                steps: int | None = None, options: dict[str, Any] | None = None) -> AttackPlan:
    """The run's evaluation attack: ``name`` (default: the task's ``default_attack``) at the
    training budget with the evaluation step size and steps, unless given."""
    config = run.config
    assert config.eval_alpha is not None and config.eval_steps is not None
    return planned_attack(run, registry().attack_name(name, run.task), eps=eps,
                          alpha=config.eval_alpha if alpha is None else alpha,
                          steps=config.eval_steps if steps is None else steps, options=options)


def evaluate_run(
    run: Run,
    model: torch.nn.Module,
    progress: Progress,
    attack: AttackPlan | None = None,
    n_eval: int | None = None,
) -> dict[str, Any]:
    config, data = run.config, run.data
    attack = attack or eval_attack(run)
    test = data.test
    n_eval = n_eval or config.n_eval
    check_subset_size(n_eval, test.labels, data.num_classes)
    if n_eval:
        test = test.subset(stratified_subset(test.labels, n_eval, config.data_seed))
    progress.start_eval(len(test), f"eval {attack.describe()}")
    result = evaluate(model, run.task, test, attack, device=run.state.device,
                      batch_size=config.eval_batch_size, on_batch=progress.advance_eval, processes=run.processes)
    progress.end_eval()
    assert result.clean_outputs is not None and result.robust_outputs is not None
    details = run.task.report_details(test, result.clean_outputs, result.robust_outputs, attack)
    trained = data.class_counts()
    return build_report(result, data.classes, run.real_class_counts or trained, attack, run.task.metric, extra={
        **({"details": details} if details else {}),
        **({"trained_counts": trained} if trained != run.real_class_counts else {}),
        "task": run.task.name,
        "dataset": config.dataset,
        "plugins": run.host.listed,
        **({"parts": {recipe: [part for part, of in run.host.part_of.items() if of == recipe]
                      for recipe in run.host.recipe_options}} if run.host.part_of else {}),
        "seed": config.seed,
        "epochs": config.epochs,
        "model": config.model,
        "n_test": len(test),
        **({"n_eval": n_eval} if n_eval else {}),
        **({"note": f"evaluated on {len(test)} test examples, not the {n_eval} asked for: "
                    + ("that is the whole test split" if n_eval > len(test) else
                       "the stratified subset keeps at least one example of each class")}
           if n_eval and n_eval != len(test) else {}),
    })


def plot_title(config: TrainConfig, report: dict[str, Any]) -> str:
    return (f"{config.dataset} {config.imbalance}-{config.ratio:g} | plugins: {'+'.join(report['plugins'])} | "
            f"{report['attack']['description']}")


def load_run(run_dir: Path, device: str | None = None) -> Run:
    """Rebuild a finished or interrupted run from its directory (for ``robx eval``)."""
    run_dir = Path(run_dir)
    config_path = run_dir / rundir.CONFIG_FILE
    if not config_path.exists():
        raise RobxError(f"{run_dir} is not a robx run directory (no {rundir.CONFIG_FILE})")
    config = saved_config(run_dir)
    if device is not None:
        config.device = device
    payload = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT_FILE)
    run = build_run(config, run_dir)
    check_same_data(run)
    weights = payload.get("eval_model", payload["model"])
    rundir.check_state_fits(run.state.model.state_dict(), weights, run_dir / rundir.CHECKPOINT_FILE,
                            f"model '{config.model}'")
    run.state.model.load_state_dict(weights)
    return run

