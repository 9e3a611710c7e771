"""Kernel microbenchmarks and end-to-end adversarial-training throughput (docs/protocols.md, kernels).

    python benchmarks/kernels.py                  # CPU: numba vs eager torch
    python benchmarks/kernels.py --device cuda    # GPU: Triton vs eager torch vs torch.compile

For each op: median wall time over repetitions, and for ``pgd_step`` the effective memory
bandwidth (the bytes a one-pass step must move: read x', g, x, write x'; divided by the
time), on GPU also as a fraction of the device's peak. ``supcon``: forward + backward, and
on GPU the peak memory above the inputs. ``topk_victims``: the eager line one writes
(``topk`` + ``scatter``) and the stable-sort reference against the fused kernel. End to end:
images per second of PGD-10 adversarial-training epochs, robx's engine (its hooks, the fused
path and its per-class statistics) against a plain hand-written loop with the same model,
data, batch, augmentation and attack; on GPU both in bf16 autocast with channels_last.
Writes benchmarks/results/kernels/<device>.json (``--e2e-only``: only the end-to-end part,
into <device>-end-to-end.json).
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
from robx.kernels import dispatch_rule, implementation  # noqa: E402
from robx.kernels.pgd_step import pgd_step_reference  # noqa: E402
from robx.kernels.supcon import supcon_reference  # noqa: E402
from robx.kernels.topk_victims import topk_victims_reference  # noqa: E402

# peak DRAM bandwidth in GB/s by device name fragment (vendor data sheets)
PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0,
                      "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, min_reps: int = 5, min_time: float = 1.0) -> float:
    """Median of repeated calls after two warm-up calls (compilation, caches)."""
    for _ in range(2):
        fn()
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - started < min_time and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BANDWIDTH_GBS.items() if key in name), None)


def bench_pgd_step(device: torch.device, fused: str, with_compile: bool) -> list[dict[str, Any]]:
    rows = []
    compiled = torch.compile(pgd_step_reference) if with_compile else None
    for shape in [(128, 3, 32, 32), (256, 3, 224, 224)]:
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(shape, device=device, generator=generator)
        x_adv = (x + 0.01 * torch.randn(shape, device=device, generator=generator)).clamp(0, 1)
        grad = torch.randn(shape, device=device, generator=generator)
        eps = torch.full((shape[0],), 8 / 255, device=device)  # per-sample, as class-wise margins give
        alpha = eps / 4
        moved_bytes = 4 * x.numel() * x.element_size()
        for norm in ("linf", "l2"):
            candidates: dict[str, Callable[[], Any]] = {
                "eager": lambda: pgd_step_reference(x_adv, grad, x, eps, alpha, norm),
                fused: lambda: implementation("pgd_step", fused)(x_adv, grad, x, eps, alpha, norm),
            }
            if compiled is not None:
                candidates["compile"] = lambda: compiled(x_adv, grad, x, eps, alpha, norm)
            row: dict[str, Any] = {"shape": list(shape), "norm": norm, "bytes": moved_bytes}
            for name, fn in candidates.items():
                seconds = median_seconds(fn, device)
                row[f"{name}_ms"] = 1e3 * seconds
                row[f"{name}_gbs"] = moved_bytes / seconds / 1e9
            row["speedup"] = row["eager_ms"] / row[f"{fused}_ms"]
            if (peak := peak_bandwidth(device)) is not None:
                row["peak_gbs"] = peak
                row[f"{fused}_fraction_of_peak"] = row[f"{fused}_gbs"] / peak
            rows.append(row)
            print(f"pgd_step {shape} {norm}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()
                                                        if isinstance(v, float)))
    return rows


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def bench_supcon(device: torch.device, fused: str, with_compile: bool) -> list[dict[str, Any]]:
    rows = []
    compiled = torch.compile(supcon_reference) if with_compile else None
    sizes = [256, 1024, 2048, 3072, 4096] + ([8192] if device.type == "cuda" else [])
    for n in sizes:
        generator = torch.Generator(device=device).manual_seed(0)
        features = F.normalize(torch.randn(n, 128, device=device, generator=generator), dim=1).requires_grad_(True)
        labels = torch.randint(0, 10, (n,), device=device, generator=generator)

        def run(loss_fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
            def once() -> None:
                features.grad = None
                loss_fn(features, labels, 0.1).backward()
            return once

        candidates = {"eager": run(supcon_reference), fused: run(implementation("supcon", fused))}
        if compiled is not None:
            candidates["compile"] = run(compiled)
        row: dict[str, Any] = {"batch": n, "dim": 128}
        for name, fn in candidates.items():
            row[f"{name}_ms"] = 1e3 * median_seconds(fn, device, min_time=0.5)
            if (memory := peak_memory_mb(fn, device)) is not None:
                row[f"{name}_peak_mb"] = memory
        row["speedup"] = row["eager_ms"] / row[f"{fused}_ms"]
        rows.append(row)
        print(f"supcon fwd+bwd B={n}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    return rows


def topk_eager(saliency: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(saliency, dtype=torch.bool)
    return mask.scatter_(1, saliency.topk(k, dim=1).indices, True)


def bench_topk(device: torch.device, fused: str, with_compile: bool) -> list[dict[str, Any]]:
    rows = []
    compiled = torch.compile(topk_eager) if with_compile else None
    for label, (batch, units) in {"crime graph": (32, 256), "224x224 pixels": (256, 224 * 224)}.items():
        generator = torch.Generator(device=device).manual_seed(0)
        saliency = torch.rand(batch, units, device=device, generator=generator)
        weights = torch.rand(units, device=device, generator=generator)
        k = units // 10
        candidates = {
            "eager_topk": lambda: topk_eager(saliency * weights, k),
            "reference_stable_sort": lambda: topk_victims_reference(saliency, k, weights),
            fused: lambda: implementation("topk_victims", fused)(saliency, k, weights),
        }
        if compiled is not None:
            candidates["compile"] = lambda: compiled(saliency * weights, k)
        row: dict[str, Any] = {"shape": label, "batch": batch, "units": units, "k": k}
        for name, fn in candidates.items():
            row[f"{name}_ms"] = 1e3 * median_seconds(fn, device, min_time=0.5)
        row["speedup_vs_eager_topk"] = row["eager_topk_ms"] / row[f"{fused}_ms"]
        rows.append(row)
        print(f"topk_victims {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    return rows


def hand_written_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x_all: torch.Tensor,
                       y_all: torch.Tensor, batch_size: int, eps: float, alpha: float, steps: int,
                       generator: torch.Generator) -> None:
    """The loop one writes without a framework: PGD with random start, BN in eval while attacking."""
    from robx.plugins.tasks.classification import crop_flip, to_unit_float

    order = torch.randperm(len(y_all), generator=generator)
    for idx in order.split(batch_size):
        idx = idx.to(x_all.device)
        x, y = crop_flip(to_unit_float(x_all[idx])), y_all[idx]
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv)[1], y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        model.train()
        loss = F.cross_entropy(model(x_adv)[1], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bench_end_to_end(device: torch.device, n_train: int, epochs: int) -> dict[str, Any]:
    from robx.core.config import TrainConfig
    from robx.core.engine import SilentProgress, build_run, train_epoch
    from robx.core.registry import registry

    config = TrainConfig(dataset="cifar10", model="smallcnn", imbalance="none", n_max=n_train // 10,
                         val_fraction=0.0, steps=10, batch_size=128, device=device.type, schedule="constant")
    run = build_run(config, Path("unused"))
    if device.type == "cuda":
        run.state.model.to(memory_format=torch.channels_last)
    x_all, y_all = run.data.train.x.to(device), run.data.train.y.to(device)
    eps, alpha, steps = float(run.config.eps), float(run.config.alpha), 10
    model = registry().build_model("smallcnn", run.task.model_input()).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=run.config.lr, momentum=run.config.momentum,
                                weight_decay=run.config.weight_decay)
    generator = torch.Generator().manual_seed(0)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def robx_epoch() -> None:
        with autocast:
            train_epoch(run, SilentProgress())

    def hand_epoch() -> None:
        with autocast:
            hand_written_epoch(model, optimizer, x_all, y_all, 128, eps, alpha, steps, generator)

    images = len(y_all)
    robx_epoch(), hand_epoch()  # warm-up: kernels compiled, caches filled
    times: dict[str, list[float]] = {"robx": [], "hand_written": []}
    for _ in range(epochs):  # alternate so that drifts in machine load hit both alike
        for name, fn in (("robx", robx_epoch), ("hand_written", hand_epoch)):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    result = {
        "model": "smallcnn", "images_per_epoch": images, "batch_size": 128, "attack": "PGD-10 Linf 8/255",
        "autocast_bf16_channels_last": device.type == "cuda", "epochs_timed": epochs,
        "robx_images_per_s": images / statistics.median(times["robx"]),
        "hand_written_images_per_s": images / statistics.median(times["hand_written"]),
        "seconds": times,
    }
    result["ratio"] = result["robx_images_per_s"] / result["hand_written_images_per_s"]
    print(f"end to end: robx {result['robx_images_per_s']:.1f} img/s, hand-written "
          f"{result['hand_written_images_per_s']:.1f} img/s, ratio {result['ratio']:.3f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--e2e-images", type=int, default=2560, help="training images per end-to-end epoch")
    parser.add_argument("--e2e-epochs", type=int, default=3, help="timed epochs per side")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--e2e-only", action="store_true",
                        help="only the end-to-end part, into <device>-end-to-end.json (the kernel results stay)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "-")
    if args.e2e_only:
        started = time.perf_counter()
        result = {"device": name, "end_to_end": bench_end_to_end(device, args.e2e_images, args.e2e_epochs)}
        result["wall_seconds"] = time.perf_counter() - started
        print(write_result(RESULTS / "kernels" / f"{name}-end-to-end.json", result))
        return
    fused = "triton" if device.type == "cuda" else "numba"  # each op's fused kernel, timed whatever DISPATCH runs
    with_compile = device.type == "cuda"
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dispatch": {op: dispatch_rule(op, device) for op in ("pgd_step", "supcon", "topk_victims")},
        "pgd_step": bench_pgd_step(device, fused, with_compile),
        "supcon": bench_supcon(device, fused, with_compile),
        "topk_victims": bench_topk(device, fused, with_compile),
    }
    path = RESULTS / "kernels" / f"{name}.json"
    payload["wall_seconds"] = time.perf_counter() - started
    write_result(path, payload)  # kept even if the end-to-end part fails (it needs CIFAR-10)
    if not args.skip_e2e:
        payload["end_to_end"] = bench_end_to_end(device, args.e2e_images, args.e2e_epochs)
        payload["wall_seconds"] = time.perf_counter() - started
        write_result(path, payload)
    print(path)


if __name__ == "__main__":
    main()
