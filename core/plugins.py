"""The plugin host: a run's selected plugins behind typed methods the engine calls (tox 4's
facade pattern), each hook's answer checked.

Only the plugins a run selects (:func:`robx.core.selection.select_plugins`) are registered
with its plugin manager, so only they run. What a plugin may declare beside its hooks and
``Options`` is :mod:`robx.core.declarations`' (docs/hooks.md lists it):

* ``name``: how users select it;
* ``reads = ("clean", "adversarial")``: the forward-pass views it reads from the step
  (``step.clean_outputs``/``clean_features``, ``step.adv_outputs``/``adv_features``); the
  engine computes them;
* ``reads_input_gradient = True``: it reads ``step.input_gradient`` after the backward;
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
  different heads are rejected;
* ``parts``, ``routes``, ``moved_state``: a recipe's (:mod:`robx.core.selection`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pluggy
import torch

from robx.core import hookspecs
from robx.core.data import Split
from robx.core.declarations import saves_state
from robx.core.discovery import BUILTIN_ORIGIN, added_hookspecs, build_options, get_plugin_spec
from robx.core.errors import OptionError, PluginError, PluginFailure, RobxError, guarded
from robx.core.selection import DEFAULT_LOSS, select_plugins
from robx.core.state import Step, TrainState, check_plain


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
        self.reads_input_gradient = any(spec.reads_input_gradient for spec in self.specs.values())  # Free AT
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
        for added in added_hookspecs():  # a method plugin may also fill a package's registration hook
            self.manager.add_hookspecs(added.module)
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

    def batch_replays(self, state: TrainState) -> int:
        """The training steps the engine takes on each batch (1 unless an owner replays)."""
        replays = self._owned("batch_replays", state=state)
        if replays is None:
            return 1
        owner = self.owners["batch_replays"]
        self._returned(owner, "batch_replays", replays, "None or an int >= 1",
                       isinstance(replays, int) and not isinstance(replays, bool) and replays >= 1)
        return replays

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
            if not saves_state(plugin):
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
