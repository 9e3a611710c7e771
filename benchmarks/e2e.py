"""End-to-end PGD-10 adversarial-training throughput: robx's training step against the loops
one writes without it, same model, data, batch and attack (issue 19, item 2).

    python benchmarks/e2e.py                       # CPU here
    python benchmarks/e2e.py --device cuda         # a GPU: adds peak memory and MFU

Per model (PreAct ResNet-18, WRN-34-10; CIFAR-sized synthetic tensors, 10 classes):

* ``plain_fp32``: the hand-written loop: PGD-10 Linf 8/255 from a random start (model in eval
  mode, ``autograd.grad`` on the input, sign step, projection), then one train-mode step;
  fp32, NCHW, eager;
* ``torchattacks_fp32``: the same loop with torchattacks' PGD as the attack;
* ``robx_*``: robx's ``train_step`` (hooks, fused pgd_step kernel, class statistics) in fp32
  with NCHW and with channels_last batches and weights, with bf16 autocast in the device's
  default layout, and with the model compiled by ``torch.compile`` in fp32 NCHW, fp32
  channels_last and bf16 (``robx_nchw``, ``robx_channels_last``, ``robx_bf16``,
  ``robx_compile``, ``robx_compile_channels_last``, ``robx_compile_bf16``; each row records
  its layout and its first step's seconds, compilation included).

Images/s is the batch over the median step time after warm-up, the variants interleaved step by
step; on a GPU also the step's memory above what stays allocated (activations, temporaries). FLOPs: F, one forward, counted
by ``torch.utils.flop_counter``; PGD-10 AT needs about 23F per image (10 input-gradient steps of
about 2F, one training step of 3F), so MFU = images/s x 23F / the device's dense bf16 peak
(GPUs in PEAK_BF16 only). Every row also gives its GFLOP/s as a fraction of what a large
matrix product reaches on the device in the row's precision (``gemm_gflop_per_s``, measured
here): the ceiling for a step made of convolutions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
#: dense bf16 peak FLOP/s of the GPUs a session may be lent (vendor data sheets, SXM)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model: torch.nn.Module, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.rand(1, 3, 32, 32, device=device))
    return float(counter.get_total_flops())


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in ``dtype`` (median of ``repeats`` after a warm-up)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)[1]


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits(model, x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    loss = F.cross_entropy(logits(model, x_adv), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def torchattacks_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                      y: torch.Tensor) -> None:
    import torchattacks

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return logits(self.model, inputs)

    model.eval()
    x_adv = torchattacks.PGD(Logits(), eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)(x, y)
    model.train()
    loss = F.cross_entropy(logits(model, x_adv), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def robx_step_maker(model_name: str, device: torch.device, **overrides: Any) -> Callable[..., None]:
    """robx's own ``train_step`` for the model on CIFAR-sized inputs. The run is built on the
    bundled digits (a classification run needs a dataset); its model, optimiser and training
    passes are then the CIFAR-sized model's, and the benchmark hands train_step its batches."""
    from robx.core import distributed
    from robx.core.config import TrainConfig
    from robx.core.engine import build_model, build_optimizer, build_run, placed_model, train_step
    from robx.core.registry import registry
    from robx.core.task import ModelInput

    config = TrainConfig(dataset="digits", eps=EPS, alpha=ALPHA, steps=STEPS, device=device.type,
                         schedule="constant", **overrides)
    run = build_run(config, Path("unused"))
    spec = ModelInput((3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    model = build_model(registry(), model_name, spec)
    run.state.model, run.layout = placed_model(run.config, device, model)
    run.state.optimizer = build_optimizer(run.config, run.state.model)
    run.passes = distributed.data_parallel(run.state.model, device, distributed.SINGLE)
    tracker = run.task.statistics(device)

    def step(_model: torch.nn.Module, _optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(run, x.contiguous(memory_format=run.layout), y, y, tracker, {})

    step.layout = run.layout  # type: ignore[attr-defined]
    return step


def measure(steps: dict[str, Callable[..., None]], models: dict[str, torch.nn.Module], device: torch.device,
            batch: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Median step time of every variant, the variants interleaved round by round so that a
    drift of the machine's speed hits them alike (it moved timings by 10 % within a run here)."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=device, generator=generator)
    y = torch.randint(0, 10, (batch,), device=device, generator=generator)
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) for name, model in models.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, step in steps.items():
        synchronize(device)
        started = time.perf_counter()
        step(models[name], optimizers[name], x, y)  # warm-up: kernels compiled, caches filled
        synchronize(device)
        rows[name] = {"first_step_s": time.perf_counter() - started, "steps_s": [], "step_memory_gib": None}
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            started = time.perf_counter()
            step(models[name], optimizers[name], x, y)
            synchronize(device)
            rows[name]["steps_s"].append(round(time.perf_counter() - started, 4))
            if device.type == "cuda":  # the step's own memory: activations and temporaries above what stays
                used = (torch.cuda.max_memory_allocated(device) - before) / 2**30
                rows[name]["step_memory_gib"] = max(rows[name]["step_memory_gib"] or 0.0, used)
    for row in rows.values():
        row["step_s"] = statistics.median(row["steps_s"])
        row["images_per_s"] = batch / row["step_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["preactresnet18", "wrn34-10"])
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CPU (8 for WRN), 512 on CUDA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=None, help="a subset of the variants (default: all)")
    parser.add_argument("--tag", default="", help="written to <device>-<tag>.json (a partial run keeps the full file)")
    args = parser.parse_args()
    device = torch.device(args.device)
    # one process here compiles several copies of one model class (three compiled variants,
    # each in train and eval mode): past dynamo's default of 8 graphs per code object it
    # silently runs the rest eagerly; a real run compiles one copy
    torch._dynamo.config.recompile_limit = 64
    from robx.core.registry import registry
    from robx.core.task import ModelInput

    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    peak = next((value for key, value in PEAK_BF16.items() if key in name), None)
    spec = ModelInput((3, 32, 32), 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    gemm = {"fp32": gemm_rate(device, torch.float32) / 1e9, "bf16": gemm_rate(device, torch.bfloat16) / 1e9}
    print("2048^3 matrix product: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    results: dict[str, Any] = {"device": name, "attack": f"PGD-{STEPS} Linf 8/255, alpha 2/255",
                               "gemm_gflop_per_s": gemm, "models": {}}
    for model_name in args.models:
        batch = args.batch or (512 if device.type == "cuda" else (8 if model_name.startswith("wrn") else 32))
        flops = forward_flops(registry().build_model(model_name, spec).to(device), device)
        variants: dict[str, Callable[..., None]] = {
            "plain_fp32": plain_step,
            "torchattacks_fp32": torchattacks_step,
            "robx_nchw": robx_step_maker(model_name, device, channels_last=False),
            "robx_channels_last": robx_step_maker(model_name, device, channels_last=True),
            "robx_bf16": robx_step_maker(model_name, device, precision="bf16"),  # the device's default layout
            "robx_compile": robx_step_maker(model_name, device, channels_last=False, compile="default"),
            "robx_compile_channels_last": robx_step_maker(model_name, device, channels_last=True, compile="default"),
            "robx_compile_bf16": robx_step_maker(model_name, device, precision="bf16", compile="default"),
        }
        if args.variants:
            variants = {key: value for key, value in variants.items() if key in args.variants or key == "plain_fp32"}
        models = {}
        for variant in variants:
            torch.manual_seed(0)  # robx's own steps train their run's copy; the loops train this one
            models[variant] = registry().build_model(model_name, spec).to(device)
        rows = measure(variants, models, device, batch, args.repeats)
        for variant, row in rows.items():
            row["layout"] = str(getattr(variants[variant], "layout", torch.contiguous_format)).removeprefix("torch.")
            row["gflop_per_s"] = row["images_per_s"] * 23 * flops / 1e9
            row["mfu"] = row["images_per_s"] * 23 * flops / peak if peak else None
            row["fraction_of_gemm"] = row["gflop_per_s"] / gemm["bf16" if "bf16" in variant else "fp32"]
            print(f"{model_name} {variant}: {row['images_per_s']:.2f} img/s, {row['gflop_per_s']:.1f} GFLOP/s"
                  + (f", MFU {row['mfu']:.1%}" if row["mfu"] else ""))
        plain = rows["plain_fp32"]["images_per_s"]
        results["models"][model_name] = {
            "batch": batch, "forward_gflop": flops / 1e9, "pgd10_at_gflop_per_image": 23 * flops / 1e9,
            "variants": rows,
            "ratio_to_plain_fp32": {variant: row["images_per_s"] / plain for variant, row in rows.items()},
        }
        write_result(RESULTS / "e2e" / f"{name.replace(' ', '-')}{'-' + args.tag if args.tag else ''}.json", results)


if __name__ == "__main__":
    main()
