"""``pgd_step`` for CUDA tensors as Triton kernels (also runs on CPU under ``TRITON_INTERPRET=1``).

Linf is element-wise: one read of x', g, x (and the mask) and one write, a 2-D grid of
(sample, block) programs. L2 needs two per-sample norms, ||g|| and the norm of the stepped
perturbation u = d + s g (d = x' - x, s = alpha / ||g||); the second follows from three sums
of one read sweep, ||u||^2 = ||d||^2 + 2 s <d, g> + s^2 ||g||^2. A sample of up to
``_L2_CHUNK`` elements is one program that sweeps it three times (the later sweeps hit
cache). Larger samples (224 x 224 images: 150k elements) are split into chunks, a 2-D grid of
(sample, chunk) programs twice: the first writes each chunk's three partial sums, the second
adds its sample's partials in a fixed order (deterministic, no atomics) and updates its chunk
(the round-1 kernel kept one program per sample there and reached 27 % of an H100's
bandwidth). Arithmetic is float32 whatever the storage dtype (float32, bfloat16, float16);
the result is stored in the input dtype.
Same contract and result as :func:`robx.kernels.pgd_step.pgd_step_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from robx.kernels.pgd_step import Norm, per_sample

_LINF_BLOCK = 1024
_L2_BLOCK = 1024
#: elements of a sample one program handles in the L2 step; larger samples are split
_L2_CHUNK = 16 * 1024


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


@triton.jit
def _l2_partials_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, partials_ptr, dim, chunks,
                        HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """partials[row, chunk] = (||g||^2, <d, g>, ||d||^2) over the chunk's elements."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    base = row.to(tl.int64) * dim
    grad_sq = tl.zeros([BLOCK], dtype=tl.float32)
    delta_grad = tl.zeros([BLOCK], dtype=tl.float32)
    delta_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK):
        cols = chunk * CHUNK + start + tl.arange(0, BLOCK)
        inside = cols < dim
        x_adv, grad, x_orig = _load_step(x_adv_ptr, grad_ptr, x_orig_ptr, mask_ptr, base + cols, inside, HAS_MASK)
        delta = x_adv - x_orig
        grad_sq += grad * grad
        delta_grad += delta * grad
        delta_sq += delta * delta
    out = partials_ptr + (row * chunks + chunk) * 3
    tl.store(out, tl.sum(grad_sq, axis=0))
    tl.store(out + 1, tl.sum(delta_grad, axis=0))
    tl.store(out + 2, tl.sum(delta_sq, axis=0))


@triton.jit
def _l2_update_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, eps_ptr, alpha_ptr, mask_ptr, out_ptr, partials_ptr, dim,
                      chunks, low, high, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                      CHUNKS_POW2: tl.constexpr):
    """The step on one chunk, from the sample's sums: the same scale and factor in every chunk."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    parts = tl.arange(0, CHUNKS_POW2)
    held = parts < chunks
    sums = partials_ptr + (row * chunks + parts) * 3
    grad_sq = tl.sum(tl.load(sums, mask=held, other=0.0), axis=0)
    delta_grad = tl.sum(tl.load(sums + 1, mask=held, other=0.0), axis=0)
    delta_sq = tl.sum(tl.load(sums + 2, mask=held, other=0.0), axis=0)
    scale = tl.load(alpha_ptr + row) / tl.maximum(tl.sqrt(grad_sq), 1e-12)
    stepped_sq = tl.maximum(delta_sq + 2.0 * scale * delta_grad + scale * scale * grad_sq, 0.0)
    factor = tl.minimum(tl.load(eps_ptr + row) / tl.maximum(tl.sqrt(stepped_sq), 1e-12), 1.0)
    base = row.to(tl.int64) * dim
    for start in range(0, CHUNK, BLOCK):
        cols = chunk * CHUNK + start + tl.arange(0, BLOCK)
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
    elif dim <= _L2_CHUNK:
        _l2_kernel[(batch,)](*args, HAS_MASK=has_mask, BLOCK=_L2_BLOCK)
    else:
        chunks = triton.cdiv(dim, _L2_CHUNK)
        partials = torch.empty((batch, chunks, 3), dtype=torch.float32, device=x_adv.device)
        x_adv_c, grad_c, x_orig_c = args[:3]
        _l2_partials_kernel[(batch, chunks)](x_adv_c, grad_c, x_orig_c, mask_t, partials, dim, chunks,
                                             HAS_MASK=has_mask, BLOCK=_L2_BLOCK, CHUNK=_L2_CHUNK)
        _l2_update_kernel[(batch, chunks)](x_adv_c, grad_c, x_orig_c, eps_t, alpha_t, mask_t, out, partials, dim,
                                           chunks, float(bounds[0]), float(bounds[1]), HAS_MASK=has_mask,
                                           BLOCK=_L2_BLOCK, CHUNK=_L2_CHUNK,
                                           CHUNKS_POW2=triton.next_power_of_2(chunks))
    return out
