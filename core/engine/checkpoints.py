"""Checkpoints and the run directory: what a checkpoint holds, restoring a run from it
(``--resume``, :func:`load_run`), metrics.jsonl, and the one-writer lock."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any



from robx import __version__
from robx.core import distributed
from robx.core import rundir
from robx.core.config import TrainConfig
from robx.core.distributed import Processes
from robx.core.errors import CheckpointError, OptionError, RobxError, RunDirError
from robx.core.files import write_text_atomically
from robx.core.stats import EpochStats
from robx.core.discovery import fallback_adversary
from robx.core.selection import resolve_plugin_names
from robx.core.engine.best import best_weights
from robx.core.engine.build import Run, build_run, rng_state, set_rng_state


def migrated(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config with retired keys moved to where they live now (``random_start``:
    to the fallback adversary's option, where that adversary ran)."""
    saved = dict(saved)
    name = fallback_adversary()
    if saved.pop("random_start", True) is False and name in resolve_plugin_names(saved.get("plugins", []),
                                                                                 saved.get("loss", "ce")):
        options = {plugin: dict(table) for plugin, table in saved.get("plugin_options", {}).items()}
        options.setdefault(name, {})["random_start"] = False
        saved["plugin_options"] = options
    return saved


def checkpoint_payload(run: Run) -> dict[str, Any]:
    state = run.state
    return {
        "robx_version": __version__,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "plugins": run.host.state_dicts(),
        "history": [stats.to_state() for stats in state.history],
        "generator": run.generator.get_state(),
        "rng": rng_state(),
        **({"best": run.best} if run.best is not None else {}),
    }


def restore(run: Run, payload: dict[str, Any], source: Path) -> None:
    """The run's state from a checkpoint; one :class:`CheckpointError` line when the
    checkpoint was written for another model or configuration."""
    state = run.state
    rundir.check_state_fits(state.model.state_dict(), payload["model"], source, f"model '{run.config.model}'")
    try:
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        try:
            if "plugins" not in payload:
                raise RobxError("it keeps its plugins' state in one shared stash, the layout of robx before "
                                "2026-12-06, which this robx no longer reads; train the run again")
            run.host.load_state_dicts(payload["plugins"])
        except RobxError as error:
            raise CheckpointError(f"checkpoint {source}: {error}") from error
        state.history = [EpochStats.from_state(stats) for stats in payload["history"]]
        run.best = payload.get("best")
        state.global_step = int(payload["global_step"])
        state.epoch = int(payload["epoch"]) + 1
        run.generator.set_state(payload["generator"])
        set_rng_state(payload["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {source} does not fit the run configured in {source.parent / rundir.CONFIG_FILE}"
                              f" ({type(error).__name__}: {detail[:200]})") from error
    state.epoch_stats = state.history[-1] if state.history else None


def kept_metrics(path: Path, before_epoch: int) -> list[str]:
    """The metric lines of epochs before ``before_epoch`` (those after it are trained again
    on resume); one line naming the first line that is not a robx metrics record."""
    if not path.exists():
        return []
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            epoch = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError) as error:
            raise RunDirError(f"{path} line {number} is not a robx metrics record ({type(error).__name__}); "
                              "repair or remove that line to resume") from error
        if epoch < before_epoch:
            kept.append(line)
    return kept


def write_metrics(path: Path, lines: list[str]) -> None:
    write_text_atomically(path, "".join(line + "\n" for line in lines))


@contextlib.contextmanager
def run_dir_held(run_dir: Path, command: str, processes: Processes) -> Iterator[None]:
    """The run directory's lock (:class:`robx.core.rundir.RunDirLock`), held by process 0 for the
    block; when another process holds it, every process fails with that one line."""
    with contextlib.ExitStack() as held:
        distributed.on_main(lambda: held.enter_context(rundir.RunDirLock(run_dir, command)), processes,
                            "the run directory")
        yield


def kept_checkpoint(run: Run) -> str:
    """What a run stopped on its way leaves behind, and how to continue it: read from the
    checkpoint on disk, not from the epochs trained (a signal between an epoch's end and its
    checkpoint's write leaves the previous epoch's, or none)."""
    assert run.config.epochs is not None
    last = rundir.finished_epoch(run.run_dir) if run.processes.main else (
        run.state.history[-1].epoch if run.state.history else None)
    if last is None:
        return f"no epoch had finished, so there was no checkpoint to keep and {run.run_dir} was cleared"
    done = last + 1
    stage = "training was done but not its evaluation" if done == run.config.epochs else \
        f"{done} of {run.config.epochs} epochs had finished"
    return f"{stage}; their checkpoint in {run.run_dir} is intact: continue with robx train --resume {run.run_dir}"


def saved_config(run_dir: Path) -> TrainConfig:
    """The config a run directory was started with; one line when it is not one."""
    path = run_dir / rundir.CONFIG_FILE
    try:
        return TrainConfig.from_dict(migrated(json.loads(path.read_text(encoding="utf-8"))["config"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{path} is not a robx run config ({type(error).__name__}: {error})") from error


def check_same_data(run: Run) -> None:
    """Refuse to continue or evaluate a run whose dataset now reads other files than it was
    trained on (its config.json's ``data`` fingerprint), naming what changed: the training
    split, the test split and the normalisation would all be drawn anew without a word."""
    path = run.run_dir / rundir.CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return  # saved_config has already read it; an unreadable file is its error
    now = run.data.fingerprint
    if saved is None or now is None or saved == now:
        return
    raise RunDirError(f"the data of {run.config.dataset} changed since the run {run.run_dir} started: "
                      f"{data_changes(saved, now)}; start a new run (or restore the files) to use it")


def data_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two dataset fingerprints ({part: description}), in words."""
    changed = [f"{part}: {now.get(part, 'absent')} now, {saved.get(part, 'absent')} then"
               for part in dict.fromkeys([*saved, *now]) if saved.get(part) != now.get(part)]
    return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")


def load_run(run_dir: Path, device: str | None = None, checkpoint: str = "last") -> Run:
    """Rebuild a finished or interrupted run from its directory (for ``robx eval``), with the
    evaluated weights of its last checkpoint or, ``checkpoint="best"``, of its best
    (``--keep-best``; ``run.best`` then says which epoch)."""
    if checkpoint not in ("last", "best"):
        raise OptionError(f"--checkpoint must be last or best, got {checkpoint!r}")
    run_dir = Path(run_dir)
    config_path = run_dir / rundir.CONFIG_FILE
    if not config_path.exists():
        raise RobxError(f"{run_dir} is not a robx run directory (no {rundir.CONFIG_FILE})")
    config = saved_config(run_dir)
    if device is not None:
        config.device = device
    payload = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT_FILE)
    run = build_run(config, run_dir)
    check_same_data(run)
    weights = payload.get("eval_model", payload["model"])
    if checkpoint == "best":
        weights, run.best = best_weights(run_dir)
    rundir.check_state_fits(run.state.model.state_dict(), weights,
                            run_dir / (rundir.BEST_FILE if checkpoint == "best" else rundir.CHECKPOINT_FILE),
                            f"model '{config.model}'")
    run.state.model.load_state_dict(weights)
    return run
