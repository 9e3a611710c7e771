"""``supcon`` for CPU tensors: numba kernels streaming over blocks of the similarity matrix.

Row blocks of anchors run in parallel (numba threads). Each forms one (rows x cols) block of
s = z_i . z_j / t at a time with a single-threaded BLAS product, folds it into an online
logsumexp and the positive sums (forward) or into the block of dL/ds whose product with
z_cols accumulates the row block's gradient (backward), and drops it. Memory is
O(n d + threads x block^2), never n^2. BLAS is held to one thread while the kernels run:
multi-threaded OpenBLAS called from numba's OpenMP threads can hang, and its spinning
threads against numba's made the op 15x slower on 2 cores (2.2 s vs 0.13 s forward, n = 4096).
See :mod:`robx.kernels.supcon` for the math.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401 - numba's np.dot calls this BLAS; load it before limiting it
import torch
from threadpoolctl import ThreadpoolController

_MAX_BLOCK = 256


def _block_size(n: int) -> int:
    """Rows per block: at least four blocks per thread when n allows, 32..256 rows."""
    per_block = -(-n // (4 * numba.get_num_threads()))
    return int(min(_MAX_BLOCK, max(32, -(-per_block // 32) * 32)))


@numba.njit(cache=True)
def _fold_stats(sim, r0, c0, labels, run_max, run_sum, positive_sum, n_positives):  # pragma: no cover
    for a in range(sim.shape[0]):
        i = r0 + a
        block_max = -np.inf
        for b in range(sim.shape[1]):
            if c0 + b != i and sim[a, b] > block_max:
                block_max = sim[a, b]
        new_max = max(run_max[i], block_max)
        if new_max == -np.inf:
            continue
        acc = run_sum[i] * math.exp(run_max[i] - new_max)
        for b in range(sim.shape[1]):
            j = c0 + b
            if j == i:
                continue
            acc += math.exp(sim[a, b] - new_max)
            if labels[j] == labels[i]:
                positive_sum[i] += sim[a, b]
                n_positives[i] += 1.0
        run_sum[i] = acc
        run_max[i] = new_max


@numba.njit(parallel=True, cache=True)
def _stats_kernel(z, labels, inv_t, block, run_max, run_sum, positive_sum, n_positives):  # pragma: no cover
    n = z.shape[0]
    for row_block in numba.prange((n + block - 1) // block):
        r0 = row_block * block
        z_rows = np.ascontiguousarray(z[r0:min(n, r0 + block)])
        for c0 in range(0, n, block):
            sim = np.dot(z_rows, np.ascontiguousarray(z[c0:min(n, c0 + block)]).T) * inv_t
            _fold_stats(sim, r0, c0, labels, run_max, run_sum, positive_sum, n_positives)


@numba.njit(cache=True)
def _block_grad(sim, r0, c0, labels, lse, coef, pos_coef):  # pragma: no cover - compiled
    g = np.zeros_like(sim)
    for a in range(sim.shape[0]):
        i = r0 + a
        for b in range(sim.shape[1]):
            j = c0 + b
            if j == i:
                continue
            s = sim[a, b]
            value = coef[i] * math.exp(s - lse[i]) + coef[j] * math.exp(s - lse[j])
            if labels[j] == labels[i]:
                value -= pos_coef[i] + pos_coef[j]
            g[a, b] = value
    return g


@numba.njit(parallel=True, cache=True)
def _grad_kernel(z, labels, inv_t, block, lse, coef, pos_coef, grad):  # pragma: no cover - compiled
    n = z.shape[0]
    for row_block in numba.prange((n + block - 1) // block):
        r0 = row_block * block
        r1 = min(n, r0 + block)
        z_rows = np.ascontiguousarray(z[r0:r1])
        acc = np.zeros((r1 - r0, z.shape[1]), dtype=z.dtype)
        for c0 in range(0, n, block):
            z_cols = np.ascontiguousarray(z[c0:min(n, c0 + block)])
            sim = np.dot(z_rows, z_cols.T) * inv_t
            acc += np.dot(_block_grad(sim, r0, c0, labels, lse, coef, pos_coef), z_cols)
        grad[r0:r1] = acc * inv_t


@lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


class NumbaSupCon:
    """The :class:`robx.kernels.supcon.SupConBackend` for CPU tensors (computes in float32)."""

    def stats(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float):
        z = z.float()
        n = z.shape[0]
        run_max = np.full(n, -np.inf)
        run_sum, positive_sum, n_positives = (np.zeros(n) for _ in range(3))
        with _threadpools().limit(limits=1, user_api="blas"):
            _stats_kernel(z.numpy(), labels.numpy(), np.float32(inv_t), _block_size(n), run_max, run_sum,
                          positive_sum, n_positives)
        with np.errstate(divide="ignore"):  # n = 1: no other anchor, LSE = -inf
            lse = run_max + np.log(run_sum)
        return tuple(torch.from_numpy(a).float() for a in (lse, positive_sum, n_positives))

    def grad(self, z: torch.Tensor, labels: torch.Tensor, inv_t: float, lse: torch.Tensor,
             coef: torch.Tensor, pos_coef: torch.Tensor) -> torch.Tensor:
        z = z.float()
        grad = np.empty_like(z.numpy())
        with _threadpools().limit(limits=1, user_api="blas"):
            _grad_kernel(z.numpy(), labels.numpy(), np.float32(inv_t), _block_size(len(z)), lse.double().numpy(),
                         coef.double().numpy(), pos_coef.double().numpy(), grad)
        return torch.from_numpy(grad)
