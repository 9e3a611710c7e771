"""Formulas and data types several built-in plugins share. Not a plugin: it registers no hook.

Plugins import these instead of importing each other, so each plugin file stands alone
and no plugin depends on another plugin's module, options or state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx import TaskData

# ---------------------------------------------------------------------------
# data a task and its datasets share
# ---------------------------------------------------------------------------


@dataclass
class GraphData(TaskData):
    """Task data whose examples are signals on a graph's nodes (the crime task's grids): what
    its datasets return and the task reads beyond :class:`robx.core.data.TaskData`."""

    #: (nodes, nodes) adjacency, handed to the model (``ModelInput.graph``)
    graph: torch.Tensor | None = None
    #: names along the targets' last axis (crime categories), for the report
    target_names: list[str] | None = None


# ---------------------------------------------------------------------------
# attack starts, targets and divergences
# ---------------------------------------------------------------------------


def soft_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels -> one-hot rows; soft rows pass through."""
    return targets if targets.is_floating_point() else F.one_hot(targets, num_classes).float()


def kl_per_sample(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) per row (TRADES, MART)."""
    clean_log_probs = F.log_softmax(clean_logits, dim=1)
    return (clean_log_probs.exp() * (clean_log_probs - F.log_softmax(adv_logits, dim=1))).sum(dim=1)


# ---------------------------------------------------------------------------
# class-balanced weights (Cui et al., CVPR 2019) and their deferred schedule
# ---------------------------------------------------------------------------


def class_balanced_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 - beta) / (1 - beta^n_c), normalised to sum to the number of classes."""
    counts = class_counts.double()
    effective_number = (1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
    weights = 1.0 / effective_number.clamp(min=1e-12)
    return (weights * len(counts) / weights.sum()).float()


def deferred_start_epoch(epochs: int, start: float, start_epoch: int | None) -> int:
    """T_d of deferred re-weighting: ``start_epoch``, else ``start`` x epochs rounded."""
    return start_epoch if start_epoch is not None else int(round(start * epochs))


def warn_if_barely_used(plugin: str, what: str, first_epoch: int, epochs: int, option: str) -> None:
    """One warning when a method's schedule leaves it (almost) unused in this run: ``what``
    takes effect from ``first_epoch`` (from 0), so it shapes fewer than 2 of ``epochs``."""
    from robx import warn

    active = max(0, epochs - first_epoch)
    if active >= 2 or active == epochs:
        return
    if active == 0:
        said = (f"{what} would take effect from epoch {first_epoch + 1}, after the run's {epochs} epoch(s): "
                "this run trains without them")
    else:
        said = f"{what} take effect only in the last of the run's {epochs} epochs: this run barely trains with them"
    warn(f"{plugin}: {said}; give more --epochs or set {option}")


# ---------------------------------------------------------------------------
# mixing (mixup, Remix, Imb-Mix)
# ---------------------------------------------------------------------------


def draw_mix(batch: int, concentration: float, device: torch.device) -> tuple[float, torch.Tensor]:
    """lam ~ Beta(a, a) and a partner permutation, from torch's seeded generator."""
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    return lam, torch.randperm(batch, device=device)


def mix_inputs(inputs: torch.Tensor, lam: float, partner: torch.Tensor) -> torch.Tensor:
    return lam * inputs + (1.0 - lam) * inputs[partner]


def mix_targets(targets: torch.Tensor, label_lam: torch.Tensor | float, partner: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """label_lam (scalar or per row) * t_i + (1 - label_lam) * t_j, for hard or soft t."""
    soft = soft_targets(targets, num_classes)
    lam = torch.as_tensor(label_lam, dtype=soft.dtype, device=soft.device)
    lam = lam[:, None] if lam.dim() == 1 else lam
    return lam * soft + (1.0 - lam) * soft[partner]


def mix_labels(labels: torch.Tensor, label_lam: torch.Tensor | float, partner: torch.Tensor) -> torch.Tensor:
    """The class a mixed row counts for: its own where its label weight is at least 1/2,
    else its partner's."""
    own = torch.as_tensor(label_lam, device=labels.device) >= 0.5
    return torch.where(own, labels, labels[partner])


def remix_label_factor(
    count_i: torch.Tensor, count_j: torch.Tensor, lam: float, kappa: float, tau: float
) -> torch.Tensor:
    """Remix's per-pair label factor (Chou et al. 2020):
    0 if n_i / n_j >= kappa and lam < tau; 1 if n_i / n_j <= 1 / kappa and 1 - lam < tau;
    else lam."""
    ratio = count_i.double() / count_j.double()
    factor = torch.full_like(ratio, lam)
    factor = torch.where((ratio >= kappa) & (lam < tau), torch.zeros_like(ratio), factor)
    factor = torch.where((ratio <= 1.0 / kappa) & (1.0 - lam < tau), torch.ones_like(ratio), factor)
    return factor.float()


# ---------------------------------------------------------------------------
# the "DNN" of the crowd-label learners (dissertation 3.3.2: MV+DNN, D&S+DNN, ICED's F)
# ---------------------------------------------------------------------------


class FeatureClassifier(torch.nn.Module):
    """F = FC(G(x)): a two-layer feature extractor G (ReLU) and a linear head."""

    def __init__(self, inputs: int, classes: int, hidden: int = 128, embedding: int = 32) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                            torch.nn.Linear(hidden, embedding), torch.nn.ReLU())
        self.head = torch.nn.Linear(embedding, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
               epochs: int, batch_size: int) -> None:
    """Cross-entropy mini-batch training (shuffled with the global torch stream)."""
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(batch_size):
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
