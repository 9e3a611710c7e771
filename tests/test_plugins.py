"""The plugin system: hook docs, selection, options, combination rules, entry points."""

from __future__ import annotations

import inspect
import importlib
import json
import math
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robx.core.registry import resolved_config
from robx import hookimpl
from robx.core import hookspecs
from robx.core import discovery as plugin_module
from robx.core.engine import train
from robx.core.errors import OptionError, PluginConflictError, RobxError, UnknownPluginError
from robx.core.discovery import PluginSpec, available_plugins
from robx.core.options import parse_set_overrides
from robx.core.plugins import PluginHost
from robx.core.selection import select_plugins
from robx.core.rundir import load_checkpoint
from robx.core.state import ClassPolicy, Step

from conftest import tiny_config, while_training

TESTS_DIR = Path(__file__).parent


REGISTRATION_HOOKS = {"add_hookspecs", "register_tasks", "register_datasets", "register_models", "register_attacks",
                      "register_loggers", "register_commands"}


def test_every_hook_is_documented_and_its_effect_tested():
    """datasette's rule, made real: every hook has a docstring, and is implemented by the
    probe below (training hooks) or by the in-process package of tests/test_registration.py
    (registration hooks), whose tests assert each hook's effect on the run."""
    for name in hookspecs.HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, f"hook {name} has no real docstring"
    probed = {name for name in dir(Probe) if name in hookspecs.HOOK_NAMES}
    assert probed | REGISTRATION_HOOKS == set(hookspecs.HOOK_NAMES), set(hookspecs.HOOK_NAMES) - probed
    assert not probed & REGISTRATION_HOOKS


class Probe:
    """Every training hook with an effect the run shows (test below)."""

    name = "probe"
    policy = ("attack_budget",)
    seen: dict[str, list] = {}

    def _saw(self, hook: str, value: object = None) -> None:
        Probe.seen.setdefault(hook, []).append(value)

    @hookimpl
    def check_run(self, state):
        self._saw("check_run", state.epoch)

    @hookimpl
    def train_start(self, state):
        self._saw("train_start", state.epoch)

    @hookimpl
    def train_end(self, state):
        self._saw("train_end", (state.epoch, len(state.history)))

    @hookimpl
    def training_set(self, state, train):
        keep = torch.arange(0, len(train.labels), 2)  # every other example
        self._saw("training_set", len(keep))
        return type(train)(train.x[keep], train.y[keep], train.labels[keep])

    @hookimpl
    def trained_class_counts(self, state, dataset_counts):
        self._saw("trained_class_counts", dataset_counts.tolist())
        return dataset_counts * 10

    @hookimpl
    def sampling_weights(self, state, labels):
        return (labels < 2).double()  # only classes 0 and 1 are drawn

    @hookimpl
    def class_policy(self, state):
        eps = torch.full((state.num_classes,), 0.05 + 0.01 * state.epoch)
        return ClassPolicy(attack_budget=(eps, eps / 4))

    @hookimpl
    def select_victims(self, step, state):
        mask = torch.zeros_like(step.x, dtype=torch.bool)
        mask[..., 0, :] = True  # the first image row only
        return mask

    @hookimpl
    def generate_adversary(self, step, state):
        return step.attack(start="none")

    @hookimpl
    def augment(self, step, state):
        step.set_rows(torch.cat([step.inputs, step.inputs]), torch.cat([step.targets, step.targets]),
                      torch.cat([step.row_labels, step.row_labels]))

    @hookimpl
    def training_loss(self, step, state):
        return step.outputs.sum(dim=1) * 0 + 1.0  # one per row

    @hookimpl
    def weight_samples(self, step, state):
        return torch.full((len(step.targets),), 0.5)

    @hookimpl
    def extra_loss(self, step, state):
        return step.outputs.sum() * 0 + 0.25

    @hookimpl
    def batch_replays(self, state):
        return 2

    @hookimpl
    def after_step(self, step, state):
        outside = ~step.victim_mask
        self._saw("after_step", (len(step.inputs), len(step.x), bool(torch.equal(step.x_adv[outside], step.x[outside])),
                                 float((step.x_adv - step.x).abs().max()), float(state.class_eps[0]),
                                 sorted(set(step.y.tolist())), state.class_counts.tolist()))

    @hookimpl
    def epoch_end(self, state):
        self._saw("epoch_end", state.epoch)

    @hookimpl
    def averaged_weights(self, state):
        return {name: torch.zeros_like(p) for name, p in state.model.named_parameters()}


