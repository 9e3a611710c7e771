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
#: Bounds of the values that size or schedule a run (docs/reliability.md, "Ranges"): far beyond
#: any protocol, and small enough that a typo (``epochs = 1e20``) is refused before any work.
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000
MAX_BATCH = 2**20

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
#: the validation score a kept best checkpoint maximises (a summary of the per-class scores;
#: for a metric where lower is better, such as an error, the best is the lowest)
KeptBest = Literal["robust-worst", "robust-minority", "robust-overall", "standard-worst", "standard-minority",
                   "standard-overall"]

#: Keys a run cannot start without: the command line, the file, the dataset's registered defaults
#: or its task's defaults (in that order) must give each (what none gives is told all at once).
REQUIRED_AFTER_DEFAULTS = ("imbalance", "ratio", "model", "epochs", "batch_size", "lr", "schedule", "eps", "alpha",
                           "steps", "eval_steps", "augment")


def retired_key_hint(key: str) -> str | None:
    """Where a key earlier versions had went, or None. ``random_start`` was read by the
    fallback adversary alone, which has an option of the same name."""
    if key != "random_start":
        return None
    return ("the start is the adversary's choice: set the fallback adversary's own option, --set "
            "ADVERSARY.random_start=false (TOML: [ADVERSARY] random_start = false; robx plugins lists the options)")


