"""Every kernel implementation equals the torch reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robx.kernels import implementation_name, pgd_step
from robx.kernels.pgd_step import pgd_step_reference

numba_kernel = pytest.importorskip("robx.kernels.pgd_step_numba", reason="numba not installed")


@st.composite
def step_case(draw):
    batch = draw(st.integers(1, 5))
    shape = (batch,) + tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(shape, generator=generator)
    x_adv = (x + 0.2 * torch.randn(shape, generator=generator)).clamp(0, 1)
    grad = torch.randn(shape, generator=generator)
    grad[torch.rand(shape, generator=generator) < 0.1] = 0.0  # sign(0) = 0
    eps = torch.rand(batch, generator=generator) * 0.5 + 1e-3
    alpha = eps * 0.3
    mask = torch.rand(shape, generator=generator) < 0.7 if draw(st.booleans()) else None
    return x_adv, grad, x, eps, alpha, draw(st.sampled_from(["linf", "l2"])), mask


@settings(max_examples=60, deadline=None)
@given(step_case(), st.booleans())
def test_numba_pgd_step_equals_the_reference(case, scalar_budget):
    x_adv, grad, x, eps, alpha, norm, mask = case
    if scalar_budget:
        eps, alpha = float(eps[0]), float(alpha[0])
    expected = pgd_step_reference(x_adv, grad, x, eps, alpha, norm, mask)
    got = numba_kernel.pgd_step_numba(x_adv, grad, x, eps, alpha, norm, mask)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # float32, same operation order


def test_dispatch_picks_numba_for_float32_cpu_and_honours_the_switch(monkeypatch):
    assert implementation_name("pgd_step", "cpu") == "numba"
    monkeypatch.setenv("ROBX_KERNELS", "reference")
    assert implementation_name("pgd_step", "cpu") == "torch-reference"
    x = torch.rand(2, 3, dtype=torch.float64)  # not float32: the reference serves
    assert torch.equal(pgd_step(x, x, x, 0.1, 0.01), pgd_step_reference(x, x, x, 0.1, 0.01))
