"""Plugin selection: a run's plugins from what the user listed, recipes replaced by their
parts, the loss and fallback adversary added, and every owned hook, per-class quantity and
declaration given at most one owner, by declared rules only (docs/hooks.md).

A recipe (a method that is a composition) declares ``parts`` (primitive plugins), ``routes``
(each option of its ``Options`` to ``"part.option"``, or to a part a false bool leaves out)
and optionally ``moved_state``, and no hooks: :func:`expand_recipes` replaces it by its parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robx.core import hookspecs
from robx.core import discovery
from robx.core.discovery import PluginSpec, build_options, fallback_adversary, get_plugin_spec, registration_hooks
from robx.core.errors import OptionError, PluginConflictError
from robx.core.options import options_as_dict

DEFAULT_LOSS = "ce"  # the task's own loss: no loss plugin


@dataclass(frozen=True)
class Selection:
    """The plugins of a run, in listing order (recipes replaced by their parts), the owner
    of each owned hook, the recipe each part comes from, and the selection as listed (recipes
    by their names, with the loss and fallback plugins: what reports say ran)."""

    names: list[str]
    owners: dict[str, str]
    part_of: dict[str, str] = dataclasses.field(default_factory=dict)
    listed: list[str] = dataclasses.field(default_factory=list)
    #: the raw options with each recipe's routed to its parts (:func:`expand_recipes`)
    routed: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def expand_recipes(selected: Sequence[str], raw_options: Mapping[str, Mapping[str, Any]]
                   ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, str]]:
    """(the plugins that run, their raw options, the recipe each part comes from): every
    recipe is replaced by its parts, its options routed to theirs (validated by the recipe's
    ``Options`` first, so its defaults are the method's), and a part a false switch turns
    off is left out. A part's option that a selected recipe routes is set through the recipe
    only (one name per option)."""
    names: list[str] = []
    options = {name: dict(table) for name, table in raw_options.items()}
    part_of: dict[str, str] = {}
    for name in selected:
        spec = get_plugin_spec(name)
        if not spec.parts:
            names.append(name)
            continue
        spec.check_recipe()
        values = options_as_dict(build_options(spec, options.pop(name, {})))
        off = {part for option, part in spec.routes.items() if "." not in part and not values[option]}
        for part in spec.parts:
            if part in part_of or part in names:
                raise OptionError(f"plugin '{part}' listed twice ('{name}' includes it)")
            if part not in off:
                names.append(part)
                part_of[part] = name
        for option, target in spec.routes.items():
            part, _, key = target.partition(".")
            if not key or part in off:
                continue
            if key in raw_options.get(part, {}):
                raise OptionError(f"option '{part}.{key}' is part of '{name}': set {name}.{option}")
            options.setdefault(part, {})[key] = values[option]
    return names, options, part_of


#: Declarations that are owned quantities, like the owned hooks: at most one selected plugin
#: may make each (the key is where :class:`Selection` records the owner).
OWNED_DECLARATIONS = {"trains_on": "decide which rows the step trains on (trains_on)"}


def _owners(specs: Sequence[PluginSpec], part_of: Mapping[str, str]) -> dict[str, str]:
    """The owner of every owned declaration, per-class quantity and owned hook the selection
    decides; two claimants of one are a :class:`PluginConflictError` naming both (a recipe's
    part as the recipe's)."""
    contested: dict[str, tuple[list[PluginSpec], str]] = {}
    for declaration, what in OWNED_DECLARATIONS.items():
        contested[declaration] = ([s for s in specs if getattr(s, declaration) is not None], what)
    for quantity, what in hookspecs.POLICY.items():
        contested[quantity] = ([s for s in specs if quantity in s.policy], what)
    for hook, what in hookspecs.OWNED.items():
        implementers = [s for s in specs if hook in s.hooks]
        firm = [s for s in implementers if not s.yields(hook)]
        contested[hook] = (firm or implementers, what)  # a yielding implementation only when nobody else
    owners = {}
    for key, (claimants, what) in contested.items():
        if len(claimants) > 1:
            raise PluginConflictError(
                "plugins " + " and ".join(f"'{part_of[s.name]}' (its part '{s.name}')" if s.name in part_of
                                          else f"'{s.name}'" for s in claimants)
                + f" both {what}; select one of them"
            )
        if claimants:
            owners[key] = claimants[0].name
    return owners


def select_plugins(selected: Sequence[str], loss: str = DEFAULT_LOSS,
                   raw_options: Mapping[str, Mapping[str, Any]] | None = None) -> Selection:
    """Check the selection, replace recipes by their parts (``raw_options`` may switch a
    part off), add the ``--loss`` plugin and, where no selected plugin generates adversarial
    examples, the fallback adversary; resolve every owner."""
    listed = [name.strip() for name in selected]
    if not all(listed):
        raise OptionError(f"plugin names must not be empty: {list(selected)!r}")
    duplicates = {n for n in listed if listed.count(n) > 1}
    if duplicates:
        raise OptionError(f"plugin listed twice: {', '.join(sorted(duplicates))}")
    names, routed, part_of = expand_recipes(listed, raw_options or {})
    if loss != DEFAULT_LOSS:
        spec = get_plugin_spec(loss)
        if "training_loss" not in spec.hooks:
            losses = [s.name for s in discovery.available_plugins().values() if "training_loss" in s.hooks]
            raise OptionError(f"--loss {loss}: not a loss; available: {DEFAULT_LOSS}, {', '.join(losses)}")
        names.append(loss)
        listed.append(loss)
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise OptionError(f"plugin listed twice: {', '.join(sorted(duplicates))}")
    specs = [get_plugin_spec(name) for name in names]
    for spec in specs:
        spec.check_hooks()
        if spec.hooks and set(spec.hooks) <= set(registration_hooks()):
            raise OptionError(f"plugin '{spec.name}' only registers what other options and commands use (robx "
                              "plugins lists where: --dataset, --model, --attack, a command); not for --plugins")
    if not any("generate_adversary" in s.hooks for s in specs):
        names.append(fallback_adversary())
        listed.append(names[-1])
        specs.append(get_plugin_spec(names[-1]))
    heads = {s.head for s in specs if s.head is not None}
    if len(heads) > 1:
        needing = [f"'{s.name}' ({s.head})" for s in specs if s.head is not None]
        raise PluginConflictError(f"plugins {' and '.join(needing)} need different model heads; select one of them")
    return Selection(names, _owners(specs, part_of), part_of, listed, routed)


def resolve_plugin_names(selected: Sequence[str], loss: str = DEFAULT_LOSS) -> list[str]:
    """The plugins a selection runs, in listing order (see :func:`select_plugins`)."""
    return select_plugins(selected, loss).names
