"""The training loop: epochs of steps, validation, checkpoints, pause and resume, and the final
evaluation (:func:`train`)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robx import __version__
from robx.core import distributed
from robx.core.distributed import Processes
from robx.core import rundir
from robx.core.attack_plans import AttackPlan
from robx.core.config import TrainConfig
from robx.core.errors import Interrupted, NonFiniteLossError, RobxError, TrainingPaused
from robx.core.registry import registry
from robx.core.files import write_json
from robx.core.options import options_as_dict
from robx.core.report import plot_per_class
from robx.core.stats import EpochStats
from robx.kernels import OPS as KERNEL_OPS
from robx.kernels import dispatch_rule
from robx.core.engine.best import best_weights, is_new_best, save_best
from robx.core.engine.build import Progress, Run, SilentProgress, build_run, refresh_class_quantities
from robx.core.engine.collapse import collapse_check, collapses
from robx.core.engine.checkpoints import (check_same_data, checkpoint_payload, kept_checkpoint, kept_metrics, restore,
                                          run_dir_held, saved_config, write_metrics)
from robx.core.engine.evaluation import averaged_eval_model, evaluate_run, plot_title, split_stats
from robx.core.engine.step import epoch_batches, on_batch_source, planned_attack, train_step, training_batch


def validation_attack(run: Run) -> AttackPlan:
    """The default attack (PGD) with the run's steps and step size, at the budget ``config.val_budget`` states:
    ``uniform``, the run's eps for every class (what the test evaluation measures, and the
    CFA authors' FAWA gate reads), or ``run``, the per-class budgets of the run's budget owner."""
    config, state = run.config, run.state
    assert config.steps is not None and config.alpha is not None
    budget = (state.class_eps.clone(), state.class_alpha.clone()) if config.val_budget == "run" else None
    return planned_attack(run, None, alpha=config.alpha, steps=config.steps, class_budget=budget)


def train_epoch(run: Run, progress: Progress) -> EpochStats:
    """One pass over the training set; across processes, each trains on its slice of every
    global batch, and the epoch's statistics, losses and BatchNorm statistics are then
    combined, so every process ends the epoch with the same numbers and the same model."""
    config, state, data, processes = run.config, run.state, run.data, run.processes
    started, cpu_started = time.perf_counter(), time.process_time()
    tracker = run.task.statistics(state.device)
    loss_sums: dict[str, torch.Tensor] = {}
    assert config.batch_size is not None
    shards = distributed.rank_shards(list(epoch_batches(run)), processes, run.smallest_batch)
    progress.start_epoch(state.epoch, len(shards))
    indices = on_batch_source(run, [idx for idx, _ in shards])
    for idx, (_, share) in zip(indices, shards):
        x, y, labels = training_batch(run, idx)
        for _ in range(run.replays):
            train_step(run, x, y, labels, tracker, loss_sums, share)
        progress.advance_batch()
    if not run.schedule_per_batch:
        run.scheduler.step()
    distributed.sum_across([*tracker.summed_tensors(), *(loss_sums[name] for name in sorted(loss_sums))], processes)
    if not config.sync_bn:
        distributed.sync_batchnorm_statistics(state.model, config.dist_bn, processes)
    cpu_seconds = time.process_time() - cpu_started
    seen = float(len(data.train)) * run.replays
    totals = {name: float(value) / seen for name, value in loss_sums.items()}  # one host sync
    if not all(np.isfinite(v) for v in totals.values()):
        raise NonFiniteLossError(
            f"loss became non-finite in epoch {state.epoch} ({totals}); lower the learning rate "
            "or check the plugins' options (the last good checkpoint is kept)"
        )
    val, val_attack = None, None
    if data.val is not None and len(data.val):
        attack = validation_attack(run)
        val, val_attack = split_stats(run, data.val, attack), attack.describe()
    return EpochStats(
        epoch=state.epoch,
        train=tracker.result(),
        val=val,
        val_attack=val_attack,
        loss=totals.pop("loss"),
        loss_terms=totals,
        lr=state.optimizer.param_groups[0]["lr"],
        seconds=time.perf_counter() - started,
        cpu_seconds=cpu_seconds,
    )


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    force: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train, checkpoint every epoch, evaluate on the test set; returns the report.

    With ``resume=True``, ``config`` is ignored and the run continues from the
    checkpoint in ``run_dir`` with the configuration it was started with. With a
    ``deadline`` (a ``time.monotonic()`` value), an epoch that would end after it (judged
    by the last epoch's time) is not started: :class:`TrainingPaused` is raised with the
    checkpoint in place (for device sessions with a time limit per command).

    The run directory has one writer: this process holds its lock from before the first
    file is written to the end (a second robx process gets one line naming this one). A new
    run that fails before its first checkpoint leaves nothing behind (no run directory
    holding a config only). Every file is written atomically.

    Under torchrun (a process group set up, :func:`robx.core.distributed.start`) every
    process calls this with the same arguments; process 0 holds the lock and writes the run
    directory. A process that loses the others raises
    :class:`robx.core.distributed.PeerLostError` naming the checkpoint to resume from.
    """
    progress = progress or SilentProgress()
    run_dir = Path(run_dir)
    processes = distributed.current()
    if resume:
        config_path = run_dir / rundir.CONFIG_FILE
        if not config_path.exists():
            raise RobxError(f"cannot resume: {config_path} does not exist")
        rundir.check_no_links(run_dir)
    else:
        run = build_run(config, run_dir)  # validate everything (the budget in the input box too) before the disk
        distributed.on_main(lambda: rundir.check_new_run_dir(run_dir, force), processes, "the run directory")
    created = not run_dir.exists()
    with run_dir_held(run_dir, "train --resume" if resume else "train", processes):
        if resume:
            run, metrics = resumed_run(run_dir, processes)
        else:
            metrics = []
            distributed.on_main(lambda: _start_run_dir(run, force), processes, "the run directory")
        try:
            return _train_and_evaluate(run, progress, deadline, metrics)
        except distributed.PeerLostError as error:
            raise distributed.PeerLostError(f"{error}; {kept_checkpoint(run)}") from error
        except Interrupted as interruption:
            raise interruption.keeping(kept_checkpoint(run)) from None
        finally:
            if not resume and processes.main and not (run_dir / rundir.CHECKPOINT_FILE).exists():
                rundir.discard_new_run(run_dir, created)