def test_each_training_hook_has_its_effect_on_a_run(monkeypatch, tmp_path):
    monkeypatch.setattr(plugin_module, "available_plugins",
                        lambda: {**available_plugins(), "probe": PluginSpec("probe", "test", Probe)})
    Probe.seen = {}
    report = train(tiny_config(plugins=["probe"], epochs=2, n_eval=40, eval_steps=1), tmp_path / "run")
    seen = Probe.seen
    assert seen["check_run"] == [0] and seen["train_start"] == [0] and seen["epoch_end"] == [0, 1]
    assert seen["train_end"] == [(1, 2)]  # once, after the last of the 2 epochs
    kept = seen["training_set"][0]
    assert kept == 360  # every other of the 720 digits examples
    (dataset_counts,) = seen["trained_class_counts"]
    assert sum(dataset_counts) == kept
    steps = seen["after_step"]
    # two epochs of draws, as many as the examples, each batch trained twice (batch_replays)
    assert sum(batch for _, batch, *_ in steps) == 2 * 2 * kept
    assert all(steps[k][1] == steps[k + 1][1] and steps[k][5] == steps[k + 1][5] for k in range(0, len(steps), 2))
    for rows, batch, outside_unmoved, moved, eps, classes, counts in steps:
        assert rows == 2 * batch  # augment doubled the rows
        assert outside_unmoved  # select_victims: only the first image row moves
        assert moved <= eps + 1e-6 and eps in (pytest.approx(0.05), pytest.approx(0.06))  # class_policy's budget
        assert set(classes) <= {0, 1}  # sampling_weights
        assert counts == [10 * n for n in dataset_counts]  # trained_class_counts
    assert [eps for *_, eps, _, _ in steps][-1] == pytest.approx(0.06)  # the budget of epoch 1
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # training_loss (1 per row) x weight_samples (0.5), plus extra_loss (0.25)
    assert [line["loss"] for line in lines] == [pytest.approx(0.75), pytest.approx(0.75)]
    # averaged_weights: the evaluated model has zero weights, so it predicts class 0 for everything
    standard = report["per_class"]["standard"]
    assert standard[0] == 1.0 and all(value == 0.0 for value in standard[1:] if value is not None)


def test_builtin_plugins_listed_with_their_hooks():
    plugins = available_plugins()
    assert plugins["natural"].origin == "built-in"
    assert plugins["pgd"].hooks == ("generate_adversary",)
    assert plugins["natural"].hooks == ("generate_adversary",)


def test_unknown_plugin_names_the_available_ones():
    with pytest.raises(UnknownPluginError, match="unknown plugin 'nosuch'; available: .*natural.*pgd"):
        PluginHost(["nosuch"], {})


def test_pgd_is_the_fallback_and_conflicts_are_named():
    assert PluginHost([], {}).names == ["pgd"]
    assert PluginHost(["natural"], {}).names == ["natural"]
    with pytest.raises(PluginConflictError, match="'natural' and 'pgd'"):
        PluginHost(["natural", "pgd"], {})


@pytest.mark.parametrize(("plugins", "adversary"), [
    (["trades", "pgd"], "pgd"), (["pgd", "trades"], "pgd"),
    (["trades", "fairtat"], "fairtat"), (["fairtat", "trades"], "fairtat"),
    (["trades"], "trades"), (["trades", "dafa"], "trades"), (["dafa", "trades"], "trades"),
])
def test_the_adversary_follows_declared_rules_not_listing_order(plugins, adversary):
    """TRADES' KL attack yields to any other selected adversary, in either order."""
    assert PluginHost(plugins, {}).owners["generate_adversary"] == adversary


@pytest.mark.parametrize("plugins", [["trades", "pgd"], ["pgd", "trades"]])
def test_both_orders_of_trades_and_pgd_train_on_cross_entropy_pgd(tmp_path, monkeypatch, plugins):
    import robx.core.attacks as attacks

    starts = []
    real, training = attacks.pgd, while_training(monkeypatch)

    def spy(*args, **kwargs):
        if training[0]:
            starts.append("uniform" if kwargs["random_init"] and kwargs["x_init"] is None else "other")
        return real(*args, **kwargs)

    monkeypatch.setattr(attacks, "pgd", spy)  # every attack calls it: record the training steps' only
    train(tiny_config(epochs=1, plugins=plugins, n_eval=20), tmp_path / "run")
    # 720 images / batch 128: every batch by pgd (a uniform start), none by TRADES' KL attack
    # (which starts from x + 0.001 N(0, 1))
    assert starts == ["uniform"] * 6


