"""Command-line options generated from the code: ``robx train``'s from TrainConfig's fields,
``robx eval``'s and ``robx audit``'s attack settings from the registered attacks' options.
"""

from __future__ import annotations

from collections.abc import Callable

import dataclasses
import inspect
import typing
from typing import Annotated, Any, Optional

import typer

from robx.core.config import TrainConfig
from robx.core.errors import OptionError
from robx.core.options import coerce
from robx.core.registry import registry


#: TrainConfig fields given on the command line another way (``--set``).
_NOT_OPTIONS = ("dataset_options", "plugin_options")


def _metavar(annotation: Any, choices: list[str]) -> str:
    if choices:
        return "[" + "|".join(choices) + "]"
    kinds = [a for a in (annotation, *typing.get_args(annotation)) if a is not type(None)]
    if typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in kinds):
        return "A,B,..."
    for kind, name in ((int, "INT"), (float, "NUMBER")):
        if kind in kinds:
            return name
    return "TEXT"


def config_parameters() -> list[inspect.Parameter]:
    """One ``robx train`` option per :class:`TrainConfig` field, named, typed and explained by
    the field (its ``setting`` metadata): the config is the one list of what a run can set.
    Values arrive as given (a bool as a flag pair, anything else as text) and are parsed by
    :func:`config_values` with the config's own coercion, so ``--eps 8/255`` and a TOML
    ``eps = 0.031`` go through one path."""
    hints = typing.get_type_hints(TrainConfig)
    parameters = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in _NOT_OPTIONS:
            continue
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        is_bool = bool in (hints[field.name], *typing.get_args(hints[field.name]))
        if is_bool and "/" not in flag:
            flag = f"{flag}/--no-{flag[2:]}"
        text = field.metadata.get("help", "")
        choices = [str(c) for a in (hints[field.name], *typing.get_args(hints[field.name]))
                   if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]
        if choices and not all(c in text for c in choices):
            text += f" One of: {', '.join(choices)}."
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        if default not in (None, [], {}) and not is_bool:
            text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        option = typer.Option(flag, help=text, show_default=False,
                              metavar=None if is_bool else _metavar(hints[field.name], choices),
                              rich_help_panel="Run settings (also TOML keys)")
        annotation = Annotated[Optional[bool] if is_bool else Optional[str], option]
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=annotation))
    return parameters


def config_values(given: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line as TrainConfig values; a bad value is one line
    naming the option as typed."""
    hints = typing.get_type_hints(TrainConfig)
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        flag = (fields[name].metadata.get("flag") or "--" + name.replace("_", "-")).split("/")[0]
        if typing.get_origin(hints[name]) is list:
            items = [item.strip() for item in value.split(",")]
            if not all(items):
                raise OptionError(f"{flag} expects comma-separated {fields[name].metadata['items']}, got {value!r}")
            value = items
        values[name] = coerce(value, hints[name], flag)
    return values


def _own_parameters(command: Callable[..., None]) -> tuple[inspect.Signature, dict[str, Any]]:
    """``command``'s signature without its ``**`` parameter, and its type hints."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=fixed), typing.get_type_hints(command, include_extras=True)


def _with_parameters(command: Callable[..., None], own: tuple[inspect.Signature, dict[str, Any]],
                     added: list[inspect.Parameter]) -> None:
    """Give ``command`` its own parameters and ``added`` ones (received through its ``**``
    parameter), for Typer to turn into options."""
    signature, hints = own
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *added])
    command.__annotations__ = {**hints, **{p.name: p.annotation for p in added}}


def with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (taking ``**settings``) with one keyword parameter per config option."""
    _with_parameters(command, _own_parameters(command), config_parameters())
    return command


def attack_parameters() -> list[inspect.Parameter]:
    """One option per own setting of the registered attacks (``--victims`` of stpgd), named,
    typed and explained by the attack's options dataclass, as ``robx train``'s options come
    from the config: an installed attack's settings appear without a CLI edit."""
    owners: dict[str, list[str]] = {}
    found: dict[str, dataclasses.Field[Any]] = {}
    for spec in registry().attacks.values():
        for field in dataclasses.fields(spec.options) if spec.options is not None else ():
            owners.setdefault(field.name, []).append(spec.name)
            found.setdefault(field.name, field)
    parameters = []
    for name, field in found.items():
        text = f"{field.metadata.get('help', '')} For {', '.join(owners[name])}.".strip()
        if field.default is not dataclasses.MISSING:
            text += f" (default: {field.default})"
        option = typer.Option("--" + name.replace("_", "-"), help=text, show_default=False, metavar="VALUE",
                              rich_help_panel="Attack settings")
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[str], option]))
    return parameters


#: the commands whose options include the registered attacks' settings, with their own signatures
_ATTACK_COMMANDS: dict[Callable[..., None], tuple[inspect.Signature, dict[str, Any]]] = {}


def with_attack_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (taking ``**attack_options``) with one keyword parameter per registered
    attack setting (:func:`attack_parameters`), added when the command line is read
    (:func:`add_attack_options`), once the installed plugins are known."""
    _ATTACK_COMMANDS[command] = _own_parameters(command)
    _with_parameters(command, _ATTACK_COMMANDS[command], [])
    return command


def add_attack_options() -> None:
    """The registered attacks' settings as options of ``robx eval`` and ``robx audit``."""
    added = attack_parameters()
    for command, own in _ATTACK_COMMANDS.items():
        _with_parameters(command, own, added)


def settings_of(attack: str) -> set[str]:
    """The own settings of the registered attack ``attack`` (none for an unknown name)."""
    spec = registry().attacks.get(attack)
    return {f.name for f in dataclasses.fields(spec.options)} if spec is not None and spec.options else set()


def attack_settings(names: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The attack settings given on the command line, by the attack of ``names`` they belong
    to; one that none of them takes is an error naming the attacks that do."""
    given = {key: value for key, value in given.items() if value is not None}
    for key in given:
        if not any(key in settings_of(name) for name in names):
            takers = [name for name in registry().attacks if key in settings_of(name)]
            raise OptionError(f"--{key.replace('_', '-')} is a setting of {', '.join(takers)}, not of "
                              f"{', '.join(names)}")
    return {name: {key: value for key, value in given.items() if key in settings_of(name)} for name in names}