def resumed_run(run_dir: Path, processes: Processes) -> tuple[Run, list[dict[str, Any]]]:
    """The run in ``run_dir`` rebuilt from its config and checkpoint (its data checked to be
    the same), and its metrics up to the checkpoint's epoch (later lines dropped)."""
    run = build_run(saved_config(run_dir), run_dir)
    check_same_data(run)
    restore(run, rundir.load_checkpoint(run_dir / rundir.CHECKPOINT_FILE), run_dir / rundir.CHECKPOINT_FILE)
    metrics = distributed.on_main(lambda: kept_metrics(run_dir / rundir.METRICS_FILE, run.state.epoch),
                                  processes, "the metrics") or []
    distributed.on_main(lambda: write_metrics(run_dir / rundir.METRICS_FILE, metrics), processes, "the metrics")
    return run, metrics


def _start_run_dir(run: Run, force: bool) -> None:
    rundir.prepare_run_dir(run.run_dir, force)
    write_json(run.run_dir / rundir.CONFIG_FILE, {
        "config": run.config.to_dict(),
        "plugins": {name: options_as_dict(opts)
                    for name, opts in {**run.host.recipe_options, **run.host.options}.items()},
        "kernels": {op: dispatch_rule(op, run.state.device) for op in KERNEL_OPS},
        "device": str(run.state.device),
        "processes": run.processes.world_size,
        **({"data": run.data.fingerprint} if run.data.fingerprint is not None else {}),
        "robx_version": __version__,
        "torch_version": torch.__version__,
    })


def _train_and_evaluate(run: Run, progress: Progress, deadline: float | None, metrics: list[str]) -> dict[str, Any]:
    config, state, processes, run_dir = run.config, run.state, run.processes, run.run_dir
    assert config.epochs is not None
    run.host.train_start(state)
    progress.start_training(config.epochs, state.epoch)
    loggers = distributed.on_main(lambda: [registry().logger(name).make(run_dir, config, state.epoch)
                                           for name in config.log], processes, "the loggers") or []
    try:
        return _epochs_then_report(run, progress, deadline, metrics, loggers)
    finally:
        for logger in loggers:
            logger.close()


