"""Supervised contrastive loss (Khosla et al. 2020): the torch reference and the fused op.

SRAT's feature separation loss (dissertation eq. 4.12) and MinGRE's uncertainty-weighted
contrastive loss are this op:

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )
        = LSE_i - 1/|P(i)| sum_{p in P(i)} s_ip,     s_ij = z_i.z_j / t,  LSE_i = log sum_{a != i} exp s_ia

with P(i) the other batch members of y_i's class; an anchor without positives contributes
0. The batch loss is the mean over anchors, or sum_i w_i L_i / sum_i w_i with anchor
weights w. Rows of ``features`` should already be L2-normalised.

The fused op (:class:`FusedSupCon`) never holds the n x n similarity matrix: a backend
streams over column blocks and returns three numbers per anchor (LSE_i with an online
logsumexp, the positive sum, |P(i)|); the backward pass streams again with

    dL/ds_ij = c_i (softmax_ij - [j in P(i)] / |P(i)|),   c_i = w_i [|P(i)| > 0] / sum_k w_k
    dL/dz_i  = 1/t sum_j (dL/ds_ij + dL/ds_ji) z_j          (s is symmetric)

so memory stays linear in n. dL/dw_i = (L_i - L) / sum_k w_k when the weights need a gradient.
"""

from __future__ import annotations

from typing import Protocol

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


class SupConBackend(Protocol):
    """The two streamed passes a fused implementation provides (float32 results)."""

    def stats(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per anchor: LSE_i over a != i, sum of s_ip over positives, |P(i)| (as float)."""
        ...

    def grad(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float, lse: torch.Tensor,
             coef: torch.Tensor, pos_coef: torch.Tensor) -> torch.Tensor:
        """1/t sum_j (G_ij + G_ji) z_j with G_ij = coef_i softmax_ij - [j in P(i)] pos_coef_i."""
        ...


class FusedSupCon(torch.autograd.Function):
    """The loss and its gradients from a streaming backend; same value as the reference."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
                anchor_weights: torch.Tensor | None, temperature: float,
                backend: SupConBackend) -> torch.Tensor:
        z = features.detach().contiguous()
        labels = labels.contiguous()
        inv_t = 1.0 / temperature
        lse, positive_sum, n_positives = backend.stats(z, labels, inv_t)
        has_positive = n_positives > 0
        per_anchor = torch.where(has_positive, lse - positive_sum / n_positives.clamp(min=1), 0.0)
        weights = (torch.ones_like(per_anchor) if anchor_weights is None
                   else anchor_weights.detach().float())
        total = weights.sum().clamp(min=1e-12)
        loss = (weights * per_anchor).sum() / total
        ctx.save_for_backward(z, labels, lse, n_positives, weights, per_anchor, loss)
        ctx.inv_t, ctx.backend, ctx.total = inv_t, backend, total
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        z, labels, lse, n_positives, weights, per_anchor, loss = ctx.saved_tensors
        grad_features = grad_weights = None
        if ctx.needs_input_grad[0]:
            coef = grad_loss * weights * (n_positives > 0) / ctx.total
            pos_coef = coef / n_positives.clamp(min=1)
            finite_lse = torch.where(torch.isfinite(lse), lse, 0.0)  # n = 1: no other anchors
            grad_features = ctx.backend.grad(z, labels, ctx.inv_t, finite_lse, coef, pos_coef).to(z.dtype)
        if ctx.needs_input_grad[2]:
            grad_weights = grad_loss * (per_anchor - loss) / ctx.total
        return grad_features, None, grad_weights, None, None
