"""robx against the authors' code, one step at a time, without their checkouts.

tests/fixtures/parity.pt holds what the authors' unmodified functions computed
(benchmarks/parity/steps.py ran them: TRADES, MART, DAFA, CFA, LDAM-DRW at the commits the
file names, torchattacks' PGD and PGDL2, torch.optim.swa_utils) on fixed weights, batches and
start noise, in float64. Each test runs robx's engine step, or its plugin's per-class hook,
on the same inputs and checks the numbers the reference recorded: x', the loss, every
parameter gradient, and the schedules. The one difference robx declares (docs/parity.md:
BatchNorm running statistics, from one train-mode pass per input distribution, clean first)
is checked against a hand replay of each side's passes.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.parity import steps  # noqa: E402

TOLERANCE = 1e-6  # relative, as the issue of float precision asks of fp32; the steps run in fp64


def widened(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(steps.DTYPE) if value.dtype == torch.float32 else value
    if isinstance(value, dict):
        return {k: widened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [widened(v) for v in value]
    return value


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    saved = torch.load(steps.FIXTURE, weights_only=True)
    return {"references": saved["references"], "weights": widened(saved["weights"]),
            "inputs": widened(saved["inputs"]), "cases": saved["cases"], "schedules": widened(saved["schedules"])}


def case_names() -> list[str]:
    saved = torch.load(steps.FIXTURE, weights_only=True)
    return [f"{case['name']}-{case['batch']}" for case in saved["cases"]]


def test_the_fixture_names_each_reference_commit(recorded: dict[str, Any]) -> None:
    references = recorded["references"]
    for key, repository in (("trades", "yaodongyu/TRADES"), ("mart", "YisenWang/MART"), ("dafa", "rucy74/DAFA"),
                            ("cfa", "PKU-ML/CFA"), ("ldam-drw", "kaidic/LDAM-DRW")):
        name, commit = references[key].split("@")
        assert name == repository and len(commit) == 40
    # both batches have saturated pixels, where a start clamped to the box would differ
    for batch in recorded["inputs"].values():
        assert float(((batch["x"] == 0) | (batch["x"] == 1)).double().mean()) > 0.4


@pytest.mark.parametrize("label", case_names())
def test_one_step_equals_the_reference(recorded: dict[str, Any], label: str) -> None:
    case = next(c for c in recorded["cases"] if f"{c['name']}-{c['batch']}" == label)
    case = {**case, "robx": widened(case["robx"]), "reference": widened(case["reference"])}
    found = steps.run_case(case, recorded["inputs"], recorded["weights"])
    # x' agrees to the float32 rounding of the budget (robx keeps per-class eps in float32)
    assert found["x_adv_max_abs"] < TOLERANCE, found
    if "loss_rel" in found:
        assert found["loss_rel"] < TOLERANCE, found
        assert found["grads_max_rel"] < TOLERANCE, found


# which train-mode passes each side makes in one step, in order (the BatchNorm difference)
REFERENCE_PASSES = {"trades": ("clean", "adversarial", "clean"), "cfa": ("clean", "adversarial", "clean"),
                    "dafa": ("adversarial", "clean"), "mart": ("clean", "adversarial"),
                    "ldam-drw": ("adversarial",)}
ROBX_PASSES = {"trades": ("clean", "adversarial"), "cfa": ("clean", "adversarial"), "dafa": ("clean", "adversarial"),
               "mart": ("clean", "adversarial"), "ldam-drw": ("adversarial",)}


def replayed_buffers(weights: dict[str, torch.Tensor], head: str, passes: tuple[str, ...], x: torch.Tensor,
                     x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """BatchNorm's running statistics after the given train-mode passes, by torch alone."""
    model = steps.model_with(weights, head)
    model.train()
    with torch.no_grad():
        for kind in passes:
            model(x if kind == "clean" else x_adv)
    return {name: b for name, b in model.named_buffers() if b.is_floating_point()}


@pytest.mark.parametrize("name", sorted(REFERENCE_PASSES))
def test_batchnorm_statistics_follow_each_sides_passes(recorded: dict[str, Any], name: str) -> None:
    for case in (c for c in recorded["cases"] if c["name"] == name):
        case = {**case, "robx": widened(case["robx"]), "reference": widened(case["reference"])}
        batch = recorded["inputs"][case["batch"]]
        weights = recorded["weights"][case["head"]]
        x_adv = case["reference"]["x_adv"]
        reference = replayed_buffers(weights, case["head"], REFERENCE_PASSES[name], batch["x"], x_adv)
        assert steps.max_rel(case["reference"]["buffers"], reference) < TOLERANCE  # what the authors' code does
        mine = steps.robx_step(batch, weights, **case["robx"])["buffers"]
        robx = replayed_buffers(weights, case["head"], ROBX_PASSES[name], batch["x"], x_adv)
        assert steps.max_rel(mine, robx) < TOLERANCE  # robx: one pass per distribution, clean first


def test_schedules_equal_the_references(recorded: dict[str, Any]) -> None:
    found = steps.schedule_differences(recorded["schedules"], recorded["weights"]["linear"])
    assert set(found) == {"dafa class weights (max abs)", "cfa eps_c (max abs)", "cfa b_c (max abs)",
                          "cfa FAWA average (max rel)", "ldam margins (max abs)",
                          "ldam cosine head outputs (max abs)", "drw weights, epochs 0-199 (max abs)",
                          "swa average (max rel)", "ema average (max rel)",
                          "ema average vs timm ModelEmaV3 (max rel)"}
    assert all(value < TOLERANCE for value in found.values()), found


def test_the_clamped_start_is_an_option_and_moves_saturated_pixels(recorded: dict[str, Any]) -> None:
    case = next(c for c in recorded["cases"] if c["name"] == "trades" and c["batch"] == "balanced")
    robx = copy.deepcopy(widened(case["robx"]))
    robx["plugin_options"]["trades"]["start_in_box"] = True
    batch = recorded["inputs"]["balanced"]
    clamped = steps.robx_step(batch, recorded["weights"]["linear"], **robx)["x_adv"]
    reference = widened(case["reference"])["x_adv"]
    moved = (clamped - reference).abs() > 1e-6
    assert moved.any()
    # only where the Gaussian start left the box can the first gradient differ; the rest follow
    outside = ((batch["x"] + 0.001 * batch["normal"]) < 0) | ((batch["x"] + 0.001 * batch["normal"]) > 1)
    assert bool(outside.flatten(1).any(1)[moved.flatten(1).any(1)].all())
