"""Hook specifications of robx (pluggy project name ``"robx"``); docs/hooks.md is the reference.

Every training step flows one way (docs/engine.md)::

    select_victims -> generate_adversary -> augment -> the engine's forward passes
        -> loss = mean(w * per_row_loss) + sum(extra_loss) -> backward -> step

Each hook receives the keyword arguments named in its spec; an implementation may take any
subset of them. Only the plugins a run selects are registered, so a hook runs only for them;
the engine owns every train-mode forward pass (plugins read the views they declare). Hooks
come in three kinds:

* **Registration** hooks (:data:`REGISTRATION`, and those a plugin package adds through
  :func:`add_hookspecs`) contribute tasks, datasets, models, attacks, commands and a
  package's own entries, as simonw/llm's ``register_models(register)``; they run once per
  process for every installed plugin, selected or not, and must be module-level functions
  (or static methods).
* **Shared** hooks combine the answers of every selected plugin (``augment`` in listing
  order, ``weight_samples`` multiplied, ``extra_loss`` summed, lifecycle hooks in turn).
* **Owned** hooks (:data:`OWNED`; ``firstresult``, called on their owner alone) each decide
  one part of the recipe, with at most one owner per run, and the per-class quantities
  (:data:`POLICY`) go through :func:`class_policy`, owned per quantity. A plugin may yield
  ``generate_adversary`` (TRADES), and the plugin that declares ``fallback = True`` (``pgd``)
  is added when no selected plugin generates adversaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from robx.core.attack_plans import RegisterAttack
    from robx.core.data import Split
    from robx.core.models import RegisterModel
    from robx.core.state import ClassPolicy, Step, TrainState
    from robx.core.task import RegisterTask

PROJECT_NAME = "robx"

#: ``register(name, load, task=..., defaults=..., default=False, options=None)``, the argument of
#: ``register_datasets``
RegisterDataset = Callable[..., None]
#: ``register(name, make, options=None)``, the argument of a registration hook a plugin package
#: adds (:func:`add_hookspecs`)
RegisterEntry = Callable[..., None]
#: ``add(module)``, the argument of :func:`add_hookspecs`
AddHookspecs = Callable[[object], None]
#: ``register(name, make, needs=None)``, the argument of ``register_loggers``
RegisterLogger = Callable[..., None]
#: ``register(name, function)``, the argument of ``register_commands``
RegisterCommand = Callable[[str, Callable[..., None]], None]

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# registration: what can be trained, on what, with which model
# ---------------------------------------------------------------------------


@hookspec
def register_tasks(register: RegisterTask) -> None:
    """Register task classes: ``register(TaskClass)``.

    A task (a subclass of :class:`robx.core.task.Task`, named by its ``name``) owns what
    depends on the learning problem: turning stored examples into inputs, batch
    augmentation, the default loss, the loss the attacks ascend, per-example scores and the
    per-class statistics, and the evaluation attacks. Names must be unique across packages.
    """


@hookspec
def register_datasets(register: RegisterDataset) -> None:
    """Register datasets: ``register(name, load, task=..., defaults=..., default=False)``.

    ``load(data_root, seed)`` returns a :class:`robx.core.data.TaskData` of full train/test
    splits (the engine applies the protocol: imbalance, test subset, validation split);
    ``task`` names the registered task it is for; ``defaults`` are config values the dataset
    brings (its protocol: model, epochs, eps, ...), filled in where the user set none;
    ``default=True`` makes it ``robx train``'s dataset when none is given (one dataset may).
    """


@hookspec
def register_models(register: RegisterModel) -> None:
    """Register models: ``register(name, build)``.

    ``build(spec)`` gets a :class:`robx.core.task.ModelInput` (input shape, output units,
    input normalisation) and returns an ``nn.Module`` whose forward returns
    ``(features, outputs)``; a builder that cannot serve the task's inputs raises a
    :class:`robx.core.errors.OptionError` saying why.
    """


@hookspec
def register_attacks(register: RegisterAttack) -> None:
    """Register evaluation attacks: ``register(name, run, title=..., iterative=True,
    options=None, needs=None, tasks=())``.

    ``run(attack, plan, task)`` returns x' for one batch: ``attack`` is the batch's
    :class:`robx.core.attacks.Attack`, bound to the model, each example's budget, the task's
    input box and attack loss and the number of steps (the object training's adversaries
    call); ``plan`` the :class:`robx.core.attacks.AttackPlan` with the attack's own
    ``options`` (a dataclass instance when ``options=`` names one) and ``seed``. A task names
    the attacks that apply to it (``Task.attacks``); ``tasks`` adds this one to others.
    ``needs``: ``(module, how to install it)`` when it runs another library's code, checked
    before any work. Validation, ``robx eval``, ``robx audit`` and the Python API run every
    attack the same way.
    """


@hookspec
def add_hookspecs(add: AddHookspecs) -> None:
    """Add a plugin package's own registration hooks: ``add(module)``, as pytest's
    ``pytest_addhooks`` adds a plugin's hook specifications.

    ``module`` (a module or class) holds ``@robx.hookspec`` functions, each named
    ``register_<things>(register)``, and ``REGISTERS``: ``{hook name: Collects(kind,
    used_with)}``. robx runs every such hook with the other registration hooks and collects
    what each installed plugin registers, ``register(name, make, options=None)``, as entries
    of that kind (``robx plugins`` lists them; ``registry().entry(kind, name)`` finds one and
    builds it from its options dataclass). The package's own code (a command, an evaluation)
    is what uses them: the core knows only that a package added them. Hooks a package adds
    are registration hooks; the training hooks are robx's own.
    """


@hookspec
def register_loggers(register: RegisterLogger) -> None:
    """Register epoch loggers (``--log NAME``): ``register(name, make, needs=None)``;
    ``make(run_dir, config, first_epoch)`` returns an object with ``log_epoch(record, history)``
    (on process 0 after each epoch's checkpoint: its metrics.jsonl record and all records so
    far, a resumed run's included) and ``close()``. ``robx.core.logging.epoch_scalars`` names
    a record's numbers; ``needs`` = ``(module, how to install it)``. Built-ins: ``csv``,
    ``tensorboard``."""


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Register command-line commands: ``register(name, function)``, as simonw/llm's
    ``register_commands``. ``robx NAME`` runs ``function``; Typer turns its typed parameters into arguments and
    options (``Annotated[..., typer.Option(help=...)]``) and its docstring into the help. A
    :class:`robx.core.errors.RobxError` it raises is one line on stderr and exit status 2.
    A plugin package's own tool is a command; a name must be unique and not one of the
    commands robx's CLI defines itself (``robx --help`` lists them).
    """


# ---------------------------------------------------------------------------
# data path: called once per training step, in this order
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_victims(step: Step, state: TrainState) -> torch.Tensor | None:
    """Choose which input coordinates (pixels, graph nodes) the adversary may perturb.

    Owned. Called before :func:`generate_adversary` on every training step. Return a
    boolean mask broadcastable to ``step.x`` (``True`` = may move) or ``None`` (every
    coordinate may move this step). The engine stores the result in ``step.victim_mask``
    and binds it to ``step.attack``. A selector reads gradients through ``step.attack``
    (``saliency_gradient``, ``saliency_point``, ``model``), the same budget the attack has."""


@hookspec(firstresult=True)
def generate_adversary(step: Step, state: TrainState) -> torch.Tensor | None:
    """Return the adversarial inputs ``x'`` for ``step.x`` (same shape).

    Owned, with the ``yields``/``fallback`` rule of the module docstring. Called after
    :func:`select_victims`. ``natural`` returns ``step.x`` unchanged and declares
    ``identity_adversary = True`` (the engine reads that declaration, never the tensor's
    identity). An adversary attacks through ``step.attack`` (:class:`robx.core.attacks.Attack`),
    which the engine binds to the model, each example's budget (``class_eps[labels]``),
    the victims, the task's box and loss, and the run's steps and norm; the adversary chooses
    the loss, the start and the targets. The attack runs the model in eval mode and leaves
    its train/eval mode as it found it."""


@hookspec
def augment(step: Step, state: TrainState) -> None:
    """Change the trained rows after the adversary, with ``step.set_rows(inputs, targets, row_labels)``.

    Shared: called after :func:`generate_adversary`, in the order the user listed the
    plugins. The rows start as ``(x', y, labels)`` (``(x, y, labels)`` when the owner of
    ``trains_on`` declares ``"clean"``, as TRADES does); ``step.rows_source`` says which. A plugin may add rows, mix them, or
    replace ``targets`` by soft labels of shape (rows, classes); every row keeps a class in
    ``row_labels`` (a mixed row: the class it counts for), so other plugins can weight it.
    Replace the tensors, never modify them in place. When the rows are no longer ``x'`` and
    no plugin reads the adversarial view, the class statistics get the adversarial
    predictions from one extra no-grad eval-mode pass. Returns nothing."""


@hookspec
def weight_samples(step: Step, state: TrainState) -> torch.Tensor | None:
    """Per-row loss weights, shape ``(len(step.inputs),)``, or ``None`` for no opinion.

    Shared: called after the forward passes; the engine multiplies the results of all
    plugins and the per-class loss weights (``state.class_weights``, from the owner's
    :func:`class_policy`), so weights compose.
    Weight by ``step.row_labels`` (not ``step.y``): rows that ``augment`` added or mixed
    have a class too. The loss is ``mean(w * per_sample_loss)``."""


@hookspec
def extra_loss(step: Step, state: TrainState) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """An additional loss term: a scalar tensor, a ``{name: scalar}`` dict, or ``None``.

    Shared: called after the forward passes with ``step.outputs``, ``step.features``,
    ``step.per_sample_loss`` and the views the plugin ``reads`` (``step.clean_outputs``,
    ``step.adv_features``, ...) filled in. All results are summed into the loss and logged
    under their names (the plugin name for a bare scalar)."""


@hookspec(firstresult=True)
def training_loss(step: Step, state: TrainState) -> torch.Tensor | None:
    """Per-sample training loss on ``step.outputs`` vs ``step.targets``.

    Owned. Without an owner the task's loss is used (cross-entropy for classification,
    with soft targets when ``targets`` are soft)."""


@hookspec(firstresult=True)
def sampling_weights(state: TrainState, labels: torch.Tensor) -> torch.Tensor | None:
    """Per-example sampling weights over the training set, shape ``(len(labels),)``, or None.

    Owned. Called at the start of every epoch with the training labels. When the owner
    answers, the epoch's batches are drawn with replacement with these (unnormalised)
    probabilities instead of a shuffled pass (class-balanced resampling)."""


# ---------------------------------------------------------------------------
# per-class quantities: asked of their owner, read by everyone through ``state``
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def class_policy(state: TrainState) -> ClassPolicy | None:
    """The per-class quantities this plugin owns, for the coming epoch, or ``None``.

    Owned per quantity: a plugin declares which of :data:`POLICY` it decides
    (``policy = ("attack_budget", "class_weights")``, DAFA), and two selected plugins that
    declare the same one are rejected when the run is built. Called at the start of every
    epoch (after the previous epoch's :func:`epoch_end`) on each owner, which fills the
    fields it declared in a :class:`robx.core.state.ClassPolicy` (a field left ``None``: the
    run's default this epoch; a field it does not own: an error). The engine puts the
    answers where every plugin reads them:

    * ``attack_budget`` = ``(eps_c, alpha_c)`` -> ``state.class_eps``, ``state.class_alpha``
      (default: the run's ``eps``/``alpha`` for every class); every adversary gets them per
      example through ``step.attack``;
    * ``class_weights`` -> ``state.class_weights``: each trained row's loss is weighted by
      its class's weight (the target-weighted mean for soft labels), times the
      :func:`weight_samples` product, averaged over the batch, or over the rows' class
      weights when the owner declares ``weighted_mean = True`` (default: weight 1);
    * ``regularizer_weights`` = ``b_c`` in [0, 1] -> ``state.regularizer_weights``: a plugin
      that adds a regulariser against a natural term (TRADES) honours it as
      ``(1 - b_y) * natural + b_y * regulariser`` per example (CFA's calibrated form)
      instead of its own fixed weight (default: each regulariser at its own weight).
    """


@hookspec(firstresult=True)
def training_set(state: TrainState, train: Split) -> Split | None:
    """The examples the run trains on instead of the protocol's training split, or ``None``.

    Owned (a data-level oversampler such as GL-GAN). Called once when the run is built,
    after the protocol and before the class counts are taken, with the training split;
    the answer has inputs of the same shape and dtype the task's ``inputs`` accepts, one
    label per example, and becomes ``task.data.train``: its class counts are the run's.
    It must be a function of the split and ``state.config`` only (a resumed run calls it
    again and must get the same examples)."""


@hookspec(firstresult=True)
def trained_class_counts(state: TrainState, dataset_counts: torch.Tensor) -> torch.Tensor | None:
    """The number of examples of each class the model trains on per epoch, or ``None``.

    Owned. Called once when the run is built, with the training set's class counts.
    A plugin that adds examples to every epoch (Imb-Mix's minority copies) answers with
    the grown counts; ``None`` keeps the training set's. The answer is
    ``state.class_counts``, the one definition of "class counts" every plugin uses
    (class-balanced weights, LDAM margins, balanced softmax, Remix, resampling).
    Samplers change how often examples are drawn, not this count."""


@hookspec(firstresult=True)
def averaged_weights(state: TrainState) -> dict[str, torch.Tensor] | None:
    """The parameters of the model to evaluate instead of the last iterate, or ``None``.

    Owned (weight averaging: SWA, EMA, FAWA). Called once after the last epoch, before
    the final evaluation. The engine loads the answer into a copy of the model, recomputes
    its BatchNorm statistics through the training data path (unless the answer holds the
    model's floating-point buffers too: then they are used as given, CFA's choice),
    checkpoints it as ``eval_model`` and evaluates it. ``None`` evaluates the last iterate.
    """


@hookspec(firstresult=True)
def batch_replays(state: TrainState) -> int | None:
    """How many consecutive training steps the engine takes on each batch, or ``None`` (one).

    Owned (Free AT's minibatch replay). Asked once when the run is built; the learning-rate
    schedule counts every step, and the epoch's loss and statistics average over the replays."""


# ---------------------------------------------------------------------------
# lifecycle: plugin state that lives across steps
# ---------------------------------------------------------------------------


@hookspec
def check_run(state: TrainState) -> None:
    """Called once when the run is built, before anything is written to its directory:
    raise a :class:`robx.core.errors.RobxError` saying why when the plugin cannot serve the
    run's task, data or model (one line, exit 2, nothing lost)."""


@hookspec
def train_start(state: TrainState) -> None:
    """Called once before the first epoch (also when a run resumes)."""


@hookspec
def train_end(state: TrainState) -> None:
    """Called once after the last epoch, before the evaluated model is chosen and evaluated
    (as Lightning's ``on_train_end``; also when a resumed run had no epoch left). A plugin
    releases or finalises its own state here."""


@hookspec
def epoch_end(state: TrainState) -> None:
    """Called after every epoch's last step, once ``state.epoch_stats`` holds the
    epoch's class statistics (train, and validation when a split exists). Plugins
    update their own state here; the owned per-class quantities are asked for afterwards."""


@hookspec
def after_step(step: Step, state: TrainState) -> None:
    """Called after every optimiser step (per-step weight averaging such as EMA; Free AT's
    perturbation update from ``step.input_gradient``)."""


#: Owned hooks and, for the one-line conflict error, what their owner decides.
OWNED: dict[str, str] = {
    "generate_adversary": "generate adversarial examples",
    "select_victims": "choose the victim coordinates",
    "training_loss": "define the training loss",
    "sampling_weights": "choose how batches are sampled",
    "training_set": "replace the training set",
    "trained_class_counts": "define the class counts the run trains on",
    "averaged_weights": "choose the evaluated model (weight averaging)",
    "batch_replays": "replay each batch",
}


#: The per-class quantities :func:`class_policy` decides, each with one owner (declared in
#: the plugin's ``policy``), and, for the one-line conflict error, what the owner decides.
POLICY: dict[str, str] = {
    "attack_budget": "set the per-class attack budget",
    "class_weights": "set the per-class loss weights",
    "regularizer_weights": "set the per-class regulariser weights",
}

#: Hooks run for every installed plugin to build the registry (not per run).
REGISTRATION: tuple[str, ...] = ("add_hookspecs", "register_tasks", "register_datasets", "register_models",
                                  "register_attacks", "register_loggers", "register_commands")



# retired hooks: robx no longer calls them; an implementation warns (pluggy's warn_on_impl)


class RetiredHookWarning(FutureWarning):
    """A plugin implements a hook robx no longer calls (shown by default, unlike a
    DeprecationWarning: the user running the plugin is the one who needs to know)."""


@hookspec(warn_on_impl=RetiredHookWarning(
    "robx no longer calls epoch_start (retired 2026-12-06, no built-in plugin used it): the plugin's "
    "epoch_start does nothing; do its work in epoch_end of the epoch before, or in train_start"))
def epoch_start(state: TrainState) -> None:
    """Retired: not called."""


#: hooks robx no longer calls (specs kept only so that an implementation warns)
RETIRED: tuple[str, ...] = ("epoch_start",)


def _all_hook_names() -> list[str]:
    return [name for name, obj in globals().items() if hasattr(obj, "robx_spec") and name not in RETIRED]


HOOK_NAMES: tuple[str, ...] = tuple(_all_hook_names())
