"""``pgd_step`` for CUDA tensors as Triton kernels (also runs on CPU under ``TRITON_INTERPRET=1``).

Linf is element-wise: one read of x', g, x (and the mask) and one write, a 2-D grid of
(sample, block) programs. L2 needs two per-sample reductions (the gradient norm and the norm
of the stepped perturbation), so one program owns one sample and sweeps it three times; the
second and third sweeps mostly hit cache. Arithmetic is float32 whatever the storage dtype
(float32, bfloat16, float16); the result is stored in the input dtype.
Same contract and result as :func:`robx.kernels.pgd_step.pgd_step_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from robx.kernels.pgd_step import Norm, per_sample

_LINF_BLOCK = 1024
_L2_BLOCK = 1024


@triton.jit
def _load_step(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, offsets, inside, HAS_MASK: tl.constexpr):
    """x', the (masked) gradient and x at ``offsets`` as float32."""
    grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if HAS_MASK:
        grad = tl.where(tl.load(mask_ptr + offsets, mask=inside, other=0) != 0, grad, 0.0)
    x_adv = tl.load(x_adv_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    x_orig = tl.load(x_orig_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    return x_adv, grad, x_orig


@triton.jit
def _linf_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, eps_ptr, alpha_ptr, mask_ptr, out_ptr, dim, low, high,
                 HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < dim
    offsets = row.to(tl.int64) * dim + cols
    x_adv, grad, x_orig = _load_step(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, offsets, inside, HAS_MASK)
    eps = tl.load(eps_ptr + row)
    alpha = tl.load(alpha_ptr + row)
    step = tl.where(grad > 0, alpha, tl.where(grad < 0, -alpha, 0.0))
    delta = tl.minimum(tl.maximum(x_adv + step - x_orig, -eps), eps)
    out = tl.minimum(tl.maximum(x_orig + delta, low), high)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _l2_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, eps_ptr, alpha_ptr, mask_ptr, out_ptr, dim, low, high,
               HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * dim
    grad_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, dim, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < dim
        grad = tl.load(grad_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
        if HAS_MASK:
            grad = tl.where(tl.load(mask_ptr + base + cols, mask=inside, other=0) != 0, grad, 0.0)
        grad_sq += grad * grad
    scale = tl.load(alpha_ptr + row) / tl.maximum(tl.sqrt(tl.sum(grad_sq, axis=0)), 1e-12)

    delta_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, dim, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < dim
        x_adv, grad, x_orig = _load_step(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, base + cols, inside, HAS_MASK)
        delta = x_adv + scale * grad - x_orig
        delta_sq += delta * delta
    factor = tl.minimum(tl.load(eps_ptr + row) / tl.maximum(tl.sqrt(tl.sum(delta_sq, axis=0)), 1e-12), 1.0)

    for start in range(0, dim, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < dim
        x_adv, grad, x_orig = _load_step(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, base + cols, inside, HAS_MASK)
        delta = (x_adv + scale * grad - x_orig) * factor
        out = tl.minimum(tl.maximum(x_orig + delta, low), high)
        tl.store(out_ptr + base + cols, out.to(out_ptr.dtype.element_ty), mask=inside)


def pgd_step_triton(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: Norm = "linf",
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    batch = x_adv.shape[0]
    dim = x_adv[0].numel() if batch else 0
    out = torch.empty_like(x_adv, memory_format=torch.contiguous_format)
    if batch == 0 or dim == 0:
        return out
    budget_like = torch.empty(batch, dtype=torch.float32, device=x_adv.device)
    eps_t = per_sample(eps, batch, budget_like).contiguous()
    alpha_t = per_sample(alpha, batch, budget_like).contiguous()
    has_mask = mask is not None
    mask_t = mask.to(torch.bool).expand(x_adv.shape).contiguous().view(torch.uint8) if has_mask else x_adv
    args = (x_adv.detach().contiguous(), grad.detach().contiguous(), x_orig.detach().contiguous(),
            eps_t, alpha_t, mask_t, out, dim, float(bounds[0]), float(bounds[1]))
    if norm == "linf":
        _linf_kernel[(batch, triton.cdiv(dim, _LINF_BLOCK))](*args, HAS_MASK=has_mask, BLOCK=_LINF_BLOCK)
    else:
        _l2_kernel[(batch,)](*args, HAS_MASK=has_mask, BLOCK=_L2_BLOCK)
    return out
