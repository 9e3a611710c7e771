"""Tasks, datasets and models are registered, not hard-coded: an external package adds
them through entry points, and the engine trains a second task with no change."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import robx.core.engine as engine
from robx.core.errors import OptionError
from robx.core.plugins import PluginHost
from robx.core.registry import registry, resolved_config
from robx.core.rundir import load_checkpoint

from conftest import tiny_config, train_killed_and_resumed
from test_plugins import _cli_env, install_distribution

ROBX = [sys.executable, "-m", "robx.cli.main"]

EXTERNAL_PACKAGE = '''
"""A research group's package: its own task, datasets, model and plugin, no robx edit."""

import torch
import torch.nn as nn
from robx import hookimpl
from robx.core.data import Split, TaskData
from robx.core.models import classifier
from robx.core.task import Metric, Task


class Huber(Task):
    """Scalar regression with the Huber loss, scored by absolute error."""

    name = "huber"
    metric = Metric("absolute error", higher_is_better=False)

    def model_input(self):
        spec = super().model_input()
        return type(spec)(spec.shape, 1, spec.mean, spec.std)

    def loss(self, outputs, targets):
        return torch.nn.functional.huber_loss(outputs[:, 0], targets, reduction="none")

    def scores(self, outputs, targets):
        return (outputs[:, 0] - targets).abs()


def stripes(data_root, seed):
    """4 classes of 1x6x6 images: horizontal or vertical stripes, even or odd phase, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat(100)
    grid = torch.arange(6)
    x = torch.zeros(len(labels), 1, 6, 6)
    for c in range(4):
        line = ((grid + c % 2) % 2).float()
        x[labels == c, 0] = line[:, None].expand(6, 6) if c < 2 else line[None, :].expand(6, 6)
    x = (x + 0.3 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    train, test = Split(x[:300], labels[:300], labels[:300]), Split(x[300:], labels[300:], labels[300:])
    return TaskData("stripes", ["h0", "h1", "v0", "v1"], train, test, (0.5,), (0.3,))


def ramp(data_root, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(300, 1, 6, 6, generator=g)
    y = x.mean(dim=(1, 2, 3)) * 4
    groups = (y > 2).long()
    return TaskData("ramp", ["low", "high"], Split(x[:200], y[:200], groups[:200]),
                    Split(x[200:], y[200:], groups[200:]), (0.5,), (0.3,))


def tiny(spec):
    return classifier(spec, nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.ReLU()), 16)


@hookimpl
def register_tasks(register):
    register(Huber)


@hookimpl
def register_datasets(register):
    common = dict(model="tinynet", epochs=2, batch_size=50, lr=0.05, schedule="onecycle", eps=0.1,
                  alpha=0.03, steps=3, eval_steps=5, imbalance="original", ratio=1.0, augment=False)
    register("stripes", stripes, task="classification", defaults=common)
    register("ramp", ramp, task="huber", defaults=common)


@hookimpl
def register_models(register):
    register("tinynet", tiny)


Shift = __import__("dataclasses").make_dataclass("Shift", [("sign", float, 1.0)])


def shift(attack, plan, task):
    """Every input moved by sign * eps in every coordinate, inside the task's box."""
    return (attack.x + plan.options.sign * attack.eps.view(-1, 1, 1, 1)).clamp(*attack.bounds)


@hookimpl
def register_attacks(register):
    register("shift", shift, title="Shift", iterative=False, options=Shift, tasks=("classification",))


class Duplicate:
    def __init__(self, times):
        self.times = times

    def fit_resample(self, x, y):
        import numpy as np
        return np.concatenate([x] * (1 + self.times)), np.concatenate([y] * (1 + self.times))


DuplicateOptions = __import__("dataclasses").make_dataclass("DuplicateOptions", [("times", int, 1)])


class FirstWorker:
    """Believes worker 0 and predicts the majority class of its labels."""

    def fit(self, x, crowd, num_classes):
        import numpy as np
        self.inferred_labels = np.where(crowd[:, 0] >= 0, crowd[:, 0], 0)
        self.majority = int(np.bincount(self.inferred_labels).argmax())
        return self

    def predict(self, x):
        import numpy as np
        return np.full(len(x), self.majority)


