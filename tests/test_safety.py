"""Nothing read from a run directory may execute code: a crafted checkpoint is refused."""

from __future__ import annotations

import os
import shutil

import torch



class RunsAShellCommand:
    """Unpickling this object runs ``echo pwned > path`` (the classic ``__reduce__`` payload)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.path}",)


def malicious_run_dir(trained_run, tmp_path, marker):
    """A copy of a real run directory whose checkpoint carries the payload beside real weights."""
    run_dir = tmp_path / "shared-run"
    shutil.copytree(trained_run, run_dir)
    payload = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    payload["plugins"] = {"innocent": {"looking": RunsAShellCommand(str(marker))}}
    torch.save(payload, run_dir / "checkpoint.pt")
    return run_dir


def test_the_crafted_checkpoint_really_runs_code_when_unpickled(trained_run, tmp_path):
    """Guards the test below: the payload is live under a plain (unsafe) load."""
    marker = tmp_path / "pwned.txt"
    run_dir = malicious_run_dir(trained_run, tmp_path, marker)
    torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert marker.read_text().strip() == "pwned"


def test_eval_and_resume_refuse_a_code_running_checkpoint(robx_here, trained_run, tmp_path):
    marker = tmp_path / "pwned.txt"
    run_dir = malicious_run_dir(trained_run, tmp_path, marker)
    before = sorted(p.name for p in run_dir.iterdir())
    for args in (["eval", str(run_dir), "--n-eval", "20"], ["train", "--resume", str(run_dir)]):
        result = robx_here(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused to load it" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not marker.exists(), "the checkpoint's payload ran"
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written or lost


def test_a_plugin_state_that_is_not_plain_data_is_named_when_saving(monkeypatch):
    import pytest

    import robx.core.discovery as plugin_module
    from robx.core.errors import RobxError
    from robx.core.discovery import PluginSpec, available_plugins
    from robx.core.plugins import PluginHost

    class Keeper:
        name = "keeper"
        kept: object = {"a": torch.zeros(2), "n": [1, 2.0, "x", None]}

        def state_dict(self):
            return {"fine": {"a": torch.zeros(2), "n": [1, 2.0, "x", None]}, "mine": self.kept}

        def load_state_dict(self, saved):
            pass

    extra = {"keeper": PluginSpec("keeper", "test", Keeper)}
    monkeypatch.setattr(plugin_module, "available_plugins", lambda: {**available_plugins(), **extra})
    host = PluginHost(["keeper"], {})
    assert host.state_dicts()["keeper"]["fine"]["n"] == [1, 2.0, "x", None]
    Keeper.kept = RunsAShellCommand("/dev/null")
    with pytest.raises(RobxError, match="plugin 'keeper' state 'mine' holds a RunsAShellCommand"):
        host.state_dicts()
