"""One training step of robx beside the authors' code: the same weights, batch and start noise.

    python benchmarks/parity/steps.py --trades PATH --mart PATH --ldam-drw PATH --cfa PATH --dafa PATH
        [--write-fixture]

Each PATH is a checkout of the authors' repository (its commit is recorded):
yaodongyu/TRADES, YisenWang/MART, kaidic/LDAM-DRW, PKU-ML/CFA, rucy74/DAFA. Their files are
imported unmodified. What is patched, and only while a reference function runs: ``.cuda()``
and ``torch.cuda.FloatTensor`` (device calls; the latter becomes the dtype of the case, so
that the whole step runs in float64), CFA's ``normalize_cifar`` (robx's model normalises its
inputs itself, so the reference gets the identity), and the random draws of the attack start
(``torch.randn``, ``torch.randn_like``, ``torch.rand_like``, ``Tensor.uniform_``,
``Tensor.normal_``), which return a tensor this harness supplies, the same tensor to both
sides. PGD (L-inf, L2) is checked against torchattacks, SWA and EMA against
``torch.optim.swa_utils`` and (where installed) timm's ``ModelEmaV3``.

Setting: robx's ``mlp`` (two Linear-BatchNorm-ReLU blocks, 64 wide, its input normalisation
first) on the 8x8 digits, weights from seed 0, in float64 on both sides (float32 sign-PGD amplifies a
last-bit difference into a full step: docs/parity.md), two batches: balanced (2 images per
class) and imbalanced (8, 4, 1, 1, 1, 1 of classes 0-5, none of 6-9). About half of their
pixels are 0 or 1, so the unclamped start of the authors' code is exercised.

Compared per case: the adversarial examples (max abs difference), the loss and the
parameter gradients after backward (max relative difference, over the largest gradient of
each tensor), BatchNorm's running statistics after the step, and the per-class schedules
from the same inputs (DAFA's weights from one probability memory, CFA's eps_c and b_c from
one set of accuracies and its FAWA average over a gated sequence, LDAM's margins and cosine
head, DRW's weights at every epoch of the authors' 200, SWA and EMA averages).

Writes benchmarks/results/parity/steps.json (every comparison, with the references' commits)
and, with ``--write-fixture``, tests/fixtures/parity.pt: the inputs and the references'
outputs, which tests/test_parity.py checks robx against without the checkouts.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "parity.pt"
DTYPE = torch.float64
MODEL = "mlp"  # robx's MLP: two Linear-BatchNorm-ReLU blocks (64 wide) and a linear or cosine head
EPS, ALPHA, STEPS = 0.3, 0.1, 3  # on 8x8 digits (pixels in [0, 1]) a budget that moves the predictions
L2_EPS, L2_ALPHA = 1.5, 0.5
BETA = 6.0
BALANCED = [c for c in range(10) for _ in range(2)]
IMBALANCED = [0] * 8 + [1] * 4 + [2, 3, 4, 5]


# ---------------------------------------------------------------------------
# inputs shared by both sides
# ---------------------------------------------------------------------------


def digits_batch(labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training images of each class, in the order ``labels`` asks for them."""
    from robx.core.registry import registry

    data = registry().dataset("digits").read(None, 0, {})
    x, y = data.train.x, data.train.labels
    taken: dict[int, int] = {}
    rows = []
    for label in labels:
        indices = (y == label).nonzero().flatten()
        rows.append(int(indices[taken.get(label, 0)]))
        taken[label] = taken.get(label, 0) + 1
    return x[rows].to(DTYPE), y[rows].clone()


def case_inputs(labels: list[int], seed: int) -> dict[str, torch.Tensor]:
    """The batch and the start noise of one case: N(0, 1) and U(0, 1) of the batch's shape,
    and a U(0, 1) radius per example (the L2 start)."""
    x, y = digits_batch(labels)
    generator = torch.Generator().manual_seed(seed)
    # drawn in float32 and widened, so that the float32 fixture holds them exactly
    return {"x": x, "y": y,
            "normal": torch.randn(x.shape, generator=generator).to(DTYPE),
            "uniform": torch.rand(x.shape, generator=generator).to(DTYPE),
            "radius": torch.rand(len(y), generator=generator).to(DTYPE)}


def initial_weights(head: str = "linear") -> dict[str, torch.Tensor]:
    """The model's weights for the digits (seed 0): float32 values (exact in the float32 fixture), as float64."""
    return {name: t.to(DTYPE) if t.is_floating_point() else t.clone()
            for name, t in fresh_model(head, seed=0).state_dict().items()}


def fresh_model(head: str, seed: int | None = None) -> nn.Module:
    from robx.core.registry import registry
    from robx.core.task import ModelInput

    if seed is not None:
        torch.manual_seed(seed)
    data = registry().dataset("digits").read(None, 0, {})
    spec = ModelInput(shape=tuple(data.train.x.shape[1:]), outputs=data.num_classes, mean=data.mean,
                      std=data.std, head=head)
    return registry().build_model(MODEL, spec)