@pytest.mark.parametrize(("plugins", "what"), [
    (["dafa", "cfa"], "'dafa' and 'cfa' both set the per-class attack budget"),
    (["fairtat", "dafa"], "'fairtat' and 'dafa' both set the per-class attack budget"),
    (["srat", "cb"], "'srat' (its part 'drw') and 'cb' both set the per-class loss weights"),
    (["cb", "drw"], "'cb' and 'drw' both set the per-class loss weights"),
    (["imbmix", "ema"], "'imbmix' (its part 'swa') and 'ema' both choose the evaluated model (weight averaging)"),
    (["cfa", "ema"], "'cfa' and 'ema' both choose the evaluated model (weight averaging)"),
    (["swa", "ema"], "'swa' and 'ema' both choose the evaluated model (weight averaging)"),
    (["fairtat", "pgd"], "'fairtat' and 'pgd' both generate adversarial examples"),
])
def test_two_owners_of_one_quantity_are_rejected_at_selection(plugins, what):
    with pytest.raises(PluginConflictError, match=re.escape(f"plugins {what}; select one of them")):
        PluginHost(plugins, {})


def test_options_are_validated_and_coerced():
    host = PluginHost(["pgd"], {"pgd": {"random_start": "false"}})
    assert host.options["pgd"].random_start is False
    with pytest.raises(OptionError, match="unknown option 'pgd.steps'; valid: pgd.random_start"):
        PluginHost(["pgd"], {"pgd": {"steps": "3"}})
    with pytest.raises(OptionError, match="expects bool"):
        PluginHost(["pgd"], {"pgd": {"random_start": "sometimes"}})
    with pytest.raises(OptionError, match="not selected"):
        PluginHost(["natural"], {"pgd": {"random_start": "true"}})
    assert parse_set_overrides(["a.b=1", "a.c = x"]) == {"a": {"b": "1", "c": "x"}}
    with pytest.raises(OptionError, match="PLUGIN.KEY=VALUE"):
        parse_set_overrides(["nodot=1"])


# --- test plugins exercising every hook -------------------------------------------------

CALLS: list[str] = []


class Recorder:
    """Implements every hook and records the order of calls."""

    name = "recorder"
    policy = ("attack_budget", "class_weights", "regularizer_weights")

    @hookimpl
    def check_run(self, state):
        CALLS.append("check_run")

    @hookimpl
    def train_start(self, state):
        CALLS.append("train_start")

    @hookimpl
    def select_victims(self, step):
        CALLS.append("select_victims")
        mask = torch.zeros_like(step.x, dtype=torch.bool)
        mask[..., :4, :] = True  # only the top half of each digit may move
        return mask

    @hookimpl
    def augment(self, step):
        CALLS.append("augment:recorder")
        # duplicate the batch with soft labels to exercise growing rows and soft targets
        soft = torch.nn.functional.one_hot(step.targets, 10).float()
        step.set_rows(torch.cat([step.inputs, step.inputs]), torch.cat([soft, soft]),
                      torch.cat([step.row_labels, step.row_labels]))

    @hookimpl
    def weight_samples(self, step):
        return torch.full((len(step.targets),), 2.0)

    @hookimpl
    def extra_loss(self, step):
        return {"zero": step.outputs.sum() * 0.0}

    @hookimpl
    def training_loss(self, step, state):
        CALLS.append("training_loss")
        return state.task.loss(step.outputs, step.targets)

    @hookimpl
    def sampling_weights(self, state, labels):
        CALLS.append("sampling_weights")
        return (labels < 5).float() + 0.5  # majority digits drawn three times as often

    @hookimpl
    def after_step(self, step, state):
        CALLS.append("after_step")

    @hookimpl
    def epoch_end(self, state):
        assert state.epoch_stats is not None and state.epoch_stats.train.robust is not None
        CALLS.append(f"epoch_end:{state.epoch}")

    # owned per-class quantities: the engine must ask for them and hand them to everyone

    @hookimpl
    def trained_class_counts(self, dataset_counts):
        CALLS.append("trained_class_counts")
        return dataset_counts * 2

    @hookimpl
    def class_policy(self, state):
        CALLS.append(f"class_policy:{state.epoch}")
        assert state.class_counts.tolist() == [262] * 5 + [26] * 5  # the owner's counts reached state
        eps = torch.full((state.num_classes,), float(state.config.eps) / 2)
        return ClassPolicy(attack_budget=None if state.epoch == 0 else (eps, eps / 4),
                           class_weights=torch.ones(state.num_classes),
                           regularizer_weights=torch.full((state.num_classes,), 0.5))

    @hookimpl
    def averaged_weights(self, state):
        CALLS.append("averaged_weights")
        return {name: torch.zeros_like(p) for name, p in state.model.named_parameters()}


