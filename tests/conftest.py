from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from pathlib import Path

# The suite writes only into temporary folders: numba's compiled-kernel cache (cache=True
# would write beside the kernels, in the checkout) and robx's user cache (decoded image
# folders, torchvision downloads) go to one folder per session, set before anything imports them.
_SCRATCH = Path(tempfile.mkdtemp(prefix="robx-tests-"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(_SCRATCH / "numba"))
os.environ.setdefault("XDG_CACHE_HOME", str(_SCRATCH / "cache"))
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(_SCRATCH / "hypothesis"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from robx.core.config import TrainConfig  # noqa: E402
from robx.core.engine import train  # noqa: E402

# Property tests draw the same examples on every run (a failure in CI reproduces anywhere)
# and keep no example database in the checkout. HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("robx", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "robx"))

os.environ.setdefault("MPLBACKEND", "Agg")
if not torch.cuda.is_available():  # Triton kernels run on CPU tensors through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**overrides) -> TrainConfig:
    """Digits with a few epochs and short attacks: seconds, for engine and CLI tests."""
    values = dict(dataset="digits", epochs=2, steps=2, eval_steps=5, n_eval=120, batch_size=128)
    values.update(overrides)
    return TrainConfig(**values)


def while_training(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A flag, ``[True]`` while an epoch trains (``engine.loop.train_epoch`` runs): a spy on
    the attacks records the training steps' calls only, not validation's or evaluation's."""
    import robx.core.engine as engine

    flag, real_epoch = [False], engine.loop.train_epoch

    def epoch(*args: Any, **kwargs: Any) -> Any:
        flag[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            flag[0] = False

    monkeypatch.setattr(engine.loop, "train_epoch", epoch)
    return flag


def train_killed_and_resumed(config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             kill_in_epoch: int = 2) -> tuple[Path, Path]:
    """Train ``config`` straight, and again killed at the start of ``kill_in_epoch`` then
    resumed from its checkpoint; returns both run directories."""
    import robx.core.engine as engine

    train(config, tmp_path / "straight")
    real_epoch = engine.train_epoch

    def killed(run, progress):
        if run.state.epoch == kill_in_epoch:
            raise KeyboardInterrupt
        return real_epoch(run, progress)

    monkeypatch.setattr(engine.loop, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed")
    monkeypatch.setattr(engine.loop, "train_epoch", real_epoch)
    train(config, tmp_path / "killed", resume=True)
    return tmp_path / "straight", tmp_path / "killed"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits PGD-AT run trained once for the tests that need a real model."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits-pgd"
    train(TrainConfig(dataset="digits", epochs=12, steps=5), run_dir)
    return run_dir


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def robx_here(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> Callable[..., CommandResult]:
    """``robx ARGS`` through the console entry point in this process, in ``tmp_path``: the
    same exit status and stderr as a subprocess without an interpreter start-up (about 3 s
    each on 2 cores). The tests that need a real process (torchrun, the ``python -m`` entry,
    installed packages) start one."""
    from robx.cli.main import main

    def run(*args: object) -> CommandResult:
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return CommandResult(code, out, err)

    return run