def model_with(weights: dict[str, torch.Tensor], head: str = "linear") -> nn.Module:
    model = fresh_model(head).to(DTYPE)
    model.load_state_dict(weights)
    return model


class Logits(nn.Module):
    """robx's model as the references call it: ``model(x) -> logits``; it remembers the
    input of each train-mode call (the reference builds x' inside its loss function)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train_inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_inputs.append(x.detach().clone())
        out = self.model(x)
        return out[1] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------
# patches: the random draws of the start, the device calls
# ---------------------------------------------------------------------------


@contextmanager
def drawn(normal: torch.Tensor | None = None, uniform: torch.Tensor | None = None,
          radius: torch.Tensor | None = None) -> Iterator[dict[str, int]]:
    """Every random draw in the block returns a supplied tensor: N(0, 1) draws ``normal``,
    U(0, 1) draws of the batch's size ``uniform``, of one value per example ``radius``
    (``Tensor.uniform_(a, b)`` maps them to [a, b]). Counts the draws per kind; a draw of
    another size, or of a kind not supplied, is an error."""
    counts = {"normal": 0, "uniform": 0, "radius": 0}

    def pick(numel: int, kind: str) -> torch.Tensor:
        if kind == "normal":
            chosen, name = normal, "normal"
        elif uniform is not None and numel == uniform.numel():
            chosen, name = uniform, "uniform"
        else:
            chosen, name = radius, "radius"
        if chosen is None or chosen.numel() != numel:
            raise AssertionError(f"an unexpected {kind} draw of {numel} values")
        counts[name] += 1
        return chosen

    def shaped(size: Any) -> tuple[int, ...]:
        return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)

    def randn(*size: Any, **kwargs: Any) -> torch.Tensor:
        return pick(math.prod(shaped(size)), "normal").reshape(shaped(size)).clone()

    def randn_like(t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return pick(t.numel(), "normal").reshape(t.shape).to(t).clone()

    def rand(*size: Any, dtype: Any = None, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return pick(math.prod(shaped(size)), "uniform").reshape(shaped(size)).to(dtype or DTYPE).clone()

    def rand_like(t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return pick(t.numel(), "uniform").reshape(t.shape).to(t).clone()

    def uniform_(self: torch.Tensor, a: float = 0.0, b: float = 1.0, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.copy_(a + (b - a) * pick(self.numel(), "uniform").reshape(self.shape))

    def normal_(self: torch.Tensor, mean: float = 0.0, std: float = 1.0, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.copy_(mean + std * pick(self.numel(), "normal").reshape(self.shape))

    with mock.patch("torch.randn", randn), mock.patch("torch.randn_like", randn_like), \
            mock.patch("torch.rand", rand), mock.patch("torch.rand_like", rand_like), \
            mock.patch.object(torch.Tensor, "uniform_", uniform_), mock.patch.object(torch.Tensor, "normal_", normal_):
        yield counts


@contextmanager
def on_this_machine(dtype: torch.dtype = DTYPE) -> Iterator[None]:
    """The references' device calls on this machine: ``.cuda()`` returns the tensor or module
    itself, ``torch.cuda.FloatTensor`` is ``dtype`` on the CPU."""
    class CaseTensor:  # torch.cuda.FloatTensor(values) and t.type(torch.cuda.FloatTensor)
        def __new__(cls, values: Any) -> torch.Tensor:  # type: ignore[misc]
            return torch.as_tensor(np.asarray(values), dtype=dtype)

    original_type = torch.Tensor.type

    def tensor_type(self: torch.Tensor, wanted: Any = None, **kwargs: Any) -> Any:
        if wanted is CaseTensor:
            return self.to(dtype)
        return original_type(self, wanted, **kwargs) if wanted is not None else original_type(self)

    with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(nn.Module, "cuda", lambda self, *a, **k: self), \
            mock.patch.object(torch.cuda, "FloatTensor", CaseTensor, create=True), \
            mock.patch.object(torch.Tensor, "type", tensor_type):
        yield


def load_reference(checkout: Path, file: str, name: str) -> ModuleType:
    """A reference file imported unmodified (its folder first on sys.path for its own imports)."""
    sys.path.insert(0, str(checkout))
    try:
        spec = importlib.util.spec_from_file_location(name, checkout / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(checkout))


def reference_block(path: Path, first: str, last: str) -> str:
    """The lines of a reference script from the one containing ``first`` to the one
    containing ``last``, dedented: code the authors wrote inline (not as a function), run
    as they wrote it."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if first in line)
    end = next(i for i in range(start, len(lines)) if last in lines[i])
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def commit_of(checkout: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                          check=True).stdout.strip()


# ---------------------------------------------------------------------------
# robx's side: one engine step
# ---------------------------------------------------------------------------