@hookimpl
def register_crowd_learners(register):
    register("first-worker", lambda options, seed: FirstWorker())

@hookimpl
def register_oversamplers(register):
    register("duplicate", lambda options, seed: Duplicate(options.times), options=DuplicateOptions)


class Halve:
    """Halves the loss of the rows of class 0 (a method plugin from the same package)."""

    name = "halve"

    @hookimpl
    def weight_samples(self, step, state):
        return torch.where(step.row_labels == 0, 0.5, 1.0)
'''


@pytest.fixture
def external_site(tmp_path):
    return install_distribution(tmp_path / "site", "robx_group_extras", EXTERNAL_PACKAGE,
                                {"group-extras": "", "halve": "Halve"}, version="1.2")


@pytest.mark.slow
def test_an_external_package_adds_a_task_datasets_a_model_and_a_plugin(external_site, tmp_path):
    env = _cli_env(external_site, tmp_path / "unused")
    listing = json.loads(subprocess.run(ROBX + ["plugins", "--json"], capture_output=True, text=True, env=env,
                                        check=True).stdout)
    registered = {(row["kind"], row["name"]): row["origin"] for row in listing["registered"]}
    origin = "group-extras (robx-group-extras 1.2)"
    assert registered[("task", "huber")] == origin and registered[("model", "tinynet")] == origin
    assert registered[("dataset", "stripes")] == origin and registered[("dataset", "ramp")] == origin

    trained = subprocess.run(ROBX + ["train", "--dataset", "stripes", "--plugins", "halve,trades",
                                     "--out", str(tmp_path / "stripes")], capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr
    report = json.loads((tmp_path / "stripes" / "report.json").read_text())
    assert report["task"] == "classification" and report["model"] == "tinynet"
    assert report["plugins"] == ["halve", "trades"] and report["class_names"] == ["h0", "h1", "v0", "v1"]
    assert report["summary"]["standard"]["overall"] > 0.5  # 4 classes: it learnt the stripes

    regressed = subprocess.run(ROBX + ["train", "--dataset", "ramp", "--out", str(tmp_path / "ramp")],
                               capture_output=True, text=True, env=env)
    assert regressed.returncode == 0, regressed.stderr
    report = json.loads((tmp_path / "ramp" / "report.json").read_text())
    assert report["task"] == "huber" and report["metric"] == {"name": "absolute error", "higher_is_better": False}
    assert "absolute error (lower is better)" in regressed.stdout

    oversampled = subprocess.run(ROBX + ["oversample", "--method", "duplicate", "--dataset", "stripes", "--set",
                                         "duplicate.times=2", "--classifiers", "linearsvc", "--out",
                                         str(tmp_path / "dup")], capture_output=True, text=True, env=env)
    assert oversampled.returncode == 0, oversampled.stderr
    assert registered[("oversampler", "duplicate")] == origin
    assert json.loads((tmp_path / "dup" / "report.json").read_text())["generated"] == 2 * 300

    crowd = subprocess.run(ROBX + ["crowd", "--method", "first-worker", "--out", str(tmp_path / "crowd")],
                           capture_output=True, text=True, env=env)
    assert crowd.returncode == 0, crowd.stderr
    assert registered[("crowd learner", "first-worker")] == origin
    assert json.loads((tmp_path / "crowd" / "report.json").read_text())["accuracy"] == 0.5  # one class of a balanced test


def test_a_name_registered_twice_is_one_warning_naming_both_and_the_rest_stays_usable(tmp_path):
    clash = install_distribution(tmp_path / "site", "robx_clash", '''
from robx import hookimpl


@hookimpl
def register_datasets(register):
    register("digits", lambda root, seed: None, task="classification")
