"""Typed values from TOML files, JSON and command-line strings.

One coercion for the run config, plugin options and task options: a value is turned into
its field's declared type or rejected with a one-line :class:`OptionError` naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from robx.core.errors import OptionError


def parse_number(text: str) -> float:
    """Parse ``"0.03"`` or a fraction such as ``"8/255"``."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"not a number: {text!r}") from error


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as the type ``annotation`` (strings from the command line are parsed)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in typing.get_args(annotation)
        if value is None and optional:
            return None
        errors = []
        for candidate in (a for a in typing.get_args(annotation) if a is not type(None)):
            try:
                return coerce(value, candidate, where)
            except OptionError as error:
                errors.append(str(error))
        if optional and isinstance(value, str) and value.lower() == "none":  # "--set srat.start_epoch=none"
            return None
        raise OptionError(errors[0])
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise OptionError(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{where} expects a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise OptionError(f"{where} expects a table, got {value!r}")
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        return {coerce(k, key_type, where): coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(value, bool):  # TOML's true is not the number 1
            raise ValueError
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return parse_number(value) if isinstance(value, str) else float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise OptionError(f"{where} expects {_type_name(annotation)}, got {value!r}")


def coerce_fields(cls: type, raw: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Raw values for the dataclass ``cls``, each coerced to its field's type.

    ``label`` names a field in errors, e.g. ``"option 'srat.{key}'"``. Unknown keys are the
    caller's to reject (each caller names the valid ones its own way).
    """
    hints = typing.get_type_hints(cls)
    return {key: coerce(value, hints[key], label.format(key=key)) for key, value in raw.items()}


def options_from(options_type: type | None, raw: Mapping[str, Any], prefix: str, owner: str) -> Any:
    """An ``options_type`` dataclass from raw values named ``<prefix>.<key>`` (a plugin's or a
    dataset's options); ``None`` when it declares none and none are given. ``owner`` names
    it in errors, e.g. ``"plugin 'srat'"``."""
    if options_type is None:
        if raw:
            raise OptionError(f"{owner} takes no options (got {', '.join(raw)})")
        return None
    fields = [f.name for f in dataclasses.fields(options_type)]
    for key in raw:
        if key not in fields:
            raise OptionError(f"unknown option '{prefix}.{key}'; valid: " + ", ".join(f"{prefix}.{k}" for k in fields))
    values = coerce_fields(options_type, raw, f"option '{prefix}.{{key}}'")
    try:
        return options_type(**values)
    except (TypeError, ValueError) as error:
        raise OptionError(f"invalid options for {owner}: {error}") from error


def check_ranges(options: Any, *, at_least_one: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = (), fractions: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming the first field of ``options`` out of its range (counts >= 1,
    positive or non-negative finite numbers, fractions in [0, 1]); an options dataclass calls it
    from ``__post_init__``, and :func:`options_from` makes the error one line naming the owner."""
    import math

    rules = [(at_least_one, lambda v: v >= 1, ">= 1"), (positive, lambda v: math.isfinite(v) and v > 0, "> 0"),
             (non_negative, lambda v: math.isfinite(v) and v >= 0, ">= 0"),
             (fractions, lambda v: 0 <= v <= 1, "in [0, 1]")]
    for names, ok, wanted in rules:
        for name in names:
            value = getattr(options, name)
            if not ok(value):
                raise ValueError(f"{name} must be {wanted}, got {value}")


def parse_set_overrides(assignments: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["srat.lam=0.5"]`` -> ``{"srat": {"lam": "0.5"}}``."""
    result: dict[str, dict[str, str]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        plugin, dot, option = key.strip().partition(".")
        if not sep or not dot or not plugin or not option:
            raise OptionError(f"--set expects PLUGIN.KEY=VALUE, got {assignment!r}")
        result.setdefault(plugin, {})[option] = value.strip()
    return result


def method_set_overrides(method: str, assignments: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(method options, dataset options) of ``--set`` for a data-level command whose
    ``--method`` is ``method``; another plugin's options are a one-line error."""
    overrides = parse_set_overrides(assignments)
    dataset_options = overrides.pop("dataset", {})
    unknown = [name for name in overrides if name != method]
    if unknown:
        raise OptionError(f"--set {unknown[0]}.KEY: only {method}.KEY or dataset.KEY apply to --method {method}")
    return overrides.get(method, {}), dataset_options


def options_as_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
