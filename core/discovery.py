"""Plugin discovery: the built-in plugins and those of installed packages, what each
implements and declares, and the registration hooks plugin packages add.

Built-in plugins are ordinary plugin classes and modules listed in
``robx.plugins.DEFAULT_PLUGINS``; third-party packages add theirs through the
entry-point group ``"robx"`` (``name = "package.module:PluginClass"``, or a module with
``@hookimpl`` functions). Discovery is lazy and cached (:func:`available_plugins`). What a
plugin may declare is :mod:`robx.core.declarations`'.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, NamedTuple

from robx.core import hookspecs
from robx.core.declarations import Collects, declaration_problem, marked_hooks
from robx.core.errors import PluginError, RobxError, UnknownPluginError, warn
from robx.core.options import options_from

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BUILTIN_ORIGIN = "built-in"


@dataclass(frozen=True)
class PluginSpec:
    """An available plugin: where it comes from and how to make an instance."""

    name: str
    origin: str
    target: Any

    @property
    def options_type(self) -> type | None:
        return getattr(self.target, "Options", None)

    @property
    def _marked(self) -> set[str]:
        """Names of the members marked ``@hookimpl``."""
        return marked_hooks(self.target)

    @property
    def hooks(self) -> tuple[str, ...]:
        """Names of the hooks this plugin implements, in spec order (a recipe: its parts')."""
        marked = self._marked
        for part in self.parts:
            marked |= set(get_plugin_spec(part).hooks)
        return tuple(h for h in hook_names() if h in marked)

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(getattr(self.target, "reads", ()))

    @property
    def trains_on(self) -> str | None:
        """What the trained rows start from, where this plugin decides it (``None``: no say)."""
        value = getattr(self.target, "trains_on", None)
        return None if value is None else str(value)

    @property
    def policy(self) -> tuple[str, ...]:
        """The per-class quantities this plugin's ``class_policy`` decides."""
        return tuple(getattr(self.target, "policy", ()))

    @property
    def identity_adversary(self) -> bool:
        return bool(getattr(self.target, "identity_adversary", False))

    @property
    def reads_input_gradient(self) -> bool:
        return bool(getattr(self.target, "reads_input_gradient", False))

    @property
    def parts(self) -> tuple[str, ...]:
        """The primitive plugins a recipe is made of (empty for a primitive plugin)."""
        return tuple(getattr(self.target, "parts", ()))

    @property
    def routes(self) -> dict[str, str]:
        """A recipe's options: each is a part's option (``"part.option"``), or, naming a part
        alone, a bool that leaves that part out when false."""
        return dict(getattr(self.target, "routes", {}))

    @property
    def moved_state(self) -> dict[str, str]:
        """Where state a recipe's plugin saved before it was a recipe now lives:
        ``{key: part}`` (old checkpoints resume into the part)."""
        return dict(getattr(self.target, "moved_state", {}))

    def check_recipe(self) -> None:
        """One-line error for a recipe whose parts are not primitive plugins or whose options
        route nowhere; a recipe declares parts and routes, never hooks of its own."""
        if self._marked:
            raise PluginError(f"recipe '{self.name}' ({self.origin}) implements hooks; a recipe only names its parts")
        for part in self.parts:
            if get_plugin_spec(part).parts:
                raise PluginError(f"recipe '{self.name}' ({self.origin}) has part '{part}', itself a recipe")
        fields = set(getattr(self.options_type, "__dataclass_fields__", {}))
        for option, target in self.routes.items():
            part, _, key = target.partition(".")
            options = getattr(get_plugin_spec(part).options_type, "__dataclass_fields__", {}) if part in self.parts else {}
            if option not in fields or part not in self.parts or (key and key not in options):
                raise PluginError(f"recipe '{self.name}' ({self.origin}) routes option '{option}' to '{target}', "
                                  f"which is not an option of its parts {', '.join(self.parts)}")
        if set(self.routes) != fields:
            raise PluginError(f"recipe '{self.name}' ({self.origin}): every option must route to a part "
                              f"({', '.join(sorted(fields - set(self.routes)))} do not)")

    def check_hooks(self) -> None:
        """One-line error for what the plugin declares wrongly (:func:`declaration_problem`:
        a misspelt declaration or hook name, naming the closest real one, an unknown view,
        head or per-class quantity), or ``policy`` without ``class_policy`` (or the reverse)."""
        label = f"plugin '{self.name}' ({self.origin})"
        problem = declaration_problem(self.target, label, hook_names())
        if problem is not None:
            raise PluginError(problem)
        if bool(self.policy) != ("class_policy" in self.hooks):
            raise PluginError(f"{label} must both implement class_policy and declare the quantities it decides in "
                              "policy = (...), or neither")
        if self.weighted_mean and "class_weights" not in self.policy:
            raise PluginError(f"{label} declares weighted_mean but does not decide class_weights")

    def yields(self, hook: str) -> bool:
        """True when this plugin's ``hook`` is a default that gives way to another
        selected plugin's (declared with ``yields = ("generate_adversary",)``)."""
        return hook in getattr(self.target, "yields", ())

    @property
    def head(self) -> str | None:
        return getattr(self.target, "head", None)

    @property
    def weighted_mean(self) -> bool:
        return bool(getattr(self.target, "weighted_mean", False))

    @property
    def is_fallback(self) -> bool:
        return bool(getattr(self.target, "fallback", False))

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.target) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def instantiate(self, options: Any) -> Any:
        if isinstance(self.target, types.ModuleType):
            return self.target
        if self.options_type is not None:
            return self.target(options)
        return self.target()