def robx_step(inputs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], plugins: list[str],
              plugin_options: dict[str, dict[str, Any]] | None = None, loss: str = "ce", norm: str = "linf",
              eps: float = EPS, alpha: float = ALPHA, steps: int = STEPS, epochs: int = 1, epoch: int = 0,
              plugin_states: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One step of robx's engine (``train_step``) on the batch, from ``weights``, with the
    supplied start noise; the plugins' state and the epoch as given, the per-class
    quantities asked for as at an epoch's start. Returns x', the loss, the parameter
    gradients, the BatchNorm buffers after the step and the run's per-class quantities."""
    from robx.core.config import TrainConfig
    from robx.core.engine import build_run, refresh_class_quantities, train_step
    from robx.core.hookspecs import hookimpl

    config = TrainConfig(dataset="digits", model=MODEL, plugins=plugins, loss=loss, norm=norm, eps=eps,
                         alpha=alpha, steps=steps, epochs=epochs, batch_size=len(inputs["y"]), weight_decay=0.0,
                         momentum=0.0, seed=0, device="cpu", plugin_options=plugin_options or {})
    with tempfile.TemporaryDirectory() as folder:
        run = build_run(config, Path(folder) / "run")
    model = run.state.model.to(DTYPE)
    model.load_state_dict(weights)
    run.state.epoch = epoch
    if plugin_states:
        run.host.load_state_dicts(plugin_states)
    refresh_class_quantities(run)

    class Recorder:
        x_adv: torch.Tensor | None = None

        @hookimpl
        def after_step(self, step: Any, state: Any) -> None:
            self.x_adv = step.x_adv.detach().clone()

    recorder = Recorder()
    run.host.manager.register(recorder, name="parity-recorder")
    tracker = run.task.statistics(run.state.device)
    sums: dict[str, torch.Tensor] = {}
    y = inputs["y"]
    with drawn(inputs["normal"], inputs["uniform"], inputs["radius"]) as draws:
        train_step(run, inputs["x"], y, y, tracker, sums)
    state = run.state
    return {"x_adv": recorder.x_adv, "loss": float(sums["loss"]) / len(y),
            "grads": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
            "buffers": {name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()},
            "class_eps": state.class_eps.clone(), "class_alpha": state.class_alpha.clone(),
            "class_weights": None if state.class_weights is None else state.class_weights.clone(),
            "regularizer_weights": None if state.regularizer_weights is None else state.regularizer_weights.clone(),
            "class_counts": state.class_counts.clone(), "draws": draws}


def reference_step(model: nn.Module, loss_of: Callable[[Logits], torch.Tensor],
                   inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The reference's loss function on ``model`` with the supplied noise, then backward."""
    wrapped = Logits(model)
    with on_this_machine(), drawn(inputs["normal"], inputs["uniform"], inputs["radius"]) as draws:
        loss = loss_of(wrapped)
    loss.backward()
    x = inputs["x"]
    adversarial = [t for t in wrapped.train_inputs if not torch.equal(t, x)]
    return {"x_adv": adversarial[-1] if adversarial else None, "loss": float(loss.detach()),
            "grads": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
            "buffers": {name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()},
            "draws": draws, "train_passes": len(wrapped.train_inputs)}


def optimizer_of(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)  # the references zero its gradients; it never steps


# ---------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| over the largest |b| of each tensor, over all tensors."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-30))
               for k in a)


