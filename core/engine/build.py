"""Building a run from its config: device, seeds, data protocol, model, optimiser and schedule,
plugins and state (:func:`build_run`), and the per-class quantities each epoch asks their owners for."""

from __future__ import annotations

import bisect
import dataclasses
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from robx.core import distributed
from robx.core.attack_plans import AttackPlan
from robx.core.attacks import eval_mode
from robx.core.config import TrainConfig
from robx.core.data import Split, TaskData, apply_protocol, check_subset_size
from robx.core.distributed import Processes
from robx.core.errors import OptionError, PluginError, RobxError, warn
from robx.core.models import NormedLinear, load_initial_weights, normalises
from robx.core.plugins import PluginHost
from robx.core.registry import Registry, registry, resolved_config
from robx.core.state import TrainState
from robx.core.stats import EpochStats
from robx.core.task import ModelInput, Task


class Progress(Protocol):
    """What the engine tells its caller (the CLI draws rich progress bars from it)."""

    def start_training(self, epochs: int, first_epoch: int) -> None: ...
    def start_epoch(self, epoch: int, batches: int) -> None: ...
    def advance_batch(self) -> None: ...
    def end_epoch(self, stats: EpochStats) -> None: ...
    def start_eval(self, total: int, description: str) -> None: ...
    def advance_eval(self, n: int) -> None: ...
    def end_eval(self) -> None: ...


class SilentProgress(Progress):
    """Tells no one: every method is the protocol's, which does nothing."""


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


def describe_device(device: torch.device) -> str:
    """One line a run starts with: the device, and what it is (the GPU's name, the CPU's threads)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (checkpoints load with
    ``weights_only=True``, which refuses numpy arrays)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
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
    passes: torch.nn.Module
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
    #: the default attack with the run's budget, step size, steps and norm, planned (and
    #: checked) once; each step binds it with the current per-class budgets
    training_attack: AttackPlan | None = None
    #: the epoch of the best checkpoint so far, ``{metric, epoch, score}`` (``--keep-best``)
    best: dict[str, Any] | None = None
    #: training steps on each batch (``batch_replays``: Free AT's m; 1 otherwise)
    replays: int = 1


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
    config = resolved_config(config)
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
                          config.val_fraction, config.data_seed, per_target=task_type.labels_per_target)
    check_subset_size(config.n_eval, data.num_classes, per_target=task_type.labels_per_target)
    for logger in config.log:
        found.logger(logger)  # an unknown logger or a missing library: one line before any work
    if config.keep_best is not None and (data.val is None or len(data.val) == 0):
        raise OptionError(f"--keep-best {config.keep_best} needs a validation split to score the epochs by: give "
                          "--val-fraction (e.g. 0.1)")
    task = task_type(data)
    processes = distributed.current()
    model = checked_model(config, found, task, host.head, processes)
    smallest = smallest_slice(model)
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
    replays = host.batch_replays(state)  # the schedule counts every step of every replay
    scheduler, per_batch = build_scheduler(config, optimizer, replays * -(-len(data.train) // config.batch_size))
    trained_counts = host.trained_class_counts(state, dataset_counts)
    if trained_counts is not None:
        state.class_counts = _per_class(trained_counts, state, "trained_class_counts")
    host.check_run(state)
    generator = torch.Generator().manual_seed(config.seed)
    if config.sync_bn:
        distributed.check_sync_bn(device)
        if processes.distributed:
            state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    passes = distributed.data_parallel(state.model, device, processes)
    batch_source = data.train.to(device) if keeps_data_on_device(config, device, data.train) else data.train
    training_attack = found.plan_attack(task, found.attack_name(None), eps=config.eps, alpha=config.alpha,
                                        steps=config.steps, norm=config.norm, seed=config.seed,
                                        example_shape=tuple(data.train.x.shape[1:]), what="eps")
    return Run(config, data, task, host, state, scheduler, per_batch, generator, run_dir, processes, passes,
               batch_source, layout, real_class_counts, smallest, training_attack, replays=replays)


def checked_model(config: TrainConfig, found: Registry, task: Task, head: str, processes: Processes) -> torch.nn.Module:
    """The config's model for the task (with the head the plugins need and the initial
    weights asked for), checked against the model contract and the batch size."""
    assert config.model is not None and config.batch_size is not None
    spec = dataclasses.replace(task.model_input(), head=head)
    model = build_model(found, config.model, spec)
    if config.weights is not None:
        loaded = load_initial_weights(model, Path(config.weights))
        if processes.main:
            print(f"robx: {loaded}", file=sys.stderr)
    check_model_contract(model, config.model, task.inputs(task.data.train.x[:2]))
    if not normalises(model, spec) and processes.main:
        warn(f"model '{config.model}' has no robx.core.models.Normalize, so it sees inputs in [0, 1] units, not "
             f"normalised by the dataset's mean {spec.mean} and std {spec.std}; build it with "
             "robx.core.models.classifier (or normalise inside it and ignore this)")
    smallest = smallest_slice(model)
    if config.batch_size < smallest * processes.world_size:
        raise OptionError(f"--batch-size {config.batch_size}: model '{config.model}' has BatchNorm layers, whose "
                          f"training statistics need at least {smallest} examples per batch"
                          + (f" on each of {processes.world_size} processes" if processes.distributed else ""))
    return model


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
