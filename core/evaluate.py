"""Per-class clean and robust scores of a model on a labelled split (docs/protocols.md, Metrics).

Every example gets the task's metric on its clean input and on its adversarial input, the
attack a registered one (:class:`robx.core.attacks.AttackPlan`); this module names none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from robx.core.attack_plans import AttackPlan
from robx.core.attacks import eval_mode, logits_of
from robx.core.distributed import SINGLE, Processes, gather_objects, owned_batches, rank_seed

if TYPE_CHECKING:
    from robx.core.data import Split
    from robx.core.task import Task


@dataclass
class EvalResult:
    """Per-example scores (CPU float tensors) on clean and adversarial inputs, and the
    labels they belong to (per target, of the same shape, for tasks that label every target)."""

    labels: torch.Tensor
    clean_scores: torch.Tensor
    robust_scores: torch.Tensor
    clean_outputs: torch.Tensor | None = None  # the model's outputs, for the task's report details
    robust_outputs: torch.Tensor | None = None

    def per_class(self, num_classes: int) -> tuple[list[float | None], list[float | None], list[int]]:
        """Mean clean and robust score of every class (``None`` for a class without test
        examples: it has no score, not a score of 0), and its number of examples."""
        labels = self.labels.flatten()
        counts = torch.bincount(labels, minlength=num_classes)
        denominator = counts.clamp(min=1).double()

        def mean(scores: torch.Tensor) -> list[float | None]:
            sums = torch.bincount(labels, weights=scores.double().flatten(), minlength=num_classes)
            return [value if count else None for value, count in zip((sums / denominator).tolist(), counts.tolist())]

        return mean(self.clean_scores), mean(self.robust_scores), counts.tolist()


def seeded_batches(n: int, batch_size: int, seed: int, processes: Processes,
                   device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """This process's evaluation batches (k, example indices) of ``n`` examples: batch k runs
    on process k mod W with torch's random stream seeded from (seed, k), so its attack does
    not depend on the batches before it or on W; the caller's stream is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for k in owned_batches(-(-n // batch_size), processes):
            torch.manual_seed(rank_seed(seed, k))
            yield k, torch.arange(k * batch_size, min((k + 1) * batch_size, n))


def evaluate(
    model: nn.Module,
    task: Task,
    split: Split,
    attack: AttackPlan,
    *,
    device: torch.device,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
    processes: Processes = SINGLE,
) -> EvalResult:
    """Clean and attacked scores of every example of ``split``, the model in eval mode.

    Batch k (examples k*batch_size onwards) is attacked with a random stream seeded from
    (``attack.seed``, k), so its result does not depend on the batches before it: across
    processes, batch k runs on process k mod W and the scores are gathered in order, the
    same numbers as one process. The caller's random stream is left as it was.
    """
    count = -(-len(split) // batch_size)
    results: dict[int, tuple[torch.Tensor, ...]] = {}
    with eval_mode(model):
        for k, idx in seeded_batches(len(split), batch_size, attack.seed, processes, device):
            part = split.subset(idx)
            x, y = task.inputs(part.x.to(device)), part.y.to(device)
            with torch.no_grad():
                clean_outputs = logits_of(model, x)
            x_adv = attack(model, task, x, y, part.labels.to(device))
            with torch.no_grad():
                robust_outputs = logits_of(model, x_adv)
                results[k] = (task.scores(clean_outputs, y).cpu(), task.scores(robust_outputs, y).cpu(),
                              clean_outputs.float().cpu(), robust_outputs.float().cpu())
            if on_batch is not None:  # the examples of this round of batches, all processes'
                on_batch(min(len(split), (k - processes.rank + processes.world_size) * batch_size)
                         - (k - processes.rank) * batch_size)
    for gathered in gather_objects(results, processes):
        results.update(gathered)
    clean, robust, clean_outputs, robust_outputs = (torch.cat([results[k][i] for k in range(count)]) for i in range(4))
    return EvalResult(split.labels.cpu(), clean, robust, clean_outputs, robust_outputs)
