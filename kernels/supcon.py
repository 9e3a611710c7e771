"""Supervised contrastive loss (Khosla et al. 2020); the torch reference.

SRAT's feature separation loss (dissertation eq. 4.12) and MinGRE's uncertainty-weighted
contrastive loss are this op:

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

with P(i) the other batch members of y_i's class; an anchor without positives contributes
0. The batch loss is the mean over anchors, or sum_i w_i L_i / sum_i w_i with anchor
weights w. Rows of ``features`` should already be L2-normalised.
"""

from __future__ import annotations

import torch


def supcon_reference(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    n = features.shape[0]
    logits = features.float() @ features.float().T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_positives = positives.sum(dim=1)
    per_anchor = -torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = per_anchor / n_positives.clamp(min=1)
    if anchor_weights is None:
        return per_anchor.mean()
    weights = anchor_weights.float()
    return (weights * per_anchor).sum() / weights.sum().clamp(min=1e-12)