def setting(default: Any = None, help: str = "", *, factory: Any = None, flag: str | None = None,
            items: str = "values") -> Any:
    """A :class:`TrainConfig` field with its command-line help: ``robx train`` has one option
    per field, generated from these (``flag`` overrides the option's name, e.g. a bool's
    ``--on/--off`` pair; ``items`` names a list's comma-separated entries in errors)."""
    metadata = {"help": help, "flag": flag, "items": items}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """All settings of a training run. ``None`` means "take the dataset's default".

    Every field is a ``robx train`` option (``--batch-size`` for ``batch_size``), a key of the
    TOML file, and a key of a dataset's registered defaults; ``dataset_options`` and
    ``plugin_options`` are given as ``--set dataset.KEY=VALUE`` / ``--set PLUGIN.KEY=VALUE``.
    """

    # data
    task: str | None = setting(None, "A registered task (default: the dataset's); checked against the dataset.")
    dataset: str | None = setting(None, "A registered dataset (robx plugins lists them and marks the default).")
    dataset_options: dict[str, Any] = setting(help="The dataset's own settings (--set dataset.KEY=VALUE).",
                                              factory=dict)
    imbalance: Imbalance | None = setting(None, "step, exp, none (balanced) or original (the dataset as it is).")
    ratio: float | None = setting(None, "Imbalance ratio K = n_max / n_min.")
    n_max: int | None = setting(None, "Training examples of the largest class.")
    n_test_per_class: int | None = setting(None, "Cut the test set to this many examples per class (seeded).")
    val_fraction: float = setting(0.0, "Stratified validation split of the training subset (0: none).")
    log: list[str] = setting(help="Loggers of the epochs beside metrics.jsonl, comma-separated: csv (metrics.csv), "
                                  "tensorboard (the tensorboard extra), or any an installed package registers.",
                             factory=lambda: ["csv"])
    keep_best: KeptBest | None = setting(
        None, "Keep the checkpoint with the best validation score beside the last (best.pt), e.g. robust-worst "
              "(the worst class's robust score) or robust-minority; needs a validation split (--val-fraction). "
              "Guards against robust overfitting.")
    collapse_check: float = setting(
        0.5, "Catastrophic-overfitting check: after every epoch, PGD-5 on a fixed batch of 256 (validation examples "
             "where there is a split); warn when its robust accuracy falls below this fraction of its best so "
             "far in two epochs running (or in the last), and with --keep-best report the best checkpoint, kept "
             "before the fall (0: off).")
    val_budget: Literal["uniform", "run"] = setting(
        "uniform", "The validation attack's budget: uniform (--eps for every class, as the test evaluation) or run "
                   "(the per-class budgets the run trains with, where a plugin sets them).")
    augment: bool | None = setting(None, "Random crop and flip of image batches (default: the dataset's).")
    crop_padding: Literal["zeros", "reflect"] = setting("zeros", "How the random crop pads an image: zeros (torchvision's default, as the "
                                         "TRADES, DAFA and LDAM-DRW authors' code) or reflect (CFA's authors' code).")
    data_seed: int = setting(0, "Seed of the imbalanced subset, the validation split and the test cut.")
    data_root: str | None = setting(None, "Where datasets are read (default: $ROBX_DATA, ../shared/data or the "
                                          "user cache).")
    # model and schedule
    model: str | None = setting(None, "A registered model, e.g. smallcnn, resnet18, mlp (default: the dataset's).")
    weights: str | None = setting(None, "Start from these weights: a .safetensors file or a torch state dict "
                                        "(read without unpickling code); the model's own keys, or its bare "
                                        "torchvision / timm architecture's.")
    epochs: int | None = setting(None, "Training epochs.")
    batch_size: int | None = setting(None, "Batch size (the global batch under several processes).")
    lr: float | None = setting(None, "(Peak) learning rate.")
    optimizer: Optimizer | None = setting(None, "sgd (with --momentum) or adam (default: the dataset's, else sgd).")
    momentum: float = setting(0.9, "SGD momentum.")
    weight_decay: float = setting(5e-4, "Weight decay.")
    nesterov: bool = setting(False, "Nesterov momentum (SGD).")
    schedule: Schedule | None = setting(None, "onecycle, step or constant.")
    milestones: list[float] = setting(help="Step schedule: fractions of the epochs where the rate drops, e.g. "
                                           "0.5,0.75.", factory=lambda: [0.5, 0.75])
    gamma: float = setting(0.1, "Step schedule: the factor at each milestone.")
    warmup_epochs: int = setting(0, "Linear learning-rate warm-up (step and constant schedules): epoch k (from 0) "
                                    "runs at (k + 1) / N of the rate for k < N, as LDAM-DRW's authors' code does.")
    # attack, in training and evaluation
    norm: Norm = setting("linf", "Threat model: linf or l2.")
    eps: float | None = setting(None, "Perturbation budget, e.g. 8/255.")
    alpha: float | None = setting(None, "Attack step size in training.")
    steps: int | None = setting(None, "Attack steps in training.")
    eval_steps: int | None = setting(None, "PGD steps in evaluation (PGD-20).")
    eval_alpha: float | None = setting(None, "Attack step size in evaluation (default: --alpha).")
    n_eval: int | None = setting(None, "Evaluate on a stratified test subset of this size.")
    eval_batch_size: int = setting(256, "Batch size of evaluation.")
    # method
    plugins: list[str] = setting(help="Comma-separated plugins, e.g. srat,imbmix (default: pgd).", factory=list,
                                 items="plugin names")
    loss: str = setting("ce", "ce (cross-entropy) or a loss plugin (robx plugins lists them).")
    plugin_options: dict[str, dict[str, Any]] = setting(help="Plugin options (--set PLUGIN.KEY=VALUE).", factory=dict)
    seed: int = setting(0, "Seed of initialisation, batches and attacks.")
    # where and how the step runs
    device: str = setting("auto", "auto (the first GPU where there is one, else the CPU), cpu, cuda or cuda:N "
                                  "(the N-th GPU, from 0).")
    precision: Precision = setting("fp32", "fp32 or bf16: autocast of the training step (attack, passes, loss); "
                                           "evaluation stays fp32.")
    channels_last: bool | None = setting(None, "Image batches and conv weights in channels_last (default: the "
                                               "device's measured choice).")
    data_on_device: bool | None = setting(None, "Keep the training split on the GPU (as uint8), batches cut and "
                                                "augmented there (default: when it fits in a quarter of the GPU's "
                                                "memory).", flag="--data-on-device/--data-on-host")
    compile: CompileMode = setting("off", "torch.compile the model: off, default, reduce-overhead (adds CUDA "
                                          "graphs) or max-autotune (docs/performance.md).")
    # several processes (torchrun; robx.core.distributed)
    sync_bn: bool = setting(False, "Several processes, CUDA: BatchNorm statistics of the whole global batch "
                                   "(SyncBatchNorm).")
    dist_bn: BatchNormSync = setting("reduce", "Several processes: BN running statistics at epoch end, reduce "
                                               "(mean) or broadcast (process 0's).")

    def validate(self) -> None:
        """Every value in its documented range (docs/reliability.md, "Ranges"), checked before
        any work: one :class:`OptionError` line for the first that is not. The choices of the
        ``Literal`` fields (norm, schedule, ...) are checked where values are read
        (:meth:`from_dict`'s coercion), not again here."""

        def within(value: float | None, low: float, high: float, low_open: bool = False) -> bool:
            return value is None or (math.isfinite(value) and (value > low if low_open else value >= low)
                                     and value <= high)

        checks = [
            (within(self.epochs, 1, MAX_EPOCHS), f"epochs must be in 1..{MAX_EPOCHS}, got {self.epochs}"),
            (within(self.batch_size, 1, MAX_BATCH), f"batch_size must be in 1..{MAX_BATCH}, got {self.batch_size}"),
            (within(self.lr, 0, math.inf, low_open=True), f"lr must be a finite number > 0, got {self.lr}"),
            (within(self.eps, 0, math.inf), f"eps must be a finite number >= 0, got {self.eps}"),
            (within(self.alpha, 0, math.inf), f"alpha must be a finite number >= 0, got {self.alpha}"),
            (within(self.steps, 1, MAX_STEPS), f"steps must be in 1..{MAX_STEPS}, got {self.steps}"),
            (within(self.eval_steps, 1, MAX_STEPS), f"eval_steps must be in 1..{MAX_STEPS}, got {self.eval_steps}"),
            (self.ratio is None or (math.isfinite(self.ratio) and self.ratio >= 1),
             f"ratio must be a finite number >= 1, got {self.ratio}"),
            (0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}"),
            (0 <= self.data_seed <= MAX_SEED, f"data_seed must be in [0, {MAX_SEED}], got {self.data_seed}"),
            (self.n_max is None or self.n_max >= 1, "n_max must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (0 <= self.collapse_check < 1, "collapse_check must be in [0, 1) (0: off)"),
            (self.n_eval is None or self.n_eval >= 1, "n_eval must be >= 1"),
            (within(self.eval_alpha, 0, math.inf), f"eval_alpha must be a finite number >= 0, got {self.eval_alpha}"),
            (within(self.eval_batch_size, 1, MAX_BATCH),
             f"eval_batch_size must be in 1..{MAX_BATCH}, got {self.eval_batch_size}"),
            (self.n_test_per_class is None or self.n_test_per_class >= 1, "n_test_per_class must be >= 1"),
            (within(self.momentum, 0, math.inf) and within(self.weight_decay, 0, math.inf),
             "momentum and weight_decay must be finite numbers >= 0"),
            (within(self.gamma, 0, math.inf, low_open=True), f"gamma must be a finite number > 0, got {self.gamma}"),
            (all(0 < m < 1 for m in self.milestones), "milestones are fractions of the epochs, in (0, 1)"),
            (isinstance(self.warmup_epochs, int) and 0 <= self.warmup_epochs <= MAX_EPOCHS,
             f"warmup_epochs must be an integer in [0, {MAX_EPOCHS}], got {self.warmup_epochs!r}"),
            (not (self.warmup_epochs and self.schedule == "onecycle"),
             "warmup_epochs does not apply to the onecycle schedule, which warms up by itself"),
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
        for key in sorted(set(data) - names):
            hint = retired_key_hint(key)
            if hint is not None:
                raise OptionError(f"config key '{key}' is gone: {hint}")
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