def _load_object(reference: str) -> Any:
    module_name, _, attr = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _plugin_name(target: Any, reference: str) -> str:
    """A plugin's ``name``, else the last part of its module path (``robx.plugins.models.cnn``: ``cnn``)."""
    return str(getattr(target, "name", reference.partition(":")[0].rpartition(".")[2]))


@dataclass(frozen=True)
class AddedHooks:
    """Registration hooks a plugin package added (``add_hookspecs``): the module holding their
    specs and what each collects."""

    module: Any
    origin: str
    registers: Mapping[str, Collects]


class Discovery(NamedTuple):
    plugins: dict[str, PluginSpec]
    #: entry points and plugins left out, by name: why
    skipped: dict[str, str]
    added: tuple[AddedHooks, ...]


@lru_cache(maxsize=1)
def _discovered() -> Discovery:
    """Usable plugins, those left out with why, and the registration hooks plugin packages
    add: built-in plugins, then those of installed distributions (entry-point group ``robx``)."""
    from robx.plugins import DEFAULT_PLUGINS

    found: dict[str, PluginSpec] = {}
    for reference in DEFAULT_PLUGINS:
        target = _load_object(reference)
        name = _plugin_name(target, reference)
        if name in found:
            raise PluginError(f"built-in plugins {found[name].target.__name__} and {reference} share the name '{name}'")
        found[name] = PluginSpec(name, BUILTIN_ORIGIN, target)
    skipped: dict[str, str] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
        problem = _entry_point_problem(entry_point, origin, found)
        if isinstance(problem, str):
            skipped[entry_point.name] = problem
            warn_skipped(problem)
            continue
        found[entry_point.name] = PluginSpec(entry_point.name, origin, problem)
    added: list[AddedHooks] = []
    for spec in [spec for spec in found.values() if "add_hookspecs" in spec._marked]:
        try:
            added.extend(_added_hooks(spec, added))
        except RobxError as error:
            if spec.origin == BUILTIN_ORIGIN:
                raise
            skipped[spec.name] = str(error)
            del found[spec.name]
            warn_skipped(str(error))
    return Discovery(found, skipped, tuple(added))