def compare_steps(robx: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    out = {"x_adv_max_abs": max_abs(robx["x_adv"], reference["x_adv"]),
           "loss_rel": abs(robx["loss"] - reference["loss"]) / max(abs(reference["loss"]), 1e-30),
           "grads_max_rel": max_rel(robx["grads"], reference["grads"]),
           "batchnorm_max_rel": max_rel(robx["buffers"], reference["buffers"])}
    return out


# ---------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------

BATCHES = {"balanced": (BALANCED, 1), "imbalanced": (IMBALANCED, 2)}


def step_case(name: str, batch: str, robx_kwargs: dict[str, Any], reference: dict[str, Any],
              head: str = "linear") -> dict[str, Any]:
    """A recorded step case: robx's call and the reference's outputs (what the fixture keeps)."""
    return {"name": name, "batch": batch, "head": head, "robx": robx_kwargs,
            "reference": {k: reference[k] for k in ("x_adv", "loss", "grads", "buffers") if k in reference}}


FAWA_WORST = (0.10, 0.30, 0.20, 0.50)  # worst-class validation robust accuracy: below the gate (0.24) twice


def perturbed_states(weights: dict[str, torch.Tensor], seed: int, count: int, buffers: bool) -> list[dict[str, Any]]:
    """``count`` models' states near ``weights`` (N(0, 0.1^2) added to the parameters, and to
    the BatchNorm statistics with ``buffers``): the epochs of an average. Seeded, so that
    the tests build the same ones."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(count):
        model = model_with(weights)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.is_floating_point() and (buffers or name in dict(model.named_parameters())):
                    tensor.add_((torch.randn(tensor.shape, generator=generator) * 0.1).abs_().to(DTYPE)
                                if "running_var" in name else
                                (torch.randn(tensor.shape, generator=generator) * 0.1).to(DTYPE))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


def pgd_cases(weights: dict[str, torch.Tensor], inputs: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """PGD (L-inf, L2) against torchattacks' PGD and PGDL2 (uniform start in the ball, model
    in eval mode): x' only, as torchattacks has no training loss."""
    import torchattacks

    cases = []
    for norm, eps, alpha, attack_type in (("linf", EPS, ALPHA, torchattacks.PGD),
                                          ("l2", L2_EPS, L2_ALPHA, torchattacks.PGDL2)):
        for batch, batch_inputs in inputs.items():
            model = Logits(model_with(weights))
            attack = attack_type(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
            with drawn(batch_inputs["normal"], batch_inputs["uniform"], batch_inputs["radius"]):
                x_adv = attack(batch_inputs["x"], batch_inputs["y"])
            cases.append(step_case(f"pgd-{norm}", batch, dict(plugins=["pgd"], norm=norm, eps=eps, alpha=alpha),
                                   {"x_adv": x_adv.detach()}))
    return cases


def trades_cases(checkout: Path, weights: dict[str, torch.Tensor],
                 inputs: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """TRADES (yaodongyu/TRADES ``trades_loss``, beta 6): x', loss, gradients, BN."""
    trades = load_reference(checkout, "trades.py", "reference_trades")
    cases = []
    for batch, batch_inputs in inputs.items():
        model = model_with(weights)
        out = reference_step(model, lambda m: trades.trades_loss(
            m, batch_inputs["x"], batch_inputs["y"], optimizer_of(model), step_size=ALPHA, epsilon=EPS,
            perturb_steps=STEPS, beta=BETA, distance="l_inf"), batch_inputs)
        cases.append(step_case("trades", batch, dict(plugins=["trades"], plugin_options={"trades": {"beta": BETA}}),
                               out))
    return cases


def mart_cases(checkout: Path, weights: dict[str, torch.Tensor],
               inputs: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """MART (YisenWang/MART ``mart_loss``, beta 6)."""
    mart = load_reference(checkout, "mart.py", "reference_mart")
    cases = []
    for batch, batch_inputs in inputs.items():
        model = model_with(weights)
        out = reference_step(model, lambda m: mart.mart_loss(
            m, batch_inputs["x"], batch_inputs["y"], optimizer_of(model), step_size=ALPHA, epsilon=EPS,
            perturb_steps=STEPS, beta=BETA, distance="l_inf"), batch_inputs)
        cases.append(step_case("mart", batch, dict(plugins=["mart"], plugin_options={"mart": {"beta": BETA}}), out))
    return cases


def probability_memory(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A training set's adversarial softmax outputs as DAFA's warm-up records them (50 per class)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(50)
    logits = torch.randn(500, 10, generator=generator) * 2 + 3 * torch.eye(10)[labels]
    return torch.softmax(logits.to(DTYPE), 1).float().double().numpy(), labels.numpy()


def dafa_cases(checkout: Path, weights: dict[str, torch.Tensor],
               inputs: dict[str, dict[str, torch.Tensor]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """DAFA (rucy74/DAFA): ``utils.calculate_class_weights`` on one probability memory, and
    ``losses.trades_loss`` with those weights (class-wise eps, step and natural-loss weight)."""
    utils = load_reference(checkout, "utils.py", "reference_dafa_utils")
    losses = load_reference(checkout, "losses.py", "reference_dafa_losses")
    probs, labels = probability_memory()
    class_weights = utils.calculate_class_weights({"probs": probs, "labels": labels}, lamb=1.0)
    schedule = {"probs": torch.from_numpy(probs), "labels": torch.from_numpy(labels),
                "class_weights": torch.from_numpy(np.asarray(class_weights, dtype=np.float64))}
    args = SimpleNamespace(pgd_step_size=ALPHA, pgd_num_steps=STEPS, epsilon=EPS, beta=BETA, n_class=10)
    frozen = torch.from_numpy(np.asarray(class_weights, dtype=np.float64)).float()  # robx keeps W in float32
    cases = []
    for batch, batch_inputs in inputs.items():
        model = model_with(weights)
        out = reference_step(model, lambda m: losses.trades_loss(
            m, batch_inputs["x"], batch_inputs["y"], optimizer_of(model), args, frozen.double().numpy())[0], batch_inputs)
        cases.append(step_case("dafa", batch, dict(plugins=["trades", "dafa"],
                                                   plugin_options={"trades": {"beta": BETA}},
                                                   plugin_states={"dafa": {"weights": frozen}}), out))
    return cases, schedule


def dafa_pgd_difference(checkout: Path, weights: dict[str, torch.Tensor],
                        inputs: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """DAFA on PGD-AT (``losses.madry_loss``) beside robx's ``pgd,dafa``: a declared
    difference. The authors' attack takes, in each iteration, the class-weighted step and
    projection and then a second, unweighted one, so the class margins it was meant to set
    are lost; robx attacks with the class-weighted budget alone, as the paper defines it.
    robx runs without a random start here (``pgd.random_start=false``) so that only the
    rule differs (the authors start at x + 0.001 N(0, 1))."""
    utils = load_reference(checkout, "utils.py", "reference_dafa_utils")
    losses = load_reference(checkout, "losses.py", "reference_dafa_losses")
    probs, labels = probability_memory()
    frozen = torch.from_numpy(np.asarray(utils.calculate_class_weights({"probs": probs, "labels": labels}, lamb=1.0),
                                         dtype=np.float64)).float()
    args = SimpleNamespace(pgd_step_size=ALPHA, pgd_num_steps=STEPS, epsilon=EPS, beta=BETA, n_class=10)
    found = []
    for batch, batch_inputs in inputs.items():
        model = model_with(weights)
        reference = reference_step(model, lambda m: losses.madry_loss(
            m, batch_inputs["x"], batch_inputs["y"], optimizer_of(model), args, frozen.double().numpy())[0],
            batch_inputs)
        mine = robx_step(batch_inputs, weights, ["pgd", "dafa"], plugin_options={"pgd": {"random_start": False}},
                         plugin_states={"dafa": {"weights": frozen}})
        budget = frozen[batch_inputs["y"]].double() * EPS
        reach = (reference["x_adv"] - batch_inputs["x"]).abs().flatten(1).amax(1)
        found.append({"case": "dafa-pgd", "batch": batch, **compare_steps(mine, reference),
                      "authors_x_adv_beyond_class_budget": int((reach > budget + 1e-9).sum()),
                      "examples": len(budget)})
    return found


def cfa_cases(checkout: Path, weights: dict[str, torch.Tensor],
              inputs: dict[str, dict[str, torch.Tensor]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CFA (PKU-ML/CFA, ``--mode TRADES --ccm --ccr``): eps_c and b_c from one set of training
    robust accuracies (train.py's own lines), ``attack.cw_trades_loss`` with them, and the FAWA
    average (train.py's gate, ``utils.weight_average``) over a sequence of models."""
    train = load_reference(checkout, "train.py", "reference_cfa_train")
    attack = load_reference(checkout, "attack.py", "reference_cfa_attack")
    utils = load_reference(checkout, "utils.py", "reference_cfa_utils")
    with mock.patch.object(sys, "argv", ["train.py", "--mode", "TRADES", "--ccm", "--ccr"]):
        args = train.get_args()
    robust_acc = torch.tensor([0.62, 0.55, 0.21, 0.08, 0.30, 0.17, 0.44, 0.39, 0.70, 0.51], dtype=torch.float32)
    namespace: dict[str, Any] = {"torch": torch, "device": "cpu", "args": args, "epoch": args.begin,
                                 "eps": EPS, "beta": args.beta / 1.0,
                                 "cw_tensor": torch.stack([torch.zeros(10), robust_acc])[None],
                                 "class_beta": torch.ones(10) * (args.beta / (1 + args.beta))}
    block = reference_block(checkout / "train.py", "if epoch >= args.begin:",
                            "class_beta = torch.ones(10).to(device) * (beta/(1+beta))")
    exec(block, namespace)  # noqa: S102 -- the authors' own lines, from the checkout given on the command line
    class_eps, class_beta = namespace["class_eps"], namespace["class_beta"]
    schedule = {"robust_acc": robust_acc, "class_eps": class_eps.clone(), "class_beta": class_beta.clone(),
                "eps": EPS, "begin": args.begin, "lambda_1": args.lambda_1, "lambda_2": args.lambda_2}
    cases = []
    with mock.patch.object(attack, "normalize_cifar", lambda x: x):  # robx's model normalises its inputs
        for batch, batch_inputs in inputs.items():
            model = model_with(weights)
            out = reference_step(model, lambda m: attack.cw_trades_loss(
                m, batch_inputs["x"], batch_inputs["y"], class_eps.to(DTYPE), class_beta.to(DTYPE), ALPHA,
                STEPS)[0], batch_inputs)
            cases.append(step_case("cfa", batch, dict(
                plugins=["trades", "cfa"], epochs=args.begin + 1, epoch=args.begin,
                plugin_options={"trades": {"beta": float(args.beta)}, "cfa": {"fawa": False}},
                plugin_states={"cfa": {"robust_acc": robust_acc, "fawa": None}}), out))
    epochs = list(zip(FAWA_WORST, perturbed_states(weights, seed=5, count=len(FAWA_WORST), buffers=True)))
    fawa_model, current = model_with(weights), model_with(weights)
    gate = reference_block(checkout / "train.py", "R_min = valid_result[3].min()",
                           "weight_average(FAWA_model, model, 1., False)")
    namespace = {"args": args, "weight_average": utils.weight_average, "FAWA_model": fawa_model, "model": current,
                 "SEAT_init": False}
    for worst, state in epochs:
        current.load_state_dict(state)
        namespace["valid_result"] = (None, None, None, torch.tensor([worst, 0.9]))
        exec(gate, namespace)  # noqa: S102 -- the authors' own lines
    schedule["fawa"] = {k: v.clone() for k, v in fawa_model.state_dict().items() if v.is_floating_point()}
    schedule["fawa_decay"], schedule["fawa_threshold"] = args.decay_rate, args.threshold
    return cases, schedule


def ldam_drw_cases(checkout: Path, weights: dict[str, torch.Tensor],
                   inputs: dict[str, dict[str, torch.Tensor]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LDAM-DRW (kaidic/LDAM-DRW): ``losses.LDAMLoss`` (its margins, s = 30) with the DRW
    weights of cifar_train.py's own lines at every epoch of its 200, ``NormedLinear``, and
    one step of LDAM + DRW (epoch 170) on robx's PGD x' (checked against torchattacks
    above; the authors' code trains on clean images)."""
    losses = load_reference(checkout, "losses.py", "reference_ldam_losses")
    resnet = load_reference(checkout, "models/resnet_cifar.py", "reference_ldam_resnet")
    cosine = initial_weights("cosine")
    robx_kwargs = dict(plugins=["pgd", "drw"], loss="ldam", epochs=200, epoch=170)
    robx_steps = {batch: robx_step(batch_inputs, cosine, **robx_kwargs) for batch, batch_inputs in inputs.items()}
    # the class counts of robx's digits default (Step-10 imbalanced), which both sides' margins and weights use
    counts = [int(n) for n in robx_steps["balanced"]["class_counts"]]
    block = reference_block(checkout / "cifar_train.py", "idx = epoch // 160",
                            "per_cls_weights = torch.FloatTensor(per_cls_weights).cuda(args.gpu)")
    drw = []
    with on_this_machine():
        for epoch in range(200):
            namespace = {"np": np, "torch": torch, "epoch": epoch, "cls_num_list": counts,
                         "args": SimpleNamespace(gpu=None)}
            exec(block, namespace)  # noqa: S102 -- the authors' own lines
            drw.append(namespace["per_cls_weights"].clone())
        margins = losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30).m_list.clone()
    head = resnet.NormedLinear(64, 10).double()
    features = torch.randn(16, 64, generator=torch.Generator().manual_seed(7)).to(DTYPE)
    schedule = {"class_counts": torch.tensor(counts), "drw_weights": torch.stack(drw), "margins": margins,
                "head_weight": head.weight.detach().clone(), "head_features": features,
                "head_outputs": head(features).detach()}
    cases = []
    for batch, batch_inputs in inputs.items():
        x_adv = robx_steps[batch]["x_adv"]
        model = model_with(cosine, head="cosine")
        with on_this_machine():
            criterion = losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30, weight=drw[170].to(DTYPE))
            out = reference_step(model, lambda m: criterion(m.train()(x_adv), batch_inputs["y"]), batch_inputs)
        out["x_adv"] = x_adv
        cases.append(step_case("ldam-drw", batch, robx_kwargs, out, head="cosine"))
    return cases, schedule


def averaging_schedule(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """SWA (equal average) and EMA (decay 0.9, no warm-up) of five models, by
    ``torch.optim.swa_utils.AveragedModel``."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    models = perturbed_states(weights, seed=11, count=5, buffers=False)
    swa = AveragedModel(model_with(weights))
    ema = AveragedModel(model_with(weights), multi_avg_fn=get_ema_multi_avg_fn(0.9))
    current = model_with(weights)
    for state in models:
        current.load_state_dict(state)
        swa.update_parameters(current)
        ema.update_parameters(current)
    averages = {"ema_decay": 0.9,
                "swa": {k: v.detach().clone() for k, v in swa.module.named_parameters()},
                "ema": {k: v.detach().clone() for k, v in ema.module.named_parameters()}}
    try:  # timm's ModelEmaV3: started from the first model, then a fixed decay (no warm-up)
        from timm.utils import ModelEmaV3
    except ImportError:
        return averages
    current.load_state_dict(models[0])
    timm_ema = ModelEmaV3(current, decay=0.9, exclude_buffers=True)
    for state in models[1:]:
        current.load_state_dict(state)
        timm_ema.update(current)
    averages["ema_timm"] = {k: v.detach().clone() for k, v in timm_ema.module.named_parameters()}
    return averages


# ---------------------------------------------------------------------------
# robx's side of the schedules: its plugins' own hooks on the same inputs
# ---------------------------------------------------------------------------


def epoch_state(epoch: int, num_epochs: int, **fields: Any) -> SimpleNamespace:
    """What a plugin's per-epoch hook reads of the training state."""
    return SimpleNamespace(epoch=epoch, num_epochs=num_epochs, config=SimpleNamespace(eps=EPS, alpha=ALPHA, epochs=num_epochs),
                           **fields)


def robx_dafa_weights(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """W from robx's class statistic ``robust_mean_prob`` of the memory (the softmax outputs
    given as log-probabilities, the logits whose softmax they are)."""
    from robx.core.registry import registry
    from robx.plugins.dafa import dafa_class_weights

    data = registry().dataset("digits").read(None, 0, {})
    tracker = registry().task_for("digits")(data).statistics(torch.device("cpu"))
    tracker.update(labels, labels, None, probs.log())
    return dafa_class_weights(tracker.result().tables["robust_mean_prob"], 1.0)


def robx_cfa(schedule: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """CFA's eps_c and b_c from its ``class_policy``, and FAWA from its ``epoch_end`` over the
    same gated sequence."""
    from robx.plugins.cfa import CFA

    plugin = CFA(CFA.Options(start_epoch=schedule["begin"], lam_eps=schedule["lambda_1"],
                             lam_beta=schedule["lambda_2"], fawa_decay=schedule["fawa_decay"],
                             fawa_threshold=schedule["fawa_threshold"]))
    plugin.calibration = schedule["robust_acc"]
    policy = plugin.class_policy(epoch_state(schedule["begin"], 200, num_classes=10))
    model = model_with(weights)
    epochs = zip(FAWA_WORST, perturbed_states(weights, seed=5, count=len(FAWA_WORST), buffers=True))
    for epoch, (worst, state) in enumerate(epochs):
        model.load_state_dict(state)
        stats = SimpleNamespace(train=SimpleNamespace(robust=schedule["robust_acc"]),
                                val=SimpleNamespace(robust=torch.tensor([worst, 0.9])))
        plugin.epoch_end(epoch_state(epoch, 200, epoch_stats=stats, model=model))
    assert plugin.fawa is not None
    return {"class_eps": policy.attack_budget[0], "class_beta": policy.regularizer_weights,
            "fawa": dict(plugin.fawa.parameters)}


def robx_ldam_drw(schedule: dict[str, Any]) -> dict[str, Any]:
    """LDAM's margins and cosine head, DRW's weights at each of 200 epochs (``class_policy``)."""
    from robx.core.models import NormedLinear
    from robx.plugins.drw import DeferredReweighting
    from robx.plugins.ldam import ldam_margins

    counts = schedule["class_counts"]
    drw = DeferredReweighting(DeferredReweighting.Options())
    weights = []
    for epoch in range(200):
        policy = drw.class_policy(epoch_state(epoch, 200, class_counts=counts))
        weights.append(torch.ones(len(counts)) if policy.class_weights is None else policy.class_weights)
    head = NormedLinear(64, 10).double()
    with torch.no_grad():
        head.weight.copy_(schedule["head_weight"])
    return {"margins": ldam_margins(counts, 0.5), "drw_weights": torch.stack(weights),
            "head_outputs": head(schedule["head_features"]).detach()}


def robx_averages(schedule: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """SWA's ``epoch_end`` and EMA's ``after_step`` (warm-up off) over the same models."""
    from robx.plugins.ema import EMA
    from robx.plugins.swa import SWA

    swa = SWA(SWA.Options(start=0.0))
    ema = EMA(EMA.Options(decay=schedule["ema_decay"], warmup=False))
    model = model_with(weights)
    for epoch, state in enumerate(perturbed_states(weights, seed=11, count=5, buffers=False)):
        model.load_state_dict(state)
        swa.epoch_end(epoch_state(epoch, 5, model=model))
        ema.after_step(None, epoch_state(epoch, 5, model=model))
    assert swa.average is not None and ema.average is not None
    return {"swa": dict(swa.average.parameters), "ema": dict(ema.average.parameters)}


def schedule_differences(schedules: dict[str, dict[str, Any]], weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max differences of robx's per-class schedules from the references' (relative for
    weight tensors, absolute otherwise)."""
    out: dict[str, float] = {}
    if "dafa" in schedules:
        s = schedules["dafa"]
        out["dafa class weights (max abs)"] = max_abs(robx_dafa_weights(s["probs"], s["labels"]), s["class_weights"])
    if "cfa" in schedules:
        s, mine = schedules["cfa"], robx_cfa(schedules["cfa"], weights)
        out["cfa eps_c (max abs)"] = max_abs(mine["class_eps"], s["class_eps"])
        out["cfa b_c (max abs)"] = max_abs(mine["class_beta"], s["class_beta"])
        out["cfa FAWA average (max rel)"] = max_rel(mine["fawa"], s["fawa"])
    if "ldam-drw" in schedules:
        s, mine = schedules["ldam-drw"], robx_ldam_drw(schedules["ldam-drw"])
        out["ldam margins (max abs)"] = max_abs(mine["margins"], s["margins"])
        out["ldam cosine head outputs (max abs)"] = max_abs(mine["head_outputs"], s["head_outputs"])
        out["drw weights, epochs 0-199 (max abs)"] = max_abs(mine["drw_weights"], s["drw_weights"])
    if "averages" in schedules:
        s, mine = schedules["averages"], robx_averages(schedules["averages"], weights)
        out["swa average (max rel)"] = max_rel(mine["swa"], s["swa"])
        out["ema average (max rel)"] = max_rel(mine["ema"], s["ema"])
        if "ema_timm" in s:
            out["ema average vs timm ModelEmaV3 (max rel)"] = max_rel(mine["ema"], s["ema_timm"])
    return out


def run_case(case: dict[str, Any], inputs: dict[str, dict[str, torch.Tensor]],
             weights: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """robx's step for a recorded case, compared with the reference's recorded outputs."""
    mine = robx_step(inputs[case["batch"]], weights[case["head"]], **case["robx"])
    reference = case["reference"]
    out = {"x_adv_max_abs": max_abs(mine["x_adv"], reference["x_adv"])}
    if "loss" in reference:
        out.update(compare_steps(mine, reference))
    return out


def as_float32(value: Any) -> Any:
    """The fixture in float32: the inputs are float32 values (exact), the references' outputs
    keep 7 digits, well inside the tests' tolerances."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == DTYPE else value
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value


def main() -> None:
    from benchmarks.meta import RESULTS, write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("trades", "mart", "ldam-drw", "cfa", "dafa"):
        parser.add_argument(f"--{flag}", type=Path, help=f"a checkout of the {flag} authors' repository")
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE.relative_to(ROOT)}")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float32)
    weights = {"linear": initial_weights("linear"), "cosine": initial_weights("cosine")}
    inputs = {batch: case_inputs(labels, seed) for batch, (labels, seed) in BATCHES.items()}
    cases = pgd_cases(weights["linear"], inputs)
    schedules: dict[str, dict[str, Any]] = {"averages": averaging_schedule(weights["linear"])}
    references = {"torchattacks": f"torchattacks {importlib.import_module('torchattacks').__version__}",
                  "swa_utils": f"torch.optim.swa_utils, torch {torch.__version__}"}
    if "ema_timm" in schedules["averages"]:
        references["timm"] = f"timm {importlib.import_module('timm').__version__} ModelEmaV3"
    if args.trades:
        cases += trades_cases(args.trades, weights["linear"], inputs)
        references["trades"] = f"yaodongyu/TRADES@{commit_of(args.trades)}"
    if args.mart:
        cases += mart_cases(args.mart, weights["linear"], inputs)
        references["mart"] = f"YisenWang/MART@{commit_of(args.mart)}"
    if args.dafa:
        found, schedules["dafa"] = dafa_cases(args.dafa, weights["linear"], inputs)
        cases += found
        references["dafa"] = f"rucy74/DAFA@{commit_of(args.dafa)}"
    if args.cfa:
        found, schedules["cfa"] = cfa_cases(args.cfa, weights["linear"], inputs)
        cases += found
        references["cfa"] = f"PKU-ML/CFA@{commit_of(args.cfa)}"
    if args.ldam_drw:
        found, schedules["ldam-drw"] = ldam_drw_cases(args.ldam_drw, weights, inputs)
        cases += found
        references["ldam-drw"] = f"kaidic/LDAM-DRW@{commit_of(args.ldam_drw)}"
    steps = []
    for case in cases:
        result = {"case": case["name"], "batch": case["batch"], **run_case(case, inputs, weights)}
        steps.append(result)
        print("  ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    differences = schedule_differences(schedules, weights["linear"])
    for name, value in differences.items():
        print(f"{name}: {value:.2e}")
    # the start robx used until 2026-12-07 (clamped to the box before the first gradient), for the record
    clamped = []
    for case in cases:
        if case["name"] in ("trades", "mart"):
            kwargs = dict(case["robx"])
            kwargs["plugin_options"] = {case["name"]: {**kwargs["plugin_options"][case["name"]], "start_in_box": True}}
            mine = robx_step(inputs[case["batch"]], weights["linear"], **kwargs)
            clamped.append({"case": case["name"], "batch": case["batch"], **compare_steps(mine, case["reference"])})
    declared = dafa_pgd_difference(args.dafa, weights["linear"], inputs) if args.dafa else []
    for record in declared:
        print("declared:", record)
    write_result(RESULTS / "parity" / "steps.json", {
        "references": references, "dtype": str(DTYPE), "eps": EPS, "alpha": ALPHA, "steps": STEPS,
        "l2_eps": L2_EPS, "l2_alpha": L2_ALPHA, "steps_compared": steps, "schedules_compared": differences,
        "start_clamped_to_box": clamped, "declared_differences": declared,
        "saturated_pixel_share": {b: float(((i["x"] == 0) | (i["x"] == 1)).double().mean()) for b, i in inputs.items()}})
    if args.write_fixture:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        # a unique file beside it, then a rename: an interrupted write never leaves half a fixture
        handle, temporary = tempfile.mkstemp(dir=FIXTURE.parent, prefix=".parity.", suffix=".pt")
        os.close(handle)
        torch.save(as_float32({"references": references, "weights": weights, "inputs": inputs, "cases": cases,
                               "schedules": schedules}), temporary)
        os.replace(temporary, FIXTURE)
        print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
