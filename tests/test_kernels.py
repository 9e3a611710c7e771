"""Every kernel implementation equals the torch reference (values and gradients).

Triton kernels run on CUDA tensors when a GPU is present, else on CPU tensors under
``TRITON_INTERPRET=1`` (set in conftest.py); the references always run on CPU.
Tolerances: float32 pgd_step 1e-6 absolute (same operations, different order for L2);
float32 supcon 1e-5 relative on the loss and 1e-5 absolute on gradients (blocked sums);
bfloat16 one bf16 rounding step of the value; topk_victims exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from robx.kernels import DISPATCH, dispatch_rule, implementation_name, pgd_step, supcon, topk_victims
from robx.kernels.pgd_step import pgd_step_reference
from robx.kernels.supcon import FusedSupCon, supcon_reference
from robx.kernels.topk_victims import topk_victims_reference

numba_pgd = pytest.importorskip("robx.kernels.pgd_step_numba", reason="numba not installed")
triton_pgd = pytest.importorskip("robx.kernels.pgd_step_triton", reason="triton not installed")
from robx.kernels.supcon_numba import NumbaSupCon  # noqa: E402
from robx.kernels.supcon_triton import TritonSupCon  # noqa: E402
from robx.kernels.topk_victims_numba import topk_victims_numba  # noqa: E402
from robx.kernels.topk_victims_triton import topk_victims_triton  # noqa: E402

PGD_STEPS = {"numba": numba_pgd.pgd_step_numba, "triton": triton_pgd.pgd_step_triton}
SUPCON_BACKENDS = {"numba": NumbaSupCon, "triton": TritonSupCon}
TOPK = {"numba": topk_victims_numba, "triton": topk_victims_triton}
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def placed(implementation: str, *values):
    """The inputs on the device the implementation runs on (tensors moved; numbers and None kept)."""
    device = TRITON_DEVICE if implementation == "triton" else torch.device("cpu")
    return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in values)


# --------------------------------------------------------------------------- pgd_step


@st.composite
def step_case(draw):
    batch = draw(st.integers(1, 5))
    shape = (batch,) + tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(shape, generator=generator)
    on_edges = torch.rand(shape, generator=generator) < draw(st.floats(0.0, 1.0))
    x = torch.where(on_edges, x.round(), x)  # pixels at 0 or 1, where the box and the ball meet
    x_adv = (x + 0.2 * torch.randn(shape, generator=generator)).clamp(0, 1)
    grad = torch.randn(shape, generator=generator)
    grad[torch.rand(shape, generator=generator) < 0.1] = 0.0  # sign(0) = 0
    if draw(st.booleans()):
        grad[0] = 0.0  # a whole example without gradient: L2 divides by its norm
    eps = torch.rand(batch, generator=generator) * 0.5 + 1e-3
    eps = torch.where(torch.rand(batch, generator=generator) < draw(st.floats(0.0, 0.5)), 0.0, eps)  # no budget
    alpha = eps * draw(st.floats(0.05, 2.0))
    mask = None
    if draw(st.booleans()):
        mask_shape = (batch, 1) + shape[2:] if len(shape) > 2 and draw(st.booleans()) else shape
        mask = torch.rand(mask_shape, generator=generator) < 0.7  # broadcast masks too
    if draw(st.booleans()):  # strided views, as a slice of a larger tensor gives them
        x_adv, grad, x = (torch.stack([t, t], dim=-1)[..., 0] for t in (x_adv, grad, x))
    return x_adv, grad, x, eps, alpha, draw(st.sampled_from(["linf", "l2"])), mask


BOXES = st.sampled_from([(0.0, 1.0), (-math.inf, math.inf), (-0.25, 1.5)])  # pixels, none (z-scores), other


@pytest.mark.parametrize("implementation", ["numba", "triton"])
@settings(max_examples=40, deadline=None)
@given(case=step_case(), scalar_budget=st.booleans(), bounds=BOXES)
def test_pgd_step_equals_the_reference(implementation, case, scalar_budget, bounds):
    x_adv, grad, x, eps, alpha, norm, mask = case
    if scalar_budget:
        eps, alpha = float(eps[0]), float(alpha[0])
    expected = pgd_step_reference(x_adv, grad, x, eps, alpha, norm, mask, bounds)
    got = PGD_STEPS[implementation](*placed(implementation, x_adv, grad, x, eps, alpha, norm, mask), bounds).cpu()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    no_budget = (torch.as_tensor(eps) == 0).expand(len(x))
    assert torch.equal(got[no_budget], x[no_budget].clamp(*bounds))  # eps 0: x itself
    assert torch.isfinite(got).all()  # a zero gradient never divides by zero


@settings(max_examples=20, deadline=None)
@given(case=step_case(), bounds=BOXES)
def test_pgd_step_in_float64_through_the_dispatcher_equals_the_reference(case, bounds):
    x_adv, grad, x, eps, alpha, norm, mask = (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                                              else t for t in case)
    expected = pgd_step_reference(x_adv, grad, x, eps, alpha, norm, mask, bounds)
    got = pgd_step(x_adv, grad, x, eps, alpha, norm, mask, bounds)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(case=step_case())
def test_triton_pgd_step_in_bfloat16_rounds_the_float32_result(case):
    x_adv, grad, x, eps, alpha, norm, mask = case
    x_adv, grad, x = (t.bfloat16() for t in (x_adv, grad, x))
    expected = pgd_step_reference(x_adv.float(), grad.float(), x.float(), eps, alpha, norm, mask)
    got = triton_pgd.pgd_step_triton(*placed("triton", x_adv, grad, x, eps, alpha, norm, mask)).cpu()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2**-8, atol=2**-9)  # one bf16 rounding


def test_pgd_step_reference_keeps_inputs_in_the_task_box_by_hand():
    x = torch.tensor([[0.1, 0.9, -2.0]])
    grad = torch.tensor([[-1.0, 1.0, -1.0]])
    # Linf step 0.3 inside eps 0.5: 0.1 - 0.3, 0.9 + 0.3, -2.0 - 0.3
    unbounded = pgd_step_reference(x, grad, x, 0.5, 0.3, bounds=(-math.inf, math.inf))
    assert unbounded[0].tolist() == pytest.approx([-0.2, 1.2, -2.3])
    assert pgd_step_reference(x, grad, x, 0.5, 0.3)[0].tolist() == pytest.approx([0.0, 1.0, 0.0])  # pixels: [0, 1]


# --------------------------------------------------------------------------- supcon


@st.composite
def supcon_case(draw):
    n = draw(st.integers(1, 70))
    dim = draw(st.integers(1, 40))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    features = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    labels = torch.randint(0, draw(st.integers(1, 6)), (n,), generator=generator)
    weights = torch.rand(n, generator=generator) + 0.05 if draw(st.booleans()) else None
    return features, labels, weights, draw(st.sampled_from([0.07, 0.1, 0.5, 1.0]))


def loss_and_grads(loss_fn, features, labels, weights, temperature, dtype=torch.float32):
    features = features.detach().to(dtype).requires_grad_(True)  # a fresh leaf: inputs are shared between calls
    weights = weights.detach().clone().requires_grad_(True) if weights is not None else None
    loss = loss_fn(features, labels, weights, temperature)
    loss.backward()
    return tuple(None if t is None else t.cpu() for t in (loss.detach(), features.grad,
                                                          None if weights is None else weights.grad))


def reference(features, labels, weights, temperature):
    return supcon_reference(features, labels, temperature, weights)


@pytest.mark.parametrize("implementation", ["numba", "triton"])
@settings(max_examples=30, deadline=None)
@given(case=supcon_case())
def test_supcon_forward_and_backward_equal_the_reference(implementation, case):
    backend = SUPCON_BACKENDS[implementation]()

    def fused(features, labels, weights, temperature):
        return FusedSupCon.apply(features, labels, weights, temperature, backend)

    expected = loss_and_grads(reference, *case)
    got = loss_and_grads(fused, *placed(implementation, *case))
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5)
    if case[2] is not None:
        torch.testing.assert_close(got[2], expected[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("implementation", ["numba", "triton"])
def test_supcon_in_bfloat16_matches_the_reference_on_the_same_inputs(implementation):
    generator = torch.Generator().manual_seed(3)
    features = F.normalize(torch.randn(96, 32, generator=generator), dim=1)
    labels = torch.randint(0, 4, (96,), generator=generator)
    backend = SUPCON_BACKENDS[implementation]()
    expected = loss_and_grads(reference, features, labels, None, 0.1, torch.bfloat16)
    got = loss_and_grads(lambda f, y, w, t: FusedSupCon.apply(f, y, w, t, backend),
                         *placed(implementation, features, labels, None, 0.1), torch.bfloat16)
    assert got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)  # both compute in float32
    torch.testing.assert_close(got[1].float(), expected[1].float(), rtol=2**-7, atol=1e-5)


def test_supcon_anchors_without_positives_contribute_zero_and_get_zero_gradient():
    for implementation, backend in (("numba", NumbaSupCon()), ("triton", TritonSupCon())):
        features, labels = placed(implementation, F.normalize(torch.randn(4, 8), dim=1),
                                  torch.tensor([0, 1, 2, 3]))  # nobody has a positive
        features.requires_grad_(True)
        loss = FusedSupCon.apply(features, labels, None, 0.1, backend)
        (grad,) = torch.autograd.grad(loss, features)
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_triton_supcon_splits_the_columns_across_programs_and_still_equals_the_reference():
    from robx.kernels.supcon_triton import _split

    # B = 4096 in 64 x 64 blocks: 64 row blocks, so 5 column slices of 13 blocks make 320 >= 264 programs
    assert _split(4096, 64, 64) == (5, 13 * 64)
    assert _split(100, 64, 64) == (2, 64)  # 2 row blocks, 2 column blocks: each slice one block
    generator = torch.Generator().manual_seed(5)
    features = F.normalize(torch.randn(300, 16, generator=generator), dim=1)  # 5 slices of 64 columns
    labels = torch.randint(0, 7, (300,), generator=generator)
    weights = torch.rand(300, generator=generator) + 0.05
    backend = TritonSupCon()
    expected = loss_and_grads(reference, features, labels, weights, 0.07)
    got = loss_and_grads(lambda f, y, w, t: FusedSupCon.apply(f, y, w, t, backend),
                         *placed("triton", features, labels, weights, 0.07))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- topk_victims


@st.composite
def topk_case(draw):
    batch = draw(st.integers(1, 4))
    shape = (batch,) + tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=2)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    saliency = torch.randn(shape, generator=generator)
    if draw(st.booleans()):
        saliency = torch.round(saliency * 2) / 2  # many ties, including -0.0 and 0.0
    weights = None
    if draw(st.booleans()):
        weights = torch.rand(shape[1:] if draw(st.booleans()) else shape, generator=generator)
    saliency = saliency.to(draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64])))
    if draw(st.booleans()):  # a strided view
        saliency = torch.stack([saliency, saliency], dim=-1)[..., 1]
    units = saliency[0].numel()
    return saliency, draw(st.integers(0, units)), weights


@pytest.mark.parametrize("implementation", ["numba", "triton"])
@settings(max_examples=40, deadline=None)
@given(case=topk_case())
def test_topk_victims_equals_the_reference(implementation, case):
    saliency, k, weights = case
    expected = topk_victims_reference(saliency, k, weights)
    got = TOPK[implementation](*placed(implementation, saliency, k, weights)).cpu()
    assert got.dtype == torch.bool and got.shape == saliency.shape
    assert torch.equal(got, expected)
    assert (got.reshape(saliency.shape[0], -1).sum(dim=1) == k).all()


def test_triton_topk_decides_scores_that_differ_only_in_their_last_bits():
    """Keys equal in their upper three bytes: the fourth radix sweep decides, by hand."""
    ulp = torch.tensor(1.0).nextafter(torch.tensor(2.0)) - 1.0
    order = torch.tensor([5, 0, 7, 2, 6, 1, 4, 3, 2])  # 1 + order * ulp; order 2 twice (a tie)
    saliency = (1.0 + order * ulp).reshape(1, -1)
    assert len(set(saliency.view(torch.int32)[0].tolist())) == 8  # distinct floats, one tie
    got = topk_victims_triton(*placed("triton", saliency, 4, None)).cpu()
    assert got[0].nonzero().flatten().tolist() == [0, 2, 4, 6]  # 5, 7, 6 and 4 times ulp
    got = topk_victims_triton(*placed("triton", saliency, 7, None)).cpu()
    assert got[0].nonzero().flatten().tolist() == [0, 2, 3, 4, 6, 7, 8]  # 2 ulp twice: both, with 3
    got = topk_victims_triton(*placed("triton", saliency, 6, None)).cpu()
    assert got[0].nonzero().flatten().tolist() == [0, 2, 3, 4, 6, 7]  # one of the tied pair: the lower index


def test_topk_victims_reference_keeps_the_largest_scores_and_the_lower_index_on_ties():
    saliency = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2]])
    assert topk_victims_reference(saliency, 2).tolist() == [[False, True, False, True, False]]
    assert topk_victims_reference(saliency, 1).tolist() == [[False, True, False, False, False]]
    weights = torch.tensor([1.0, 0.1, 1.0, 1.0, 10.0])  # reweighting changes the choice
    assert topk_victims_reference(saliency, 2, weights).tolist() == [[False, False, False, True, True]]
    with pytest.raises(ValueError, match="k must lie in"):
        topk_victims(saliency, 6)


# --------------------------------------------------------------------------- dispatch


def test_dispatch_follows_the_table_by_device_dtype_and_size_and_honours_the_switch(monkeypatch):
    for op in ("pgd_step", "topk_victims"):
        assert implementation_name(op, "cpu") == "numba"
        assert implementation_name(op, "cuda") == "triton"
    assert implementation_name("supcon", "cpu", size=1024) == "torch-reference"
    assert implementation_name("supcon", "cpu", size=4096) == "numba"
    assert implementation_name("supcon", "cuda", size=8192) == "torch-reference"
    assert dispatch_rule("supcon", "cpu") == "torch-reference, numba from 2048"
    assert implementation_name("pgd_step", "cpu", torch.bfloat16) == "torch-reference"
    assert implementation_name("supcon", "cpu", torch.bfloat16, size=4096) == "numba"  # computes in float32
    monkeypatch.setenv("ROBX_KERNELS", "reference")
    assert implementation_name("supcon", "cpu", size=4096) == "torch-reference"
    x = torch.rand(2, 3, dtype=torch.float64)
    assert torch.equal(pgd_step(x, x, x, 0.1, 0.01), pgd_step_reference(x, x, x, 0.1, 0.01))
    with pytest.raises(ValueError, match="unknown kernel op"):
        implementation_name("nosuch", "cpu")


KERNEL_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "kernels"
# column of a benchmark row -> the implementation it timed (torch.topk and torch.compile are
# not implementations: topk breaks the tie rule, compile is not what a run calls)
TIMED = {"eager_ms": "torch-reference", "reference_stable_sort_ms": "torch-reference",
         "numba_ms": "numba", "triton_ms": "triton"}
TOPK_UNITS = {"crime graph": 256, "224x224 pixels": 224 * 224}


def measured_rows():
    for path in sorted(KERNEL_RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        device_type = "cpu" if result["device"] == "cpu" else "cuda"
        for op in ("pgd_step", "supcon", "topk_victims"):
            for row in result.get(op, []):
                if op == "pgd_step":
                    size = math.prod(row["shape"][1:])
                elif op == "supcon":
                    size = row["batch"]
                else:
                    size = row.get("units", TOPK_UNITS.get(row["shape"]))
                times = {TIMED[key]: value for key, value in row.items() if key in TIMED}
                yield path.name, op, device_type, size, times


def test_the_dispatch_table_names_the_fastest_measured_implementation_of_every_benchmark_row():
    rows = list(measured_rows())
    assert {(op, device) for _, op, device, _, _ in rows} == set(DISPATCH), "every table entry has evidence"
    for source, op, device_type, size, times in rows:
        chosen = [name for smallest, name in DISPATCH[(op, device_type)] if size >= smallest][-1]
        assert chosen in times, f"{source}: {op} at {size} never timed {chosen}"
        # 5 %: repeated runs of one benchmark differ by this much here
        assert times[chosen] <= 1.05 * min(times.values()), f"{source}: {op} at {size}: {times}, table: {chosen}"


def test_dispatched_supcon_is_the_fused_op_on_cpu_from_the_tables_size():
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(2048, 8, generator=generator), dim=1).requires_grad_(True)
    labels = torch.randint(0, 10, (2048,), generator=generator)
    loss = supcon(features, labels, 0.1)
    assert loss.grad_fn is not None and type(loss.grad_fn).__name__ == "FusedSupConBackward"
    torch.testing.assert_close(loss, supcon_reference(features, labels, 0.1))
    small = supcon(features[:10], labels[:10], 0.1)
    assert type(small.grad_fn).__name__ != "FusedSupConBackward"


# --------------------------------------------------------------------------- wiring: the topk plugin


def test_topk_plugin_lets_the_adversary_move_only_the_most_salient_pixels():
    from types import SimpleNamespace

    from robx.core.attacks import Attack, cross_entropy, pgd
    from robx.core.state import Step
    from robx.plugins.topk import TopK

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    plugin = TopK(TopK.Options(fraction=0.25))
    state = SimpleNamespace(model=model, task=SimpleNamespace(attack_loss=cross_entropy, victim_unit=None,
                                                              input_bounds=(0.0, 1.0)))
    attack = Attack(model=model, x=x, y=y, eps=torch.full((6,), 0.1), alpha=torch.full((6,), 0.05), steps=3,
                    norm="linf", bounds=(0.0, 1.0), task_loss=cross_entropy)
    mask = plugin.select_victims(step=Step(x=x, y=y, labels=y, attack=attack), state=state)
    assert mask.shape == (6, 1, 8, 8) and (mask.flatten(1).sum(dim=1) == 16).all()
    # STPGD's saliency by its definition: || ReLU(dL/dx) ||_2 over the channels of each pixel
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(leaf), y, reduction="sum").backward()
    saliency = leaf.grad.relu().pow(2).sum(dim=1).sqrt().flatten(1)
    model.zero_grad(set_to_none=True)
    chosen, others = saliency[mask.flatten(1)].view(6, 16), saliency[~mask.flatten(1)].view(6, 48)
    assert (chosen.min(dim=1).values >= others.max(dim=1).values).all()
    assert all(p.grad is None for p in model.parameters())
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.05, steps=3, mask=mask)
    moved = (x_adv != x).any(dim=1, keepdim=True)
    assert not (moved & ~mask).any() and moved.any()


def test_topk_plugin_trains_end_to_end_and_rejects_pixels_of_flat_inputs(tmp_path):
    from conftest import tiny_config

    from robx.core.engine import train
    from robx.core.errors import RobxError
    from robx.core.state import Step
    from robx.plugins.topk import TopK

    report = train(tiny_config(epochs=1, plugins=["topk"]), tmp_path / "run")
    assert 0.0 <= report["summary"]["robust"]["overall"] <= 1.0
    with pytest.raises(RobxError, match="granularity=element"):
        TopK(TopK.Options(granularity="pixel")).select_victims(step=Step(x=torch.rand(2, 5), y=torch.zeros(2, dtype=torch.long), labels=torch.zeros(2, dtype=torch.long)),
                                            state=None)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("grad_layout", ["channels_last", "nchw"])
def test_numba_pgd_step_on_channels_last_batches_equals_the_reference_and_keeps_the_layout(norm, grad_layout):
    """channels_last batches are stepped in their memory order; the values are the NCHW
    reference's (the layout must not change which pixel belongs to which sample)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(5, 3, 6, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    x_adv = (x + 0.02 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    grad = torch.randn(x.shape, generator=generator)
    grad = grad.contiguous(memory_format=torch.channels_last) if grad_layout == "channels_last" else grad
    mask = torch.rand(5, 1, 6, 7, generator=generator) > 0.5
    eps = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05])
    for chosen in (None, mask):
        stepped = numba_pgd.pgd_step_numba(x_adv, grad, x, eps, 0.01, norm, chosen)
        expected = pgd_step_reference(x_adv.contiguous(), grad.contiguous(), x.contiguous(), eps, 0.01, norm, chosen)
        torch.testing.assert_close(stepped, expected, atol=1e-6, rtol=0)
        assert stepped.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("with_mask", [False, True])
def test_triton_l2_step_split_across_programs_equals_the_reference(monkeypatch, with_mask):
    """Samples larger than one program's chunk take the two-kernel path (partial sums, then
    the update); a small chunk makes a 3 x 40 x 40 sample span four chunks, the last partial."""
    monkeypatch.setattr(triton_pgd, "_L2_CHUNK", 1280)
    monkeypatch.setattr(triton_pgd, "_L2_BLOCK", 256)
    generator = torch.Generator().manual_seed(3)
    shape = (3, 3, 40, 40)
    x = torch.rand(shape, generator=generator)
    x_adv = (x + 0.05 * torch.randn(shape, generator=generator)).clamp(0, 1)
    grad = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.5 if with_mask else None
    eps = torch.tensor([0.5, 2.0, 50.0])  # the ball binds, binds less, does not bind
    alpha = torch.tensor([0.3, 1.0, 0.5])
    for bounds in ((0.0, 1.0), (-math.inf, math.inf)):
        expected = pgd_step_reference(x_adv, grad, x, eps, alpha, "l2", mask, bounds)
        got = triton_pgd.pgd_step_triton(*placed("triton", x_adv, grad, x, eps, alpha, "l2", mask), bounds).cpu()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