class Second:
    """Second plugin: augment order, weight product, extra loss names."""

    name = "second"

    @hookimpl
    def augment(self, step):
        CALLS.append("augment:second")

    @hookimpl
    def weight_samples(self, step):
        return torch.full((len(step.targets),), 3.0)

    @hookimpl
    def extra_loss(self, step):
        return step.outputs.sum() * 0.0


class MaskChecker:
    """An adversary that checks the mask arrives and returns PGD-like output."""

    name = "maskcheck"

    @hookimpl
    def generate_adversary(self, step):
        assert step.victim_mask is not None
        return torch.where(step.victim_mask, (step.x + 0.05).clamp(0, 1), step.x)


@pytest.fixture
def test_plugins(monkeypatch):
    extra = {cls.name: PluginSpec(cls.name, "test", cls) for cls in (Recorder, Second, MaskChecker)}
    merged = {**available_plugins(), **extra}
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: merged)
    CALLS.clear()
    return extra


def test_hooks_run_in_order_and_combine(test_plugins, tmp_path):
    host = PluginHost(["recorder", "second"], {})
    y = torch.tensor([0, 1, 2, 3])
    step = Step(x=torch.rand(4, 1, 8, 8), y=y, labels=y)
    step.targets, step.row_labels = y, y
    step.outputs = torch.zeros(8, 10, requires_grad=True)
    step.inputs = step.x
    step.per_sample_loss = torch.zeros(8)
    host.augment(step, state=None)
    assert CALLS == ["augment:recorder", "augment:second"]  # the order the user listed
    weights = host.weight_samples(step, state=None)
    assert torch.equal(weights, torch.full((8,), 6.0))  # product over plugins
    assert set(host.extra_losses(step, state=None)) == {"recorder.zero", "second"}


