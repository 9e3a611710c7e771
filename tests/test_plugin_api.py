"""The public plugin API: every name a plugin needs from ``robx``, the optional
``robx.Plugin`` base class, and declarations and hook names checked where they are written."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
import torch

import robx
from robx import Plugin, PluginError, hookimpl
from robx.core import discovery
from robx.core.discovery import PluginSpec, available_plugins
from robx.core.plugins import PluginHost
from robx.core.registry import registry

ROOT = Path(__file__).resolve().parent.parent


def test_a_misspelt_declaration_fails_when_the_class_is_defined_naming_the_real_one():
    with pytest.raises(PluginError, match=r"plugin class .*Reader declares 'read', which robx does not read; did "
                                          r"you mean 'reads'\?"):
        class Reader(Plugin):
            name = "reader"
            read = ("clean",)


def test_a_misspelt_hook_fails_when_the_class_is_defined_naming_the_real_one():
    with pytest.raises(PluginError, match=r"implements unknown hook 'augmnet'; did you mean 'augment'\?"):
        class Mixer(Plugin):
            name = "mixer"

            @hookimpl
            def augmnet(self, step, state):
                return None


def test_a_declaration_of_the_wrong_type_or_value_fails_when_the_class_is_defined():
    with pytest.raises(PluginError, match=r"declares fallback = 'yes'; it takes a bool"):
        class Eager(Plugin):
            name = "eager"
            fallback = "yes"
    with pytest.raises(PluginError, match=r"reads unknown view 'noisy'; views: clean, adversarial"):
        class Noisy(Plugin):
            name = "noisy"
            reads = ("noisy",)


def test_the_base_class_keeps_its_options_saves_nothing_and_refuses_saved_state():
    class Quiet(Plugin):
        name = "quiet"

    quiet = Quiet("opts")
    assert quiet.options == "opts" and quiet.state_dict() == {} and quiet.reads == () and quiet.head is None
    quiet.load_state_dict({})
    with pytest.raises(PluginError, match="plugin 'quiet' keeps no state, but the checkpoint holds average"):
        quiet.load_state_dict({"average": 1})


def test_the_documented_example_plugin_runs_in_a_run_s_host(monkeypatch):
    """docs/hooks.md's robx.Plugin example, executed: selected in a plugin host, its
    weight_samples halves the rows of class 0 (by hand: rows 0, 1, 0 -> 0.5, 1, 0.5)."""
    text = (ROOT / "docs" / "hooks.md").read_text()
    section = text.split("## Plugin declarations", 1)[1]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(source, "docs/hooks.md", "exec"), namespace)
    halve = namespace["Halve"]
    assert issubclass(halve, robx.Plugin)
    monkeypatch.setattr(discovery, "available_plugins",
                        lambda: {**available_plugins(), "halve": PluginSpec("halve", "docs", halve)})
    host = PluginHost(["halve"], {})
    assert host.names == ["halve", "pgd"]  # the fallback adversary joins, as for any selection
    step = types.SimpleNamespace(row_labels=torch.tensor([0, 1, 0]))
    assert host.manager.get_plugin("halve").weight_samples(step, None).tolist() == [0.5, 1.0, 0.5]


def test_a_misspelt_registration_hook_in_a_module_is_reported_not_ignored(monkeypatch, capsys):
    """A module plugin whose only hook is register_dataset (for register_datasets) registered
    nothing before, silently; now it is left out with one line naming the real hook."""
    module = types.ModuleType("robx_misspelt")

    @hookimpl
    def register_dataset(register):
        register("never", lambda root, seed: None, task="classification")

    module.register_dataset = register_dataset
    monkeypatch.setattr(discovery, "available_plugins",
                        lambda: {**available_plugins(), "misspelt": PluginSpec("misspelt", "robx-misspelt 1.0", module)})
    registry.cache_clear()
    try:
        found = registry()
        assert "did you mean 'register_datasets'?; skipped" in capsys.readouterr().err
        assert found.skipped["misspelt (robx-misspelt 1.0)"] == (
            "plugin 'misspelt' (robx-misspelt 1.0) implements unknown hook 'register_dataset'; did you mean "
            "'register_datasets'?")
        assert "never" not in found.datasets
    finally:
        monkeypatch.undo()
        registry.cache_clear()


def test_built_in_plugins_import_only_from_robx():
    """As a third-party plugin would: ``robx`` (and ``robx.plugins.common``, or their own
    package's modules), never ``robx.core``."""
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("robx.core"), f"{path.relative_to(ROOT)} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("robx.core") for alias in node.names), path


def test_a_run_written_before_plugins_were_robx_plugins_resumes_to_the_same_weights(robx_here, tmp_path):
    """tests/fixtures/checkpoint-0d61491: a digits run with swa and fairtat (both keep state)
    written by robx at 0d61491 (2026-12-06), killed at the start of its third epoch
    (tests/fixtures/make_old_checkpoint.py). Resumed by this robx, it ends on the evaluated
    weights that code reached training straight through, and the per-class report. Bit for bit
    on the machine that wrote the fixture; to float rounding on another CPU (on an AMD EPYC
    without AVX-512 the third epoch's kernels round differently: at most 1.2e-7 of a tensor's
    largest entry), so the weights are compared at 1e-5 of each tensor's scale."""
    import json
    import shutil

    from robx.core.rundir import load_checkpoint

    fixture = ROOT / "tests" / "fixtures" / "checkpoint-0d61491"
    run = tmp_path / "run"
    shutil.copytree(fixture, run, ignore=shutil.ignore_patterns("straight*"))
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["epoch"] == 1 and set(saved["plugins"]) == {"swa", "fairtat"} and "stash" not in saved
    resumed = robx_here("train", "--resume", "run")
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(run / "checkpoint.pt")
    assert final["epoch"] == 2  # the last of the three epochs (0, 1, 2)
    straight = torch.load(fixture / "straight.pt", weights_only=True)
    assert set(final["eval_model"]) == set(straight)
    for key, value in straight.items():
        scale = float(value.abs().max()) + 1e-12 if value.is_floating_point() else 1.0
        assert float((final["eval_model"][key] - value).abs().max()) / scale < 1e-5, key
    report = json.loads((run / "report.json").read_text())
    assert report["per_class"]["standard"] == json.loads((fixture / "straight-report.json").read_text())["standard"]
    assert report["per_class"]["robust"] == json.loads((fixture / "straight-report.json").read_text())["robust"]
