"""What the registration hooks register: a dataset, a model family, a task, a command, or an
entry of a kind a plugin package added, each with the plugin it comes from (its origin).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from robx.core.data import TaskData
from robx.core.models import ModelBuilder
from robx.core.options import options_from
from robx.core.task import Task

#: ``load(data_root, seed) -> TaskData``, or ``load(data_root, seed, options)`` for a dataset
#: registered with ``options=`` (a dataclass of its own settings, e.g. a history length)
DatasetLoader = Callable[..., TaskData]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: DatasetLoader
    task: str
    defaults: Mapping[str, Any]
    origin: str
    options: type | None = None
    #: options the dataset's name gives (``folder:PATH``: the path)
    given: Mapping[str, Any] = field(default_factory=dict)

    def read(self, data_root: str | None, seed: int, raw_options: Mapping[str, Any] | None = None) -> TaskData:
        """The dataset with its options (``--set dataset.KEY=VALUE``) validated and applied."""
        raw = {**self.given, **(raw_options or {})}
        options = options_from(self.options, raw, "dataset", f"dataset '{self.name}'")
        return self.load(data_root, seed) if self.options is None else self.load(data_root, seed, options)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: ModelBuilder
    origin: str
    #: a family named by an argument: ``--model NAME:ARG`` calls ``build(spec, ARG)``
    #: (``torchvision:resnet50``)
    takes_argument: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str
    task: type[Task]
    origin: str


@dataclass(frozen=True)
class EntrySpec:
    """An entry of a kind a plugin package added (``add_hookspecs``): ``make(options, seed)``
    builds it from its options dataclass."""

    kind: str
    name: str
    make: Callable[[Any, int], Any]
    origin: str
    options: type | None = None

    def build(self, raw_options: Mapping[str, Any] | None, seed: int) -> Any:
        options = options_from(self.options, raw_options or {}, self.name, f"{self.kind} '{self.name}'")
        return self.make(options, seed)


@dataclass(frozen=True)
class LoggerSpec:
    """A registered epoch logger: ``make(run_dir, config, first_epoch)`` builds it."""

    name: str
    make: Callable[..., Any]
    origin: str
    #: ``(module, how to install it)`` where it runs another library's code
    needs: tuple[str, str] | None = None


@dataclass(frozen=True)
class CommandSpec:
    """A registered command-line command: ``robx NAME`` runs ``function`` (typed parameters
    that Typer turns into options, its docstring the help)."""

    name: str
    function: Callable[..., None]
    origin: str