''', {"clash": ""})
    result = subprocess.run(ROBX + ["plugins", "--json"], capture_output=True, text=True,
                            env=_cli_env(clash, tmp_path / "u"), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip() == ("robx: warning: dataset name 'digits' from clash (robx-clash 0.3) is already "
                                     "taken by digits (built-in); skipped")
    registered = {(row["kind"], row["name"]): row["origin"] for row in json.loads(result.stdout)["registered"]}
    assert registered[("dataset", "digits")] == "digits (built-in)"


def test_registration_plugins_are_not_training_plugins():
    with pytest.raises(OptionError, match="plugin 'digits' only registers what other options and commands use"):
        PluginHost(["digits"], {})
    with pytest.raises(OptionError, match="plugin 'oversamplers' only registers"):
        PluginHost(["oversamplers"], {})
    with pytest.raises(OptionError, match="unknown dataset 'mnist'; available: breast-cancer, breast-cancer-crowd, chicago-crime, cifar10, "
                                            "cifar10-pair, cifar10-pair-crowd, cifar100, digits, digits-binary, "
                                            "digits-crowd, folder, madelon, npz, nyc-crime, synthetic, "
                                            "tabular-binary"):
        resolved_config(tiny_config(dataset="mnist"))
    with pytest.raises(OptionError, match="unknown model 'vgg'; available: .*smallcnn"):
        engine.build_run(tiny_config(model="vgg"), None)


# --------------------------------------------------------------------------- the second task


def regression_config(**overrides):
    values = dict(dataset="synthetic", epochs=3, steps=3, eval_steps=5, n_eval=200)
    values.update(overrides)
    return tiny_config(**values)


def test_regression_trains_is_attacked_and_reports_errors_per_group(tmp_path):
    report = engine.train(regression_config(epochs=6), tmp_path / "run")
    assert report["task"] == "regression" and report["class_names"] == ["zero", "non-zero"]
    assert report["class_counts"][0] > 2 * report["class_counts"][1]  # zero-inflated, kept as it is
    standard, robust = report["summary"]["standard"], report["summary"]["robust"]
    assert robust["overall"] > standard["overall"]  # the attack raises the error
    assert robust["worst"] == max(report["per_class"]["robust"])  # the worst group has the largest error
    # the error a constant predictor at the mean target would make, from the test targets themselves
    run = engine.load_run(tmp_path / "run")
    targets = run.data.test.y
    assert standard["overall"] < (targets - targets.mean()).abs().mean().item()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[0]["train"]["metric"] == "absolute error"


def test_regression_resumes_bit_exactly_and_reevaluates(tmp_path, monkeypatch):
    config = regression_config(val_fraction=0.1, plugins=["cb", "swa"], plugin_options={"swa": {"start": 0.3}})
    train_killed_and_resumed(config, tmp_path, monkeypatch)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    for key in ("model", "eval_model"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    result = subprocess.run(ROBX + ["eval", str(tmp_path / "killed"), "--steps", "10", "--n-eval", "100"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (written,) = (tmp_path / "killed").glob("eval-pgd10-*.json")
    assert json.loads(written.read_text())["metric"]["name"] == "absolute error"
    cw = subprocess.run(ROBX + ["eval", str(tmp_path / "killed"), "--attack", "cw"], capture_output=True, text=True)
    assert cw.returncode == 2 and "unknown attack 'cw' for task 'regression'; available: pgd" in cw.stderr


def test_every_registered_model_builds_for_the_tasks_that_fit_it():
    found = registry()
    assert {"classification", "regression"} <= set(found.tasks)
    assert found.default_dataset == "digits"
    for name in ("mlp",):
        spec = found.task_for("synthetic")(found.dataset("synthetic").load(None, 0)).model_input()
        features, outputs = found.build_model(name, spec).eval()(torch.rand(3, *spec.shape))
        assert outputs.shape == (3, 1)


EXTERNAL_COMMAND = '''
"""A package that adds a data-level command, and a registration hook of its own that other
packages can fill (add_hookspecs): word counters."""
import sys
from pathlib import Path
from typing import Annotated

import typer
from robx import Collects, hookimpl, hookspec
from robx.core.errors import OptionError
from robx.core.registry import registry