def test_every_hook_runs_in_a_real_training(test_plugins, tmp_path):
    train(tiny_config(plugins=["recorder", "maskcheck"]), tmp_path / "run")
    assert CALLS[:3] == ["trained_class_counts", "check_run", "train_start"]
    # the average's BatchNorm statistics come through the training data path, augment included
    after_average = CALLS[CALLS.index("averaged_weights"):]
    assert "select_victims" in after_average and "augment:recorder" in after_average
    assert "training_loss" not in after_average and "after_step" not in after_average
    for expected in ("class_policy:0", "sampling_weights", "select_victims", "augment:recorder", "training_loss",
                     "after_step", "epoch_end:0", "epoch_end:1"):
        assert expected in CALLS
    assert (CALLS.index("sampling_weights") < CALLS.index("select_victims") < CALLS.index("augment:recorder")
            < CALLS.index("training_loss") < CALLS.index("after_step"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "recorder.zero" in metrics[0]["loss_terms"]
    assert CALLS.index("trained_class_counts") < CALLS.index("train_start")
    # asked before the epoch's first step
    assert CALLS.index("class_policy:1") < CALLS.index("select_victims", CALLS.index("epoch_end:0"))
    eps = resolved_config(tiny_config()).eps
    assert metrics[0]["class_eps"] == pytest.approx([eps] * 10, abs=1e-6)  # None: the global budget
    assert metrics[1]["class_eps"] == pytest.approx([eps / 2] * 10, abs=1e-6)  # the budget used in epoch 1
    evaluated = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["eval_model"]
    assert not evaluated["head.weight"].any() and not evaluated["head.bias"].any()  # the owner's weights


# --- third-party plugin through a real entry point ---------------------------------------

EXTERNAL_PLUGIN = '''
import os
from pathlib import Path
from robx import hookimpl


class Marker:
    """Writes a marker file when its extra_loss hook runs (an external test plugin)."""

    name = "marker"

    @hookimpl
    def extra_loss(self, step):
        Path(os.environ["ROBX_MARKER"]).write_text("ran")
        return None
'''


def install_distribution(site: Path, module: str, source: str, entry_points: dict[str, str],
                         version: str = "0.3") -> Path:
    """A distribution installed as a plain sys.path entry: module + dist-info with entry points
    (``{name: attribute}``; an empty attribute points at the module itself)."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    name = module.replace("_", "-")
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {module}{':' + target if target else ''}\n" for key, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text("[robx]\n" + lines)
    return site


@pytest.fixture
def external_distribution(tmp_path):
    return install_distribution(tmp_path / "site", "robx_marker_plugin", EXTERNAL_PLUGIN, {"marker": "Marker"})


def _cli_env(site: Path, marker: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["ROBX_MARKER"] = str(marker)
    return env


@pytest.mark.slow
def test_entry_point_plugin_is_listed_and_runs_when_selected(external_distribution, tmp_path):
    marker = tmp_path / "marker.txt"
    env = _cli_env(external_distribution, marker)
    listing = subprocess.run([sys.executable, "-m", "robx.cli.main", "plugins", "--json"],
                             capture_output=True, text=True, env=env, check=True)
    rows = {row["name"]: row for row in json.loads(listing.stdout)["plugins"]}
    assert rows["marker"]["origin"] == "robx-marker-plugin 0.3"
    assert rows["marker"]["hooks"] == ["extra_loss"]

    base = [sys.executable, "-m", "robx.cli.main", "train", "--epochs", "1", "--steps", "1",
            "--eval-steps", "1", "--n-eval", "50"]
    subprocess.run(base + ["--out", str(tmp_path / "unselected")], env=env, check=True, capture_output=True)
    assert not marker.exists()  # installed but not selected: does not run
    subprocess.run(base + ["--plugins", "marker", "--out", str(tmp_path / "selected")], env=env,
                   check=True, capture_output=True)
    assert marker.read_text() == "ran"


MISFIT_PLUGINS = '''
from robx import hookimpl


class Typo:
    """Misspells a hook: pluggy alone would ignore it silently."""

    name = "typo"

    @hookimpl
    def weight_sample(self, step):
        return None


class WrongArgument:
    """Asks for an argument no hook passes."""

    name = "wrongarg"

    @hookimpl
    def weight_samples(self, step, batch):
        return None
'''


@pytest.mark.parametrize(("plugin", "message"), [
    ("typo", "plugin 'typo' (robx-misfit-plugins 0.3) implements unknown hook 'weight_sample'; did you mean "
             "'weight_samples'?"),
    ("wrongarg", "plugin 'wrongarg' (robx-misfit-plugins 0.3) does not fit robx's hooks: "),
])
def test_a_plugin_with_an_unknown_hook_or_argument_is_one_line(tmp_path, plugin, message):
    site = install_distribution(tmp_path / "site", "robx_misfit_plugins", MISFIT_PLUGINS,
                                {"typo": "Typo", "wrongarg": "WrongArgument"})
    env = _cli_env(site, tmp_path / "unused")
    result = subprocess.run([sys.executable, "-m", "robx.cli.main", "train", "--plugins", plugin,
                             "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists()
    if plugin == "wrongarg":
        assert "batch" in lines[0]  # pluggy's reason, on the same line


# --- the README's plugin example, installed as a package, composed with srat,imbmix -------

def readme_example() -> tuple[str, str]:
    """The README's example plugin module and its entry-point line, as a newcomer copies them."""
    readme = (TESTS_DIR.parent / "README.md").read_text()
    source = re.search(r"```python\n# (robx_\w+)\.py\n(.*?)```", readme, re.S)
    entry = re.search(r"\[project\.entry-points\.robx\]\n(\w+) = \"(\w+):(\w+)\"", readme)
    assert source and entry, "the README lost its plugin example"
    assert entry.group(2) == source.group(1)
    return source.group(2), entry.group(0)


def test_the_readme_plugin_example_composes_with_batch_growing_plugins(tmp_path):
    source, entry_line = readme_example()
    name, target = re.search(r"\n(\w+) = \"robx_minority_boost:(\w+)\"", entry_line).groups()
    site = install_distribution(tmp_path / "site", "robx_minority_boost", source, {name: target})
    env = _cli_env(site, tmp_path / "unused")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "robx.cli.main", "train", "--plugins", f"srat,imbmix,{name}",
                             "--epochs", "1", "--steps", "1", "--eval-steps", "1", "--n-eval", "50",
                             "--out", str(out)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "report.json").read_text())["plugins"] == ["srat", "imbmix", name, "pgd"]

    # and its weights reach the rows Imb-Mix added: one weight per row, the factor on minority rows
    sys.path.insert(0, str(site))
    try:
        boost = importlib.import_module("robx_minority_boost").MinorityBoost
        plugin = boost(boost.Options())
    finally:  # the example module leaves no trace in this process
        sys.path.remove(str(site))
        sys.modules.pop("robx_minority_boost", None)
    row_labels = torch.tensor([0, 9, 9, 9, 1])  # a majority row, three minority copies, a majority row
    step = Step(x=torch.zeros(2, 1), y=torch.tensor([0, 9]), labels=torch.tensor([0, 9]))
    step.row_labels = row_labels
    state = type("S", (), {"class_counts": torch.tensor([131] * 5 + [117] * 5)})()  # Imb-Mix's trained counts
    assert plugin.weight_samples(step, state).tolist() == [1.0, 2.0, 2.0, 2.0, 1.0]