def _epochs_then_report(run: Run, progress: Progress, deadline: float | None, metrics: list[str],
                        loggers: list[Any]) -> dict[str, Any]:
    config, state, processes, run_dir = run.config, run.state, run.processes, run.run_dir
    assert config.epochs is not None
    metrics_path = run_dir / rundir.METRICS_FILE
    for epoch in range(state.epoch, config.epochs):
        late = deadline is not None and bool(state.history) and \
            time.monotonic() + state.history[-1].seconds > deadline
        if distributed.from_main(late, processes):
            raise TrainingPaused(epoch)
        state.epoch = epoch
        if processes.distributed:
            distributed.seed_rank_streams(config.seed, epoch, processes)
        refresh_class_quantities(run)
        used_eps = [round(v, 6) for v in state.class_eps.tolist()]
        stats = train_epoch(run, progress)
        state.epoch_stats = stats
        state.history.append(stats)
        run.host.epoch_end(state)
        distributed.check_agreement(agreed_state(run), processes, f"epoch {epoch}")
        record = {**stats.to_json(), "class_eps": used_eps, "higher_is_better": run.task.metric.higher_is_better}
        diagnostics = epoch_diagnostics(run)
        if diagnostics:
            record["diagnostics"] = diagnostics
        check = collapse_check(run, stats)
        if check is not None:
            record["collapse_check"] = check
        kept_best = is_new_best(run, stats)
        if run.best is not None:
            record["best"] = {**run.best, "new": kept_best}
        payload = checkpoint_payload(run)

        def write_epoch() -> None:
            # best, checkpoint, metrics line: a file names no epoch whose checkpoint is not on disk
            if kept_best:
                save_best(run)
            rundir.save_checkpoint(run_dir / rundir.CHECKPOINT_FILE, payload)
            write_metrics(metrics_path, metrics + [json.dumps(record)])
            metrics.append(json.dumps(record))
            history = [json.loads(line) for line in metrics]
            for logger in loggers:
                logger.log_epoch(record, history)

        distributed.on_main(write_epoch, processes, "the checkpoint")
        progress.end_epoch(stats)
    run.host.train_end(state)
    return _final_report(run, progress)


def _final_report(run: Run, progress: Progress) -> dict[str, Any]:
    """The evaluated model (the weight average where a plugin keeps one) on the test set, and
    the best checkpoint's where the run keeps one; both written by process 0."""
    state, processes, run_dir = run.state, run.processes, run.run_dir
    model = state.model
    parameters = run.host.averaged_weights(state)
    if parameters is not None:
        model = averaged_eval_model(run, parameters)
        payload = checkpoint_payload(run)
        payload["eval_model"] = model.state_dict()
        distributed.on_main(lambda: rundir.save_checkpoint(run_dir / rundir.CHECKPOINT_FILE, payload),
                            processes, "the checkpoint")
    report = {**evaluate_run(run, model, progress), "checkpoint": "last"}
    best_report = _best_report(run, progress) if run.best is not None else None
    fell = collapses(run)
    if fell and best_report is not None:  # catastrophic overfitting: report the model kept before it
        report = {**best_report, "last": {"checkpoint": "last", "summary": report["summary"]}}
    if best_report is not None:
        report["best"] = {**best_report["best"], "report": rundir.BEST_REPORT_FILE}
    if fell:
        report["collapse"] = {"epochs": fell}

    def write_report() -> None:
        if best_report is not None:
            write_json(run_dir / rundir.BEST_REPORT_FILE, best_report)
        write_json(run_dir / rundir.REPORT_FILE, report)
        plot_per_class(report, run_dir / rundir.PLOT_FILE, plot_title(run.config, report))

    distributed.on_main(write_report, processes, "the report")
    return report


def _best_report(run: Run, progress: Progress) -> dict[str, Any]:
    """The test report of the best checkpoint's weights (the last model is left as it is)."""
    weights, best = distributed.from_main(best_weights(run.run_dir) if run.processes.main else ({}, {}), run.processes)
    model = copy.deepcopy(run.state.model)
    model.load_state_dict(weights)
    return {**evaluate_run(run, model, progress), "checkpoint": "best", "best": best}


def agreed_state(run: Run) -> dict[str, Any]:
    """What every process must hold identically at epoch end."""
    state = run.state
    return {
        "the model's weights and BatchNorm statistics": state.model.state_dict(),
        "the epoch's statistics": {**state.epoch_stats.to_state(), "seconds": None, "cpu_seconds": None} if state.epoch_stats else None,
        "the per-class budget and weights": [state.class_eps, state.class_alpha, state.class_weights,
                                             state.regularizer_weights],
        **{f"plugin '{name}' state '{key}'": value
           for name, saved in run.host.state_dicts().items() for key, value in saved.items()},
    }


def epoch_diagnostics(run: Run) -> dict[str, float]:
    """The plugins' diagnostics of the epoch, over every process's steps."""
    state = run.state
    if run.processes.distributed:
        mine = {name: (total.cpu(), count) for name, (total, count) in state.diagnostics.items()}
        combined: dict[str, tuple[torch.Tensor, int]] = {}
        for part in distributed.gather_objects(mine, run.processes):
            for name, (total, count) in part.items():
                before, seen = combined.get(name, (torch.zeros_like(total), 0))
                combined[name] = (before + total, seen + count)
        state.diagnostics = combined
    return state.take_diagnostics()