class CounterHooks:
    REGISTERS = {"register_counters": Collects("counter", "robx tally --counter")}

    @staticmethod
    @hookspec
    def register_counters(register):
        """Register word counters: register(name, make); make(options, seed)(words, word) -> int."""


@hookimpl
def add_hookspecs(add):
    add(CounterHooks)


@hookimpl
def register_counters(register):
    register("exact", lambda options, seed: lambda words, word: words.count(word))


def tally(path: Annotated[Path, typer.Argument(help="A text file.")],
          word: Annotated[str, typer.Option(help="The word to count.")] = "robust",
          counter: Annotated[str, typer.Option(help="A registered counter.")] = "exact") -> None:
    """Count a word in a text file."""
    count = registry().entry("counter", counter).build({}, 0)
    words = path.read_text().split()
    if not words:
        raise OptionError(f"{path.name} is empty")
    print(f"{word}: {count(words, word)}")


@hookimpl
def register_commands(register):
    register("tally", tally)
'''

PREFIX_COUNTER = '''
"""A package that fills a registration hook another package (robx_tally) added."""
from robx import hookimpl


@hookimpl
def register_counters(register):
    register("prefix", lambda options, seed: lambda words, word: sum(w.startswith(word) for w in words))
'''

SHADOWING_COMMAND = '''
from robx import hookimpl


@hookimpl
def register_commands(register):
    register("train", lambda: print("not robx's train"))