# --- every method of the shipped protocols still trains -----------------------------------

def protocol_methods(task: str = "classification"):
    """The methods of every shipped protocol on ``task``'s datasets (crime-cpu's methods train
    on a tiny city in tests/test_mingre.py)."""
    from robx.core.config import tomllib
    from robx.core.registry import registry

    for path in sorted((TESTS_DIR.parent / "benchmarks" / "protocols").glob("*.toml")):
        protocol = tomllib.loads(path.read_text())
        if protocol.get("kind") in ("oversample", "crowd"):  # no training runs (tests/test_glgan.py, test_iced.py)
            continue
        if registry().dataset(protocol["train"]["dataset"]).task != task:
            continue
        for method, values in protocol["methods"].items():
            yield pytest.param(protocol["train"].get("val_fraction", 0.0), values, id=f"{path.stem}:{method}")


@pytest.mark.parametrize(("val_fraction", "method"), list(protocol_methods()))
def test_every_protocol_method_trains_on_digits(tmp_path, val_fraction, method):
    config = tiny_config(**{"epochs": 2, **method}, steps=1, eval_steps=2, n_eval=50,
                         val_fraction=max(val_fraction, 0.1))
    report = train(config, tmp_path / "run")
    assert all(0.0 <= value <= 1.0 for kind in ("standard", "robust") for value in report["per_class"][kind])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in metrics)


def test_per_class_quantities_are_owned_one_by_one_through_one_hook(monkeypatch):
    """class_policy replaces three hooks; each quantity still has one owner: cfa (budget,
    regulariser weights) and drw (loss weights) combine, dafa and drw do not, and a plugin
    that sets a quantity it did not declare, or declares without the hook, is one line."""
    from robx.core import hookspecs
    from robx.core.errors import PluginError

    assert select_plugins(["trades", "cfa", "drw"]).owners["class_weights"] == "drw"
    with pytest.raises(PluginConflictError, match="plugins 'dafa' and 'drw' both set the per-class loss weights"):
        select_plugins(["dafa", "drw"])

    class Sneaky:
        name = "sneaky"
        policy = ("class_weights",)

        @hookimpl
        def class_policy(self, state):
            return ClassPolicy(attack_budget=(torch.ones(10), torch.ones(10)))

    class Undeclared:
        name = "undeclared"

        @hookimpl
        def class_policy(self, state):
            return None

    extra = {cls.name: PluginSpec(cls.name, "test", cls) for cls in (Sneaky, Undeclared)}
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: {**available_plugins(), **extra})
    with pytest.raises(RobxError, match="plugin 'sneaky' sets attack_budget in its class_policy but does not declare"):
        PluginHost(["sneaky"], {}).class_policy(state=None)
    with pytest.raises(PluginError, match="must both implement class_policy and declare"):
        PluginHost(["undeclared"], {})
    # 22 hooks: the three per-class hooks are one, epoch_start is retired (it warns), train_end is back (the
    # lifecycle is symmetric), register_commands (data-level tools are registered commands), register_attacks
    # add_hookspecs and register_loggers are new; register_oversamplers and _crowd_learners are the
    # oversampling and crowd packages' own
    assert len(hookspecs.HOOK_NAMES) == 24 and "class_policy" in hookspecs.HOOK_NAMES


