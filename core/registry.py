"""The tasks, datasets, models, attacks and commands of every installed plugin, and the entries
of the kinds plugin packages add (the registration hooks).

Built once per process, lazily: every available plugin (built-in or from an entry point)
that implements a registration hook is asked for its contributions, the way simonw/llm
collects ``register_models``. A name taken twice is an error naming both origins.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pluggy
import torch
import torch.nn as nn

from robx.core import hookspecs
from robx.core.hookspecs import RegisterCommand, RegisterDataset  # noqa: F401 -- where plugins import them from
from robx.core.attack_plans import AttackPlan, AttackSpec
from robx.core.attacks import check_budget
from robx.core.config import MAX_STEPS, REQUIRED_AFTER_DEFAULTS, TrainConfig
from robx.core.declarations import Collects
from robx.core.errors import OptionError, PluginError, RobxError, guarded
from robx.core.models import ModelBuilder
from robx.core.options import options_from
from robx.core.registered import CommandSpec, DatasetLoader, DatasetSpec, EntrySpec, LoggerSpec, ModelSpec, TaskSpec
from robx.core.task import ModelInput, Task

@dataclass
class Registry:
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    attacks: dict[str, AttackSpec] = field(default_factory=dict)
    #: entries of the kinds plugin packages add, by kind, then name
    entries: dict[str, dict[str, EntrySpec]] = field(default_factory=dict)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    loggers: dict[str, LoggerSpec] = field(default_factory=dict)
    #: the kinds plugin packages added, by kind
    kinds: dict[str, Collects] = field(default_factory=dict)
    default_dataset: str | None = None
    #: the attack training's adversaries bind and validation runs (``register(..., default=True)``)
    default_attack: str | None = None
    #: third-party plugins left out, by "name (origin)": why
    skipped: dict[str, str] = field(default_factory=dict)
    #: the origins ("name (built-in)") of robx's own plugins, whose failures are robx's bugs
    builtin: set[str] = field(default_factory=set)

    def _guarded(self, function: Callable[..., Any], origin: str, where: str) -> Callable[..., Any]:
        """A third-party plugin's registered function, its exceptions one line naming the
        plugin (:func:`robx.core.errors.guarded`); robx's own as they are."""
        return function if origin in self.builtin or not callable(function) else \
            guarded(function, f"plugin {origin}", where)

    def skip(self, origin: str, message: str) -> None:
        """Leave out the plugin ``origin`` names, with what it had registered so far."""
        self.skipped[origin] = message
        for table in (self.tasks, self.datasets, self.models, self.attacks, self.commands, self.loggers,
                      *self.entries.values()):
            for name in [name for name, spec in table.items() if spec.origin == origin]:
                del table[name]
        if self.default_dataset is not None and self.default_dataset not in self.datasets:
            self.default_dataset = None
        if self.default_attack is not None and self.default_attack not in self.attacks:
            self.default_attack = None

    def _unknown(self, kind: str, name: str, names: Any, where: str = "") -> OptionError:
        left_out = f" (left out: {'; '.join(self.skipped.values())})" if self.skipped else ""
        return OptionError(f"unknown {kind} '{name}'{where}; available: {', '.join(sorted(names))}{left_out}")

    def _claim(self, table: dict[str, Any], kind: str, name: str, origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin} registered a {kind} without a name")
        if name in table:
            raise PluginError(f"{kind} name '{name}' from {origin} is already taken by {table[name].origin}")

    def add_task(self, task: type[Task], origin: str) -> None:
        if not (isinstance(task, type) and issubclass(task, Task)):
            raise PluginError(f"{origin} registered {task!r} as a task; register a subclass of robx.core.task.Task")
        self._claim(self.tasks, "task", getattr(task, "name", ""), origin)
        self.tasks[task.name] = TaskSpec(task.name, task, origin)

    def add_dataset(self, origin: str, name: str, load: DatasetLoader, *, task: str,
                    defaults: Mapping[str, Any] | None = None, default: bool = False,
                    options: type | None = None) -> None:
        self._claim(self.datasets, "dataset", name, origin)
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"{origin} registered dataset '{name}' with options={options!r}; give a dataclass")
        load = self._guarded(load, origin, f"the loader of dataset '{name}'")
        self.datasets[name] = DatasetSpec(name, load, task, dict(defaults or {}), origin, options)
        if default:
            if self.default_dataset is not None:
                raise PluginError(f"dataset '{name}' from {origin} and '{self.default_dataset}' both claim to be "
                                  "the default dataset")
            self.default_dataset = name

    def add_model(self, origin: str, name: str, build: ModelBuilder, *, takes_argument: bool = False) -> None:
        self._claim(self.models, "model", name, origin)
        self.models[name] = ModelSpec(name, self._guarded(build, origin, f"the builder of model '{name}'"), origin,
                                      takes_argument)

    def add_attack(self, origin: str, name: str, run: Callable[..., Any], *, title: str | None = None,
                   iterative: bool = True, options: type | None = None, needs: tuple[str, str] | None = None,
                   tasks: tuple[str, ...] | list[str] = (), default: bool = False) -> None:
        self._claim(self.attacks, "attack", name, origin)
        if not callable(run):
            raise PluginError(f"{origin} registered attack '{name}' as {run!r}; give a function")
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"{origin} registered attack '{name}' with options={options!r}; give a dataclass")
        self.attacks[name] = AttackSpec(name, self._guarded(run, origin, f"attack '{name}'"), title or name.upper(),
                                        origin, iterative, options, needs, tuple(tasks))
        if default:
            if self.default_attack is not None:
                raise PluginError(f"attack '{name}' from {origin} and '{self.default_attack}' both claim to be the "
                                  "default attack")
            self.default_attack = name

    def attacks_for(self, task: type[Task] | Task) -> list[str]:
        """The attacks that apply to ``task``: the default attack (every task's), those the
        task names, then those registered for it."""
        named = ([self.default_attack] if self.default_attack else []) + list(task.attacks)
        named += [name for name, spec in self.attacks.items() if task.name in spec.tasks]
        return [name for index, name in enumerate(named) if name in self.attacks and name not in named[:index]]

    def attack_name(self, name: str | None, task: type[Task] | Task | None = None) -> str:
        """``name``, else the task's ``default_attack``, else the default attack (the one
        training's adversaries bind and validation runs)."""
        chosen = name or (task.default_attack if task is not None else None) or self.default_attack
        if chosen is None:
            raise RobxError("no installed plugin registers a default attack (register_attacks: register(..., "
                            "default=True))")
        return chosen

    def plan_attack(self, task: Task, name: str, *, eps: float, alpha: float, steps: int, norm: str = "linf",
                    seed: int = 0, options: Mapping[str, Any] | None = None, example_shape: tuple[int, ...] = (),
                    class_budget: tuple[torch.Tensor, torch.Tensor] | None = None, what: str = "--eps") -> AttackPlan:
        """The attack ``name`` on ``task`` with these settings, every one checked (one line
        each): the attack applies to the task and is installed, its own options, the budget,
        steps and norm. The one way validation, ``robx eval``, ``robx audit`` and the Python
        API build an attack."""
        available = self.attacks_for(task)
        if name not in available:
            raise self._unknown("attack", name, available, f" for task '{task.name}'")
        spec = self.attacks[name]
        if spec.needs is not None and importlib.util.find_spec(spec.needs[0]) is None:
            raise OptionError(f"attack '{name}' needs {spec.needs[0]}, which is not installed: {spec.needs[1]}")
        own = options_from(spec.options, options or {}, name, f"attack '{name}'")
        if norm not in ("linf", "l2"):
            raise OptionError(f"--norm must be linf or l2, got {norm!r}")
        if not (math.isfinite(eps) and math.isfinite(alpha) and eps >= 0 and alpha >= 0):
            raise OptionError(f"eps and alpha must be finite numbers >= 0, got {eps:g} and {alpha:g}")
        if not 1 <= steps <= MAX_STEPS:
            raise OptionError(f"--steps must be in 1..{MAX_STEPS}, got {steps}")
        check_budget(eps, norm, task.input_bounds, example_shape, what)
        return AttackPlan(spec, eps=float(eps), alpha=float(alpha), steps=int(steps), norm=norm,  # type: ignore[arg-type]
                          seed=seed, options=own, class_budget=class_budget)

    def add_entry(self, kind: str, origin: str, name: str, make: Callable[..., Any], *,
                  options: type | None = None) -> None:
        table = self.entries.setdefault(kind, {})
        self._claim(table, kind, name, origin)
        if not callable(make):
            raise PluginError(f"{origin} registered {kind} '{name}' as {make!r}; give a function")
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"{origin} registered {kind} '{name}' with options={options!r}; give a dataclass")
        table[name] = EntrySpec(kind, name, self._guarded(make, origin, f"{kind} '{name}'"), origin, options)

    def add_logger(self, origin: str, name: str, make: Callable[..., Any], *,
                   needs: tuple[str, str] | None = None) -> None:
        self._claim(self.loggers, "logger", name, origin)
        if not callable(make):
            raise PluginError(f"{origin} registered logger '{name}' as {make!r}; give a function")
        self.loggers[name] = LoggerSpec(name, self._guarded(make, origin, f"logger '{name}'"), origin, needs)

    def logger(self, name: str) -> LoggerSpec:
        """The logger ``name``, its library checked to be installed (one line each)."""
        if name not in self.loggers:
            raise self._unknown("logger", name, self.loggers, " (--log)")
        spec = self.loggers[name]
        if spec.needs is not None and importlib.util.find_spec(spec.needs[0]) is None:
            raise OptionError(f"logger '{name}' needs {spec.needs[0]}, which is not installed: {spec.needs[1]}")
        return spec

    def add_command(self, origin: str, name: str, function: Callable[..., None]) -> None:
        self._claim(self.commands, "command", name, origin)
        if not callable(function):
            raise PluginError(f"{origin} registered command '{name}' as {function!r}; give a function")
        self.commands[name] = CommandSpec(name, self._guarded(function, origin, f"command 'robx {name}'"), origin)

    # --- lookups with one-line errors ------------------------------------------------------

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset ``name``; ``NAME:PATH`` is the dataset NAME reading the user's files at
        PATH (a dataset whose options have a ``path``: ``folder:``, ``npz:``), named by the
        absolute path so a resumed run finds them from anywhere."""
        base, colon, path = name.partition(":")
        if colon and base in self.datasets and name not in self.datasets:
            spec = self.datasets[base]
            if spec.options is None or "path" not in {f.name for f in dataclasses.fields(spec.options)}:
                raise OptionError(f"dataset '{base}' reads no files of yours, so '{name}' means nothing; "
                                  f"give --dataset {base}")
            if not path:
                raise OptionError(f"--dataset {base}:PATH needs a path after '{base}:'")
            absolute = str(Path(path).expanduser().resolve())
            return dataclasses.replace(spec, name=f"{base}:{absolute}", given={"path": absolute})
        if name not in self.datasets:
            raise self._unknown("dataset", name, self.datasets)
        spec = self.datasets[name]
        if spec.task not in self.tasks:
            raise RobxError(f"dataset '{name}' ({spec.origin}) is for task '{spec.task}', which no installed "
                            f"plugin registers; tasks: {', '.join(sorted(self.tasks))}")
        return spec

    def task_for(self, dataset: str) -> type[Task]:
        return self.tasks[self.dataset(dataset).task].task

    def entry(self, kind: str, name: str) -> EntrySpec:
        """The registered ``kind`` (a kind a plugin package added) called ``name``."""
        table = self.entries.get(kind, {})
        if name not in table:
            raise self._unknown(kind, name, table)
        return table[name]

    def resolved(self, config: TrainConfig) -> TrainConfig:
        """A copy of ``config`` with every ``None`` filled from the dataset's registered
        defaults (then the task's), validated."""
        values = dataclasses.asdict(config)
        task = values["task"]
        if task is not None and task not in self.tasks:
            raise OptionError(f"unknown task '{task}'; available: {', '.join(sorted(self.tasks))}")
        default = self.datasets.get(self.default_dataset or "")
        if values["dataset"] is None and task is not None and (default is None or default.task != task):
            names = sorted(name for name, spec in self.datasets.items() if spec.task == task)
            raise OptionError(f"task '{task}' needs a dataset: give --dataset ({', '.join(names) or 'none registered'})")
        if values["dataset"] is None:
            if self.default_dataset is None:
                raise OptionError("no dataset given and no installed plugin registers a default dataset")
            values["dataset"] = self.default_dataset
        spec = self.dataset(values["dataset"])
        values["dataset"] = spec.name  # folder:PATH with PATH made absolute
        if task is not None and spec.task != task:
            raise OptionError(f"dataset '{spec.name}' is for task '{spec.task}', not '{task}'")
        values["task"] = spec.task
        for key, value in spec.defaults.items():
            if key not in values:
                raise OptionError(f"dataset '{values['dataset']}' has a default for unknown config key '{key}'")
            if values.get(key) is None:
                values[key] = value
        for key, value in self.tasks[spec.task].task.defaults.items():
            if values.get(key) is None:
                values[key] = value
        if values["eval_alpha"] is None:
            values["eval_alpha"] = values["alpha"]
        if values["optimizer"] is None:
            values["optimizer"] = "sgd"
        config = TrainConfig.from_dict(values)
        missing = [key for key in REQUIRED_AFTER_DEFAULTS if getattr(config, key) is None]
        if missing:
            flags = " ".join(f"--{key.replace('_', '-')}" for key in missing)
            raise OptionError(f"dataset '{config.dataset}' sets no {', '.join(missing)}; give them in the config "
                              f"or on the command line ({flags})")
        return config

    def build_model(self, name: str, spec: ModelInput) -> nn.Module:
        family, colon, argument = name.partition(":")
        if colon and name not in self.models:
            if family not in self.models:
                raise self._unknown("model", name, self.models)
            if not self.models[family].takes_argument:
                raise OptionError(f"model '{family}' takes no argument, so '{name}' means nothing; give --model {family}")
            if not argument:
                raise OptionError(f"--model {family}:NAME needs a name after '{family}:'")
            return self.models[family].build(spec, argument)  # type: ignore[call-arg]
        if name not in self.models:
            raise self._unknown("model", name, self.models)
        if self.models[name].takes_argument:
            raise OptionError(f"model '{name}' is a family: give --model {name}:NAME (e.g. {name}:resnet50)")
        return self.models[name].build(spec)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """Every installed plugin's tasks, datasets and models.

    A third-party plugin whose registration fails (hooks that do not fit, a hook that raises,
    a name taken twice) is reported once on stderr and left out with everything it had
    registered, so the rest stays usable; a name it would have given is then unknown, and
    the error says which plugin was left out. A built-in plugin's failure is robx's bug and
    raises."""
    from robx.core.discovery import added_hookspecs, registration_hooks, warn_skipped

    found = Registry()
    manager, origins = _registering(found)
    adders: dict[str, Callable[[str], Callable[..., None]]] = {
        "register_tasks": lambda origin: lambda task: found.add_task(task, origin),
        "register_datasets": lambda origin: lambda *args, **kwargs: found.add_dataset(origin, *args, **kwargs),
        "register_models": lambda origin: lambda *args, **kwargs: found.add_model(origin, *args, **kwargs),
        "register_attacks": lambda origin: lambda *args, **kwargs: found.add_attack(origin, *args, **kwargs),
        "register_loggers": lambda origin: lambda *args, **kwargs: found.add_logger(origin, *args, **kwargs),
        "register_commands": lambda origin: lambda *args, **kwargs: found.add_command(origin, *args, **kwargs),
    }
    for added in added_hookspecs():
        for hook, collects in added.registers.items():
            found.kinds[collects.kind] = collects
            found.entries[collects.kind] = {}
            adders[hook] = lambda origin, kind=collects.kind: lambda *args, **kwargs: found.add_entry(
                kind, origin, *args, **kwargs)
    for hook in [hook for hook in registration_hooks() if hook in adders]:  # tasks first: datasets name them
        implementations = getattr(manager.hook, hook).get_hookimpls()
        for impl in sorted(implementations, key=lambda impl: origins[impl.plugin_name] not in found.builtin):  # ours first
            origin = origins[impl.plugin_name]
            if origin in found.skipped:
                continue
            try:
                try:
                    impl.function(register=adders[hook](origin))
                except RobxError:
                    raise
                except Exception as error:  # e.g. an instance method, or register() called wrongly
                    raise PluginError(f"{origin}: {hook} failed: {type(error).__name__}: {error}") from error
            except RobxError as error:
                if origin in found.builtin:
                    raise
                found.skip(origin, str(error))
    for message in found.skipped.values():
        warn_skipped(message)
    return found


def _registering(found: Registry) -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A plugin manager with every plugin that registers something (robx's and the packages'
    registration hooks), and each one's origin by name; a third-party plugin whose hooks do
    not fit is left out of ``found`` (a built-in one raises)."""
    from robx.core.declarations import marked_hooks
    from robx.core.discovery import BUILTIN_ORIGIN, added_hookspecs, available_plugins, registration_hooks

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for added in added_hookspecs():
        manager.add_hookspecs(added.module)
    origins: dict[str, str] = {}
    for spec in available_plugins().values():
        # every plugin with a registration hook, or one whose name says it means one (a
        # misspelt register_dataset is then one line, not silently nothing)
        if not any(name.startswith("register_") or name in registration_hooks() for name in marked_hooks(spec.target)):
            continue
        origin = f"{spec.name} ({spec.origin})"
        try:
            spec.check_hooks()
            try:
                manager.register(spec.target, name=spec.name)
            except pluggy.PluginValidationError as error:
                detail = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
                raise PluginError(f"plugin '{spec.name}' ({spec.origin}) does not fit robx's hooks: {detail}") \
                    from error
        except RobxError as error:
            if spec.origin == BUILTIN_ORIGIN:
                raise
            found.skip(origin, str(error))
            continue
        origins[spec.name] = origin
        if spec.origin == BUILTIN_ORIGIN:
            found.builtin.add(origin)
    return manager, origins


def resolved_config(config: TrainConfig) -> TrainConfig:
    """``config`` with every ``None`` filled from its dataset's and task's registered defaults,
    validated (:meth:`Registry.resolved` on the installed plugins' registry)."""
    return registry().resolved(config)