'''


@pytest.mark.slow
def test_an_external_package_adds_a_command_and_none_replaces_robx_s_own(tmp_path):
    site = install_distribution(tmp_path / "site", "robx_tally", EXTERNAL_COMMAND, {"tally": ""})
    install_distribution(site, "robx_shadow", SHADOWING_COMMAND, {"shadow": ""})
    env = _cli_env(site, tmp_path / "unused")
    (tmp_path / "notes.txt").write_text("robust for whom? robust minority, fair majority\n")
    counted = subprocess.run(ROBX + ["tally", "notes.txt", "--word", "robust"], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.strip() == "robust: 2"  # counted by hand
    assert counted.stderr.strip() == ("robx: warning: command name 'train' from shadow (robx-shadow 0.3) is robx's "
                                      "own; skipped")
    (tmp_path / "empty.txt").write_text("")
    empty = subprocess.run(ROBX + ["tally", "empty.txt"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert empty.returncode == 2 and empty.stderr.strip().splitlines()[-1] == "robx: error: empty.txt is empty"
    listing = json.loads(subprocess.run(ROBX + ["plugins", "--json"], capture_output=True, text=True, env=env,
                                        check=True).stdout)
    commands = {row["name"]: row["origin"] for row in listing["registered"] if row["kind"] == "command"}
    assert commands == {"oversample": "oversample-command (built-in)", "crowd": "crowd-command (built-in)",
                        "tally": "tally (robx-tally 0.3)"}


@pytest.fixture
def installed_here(tmp_path, monkeypatch):
    """The external package and the command package installed on this process's path, with
    robx's registries rebuilt around them (and again after the test, without them)."""
    from robx.core import discovery as plugin_module

    site = install_distribution(tmp_path / "site", "robx_group_extras", EXTERNAL_PACKAGE,
                                {"group-extras": "", "halve": "Halve"}, version="1.2")
    install_distribution(site, "robx_tally", EXTERNAL_COMMAND, {"tally": ""})
    install_distribution(site, "robx_prefix", PREFIX_COUNTER, {"prefix-counter": ""})
    monkeypatch.syspath_prepend(str(site))

    def rebuilt() -> None:
        registry.cache_clear()
        plugin_module._discovered.cache_clear()

    rebuilt()
    yield site
    for module in ("robx_group_extras", "robx_tally", "robx_prefix"):
        sys.modules.pop(module, None)
    monkeypatch.undo()
    rebuilt()


def test_each_registration_hook_adds_what_the_run_then_uses(installed_here, robx_here, tmp_path):
    """register_tasks, _datasets, _models, _attacks and _commands, the hooks robx's packages add
    (register_oversamplers, _crowd_learners) and one a third-party package adds
    (register_counters, filled by another package), in this process (the slow tests above do the
    same through a real `robx` process)."""
    listing = json.loads(robx_here("plugins", "--json").stdout)
    registered = {(row["kind"], row["name"]) for row in listing["registered"]}
    assert {("task", "huber"), ("dataset", "ramp"), ("model", "tinynet"), ("attack", "shift"), ("oversampler", "duplicate"),
            ("crowd learner", "first-worker"), ("command", "tally"), ("counter", "exact"), ("counter", "prefix")} \
        <= registered
    # a registered task, dataset and model: the run trains the model on the data and scores it as the task says
    trained = robx_here("train", "--dataset", "ramp", "--epochs", "1", "--eval-steps", "1", "--out", "ramp")
    assert trained.returncode == 0, trained.stderr
    report = json.loads((tmp_path / "ramp" / "report.json").read_text())
    assert (report["task"], report["dataset"], report["model"]) == ("huber", "ramp", "tinynet")
    assert report["metric"] == {"name": "absolute error", "higher_is_better": False}
    # a registered oversampler with its options: two copies of each of the 300 training examples
    oversampled = robx_here("oversample", "--method", "duplicate", "--dataset", "stripes", "--set",
                            "duplicate.times=2", "--classifiers", "linearsvc", "--out", "dup")
    assert oversampled.returncode == 0, oversampled.stderr
    assert json.loads((tmp_path / "dup" / "report.json").read_text())["generated"] == 2 * 300
    # a registered crowd learner: believes worker 0, predicts one class of the balanced test set
    crowd = robx_here("crowd", "--method", "first-worker", "--out", "crowd")
    assert crowd.returncode == 0, crowd.stderr
    assert json.loads((tmp_path / "crowd" / "report.json").read_text())["accuracy"] == 0.5
    # a registered attack with its own setting, on the task it registered for: the robust scores are
    # those of the model on x - eps, computed here without robx's evaluation
    stripes = robx_here("train", "--dataset", "stripes", "--epochs", "1", "--eval-steps", "1", "--out", "stripes")
    assert stripes.returncode == 0, stripes.stderr
    shifted = robx_here("eval", "stripes", "--attack", "shift", "--sign", "-1")
    assert shifted.returncode == 0, shifted.stderr
    (written,) = (tmp_path / "stripes").glob("eval-shift-sign-1-*.json")
    evaluated = json.loads(written.read_text())
    assert evaluated["attack"]["description"] == "Shift linf eps=0.1 sign -1"
    run = engine.load_run(tmp_path / "stripes")
    x, y = run.data.test.x.float(), run.data.test.y
    with torch.no_grad():
        correct = (run.state.model.eval()((x - 0.1).clamp(0, 1))[1].argmax(1) == y).float()
    by_class = [correct[y == c].mean().item() for c in range(4)]
    assert evaluated["per_class"]["robust"] == pytest.approx(by_class)
    assert "unknown attack 'shift' for task 'huber'; available: pgd" in robx_here("eval", "ramp", "--attack",
                                                                                   "shift").stderr
    assert "--sign is a setting of shift, not of pgd" in robx_here("eval", "stripes", "--sign", "1").stderr
    # a registered command
    (tmp_path / "notes.txt").write_text("robust for whom? robust minority, fair majority\n")
    counted = robx_here("tally", "notes.txt", "--word", "robust")
    assert counted.returncode == 0 and counted.stdout.strip() == "robust: 2"
    # a counter registered through the hook robx_tally added, by the other package: "robust" and
    # "robustness" start with "robust" (counted by hand)
    (tmp_path / "notes.txt").write_text("robust robustness fair robust? minority\n")
    prefixed = robx_here("tally", "notes.txt", "--word", "robust", "--counter", "prefix")
    assert prefixed.returncode == 0 and prefixed.stdout.strip() == "robust: 3", prefixed.stderr
    unknown = robx_here("tally", "notes.txt", "--counter", "fuzzy")
    assert unknown.returncode == 2 and "unknown counter 'fuzzy'; available: exact, prefix" in unknown.stderr
