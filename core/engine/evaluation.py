"""Evaluating a run: the evaluated model (the last iterate, or a plugin's average with its
BatchNorm statistics), the evaluation attack, the per-class report, and the statistics of a held-out
split (validation, the catastrophic-overfitting check)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from robx.core import distributed
from robx.core.attack_plans import AttackPlan
from robx.core.attacks import eval_mode, logits_of
from robx.core.averaging import cumulative_batchnorm, holds_buffers, with_parameters
from robx.core.config import TrainConfig
from robx.core.data import Split, batch_indices, check_subset_size, stratified_subset
from robx.core.distributed import BatchPasses
from robx.core.evaluate import evaluate, seeded_batches
from robx.core.registry import registry
from robx.core.report import build_report
from robx.core.stats import SplitStats
from robx.core.engine.build import Progress, Run
from robx.core.engine.step import forward_passes, on_batch_source, planned_attack, prepared_step, training_batch


def averaged_eval_model(run: Run, parameters: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The evaluated weight average, its BatchNorm statistics from the distribution the
    model trained on (docs/engine.md: never silently from clean images), unless the average
    holds them already (CFA's FAWA, as its authors average the whole state).

    One pass over the training set, shuffled with the run's seed, through the step's own
    data path: victims, the adversary attacking the averaged weights (with the last
    iterate's BN statistics for its eval-mode passes), ``augment``, then the step's
    train-mode :func:`forward_passes` without gradients, into cumulative BN averages.
    Across processes each passes its slice of every batch, and the averages then agree by
    the run's BN policy (``dist_bn``).
    """
    state, host, config = run.state, run.host, run.config
    attacked = with_parameters(state.model, parameters)
    if holds_buffers(state.model, parameters):  # the owner averaged BN statistics too (CFA)
        distributed.sync_batchnorm_statistics(attacked, config.dist_bn, run.processes)
        return attacked.eval()
    averaged = copy.deepcopy(attacked)
    generator = torch.Generator().manual_seed(config.seed)
    assert config.batch_size is not None
    batches = list(batch_indices(len(run.data.train), config.batch_size, generator))
    with cumulative_batchnorm(averaged):
        averaged.train()
        shards = distributed.rank_shards(batches, run.processes, run.smallest_batch)
        for idx in on_batch_source(run, [idx for idx, _ in shards]):
            step = prepared_step(run, *training_batch(run, idx), model=attacked)  # the average is attacked
            with torch.no_grad():
                forward_passes(BatchPasses(averaged), step, host.views)
    if not config.sync_bn:
        distributed.sync_batchnorm_statistics(averaged, config.dist_bn, run.processes)
    return averaged.eval()


def eval_attack(run: Run, name: str | None = None, *, eps: float | None = None, alpha: float | None = None,
                steps: int | None = None, options: dict[str, Any] | None = None) -> AttackPlan:
    """The run's evaluation attack: ``name`` (default: the task's ``default_attack``) at the
    training budget with the evaluation step size and steps, unless given."""
    config = run.config
    assert config.eval_alpha is not None and config.eval_steps is not None
    return planned_attack(run, registry().attack_name(name, run.task), eps=eps,
                          alpha=config.eval_alpha if alpha is None else alpha,
                          steps=config.eval_steps if steps is None else steps, options=options)


def evaluate_run(
    run: Run,
    model: torch.nn.Module,
    progress: Progress,
    attack: AttackPlan | None = None,
    n_eval: int | None = None,
) -> dict[str, Any]:
    config, data = run.config, run.data
    attack = attack or eval_attack(run)
    test = data.test
    n_eval = n_eval or config.n_eval
    check_subset_size(n_eval, data.num_classes, per_target=run.task.labels_per_target)
    if n_eval:
        test = test.subset(stratified_subset(test.labels, n_eval, config.data_seed,
                                             per_target=run.task.labels_per_target))
    progress.start_eval(len(test), f"eval {attack.describe()}")
    result = evaluate(model, run.task, test, attack, device=run.state.device,
                      batch_size=config.eval_batch_size, on_batch=progress.advance_eval, processes=run.processes)
    progress.end_eval()
    assert result.clean_outputs is not None and result.robust_outputs is not None
    details = run.task.report_details(test, result.clean_outputs, result.robust_outputs, attack.name)
    trained = data.class_counts()
    return build_report(result, data.classes, run.real_class_counts or trained, attack, run.task.metric, extra={
        **({"details": details} if details else {}),
        **({"trained_counts": trained} if trained != run.real_class_counts else {}),
        "task": run.task.name,
        "dataset": config.dataset,
        "plugins": run.host.listed,
        **({"parts": {recipe: [part for part, of in run.host.part_of.items() if of == recipe]
                      for recipe in run.host.recipe_options}} if run.host.part_of else {}),
        "seed": config.seed,
        "epochs": config.epochs,
        "model": config.model,
        "n_test": len(test),
        **({"n_eval": n_eval} if n_eval else {}),
        **({"note": f"evaluated on {len(test)} test examples, not the {n_eval} asked for: "
                    + ("that is the whole test split" if n_eval > len(test) else
                       "the stratified subset keeps at least one example of each class")}
           if n_eval and n_eval != len(test) else {}),
    })


def plot_title(config: TrainConfig, report: dict[str, Any]) -> str:
    """The dataset by its short name (``folder:/data/pets``: pets), the protocol, the model,
    the plugins and the attack (budgets as k/255)."""
    dataset = (config.dataset or "").rpartition(":")[2].rstrip("/").rpartition("/")[2] or config.dataset
    return (f"{dataset} {config.imbalance}-{config.ratio:g} | {config.model} | {'+'.join(report['plugins'])} | "
            f"{report['attack']['description']}")


def split_stats(run: Run, split: Split, attack: AttackPlan) -> SplitStats:
    """Clean and robust statistics of a held-out split under ``attack`` (the model in eval
    mode). As in :func:`robx.core.evaluate.evaluate`, batch k has a random stream seeded
    from (seed, k) and runs on process k mod W; the processes' sums are added up."""
    config, state, processes = run.config, run.state, run.processes
    tracker = run.task.statistics(state.device)
    with eval_mode(state.model):
        for _, idx in seeded_batches(len(split), config.eval_batch_size, config.seed, processes, state.device):
            part = split.subset(idx)
            x, y, labels = run.task.inputs(part.x.to(state.device)), part.y.to(state.device), part.labels.to(state.device)
            x_adv = attack(state.model, run.task, x, y, labels)
            with torch.no_grad():
                tracker.update(labels, y, logits_of(state.model, x), logits_of(state.model, x_adv))
    distributed.sum_across(tracker.summed_tensors(), processes)
    return tracker.result()
