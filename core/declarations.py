"""What a plugin declares, :class:`Plugin`, the optional base class that types it, and
:class:`Collects`, what a plugin package's registration hook collects.

A plugin is a class (or a module) with ``@hookimpl`` methods, an ``Options`` dataclass and
the declarations of :data:`DECLARATIONS`, read by the plugin host (docs/hooks.md, "Plugin
declarations"). Subclassing :class:`Plugin` is optional; it gives the declarations their
types and defaults, no-op ``state_dict`` / ``load_state_dict``, and checks the class when it
is defined: a misspelt declaration (``read = ("clean",)``) or hook name (``def augmnet``) is
a :class:`robx.core.errors.PluginError` at import, naming the closest real one. A plugin that
does not subclass it gets the same checks when robx discovers it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robx.core import hookspecs
from robx.core.errors import PluginError
from robx.core.models import HEADS
from robx.core.state import VIEWS

#: what a plugin may declare, with the types a declaration takes
DECLARATIONS: dict[str, type | tuple[type, ...]] = {
    "name": str, "reads": (tuple, list), "trains_on": str, "identity_adversary": bool, "policy": (tuple, list),
    "yields": (tuple, list), "fallback": bool, "weighted_mean": bool, "head": str, "parts": (tuple, list),
    "routes": dict, "moved_state": dict, "reads_input_gradient": bool,
}


@dataclass(frozen=True)
class Collects:
    """What a registration hook a plugin package adds collects (its module's ``REGISTERS``)."""

    #: the entries' kind, a singular noun for listings and errors ("oversampler")
    kind: str
    #: where a user uses one ("robx oversample --method")
    used_with: str


def marked_hooks(target: Any) -> set[str]:
    """Names of the members of ``target`` marked ``@hookimpl``."""
    return {name for name, value in inspect.getmembers(target) if hasattr(value, f"{hookspecs.PROJECT_NAME}_impl")}


def _closest(name: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'X'?" for the closest candidate, else the list of them."""
    names = list(candidates)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; robx hooks: {', '.join(names)}"


def declaration_problem(target: Any, label: str, hook_names: Iterable[str]) -> str | None:
    """The first problem with what ``target`` declares, as one line starting with ``label``,
    or ``None``: a misspelt declaration, a declaration of the wrong type, a hook name robx does
    not define (``hook_names``, retired ones aside), a view, head or per-class quantity robx
    does not know, or ``policy`` without ``class_policy`` (or the reverse)."""
    known_hooks = set(hook_names)
    if inspect.isclass(target):
        for attribute, value in vars(target).items():
            if attribute.startswith("_") or attribute in DECLARATIONS or callable(value):
                continue
            for close in difflib.get_close_matches(attribute, list(DECLARATIONS), n=1, cutoff=0.75):
                if isinstance(value, DECLARATIONS[close]):
                    return f"{label} declares '{attribute}', which robx does not read; did you mean '{close}'?"
    for declaration, kind in DECLARATIONS.items():
        value = getattr(target, declaration, None)
        if value is not None and not isinstance(value, kind):
            return f"{label} declares {declaration} = {value!r}; it takes a {_type_names(kind)}"
    unknown = sorted(marked_hooks(target) - known_hooks - set(hookspecs.RETIRED))
    if unknown:
        return f"{label} implements unknown hook '{unknown[0]}'{_closest(unknown[0], known_hooks)}"
    reads = tuple(getattr(target, "reads", ()))
    policy = tuple(getattr(target, "policy", ()))
    trains_on, head = getattr(target, "trains_on", None), getattr(target, "head", None)
    bad_views = [view for view in reads if view not in VIEWS]
    if bad_views:
        return f"{label} reads unknown view '{bad_views[0]}'; views: {', '.join(VIEWS)}"
    if trains_on not in (None, "adversarial", "clean"):
        return f"{label} trains_on must be 'adversarial' or 'clean', got {trains_on!r}"
    if head is not None and head not in HEADS:
        return f"{label} needs head {head!r}; heads: {', '.join(HEADS)}"
    bad_policy = [quantity for quantity in policy if quantity not in hookspecs.POLICY]
    if bad_policy:
        return f"{label} declares policy '{bad_policy[0]}'; per-class quantities: {', '.join(hookspecs.POLICY)}"
    return None


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


class Plugin:
    """Optional base class of a plugin: its declarations typed, with their defaults.

    Subclass it, set what applies, implement hooks with ``@robx.hookimpl``::

        class Halve(robx.Plugin):
            name = "halve"
            Options = HalveOptions

            @robx.hookimpl
            def weight_samples(self, step, state): ...

    The class is checked when it is defined (:func:`declaration_problem`); a registration hook
    a plugin package adds (``register_<things>``) is checked when robx discovers the plugin,
    once every package has added its hooks.
    """

    #: how users select it (``--plugins NAME``)
    name: ClassVar[str]
    #: a dataclass of its options (``--set NAME.KEY=VALUE``); the instance gets one
    Options: ClassVar[type | None] = None
    #: the forward-pass views it reads from the step: ``"clean"``, ``"adversarial"``
    reads: ClassVar[tuple[str, ...]] = ()
    #: it reads ``step.input_gradient`` (in ``after_step``): the gradient of the step's loss
    #: with respect to the trained rows, from the training backward itself (Free AT)
    reads_input_gradient: ClassVar[bool] = False
    #: what the trained rows start from, where it decides: ``"clean"`` or ``"adversarial"``
    trains_on: ClassVar[str | None] = None
    #: an adversary whose x' is the clean batch itself (natural training)
    identity_adversary: ClassVar[bool] = False
    #: the per-class quantities its ``class_policy`` decides (``hookspecs.POLICY``)
    policy: ClassVar[tuple[str, ...]] = ()
    #: owned hooks whose answer is only a default that gives way (``("generate_adversary",)``)
    yields: ClassVar[tuple[str, ...]] = ()
    #: the adversary added when no selected plugin generates one
    fallback: ClassVar[bool] = False
    #: an owner of class_weights whose weighted loss is averaged over the rows' class weights
    weighted_mean: ClassVar[bool] = False
    #: the model head its loss needs (``robx.core.models.HEADS``)
    head: ClassVar[str | None] = None
    #: a recipe's primitive plugins, and where each of its options goes
    parts: ClassVar[tuple[str, ...]] = ()
    routes: ClassVar[Mapping[str, str]] = {}
    #: a recipe's state keys saved before it was a recipe, with the part that keeps them now
    moved_state: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_hooks = [*hookspecs.HOOK_NAMES, *(name for name in marked_hooks(cls) if name.startswith("register_"))]
        problem = declaration_problem(cls, f"plugin class {cls.__module__}.{cls.__qualname__}", own_hooks)
        if problem is not None:
            raise PluginError(problem)

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint keeps (plain data); none unless overridden."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved; a plugin that saves none refuses any."""
        if state:
            raise PluginError(f"plugin '{getattr(self, 'name', type(self).__name__)}' keeps no state, but the "
                              f"checkpoint holds {', '.join(sorted(state))} for it")


def saves_state(target: Any) -> bool:
    """Whether a plugin saves state of its own: it defines ``state_dict`` (beyond
    :class:`Plugin`'s no-op)."""
    method = getattr(target, "state_dict", None)
    return callable(method) and getattr(method, "__func__", method) is not Plugin.state_dict
