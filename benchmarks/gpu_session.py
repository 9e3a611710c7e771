"""Paper-scale runs on a lent GPU, one device call at a time.

    python benchmarks/gpu_session.py stage                  # here: the data, in parts < 64 MiB
    python benchmarks/gpu_session.py run --budget-s 540     # there: the same command every call
    python benchmarks/gpu_session.py run --dry-run --budget-s 20   # here: a tiny CPU rehearsal

``run`` continues the highest-priority unfinished run of the ``cifar10-lt-gpu`` protocol
(benchmarks/protocols/cifar10-lt-gpu.toml: ResNet-18, CIFAR-10 Step-10 at full size, PGD-10;
priority pgd-at, drcb-ldam, srat-ldam, imbmix, seed 0) from its checkpoint, starts no epoch
it cannot finish inside ``--budget-s`` (judged by the last epoch's time; evaluation time is
reserved), and exits cleanly; the next call continues. A finished run's result JSON goes to
benchmarks/results/cifar10-lt-gpu/ and, when ``$OUT`` is set (the device tool), to ``$OUT``
so that it comes back. On CUDA it trains under bf16 autocast.

The device takes 64 MiB of files per call and keeps git-ignored files only while it stays
warm (calls back to back). ``stage`` writes the Step-10 training subset (84 MB of uint8
pixels) and the test set into ``gpu_data/part-1`` .. ``part-3`` (git-ignored, each < 64 MiB);
name one part in each of the first three calls' ``carry``; ``run`` assembles them once all
are there and until then says which are missing. A run's checkpoint (ResNet-18 weights and
momentum, about 90 MB) cannot come back through ``$OUT`` (16 MiB a file, 64 MiB a call), so a
run must finish inside one lease of the machine (30 minutes held at most): size ``epochs``
to the device (docs/results.md says how many each run had).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from benchmarks.run_protocol import PROTOCOLS, RUNS, continue_or_start, parse_value  # noqa: E402
from robx.core.registry import resolved_config
from robx.core.config import TrainConfig, tomllib  # noqa: E402
from robx.core.engine import train  # noqa: E402
from robx.core.errors import TrainingPaused  # noqa: E402

PROTOCOL = "cifar10-lt-gpu"
PRIORITY = ["pgd-at", "drcb-ldam", "srat-ldam", "imbmix"]
STAGED = Path(__file__).resolve().parent.parent / "gpu_data"  # git-ignored
PART_BYTES = 48 * 2**20  # with the working tree, under the 64 MiB a call carries
DRY_RUN = {"dataset": "digits", "imbalance": "step", "ratio": 10.0, "n_max": None, "n_test_per_class": None,
           "model": "smallcnn16", "epochs": 4, "steps": 2, "eval_steps": 3, "n_eval": 60, "device": "cpu"}


def stage(source_root: str | None) -> None:
    """The protocol's Step-10 subset and test set as uint8 HWC chunks, a part per call."""
    from robx.core.data import apply_protocol
    from robx.core.registry import registry

    base = tomllib.loads((PROTOCOLS / f"{PROTOCOL}.toml").read_text())["staging"]
    data = registry().dataset("cifar10").load(source_root, 0)
    data = apply_protocol(data, base["imbalance"], base["ratio"], base["n_max"], base["n_test_per_class"], 0.0, 0,
                          per_target=False)
    chunks = []
    for split_name, split in (("train", data.train), ("test", data.test)):
        x = split.x.permute(0, 2, 3, 1).contiguous().numpy()  # CHW -> the npz layout's HWC
        y = split.y.numpy()
        per_chunk = max(1, PART_BYTES // (x[0].nbytes + 8))
        for start in range(0, len(y), per_chunk):
            chunks.append((split_name, x[start:start + per_chunk], y[start:start + per_chunk]))
    shutil.rmtree(STAGED, ignore_errors=True)
    for k, (split_name, x, y) in enumerate(chunks, start=1):
        folder = STAGED / f"part-{k}"
        folder.mkdir(parents=True)
        np.savez(folder / f"{split_name}-{k}.npz", x=x, y=y)
        (folder / "parts.json").write_text(json.dumps({"parts": len(chunks)}))
    counts = np.bincount(data.train.y.numpy()).tolist()
    print(f"staged {len(chunks)} parts under {STAGED} (train class counts {counts}); carry one per call")


def assembled_root() -> Path | None:
    """gpu_data/ holding cifar10/{train,test}.npz, assembled from the parts once all came."""
    target = STAGED / "cifar10"
    if (target / "train.npz").exists() and (target / "test.npz").exists():
        return STAGED
    parts = {int(p.parent.name.split("-")[1]): p for p in STAGED.glob("part-*/*.npz")}
    manifests = sorted(STAGED.glob("part-*/parts.json"))
    total = json.loads(manifests[0].read_text())["parts"] if manifests else None
    missing = sorted(set(range(1, total + 1)) - set(parts)) if total else ["all"]
    if missing:
        print(f"data not complete: parts {sorted(parts)} here, {missing} missing; carry the next part")
        return None
    target.mkdir(exist_ok=True)
    for split_name in ("train", "test"):
        pieces = [np.load(parts[k]) for k in sorted(parts) if parts[k].name.startswith(split_name)]
        np.savez(target / f"{split_name}.npz", x=np.concatenate([q["x"] for q in pieces]),
                 y=np.concatenate([q["y"] for q in pieces]))
    return STAGED


def run(budget_s: float, dry_run: bool, overrides: list[str], reserve_s: float) -> None:
    started = time.monotonic()
    protocol = tomllib.loads((PROTOCOLS / f"{PROTOCOL}.toml").read_text())
    base = dict(protocol["train"])
    if dry_run:
        base.update(DRY_RUN)
    else:
        root = assembled_root()
        if root is None:
            return
        base["data_root"] = str(root)
    for override in overrides:
        key, _, value = override.partition("=")
        base[key] = parse_value(value)
    name = PROTOCOL + ("-dryrun" if dry_run else "")
    results, runs = (RUNS / name / "results", RUNS / name) if dry_run else (RESULTS / PROTOCOL, RUNS / PROTOCOL)
    cuda = torch.cuda.is_available() and base.get("device", "auto") != "cpu"
    epoch_s = 0.0  # the last finished run's epoch time: a fresh run's first epoch may not fit
    for method in PRIORITY:
        result_path = results / f"{method}-seed0.json"
        if result_path.exists():
            continue
        config = TrainConfig.from_dict({**base, **protocol["methods"][method], "seed": 0})
        run_dir = runs / f"{method}-seed0"
        deadline = started + budget_s - reserve_s
        if not (run_dir / "checkpoint.pt").exists() and time.monotonic() + epoch_s > deadline:
            print(f"{method}: not started, its first epoch would outlast the budget; call again", flush=True)
            return
        print(f"{method}: {'continuing' if (run_dir / 'checkpoint.pt').exists() else 'starting'} ({run_dir})",
              flush=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        try:
            with autocast:
                report = train(config, run_dir, deadline=deadline, **continue_or_start(config, run_dir))
        except TrainingPaused as paused:
            print(f"{method}: {paused}; call again", flush=True)
            return
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        epoch_s = max(m["seconds"] for m in metrics)
        payload = {"protocol": PROTOCOL, "method": method, "seed": 0, "dry_run": dry_run,
                   "config": resolved_config(config).to_dict(), "epoch_seconds": [m["seconds"] for m in metrics],
                   "bf16_autocast": cuda, "report": report}
        write_result(result_path, payload)
        if os.environ.get("OUT"):
            write_result(Path(os.environ["OUT"]) / result_path.name, payload)
        summary = report["summary"]["robust"]
        print(f"{method}: finished, robust majority/minority {summary['majority']:.3f}/{summary['minority']:.3f}",
              flush=True)
    print("every run of the priority list is finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    staging = sub.add_parser("stage", help="write the data parts (here, from the shared CIFAR-10)")
    staging.add_argument("--data-root", default=None)
    running = sub.add_parser("run", help="continue the highest-priority unfinished run")
    running.add_argument("--budget-s", type=float, default=540.0, help="stop before this many seconds pass")
    running.add_argument("--reserve-s", type=float, default=120.0,
                         help="kept back from the budget for the final weight-average pass and evaluation")
    running.add_argument("--dry-run", action="store_true", help="a tiny digits config on CPU")
    running.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.verb == "stage":
        stage(args.data_root)
    else:
        run(args.budget_s, args.dry_run, args.overrides, args.reserve_s)


if __name__ == "__main__":
    main()
