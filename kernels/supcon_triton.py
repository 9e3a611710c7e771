"""``supcon`` for CUDA tensors: Triton kernels in the style of flash attention.

Each program owns BLOCK_M anchors and their whole feature vectors (d <= 1024), streams the
other rows in BLOCK_N blocks, forms the block of s = z_i . z_j / t with ``tl.dot`` (float32
"ieee" products, as the torch reference), and folds it into an online logsumexp and the
positive sums (forward) or into the anchors' gradient (backward, recomputing s instead of
storing it). Memory is O(n d): no n x n matrix exists. See :mod:`robx.kernels.supcon`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_DIM = 1024


@triton.jit
def _stats_kernel(z_ptr, labels_ptr, lse_ptr, positive_sum_ptr, n_positives_ptr, n, dim, inv_t,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    feat_ok = feats < dim
    z_rows = tl.load(z_ptr + rows[:, None] * dim + feats[None, :],
                     mask=row_ok[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
    row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], tl.float32)
    positive_sum = tl.zeros([BLOCK_M], tl.float32)
    n_positives = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        z_cols = tl.load(z_ptr + cols[:, None] * dim + feats[None, :],
                         mask=col_ok[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
        col_labels = tl.load(labels_ptr + cols, mask=col_ok, other=-1)
        sim = tl.dot(z_rows, tl.trans(z_cols), input_precision="ieee") * inv_t
        valid = col_ok[None, :] & (rows[:, None] != cols[None, :])
        sim = tl.where(valid, sim, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(sim, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(sim - shift[:, None]), axis=1)
        run_max = new_max
        positive = valid & (row_labels[:, None] == col_labels[None, :])
        positive_sum += tl.sum(tl.where(positive, sim, 0.0), axis=1)
        n_positives += tl.sum(positive.to(tl.float32), axis=1)
    lse = tl.where(run_sum > 0, run_max + tl.log(tl.maximum(run_sum, 1e-30)), float("-inf"))  # n = 1: -inf
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(positive_sum_ptr + rows, positive_sum, mask=row_ok)
    tl.store(n_positives_ptr + rows, n_positives, mask=row_ok)


@triton.jit
def _grad_kernel(z_ptr, labels_ptr, lse_ptr, coef_ptr, pos_coef_ptr, grad_ptr, n, dim, inv_t,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    feat_ok = feats < dim
    z_rows = tl.load(z_ptr + rows[:, None] * dim + feats[None, :],
                     mask=row_ok[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
    row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    row_lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    row_coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    row_pos_coef = tl.load(pos_coef_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        z_cols = tl.load(z_ptr + cols[:, None] * dim + feats[None, :],
                         mask=col_ok[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
        col_labels = tl.load(labels_ptr + cols, mask=col_ok, other=-1)
        col_lse = tl.load(lse_ptr + cols, mask=col_ok, other=0.0)
        col_coef = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
        col_pos_coef = tl.load(pos_coef_ptr + cols, mask=col_ok, other=0.0)
        sim = tl.dot(z_rows, tl.trans(z_cols), input_precision="ieee") * inv_t
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        positive = valid & (row_labels[:, None] == col_labels[None, :])
        g = (row_coef[:, None] * tl.exp(sim - row_lse[:, None])
             + col_coef[None, :] * tl.exp(sim - col_lse[None, :])
             - tl.where(positive, row_pos_coef[:, None] + col_pos_coef[None, :], 0.0))
        g = tl.where(valid, g, 0.0)
        acc += tl.dot(g, z_cols, input_precision="ieee")
    tl.store(grad_ptr + rows[:, None] * dim + feats[None, :], acc * inv_t,
             mask=row_ok[:, None] & feat_ok[None, :])


def _blocks(dim: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(dim))
    block = 64 if block_d <= 128 else (32 if block_d <= 512 else 16)
    return block, block, block_d


class TritonSupCon:
    """The :class:`robx.kernels.supcon.SupConBackend` for CUDA tensors with d <= MAX_DIM."""

    max_dim = MAX_DIM

    def stats(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float):
        n, dim = z.shape
        lse, positive_sum, n_positives = (torch.empty(n, dtype=torch.float32, device=z.device)
                                          for _ in range(3))
        block_m, block_n, block_d = _blocks(dim)
        _stats_kernel[(triton.cdiv(n, block_m),)](z, labels, lse, positive_sum, n_positives, n, dim, inv_t,
                                                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        return lse, positive_sum, n_positives

    def grad(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float, lse: torch.Tensor,
             coef: torch.Tensor, pos_coef: torch.Tensor) -> torch.Tensor:
        n, dim = z.shape
        grad = torch.empty((n, dim), dtype=torch.float32, device=z.device)
        block_m, block_n, block_d = _blocks(dim)
        _grad_kernel[(triton.cdiv(n, block_m),)](z, labels, lse.float().contiguous(), coef.float().contiguous(),
                                                 pos_coef.float().contiguous(), grad, n, dim, inv_t,
                                                 BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
        return grad