def _added_hooks(spec: PluginSpec, earlier: Sequence[AddedHooks]) -> list[AddedHooks]:
    """The hook modules ``spec``'s ``add_hookspecs`` adds, each checked: its ``@hookspec``
    functions are the registration hooks its ``REGISTERS`` lists, each taking ``register``,
    named like no robx hook and no hook or kind another package added."""
    origin = f"{spec.name} ({spec.origin})"
    modules: list[Any] = []
    try:
        spec.target.add_hookspecs(add=modules.append)
    except Exception as error:
        raise PluginError(f"{origin}: add_hookspecs failed: {type(error).__name__}: {error}") from error
    taken = {*hookspecs.HOOK_NAMES, *hookspecs.RETIRED, *(hook for a in earlier for hook in a.registers)}
    kinds = {collects.kind for a in earlier for collects in a.registers.values()}
    found = []
    for module in modules:
        label = f"{origin} adds hooks from {getattr(module, '__name__', module)!s}"
        registers = getattr(module, "REGISTERS", None)
        if not isinstance(registers, Mapping) or not all(isinstance(c, Collects) for c in registers.values()):
            raise PluginError(f"{label} without REGISTERS = {{hook: robx.Collects(kind, used_with)}}")
        specs = {name for name in dir(module) if hasattr(getattr(module, name), f"{hookspecs.PROJECT_NAME}_spec")}
        if specs != set(registers):
            raise PluginError(f"{label}: its hook specs ({', '.join(sorted(specs)) or 'none'}) and REGISTERS "
                              f"({', '.join(sorted(registers)) or 'none'}) must name the same hooks")
        for hook, collects in registers.items():
            if hook in taken or collects.kind in kinds:
                raise PluginError(f"{label}: hook '{hook}' or kind '{collects.kind}' is already robx's or another "
                                  "package's")
            if list(inspect.signature(getattr(module, hook)).parameters) != ["register"]:
                raise PluginError(f"{label}: {hook} must take one argument, register")
            taken.add(hook)
            kinds.add(collects.kind)
        found.append(AddedHooks(module, origin, dict(registers)))
    return found


def added_hookspecs() -> tuple[AddedHooks, ...]:
    """The registration hooks installed plugin packages add (``add_hookspecs``)."""
    return _discovered().added


def hook_names() -> tuple[str, ...]:
    """robx's hooks, then those plugin packages add."""
    return hookspecs.HOOK_NAMES + tuple(hook for added in added_hookspecs() for hook in added.registers)


def registration_hooks() -> tuple[str, ...]:
    """The hooks run once per process to build the registry: robx's, then those packages add."""
    return hookspecs.REGISTRATION + tuple(hook for added in added_hookspecs() for hook in added.registers)


def _entry_point_problem(entry_point: Any, origin: str, found: dict[str, PluginSpec]) -> Any:
    """The entry point's loaded target, or a one-line message why it cannot be a plugin: it
    fails to import (a third-party failure must not look like ours), its name is taken, it
    declares another ``name`` than the entry point's (one plugin has one name: options are
    keyed by it, and two names would run one class twice), or it is already a plugin under
    another name."""
    label = f"plugin '{entry_point.name}' from {origin}"
    try:
        target = entry_point.load()
    except Exception as error:
        return f"{label} failed to load: {type(error).__name__}: {error}"
    if entry_point.name in found:
        return f"plugin name '{entry_point.name}' from {origin} is already taken by {found[entry_point.name].origin}"
    declared = getattr(target, "name", None)
    if declared is not None and declared != entry_point.name:
        return (f"{label} names {entry_point.value} whose name is '{declared}': the entry-point name must be the "
                "plugin's name")
    twin = next((spec for spec in found.values() if spec.target is target), None)
    if twin is not None:
        return f"{label} is {entry_point.value}, already the plugin '{twin.name}' ({twin.origin}): one plugin, one name"
    return target


def warn_skipped(message: str) -> None:
    """One stderr line for an installed plugin robx leaves out (once per process: discovery is
    cached; process 0 only under torchrun)."""
    warn(f"{message}; skipped")


def available_plugins() -> dict[str, PluginSpec]:
    """Every usable plugin by name. An installed plugin that cannot be one (see
    :func:`_entry_point_problem`) is reported once on stderr and left out, so the others stay
    usable; selecting it is the error (:func:`get_plugin_spec`)."""
    return _discovered().plugins


def skipped_plugins() -> dict[str, str]:
    return _discovered().skipped


def get_plugin_spec(name: str) -> PluginSpec:
    plugins, skipped = available_plugins(), skipped_plugins()
    if name in skipped and name not in plugins:
        raise PluginError(skipped[name])
    if name not in plugins:
        close = difflib.get_close_matches(name, list(plugins), n=1, cutoff=0.7)
        raise UnknownPluginError(f"unknown plugin '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                                 + f"; available: {', '.join(sorted(plugins))}")
    return plugins[name]


def fallback_adversary() -> str:
    """The built-in plugin that declares ``fallback = True``."""
    (name,) = [s.name for s in available_plugins().values() if s.is_fallback and s.origin == BUILTIN_ORIGIN]
    return name


def build_options(spec: PluginSpec, raw: Mapping[str, Any]) -> Any:
    """Validate raw option values against the plugin's ``Options`` dataclass."""
    return options_from(spec.options_type, raw, spec.name, f"plugin '{spec.name}'")