@pytest.mark.parametrize(("attribute", "value", "meant"), [
    ("read", ("clean", "adversarial"), "reads"), ("train_on", "clean", "trains_on"), ("yield", ("generate_adversary",), "yields"),
    ("weighted_means", True, "weighted_mean"), ("polices", ("class_weights",), "policy"),
])
def test_a_misspelt_declaration_is_one_line_naming_the_one_meant(monkeypatch, attribute, value, meant):
    """Declarations are read with defaults, so ``read = ...`` would be silently ignored."""
    plugin = type("Typo", (), {"name": "typo", attribute: value,
                               "weight_samples": hookimpl(lambda self, step, state: None)})
    monkeypatch.setattr(plugin_module, "available_plugins",
                        lambda: {**available_plugins(), "typo": PluginSpec("typo", "test", plugin)})
    with pytest.raises(RobxError, match=f"plugin 'typo' \\(test\\) declares '{attribute}', which robx does not "
                                        f"read; did you mean '{meant}'\\?"):
        PluginHost(["typo"], {})


def test_attributes_that_only_resemble_a_declaration_are_left_alone(monkeypatch):
    # a list of names is not a plugin's name (a str); a helper method is not a declaration
    plugin = type("Fine", (), {"name": "fine", "names": ["a", "b"], "heads": 3, "readers": staticmethod(len),
                               "weight_samples": hookimpl(lambda self, step, state: None)})
    monkeypatch.setattr(plugin_module, "available_plugins",
                        lambda: {**available_plugins(), "fine": PluginSpec("fine", "test", plugin)})
    assert PluginHost(["fine"], {}).names == ["fine", "pgd"]


class ZeroBudget:
    """Owns the per-class attack budget and sets it to 0 for every class."""

    name = "zero-budget"
    policy = ("attack_budget",)

    @hookimpl
    def class_policy(self, state):
        zeros = torch.zeros(state.num_classes)
        return ClassPolicy(attack_budget=(zeros, zeros))


@pytest.mark.parametrize("val_budget", ["run", "uniform"])
def test_validation_attacks_with_the_budget_the_config_states_and_says_which(tmp_path, monkeypatch, val_budget):
    """Under the run's per-class budgets (all 0 here) the validation attack cannot move an
    input, so robust accuracy is clean accuracy class by class; under the uniform budget it
    attacks at --eps and bites. metrics.jsonl names the attack either way."""
    found = {**available_plugins(), "zero-budget": PluginSpec("zero-budget", "test", ZeroBudget)}
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: found)
    train(tiny_config(epochs=5, imbalance="none", plugins=["pgd", "zero-budget"], val_fraction=0.3,
                      val_budget=val_budget, n_eval=20), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    clean, robust = record["val"]["clean"], record["val"]["robust"]
    if val_budget == "run":
        assert robust == clean
        assert record["val_attack"] == "PGD-2 linf eps=per-class alpha=per-class"
    else:
        assert sum(clean) > 5 and sum(robust) < sum(clean) - 1  # ten classes: the attack at eps bites
        assert record["val_attack"] == "PGD-2 linf eps=0.1 alpha=0.025"


class OldStyle:
    """A plugin written for an earlier robx: it implements the retired epoch_start."""

    name = "old-style"
    calls: list[int] = []

    @hookimpl
    def epoch_start(self, state):
        OldStyle.calls.append(state.epoch)

    @hookimpl
    def epoch_end(self, state):
        OldStyle.calls.append(-1)


def test_a_retired_hook_warns_and_the_plugin_still_runs(tmp_path, monkeypatch):
    from robx.core.hookspecs import RetiredHookWarning

    found = {**available_plugins(), "old-style": PluginSpec("old-style", "test", OldStyle)}
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: found)
    OldStyle.calls = []
    with pytest.warns(RetiredHookWarning, match="robx no longer calls epoch_start .* epoch_end of the epoch before"):
        train(tiny_config(epochs=2, plugins=["pgd", "old-style"], n_eval=20), tmp_path / "run")
    assert OldStyle.calls == [-1, -1]  # its epoch_end ran each epoch; epoch_start never
