"""Run configuration: defaults per dataset (the protocols), a TOML file, CLI overrides.

Precedence, lowest first: the dataset's defaults (registered with the dataset), the TOML
file, command-line options.
A TOML file holds top-level :class:`TrainConfig` keys, one ``[<plugin>]`` table per plugin
for its options and a ``[dataset_options]`` table for the dataset's own (the command
line's ``--set dataset.KEY=VALUE``), for example::

    dataset = "cifar10"
    epochs = 30
    plugins = ["srat", "imbmix"]
    [srat]
    lam = 0.5
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from robx.core.errors import OptionError
from robx.core.options import coerce_fields

#: The largest seed every consumer takes (scikit-learn's ``random_state`` stops at 2**32 - 1).
MAX_SEED = 2**32 - 1

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Norm = Literal["linf", "l2"]
Schedule = Literal["step", "onecycle", "constant"]
Optimizer = Literal["sgd", "adam"]
Imbalance = Literal["step", "exp", "none", "original"]
BatchNormSync = Literal["reduce", "broadcast"]
Precision = Literal["fp32", "bf16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]

@dataclass
class TrainConfig:
    """All settings of a training run. ``None`` means "take the dataset's default"."""

    task: str | None = None  # None: the dataset's task; given, it must be the dataset's
    dataset: str | None = None  # None: the registered default dataset (given a task: required)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # the dataset's own settings
    imbalance: Imbalance | None = None
    ratio: float | None = None
    n_max: int | None = None
    n_test_per_class: int | None = None
    val_fraction: float = 0.0
    augment: bool | None = None
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: Optimizer | None = None  # None: the dataset's, else SGD with momentum
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule | None = None
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    norm: Norm = "linf"
    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    random_start: bool = True
    eval_steps: int | None = None
    eval_alpha: float | None = None
    n_eval: int | None = None
    plugins: list[str] = field(default_factory=list)  # none: the fallback adversary alone
    loss: str = "ce"
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    eval_batch_size: int = 256
    # the training step's arithmetic: fp32, or bf16 autocast (attack, forward passes and loss;
    # evaluation stays fp32); channels_last for image models (None: the device's measured choice)
    precision: Precision = "fp32"
    channels_last: bool | None = None
    # the training split kept on the device (as stored: uint8 images), batches cut and
    # augmented there (None: on a GPU when it fits, see robx.core.engine.keeps_data_on_device)
    data_on_device: bool | None = None
    # torch.compile of the model's forward ("reduce-overhead" adds CUDA graphs); off unless
    # asked: see docs/performance.md for what it measured
    compile: CompileMode = "off"
    # several processes (torchrun; robx.core.distributed): SyncBatchNorm in the training
    # passes (CUDA), and how the processes' BN running statistics agree at epoch end
    sync_bn: bool = False
    dist_bn: BatchNormSync = "reduce"

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled from the dataset's registered defaults, validated."""
        from robx.core.registry import registry

        found = registry()
        values = dataclasses.asdict(self)
        task = values["task"]
        if task is not None and task not in found.tasks:
            raise OptionError(f"unknown task '{task}'; available: {', '.join(sorted(found.tasks))}")
        default = found.datasets.get(found.default_dataset or "")
        if values["dataset"] is None and task is not None and (default is None or default.task != task):
            names = sorted(name for name, spec in found.datasets.items() if spec.task == task)
            raise OptionError(f"task '{task}' needs a dataset: give --dataset ({', '.join(names) or 'none registered'})")
        if values["dataset"] is None:
            if found.default_dataset is None:
                raise OptionError("no dataset given and no installed plugin registers a default dataset")
            values["dataset"] = found.default_dataset
        spec = found.dataset(values["dataset"])
        if task is not None and spec.task != task:
            raise OptionError(f"dataset '{spec.name}' is for task '{spec.task}', not '{task}'")
        values["task"] = spec.task
        for key, value in spec.defaults.items():
            if key not in values:
                raise OptionError(f"dataset '{values['dataset']}' has a default for unknown config key '{key}'")
            if values.get(key) is None:
                values[key] = value
        if values["eval_alpha"] is None:
            values["eval_alpha"] = values["alpha"]
        if values["optimizer"] is None:
            values["optimizer"] = "sgd"
        config = TrainConfig.from_dict(values)
        for key in ("imbalance", "ratio", "model", "epochs", "batch_size", "lr", "schedule", "eps", "alpha",
                    "steps", "eval_steps", "augment"):
            if getattr(config, key) is None:
                raise OptionError(f"dataset '{config.dataset}' sets no {key}; give it in the config or on the "
                                  "command line")
        return config

    def validate(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr is None or self.lr > 0, "lr must be > 0"),
            (self.eps is None or self.eps >= 0, "eps must be >= 0"),
            (self.alpha is None or self.alpha >= 0, "alpha must be >= 0"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.eval_steps is None or self.eval_steps >= 1, "eval_steps must be >= 1"),
            (self.ratio is None or (math.isfinite(self.ratio) and self.ratio >= 1),
             f"ratio must be a finite number >= 1, got {self.ratio}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}"),
            (0 <= self.data_seed <= MAX_SEED, f"data_seed must be in [0, {MAX_SEED}], got {self.data_seed}"),
            (self.n_max is None or self.n_max >= 1, "n_max must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.n_eval is None or self.n_eval >= 1, "n_eval must be >= 1"),
            (self.norm in ("linf", "l2"), f"norm must be linf or l2, got {self.norm!r}"),
            (self.optimizer in (None, "sgd", "adam"), f"optimizer must be sgd or adam, got {self.optimizer!r}"),
            (self.schedule in (None, "step", "onecycle", "constant"),
             f"schedule must be step, onecycle or constant, got {self.schedule!r}"),
            (self.imbalance in (None, "step", "exp", "none", "original"),
             f"imbalance must be step, exp, none or original, got {self.imbalance!r}"),
            (self.eval_alpha is None or self.eval_alpha >= 0, "eval_alpha must be >= 0"),
            (self.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
            (self.dist_bn in ("reduce", "broadcast"), f"dist_bn must be reduce or broadcast, got {self.dist_bn!r}"),
            (self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0"),
            (all(0 < m < 1 for m in self.milestones), "milestones are fractions of the epochs, in (0, 1)"),
            (all(name.strip() for name in self.plugins), f"plugins holds an empty name: {self.plugins!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from TOML, JSON or CLI values; a wrong key, type or value is one
        :class:`OptionError` naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise OptionError(
                f"unknown config key(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        config = cls(**coerce_fields(cls, data, "config key '{key}'"))
        config.validate()
        return config


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file into ``TrainConfig`` keys (plugin tables -> ``plugin_options``)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as error:
        raise OptionError(f"config file not found: {path}") from error
    except tomllib.TOMLDecodeError as error:
        raise OptionError(f"config file {path} is not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise OptionError(f"config file {path} is not UTF-8 text (TOML is UTF-8): byte {error.start} "
                          f"cannot be decoded") from error
    except OSError as error:
        raise OptionError(f"cannot read config file {path}: {error.strerror or error}") from error
    plugin_tables = {key: data.pop(key) for key in list(data)
                     if isinstance(data[key], dict) and key != "dataset_options"}
    if plugin_tables:
        data["plugin_options"] = plugin_tables
    TrainConfig.from_dict(data)  # unknown keys -> clear error
    return data
