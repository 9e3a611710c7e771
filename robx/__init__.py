"""robx: adversarial training for imbalanced data and class-fair robustness.

From Python: ``robx.train(...)``, ``robx.load_run(path)``, ``robx.evaluate(run, attack)``,
``robx.audit(model, dataset)`` and ``robx.attacks.PGD(model, eps, alpha, steps)(x, y)``
(docs/api.md). Every name a plugin needs is here (docs/hooks.md): the hook markers and :class:`Plugin`, the
step and state the hooks receive, the registration contracts (tasks, datasets, models,
attacks, commands), and the errors, option checks and file helpers the built-in plugins use.
A plugin imports from ``robx`` (and, for the built-in ones, ``robx.plugins.common``); the
modules under ``robx.core`` are where these live, not an interface.
"""

__version__ = "0.1.0"

# the hook markers, the optional plugin base class, what a plugin package adds
from robx.core.declarations import Collects, Plugin  # noqa: E402
from robx.core.hookspecs import RegisterLogger, hookimpl, hookspec  # noqa: E402

# what the training hooks receive and answer
from robx.core.state import ClassPolicy, Step, TrainState  # noqa: E402

# registration: tasks, datasets, models, attacks, commands, and the registry
from robx.core.attack_plans import AttackPlan, RegisterAttack  # noqa: E402
from robx.core.attacks import Attack, attack_mode, eval_mode, logits_of, margin_loss  # noqa: E402
from robx.core.data import (Split, TaskData, apply_protocol, balanced_pair, data_roots,  # noqa: E402
                            user_cache_dir)
from robx.core.models import RegisterModel, classifier  # noqa: E402
from robx.core.registry import RegisterCommand, RegisterDataset, registry  # noqa: E402
from robx.core.stats import ScoreAccumulator, SplitStats  # noqa: E402
from robx.core.task import Metric, ModelInput, RegisterTask, Task  # noqa: E402

# helpers: weight averages, distributed gradients, class groups
from robx.core.averaging import (BatchNormSource, WeightAverage, add_to_average, evaluated_average,  # noqa: E402
                                 restored_average, saved_average)
from robx.core.distributed import average_gradients, global_rows  # noqa: E402
from robx.core.metrics import majority_classes  # noqa: E402

# errors, options, files
from robx.core.config import MAX_SEED, TrainConfig  # noqa: E402
from robx.core.logging import epoch_scalars  # noqa: E402
from robx.core.errors import (DataError, DataNotFoundError, OptionError, PluginError, RobxError,  # noqa: E402
                              WriteError, first_line, warn)
from robx.core.files import WRITTEN_BY, atomic_write, make_directory, prepare_output_dir, write_json  # noqa: E402
from robx.core.options import check_ranges, method_set_overrides  # noqa: E402

# the Python API: train, load, evaluate, audit; attacks on any model (robx.attacks.PGD)
from robx import attacks  # noqa: E402
from robx.api import Report, Run, audit, evaluate, load_run, train  # noqa: E402

__all__ = [
    "__version__",
    "train", "load_run", "evaluate", "audit", "Run", "Report", "attacks",
    "Plugin", "Collects", "hookimpl", "hookspec",
    "ClassPolicy", "Step", "TrainState",
    "Attack", "AttackPlan", "RegisterAttack", "attack_mode", "eval_mode", "logits_of", "margin_loss",
    "Split", "TaskData", "apply_protocol", "balanced_pair", "data_roots", "user_cache_dir",
    "RegisterModel", "classifier", "RegisterCommand", "RegisterDataset", "registry",
    "ScoreAccumulator", "SplitStats", "Metric", "ModelInput", "RegisterTask", "Task",
    "BatchNormSource", "WeightAverage", "add_to_average", "evaluated_average", "restored_average", "saved_average",
    "average_gradients", "global_rows", "majority_classes",
    "RegisterLogger", "TrainConfig", "epoch_scalars",
    "MAX_SEED", "DataError", "DataNotFoundError", "OptionError", "PluginError", "RobxError", "WriteError",
    "first_line", "warn", "WRITTEN_BY", "atomic_write", "make_directory", "prepare_output_dir", "write_json",
    "check_ranges", "method_set_overrides",
]
