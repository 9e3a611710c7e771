"""Plugin discovery, options, ownership rules and the typed facade the engine calls.

Built-in plugins are ordinary plugin classes and modules listed in
``robx.plugins.DEFAULT_PLUGINS``; third-party packages add theirs through the
entry-point group ``"robx"`` (``name = "package.module:PluginClass"``, or a module with
``@hookimpl`` functions). Discovery is lazy and cached (``available_plugins``). Only the
plugins a run selects are registered with its plugin manager, so only they run.

A plugin class may declare, beside its hooks and ``Options``:

* ``name``: how users select it;
* ``reads = ("clean", "adversarial")``: the forward-pass views it reads from the step
  (``step.clean_outputs``/``clean_features``, ``step.adv_outputs``/``adv_features``); the
  engine computes them (see :func:`robx.core.engine.forward_passes`);
* ``trains_on = "clean"`` or ``"adversarial"``: what the trained rows start from, the
  clean batch (TRADES' natural term) or x' (the default when no plugin declares it). It
  is an owned quantity: two selected plugins that declare it are rejected, as two owners
  of a hook are (``trades,imbmix``: Imb-Mix builds its rows from x');
* ``identity_adversary = True`` (an adversary): its x' is the clean batch itself (natural
  training), so the step has one input distribution and one BatchNorm batch, whatever
  tensor the hook returns;
* ``policy = ("attack_budget", "class_weights", "regularizer_weights")`` (any of them): the
  per-class quantities its ``class_policy`` hook decides; each has one owner;
* ``yields = ("generate_adversary",)``: its adversary is only a default that gives way to
  any other selected adversary (TRADES);
* ``fallback = True``: the adversary added when no selected plugin generates one (``pgd``);
* ``weighted_mean = True`` (an owner of ``class_weights``): the class-weighted loss is
  averaged over the rows' class weights, sum_i w_i l_i / sum_i w_i, as
  ``F.cross_entropy(weight=w)`` does (LDAM-DRW's code: DRW, SRAT), instead of over the batch,
  sum_i w_i l_i / B (Cui et al.'s class-balanced loss, DAFA's code);
* ``head = "cosine"``: the model's output layer its loss needs (``robx.core.models.HEADS``;
  LDAM: normalised features times normalised weights). Two selected plugins that need
  different heads are rejected.

A recipe (a method that is a composition) declares ``parts`` (primitive plugins), ``routes``
(each option of its ``Options`` to ``"part.option"``, or to a part a false bool leaves out)
and optionally ``moved_state``, and no hooks: :func:`expand_recipes` replaces it by its parts.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, NamedTuple

import pluggy
import torch

from robx.core import hookspecs
from robx.core.data import Split
from robx.core.errors import (OptionError, PluginConflictError, PluginError, PluginFailure, RobxError,
                              UnknownPluginError, guarded, warn)
from robx.core.models import HEADS
from robx.core.options import options_from
from robx.core.state import VIEWS, Step, TrainState, check_plain

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
DEFAULT_LOSS = "ce"  # the task's own loss: no loss plugin
BUILTIN_ORIGIN = "built-in"


#: what a plugin class may declare (module docstring), with the types a declaration takes
DECLARATIONS: dict[str, type | tuple[type, ...]] = {
    "name": str, "reads": (tuple, list), "trains_on": str, "identity_adversary": bool, "policy": (tuple, list),
    "yields": (tuple, list), "fallback": bool, "weighted_mean": bool, "head": str, "parts": (tuple, list),
    "routes": dict, "moved_state": dict,
}


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
        return {name for name, value in inspect.getmembers(self.target)
                if hasattr(value, f"{hookspecs.PROJECT_NAME}_impl")}

    @property
    def hooks(self) -> tuple[str, ...]:
        """Names of the hooks this plugin implements, in spec order (a recipe: its parts')."""
        marked = self._marked
        for part in self.parts:
            marked |= set(get_plugin_spec(part).hooks)
        return tuple(h for h in hook_names() if h in marked)

    @property
    def unknown_hooks(self) -> tuple[str, ...]:
        """Members marked ``@hookimpl`` whose name is no robx hook (a misspelling)."""
        return tuple(sorted(self._marked - set(hook_names()) - set(hookspecs.RETIRED)))

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

    @property
    def misspelled_declarations(self) -> list[tuple[str, str]]:
        """``(attribute, declaration)`` for each class attribute that looks like a misspelt
        declaration (``read = ("clean",)`` for ``reads``): close to a declaration's name and
        of its type. Read with defaults, a misspelt one would be silently ignored."""
        if not inspect.isclass(self.target):
            return []
        found = []
        for attribute, value in vars(self.target).items():
            if attribute.startswith("_") or attribute in DECLARATIONS or callable(value):
                continue
            for close in difflib.get_close_matches(attribute, list(DECLARATIONS), n=1, cutoff=0.75):
                if isinstance(value, DECLARATIONS[close]):
                    found.append((attribute, close))
        return found

    def check_hooks(self) -> None:
        """One-line error for a hook name robx does not define (pluggy would ignore it), a
        misspelt declaration, or a declaration outside the ones the engine knows."""
        for attribute, declaration in self.misspelled_declarations:
            raise PluginError(f"plugin '{self.name}' ({self.origin}) declares '{attribute}', which robx does not "
                              f"read; did you mean '{declaration}'?")
        if self.unknown_hooks:
            raise PluginError(
                f"plugin '{self.name}' ({self.origin}) implements unknown hook "
                f"'{self.unknown_hooks[0]}'; robx hooks: {', '.join(hook_names())}"
            )
        unknown_views = [view for view in self.reads if view not in VIEWS]
        if unknown_views:
            raise PluginError(f"plugin '{self.name}' ({self.origin}) reads unknown view '{unknown_views[0]}'; "
                              f"views: {', '.join(VIEWS)}")
        if self.trains_on not in (None, "adversarial", "clean"):
            raise PluginError(f"plugin '{self.name}' ({self.origin}) trains_on must be 'adversarial' or "
                              f"'clean', got {self.trains_on!r}")
        if self.head is not None and self.head not in HEADS:
            raise PluginError(f"plugin '{self.name}' ({self.origin}) needs head {self.head!r}; heads: "
                              f"{', '.join(HEADS)}")
        unknown_policy = [quantity for quantity in self.policy if quantity not in hookspecs.POLICY]
        if unknown_policy:
            raise PluginError(f"plugin '{self.name}' ({self.origin}) declares policy '{unknown_policy[0]}'; "
                              f"per-class quantities: {', '.join(hookspecs.POLICY)}")
        if bool(self.policy) != ("class_policy" in self.hooks):
            raise PluginError(f"plugin '{self.name}' ({self.origin}) must both implement class_policy and declare "
                              "the quantities it decides in policy = (...), or neither")
        if self.weighted_mean and "class_weights" not in self.policy:
            raise PluginError(f"plugin '{self.name}' ({self.origin}) declares weighted_mean but does not "
                              "decide class_weights")

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
    registers: Mapping[str, hookspecs.Collects]


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
        if not isinstance(registers, Mapping) or not all(isinstance(c, hookspecs.Collects) for c in registers.values()):
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
        raise UnknownPluginError(
            f"unknown plugin '{name}'; available: {', '.join(sorted(plugins))}"
        )
    return plugins[name]


def fallback_adversary() -> str:
    """The built-in plugin that declares ``fallback = True``."""
    (name,) = [s.name for s in available_plugins().values() if s.is_fallback and s.origin == BUILTIN_ORIGIN]
    return name


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------


def build_options(spec: PluginSpec, raw: Mapping[str, Any]) -> Any:
    """Validate raw option values against the plugin's ``Options`` dataclass."""
    return options_from(spec.options_type, raw, spec.name, f"plugin '{spec.name}'")


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


# ---------------------------------------------------------------------------
# selection: every owned hook gets at most one owner, by declared rules only
# ---------------------------------------------------------------------------


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
            losses = [s.name for s in available_plugins().values() if "training_loss" in s.hooks]
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


# ---------------------------------------------------------------------------
# the typed facade
# ---------------------------------------------------------------------------


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without changing it."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


class PluginHost:
    """The run's plugin manager behind typed methods (tox 4's facade pattern).

    Shared hooks go through pluggy in listing order; an owned hook is called on its owner
    only, so which plugin decides never depends on registration order.
    """

    def __init__(
        self,
        selected: Sequence[str],
        raw_options: Mapping[str, Mapping[str, Any]],
        loss: str = DEFAULT_LOSS,
    ):
        selection = select_plugins(selected, loss, raw_options)
        self.names = selection.names
        self.owners = selection.owners
        #: the selection as listed (recipes by name), and the recipe each part comes from
        self.listed = selection.listed
        self.part_of = selection.part_of
        for plugin_name in raw_options:
            if plugin_name not in self.names and plugin_name not in self.listed:
                get_plugin_spec(plugin_name)  # unknown name -> the same clear error
                raise OptionError(
                    f"options given for plugin '{plugin_name}', which is not selected "
                    f"(selected: {', '.join(self.listed)})"
                )
        raw_options = {**raw_options, **selection.routed}  # the recipes expanded once, by the selection
        self.specs = {name: get_plugin_spec(name) for name in self.names}
        #: each selected recipe's own options (its parts hold the values the run uses)
        self.recipe_options = {name: build_options(get_plugin_spec(name), raw_options.get(name, {}))
                               for name in dict.fromkeys(selection.part_of.values())}
        #: the forward-pass views some selected plugin reads, and what the rows start from
        self.views = frozenset(view for spec in self.specs.values() for view in spec.reads)
        rows_owner = self.owners.get("trains_on")
        self.trains_on = self.specs[rows_owner].trains_on if rows_owner is not None else "adversarial"
        #: whether the adversary declares that its x' is the clean batch (natural training)
        self.identity_adversary = self.specs[self.owners["generate_adversary"]].identity_adversary
        #: whether the class-weighted loss is averaged over the rows' class weights
        weights_owner = self.owners.get("class_weights")
        self.class_weighted_mean = weights_owner is not None and self.specs[weights_owner].weighted_mean
        #: the model head a selected plugin's loss needs (``"linear"`` when none does)
        self.head = next((spec.head for spec in self.specs.values() if spec.head is not None), "linear")
        self.options = {
            name: build_options(spec, raw_options.get(name, {})) for name, spec in self.specs.items()
        }
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        # pluggy calls the last registered first; register in reverse so shared hooks run
        # in the order the user listed the plugins.
        for name in reversed(self.names):
            spec = self.specs[name]
            try:
                self.manager.register(spec.instantiate(self.options[name]), name=name)
            except pluggy.PluginValidationError as error:  # e.g. a hook argument no spec offers
                detail = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip())
                raise PluginError(f"plugin '{name}' ({spec.origin}) does not fit robx's hooks: {detail}") from error
            if spec.origin != BUILTIN_ORIGIN:  # a built-in plugin's failure is robx's bug: its traceback shows
                plugin = self.manager.get_plugin(name)
                for caller in self.manager.get_hookcallers(plugin) or []:
                    for impl in caller.get_hookimpls():
                        if impl.plugin is plugin:
                            impl.function = guarded(impl.function, self.label(name), f"its {caller.name} hook")
        self.hook = self.manager.hook
        self._callers: dict[tuple[str, str], Any] = {}

    def label(self, name: str) -> str:
        """How errors name a selected plugin: its name and where it comes from."""
        return f"plugin '{name}' ({self.specs[name].origin})"

    def _returned(self, name: str, hook: str, value: Any, allowed: str, fits: bool) -> None:
        """One :class:`PluginFailure` line naming the plugin when its ``hook`` returned what
        the hook does not take (``fits`` false): a list where a tensor belongs, a wrong shape."""
        if not fits:
            got = (f"a tensor of shape {tuple(value.shape)} and dtype {str(value.dtype).removeprefix('torch.')}"
                   if isinstance(value, torch.Tensor) else f"a {type(value).__name__}")
            raise PluginFailure(f"{self.label(name)}: its {hook} hook returned {got}; it must return {allowed}")

    def _each(self, hook: str, kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """(plugin, answer) of a shared hook's implementations in listing order, answers of None
        left out (pluggy's results do not say which plugin gave them)."""
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            result = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if result is not None:
                yield impl.plugin_name, result

    def _on(self, hook: str, owner: str) -> Any:
        """Pluggy's caller of ``hook`` on ``owner`` alone (the selected plugins that yield to
        it, such as TRADES' adversary, also implement it). Owned hooks are ``firstresult``."""
        key = (hook, owner)
        if key not in self._callers:
            others = [self.manager.get_plugin(name) for name in self.names if name != owner]
            self._callers[key] = self.manager.subset_hook_caller(hook, remove_plugins=others)
        return self._callers[key]

    def _owned(self, hook: str, **kwargs: Any) -> Any:
        """The owner's answer to an owned hook, or None when no selected plugin owns it."""
        owner = self.owners.get(hook)
        return None if owner is None else self._on(hook, owner)(**kwargs)

    # --- data path -------------------------------------------------------------------

    def select_victims(self, step: Step, state: TrainState) -> torch.Tensor | None:
        mask = self._owned("select_victims", step=step, state=state)
        if mask is not None:
            self._returned(self.owners["select_victims"], "select_victims", mask,
                           f"None or a mask broadcastable to the batch's shape {tuple(step.x.shape)}",
                           isinstance(mask, torch.Tensor) and broadcasts_to(mask.shape, step.x.shape))
        return mask

    def generate_adversary(self, step: Step, state: TrainState) -> torch.Tensor:
        x_adv = self._owned("generate_adversary", step=step, state=state)
        owner = self.owners["generate_adversary"]
        if x_adv is None:
            raise PluginFailure(f"{self.label(owner)} generated no adversarial examples (its generate_adversary "
                                "hook returned None)")
        self._returned(owner, "generate_adversary", x_adv,
                       f"floating-point inputs of the batch's shape {tuple(step.x.shape)}",
                       isinstance(x_adv, torch.Tensor) and x_adv.shape == step.x.shape and x_adv.is_floating_point())
        return x_adv

    def augment(self, step: Step, state: TrainState) -> None:
        self.hook.augment(step=step, state=state)

    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor | None:
        loss = self._owned("training_loss", step=step, state=state)
        if loss is not None:
            rows = len(step.inputs)
            self._returned(self.owners["training_loss"], "training_loss", loss,
                           f"a floating-point tensor of per-row losses, shape ({rows}, ...)",
                           isinstance(loss, torch.Tensor) and loss.is_floating_point() and loss.dim() >= 1
                           and loss.shape[0] == rows)
        return loss

    def weight_samples(self, step: Step, state: TrainState) -> torch.Tensor | None:
        """Product of all plugins' per-row weights (each of the per-row losses' shape), or
        None when no plugin weighs."""
        expected = tuple(step.per_sample_loss.shape)
        weights = None
        for name, w in self._each("weight_samples", {"step": step, "state": state}):
            self._returned(name, "weight_samples", w, f"None or a tensor of the per-row losses' shape {expected}",
                           isinstance(w, torch.Tensor) and tuple(w.shape) == expected)
            weights = w if weights is None else weights * w
        return weights

    def extra_losses(self, step: Step, state: TrainState) -> dict[str, torch.Tensor]:
        """Every plugin's extra loss terms, keyed ``plugin`` or ``plugin.term`` (for logging),
        each checked to be a floating-point scalar tensor."""
        allowed = "None, a floating-point scalar tensor or a dict of them by name"
        terms: dict[str, torch.Tensor] = {}
        for name, result in self._each("extra_loss", {"step": step, "state": state}):
            named = result.items() if isinstance(result, Mapping) else [(None, result)]
            for key, value in named:
                self._returned(name, "extra_loss", value, allowed,
                               (key is None or isinstance(key, str)) and isinstance(value, torch.Tensor)
                               and value.is_floating_point() and value.numel() == 1)
                terms[name if key is None else f"{name}.{key}"] = value.reshape(())
        return terms

    def sampling_weights(self, state: TrainState, labels: torch.Tensor) -> torch.Tensor | None:
        return self._owned("sampling_weights", state=state, labels=labels)

    # --- owned per-class quantities ----------------------------------------------------

    def class_policy(self, state: TrainState) -> dict[str, Any]:
        """``{quantity: answer}`` for the coming epoch from each per-class quantity's owner
        (a quantity missing: nobody owns it, or its owner left it ``None``)."""
        answers: dict[str, Any] = {}
        owning = [name for name in self.names if self.specs[name].policy]
        for name in owning:
            policy = self._on("class_policy", name)(state=state)
            if policy is None:
                continue
            for quantity in hookspecs.POLICY:
                value = getattr(policy, quantity)
                if value is None:
                    continue
                if quantity not in self.specs[name].policy:
                    raise RobxError(f"plugin '{name}' sets {quantity} in its class_policy but does not declare it "
                                    f"in policy = {self.specs[name].policy!r}")
                answers[quantity] = value
        return answers

    def training_set(self, state: TrainState, train: Split) -> Split | None:
        return self._owned("training_set", state=state, train=train)

    def trained_class_counts(self, state: TrainState, dataset_counts: torch.Tensor) -> torch.Tensor | None:
        return self._owned("trained_class_counts", state=state, dataset_counts=dataset_counts)

    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor] | None:
        return self._owned("averaged_weights", state=state)

    # --- plugin state ------------------------------------------------------------------

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """Each stateful plugin's own state (its ``state_dict()``, as a Lightning callback's),
        checked to be plain data a checkpoint can hold: ``{plugin: {key: value}}``."""
        states: dict[str, dict[str, Any]] = {}
        for name in self.names:
            plugin = self.manager.get_plugin(name)
            if not callable(getattr(plugin, "state_dict", None)):
                continue
            state = plugin.state_dict()
            if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
                raise PluginError(f"plugin '{name}': state_dict() must return a dict with str keys, "
                                  f"got {type(state).__name__}")
            for key, value in state.items():
                check_plain(value, f"plugin '{name}' state '{key}'")
            states[name] = dict(state)
        return states

    def load_state_dicts(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Hand each plugin the state it saved (``load_state_dict``); a state saved by a
        plugin this run did not select, or that cannot take one, is a :class:`RobxError`.
        State that a selected recipe saved before it was one goes to the part that keeps it
        now (its ``moved_state``)."""
        moved: dict[str, dict[str, Any]] = {}
        for name, state in states.items():
            if name in self.recipe_options:
                for key, value in state.items():
                    moved.setdefault(get_plugin_spec(name).moved_state.get(key, name), {})[key] = value
            else:
                moved.setdefault(name, {}).update(state)
        for name, state in moved.items():
            plugin = self.manager.get_plugin(name) if name in self.names else None
            if plugin is None or not callable(getattr(plugin, "load_state_dict", None)):
                raise RobxError(f"the checkpoint holds state of plugin '{name}', which "
                                + ("this run does not select" if plugin is None else "has no load_state_dict()"))
            plugin.load_state_dict(dict(state))

    # --- lifecycle ---------------------------------------------------------------------

    def after_step(self, step: Step, state: TrainState) -> None:
        self.hook.after_step(step=step, state=state)

    def check_run(self, state: TrainState) -> None:
        self.hook.check_run(state=state)

    def train_start(self, state: TrainState) -> None:
        self.hook.train_start(state=state)

    def train_end(self, state: TrainState) -> None:
        self.hook.train_end(state=state)

    def epoch_end(self, state: TrainState) -> None:
        self.hook.epoch_end(state=state)

