"""Run a shipped protocol: every method x seed, one result JSON each.

    python benchmarks/run_protocol.py cifar10-lt-cpu --seeds 0 1
    python benchmarks/run_protocol.py cifar10-lt-cpu --methods pgd-at trades --set imbalance=exp --set ratio=100

Results: benchmarks/results/<protocol>[-<variant>]/<method>-seed<k>.json, each with the
command, commit, machine, wall time, the run's report and per-epoch metrics; the run
directories (with checkpoints, for `robx eval`) stay under runs/<protocol>/. Existing
results are skipped and an interrupted run of the same config continues from its
checkpoint (so a killed sweep loses at most an epoch) unless --force. Runs go seed by
seed so that a partial sweep already holds comparable methods. `robx report` on the
results folder prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core.registry import resolved_config
from robx.core.config import TrainConfig, tomllib  # noqa: E402
from robx.core.engine import train  # noqa: E402
from robx.core.options import parse_number  # noqa: E402

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
RUNS = Path(__file__).resolve().parent.parent / "runs"  # run directories (checkpoints; not committed)


def continue_or_start(config: TrainConfig, run_dir: Path) -> dict[str, bool]:
    """Continue an interrupted run of the same config from its checkpoint; else start over."""
    saved = run_dir / "config.json"
    if (run_dir / "checkpoint.pt").exists() and saved.exists():
        if json.loads(saved.read_text()).get("config") == resolved_config(config).to_dict():
            print(f"continue {run_dir} from its checkpoint", flush=True)
            return {"resume": True}
    return {"force": True}


def cpu_seconds() -> float:
    """User and system CPU time of this process: with one torch thread (OMP_NUM_THREADS=1) the
    cost of a run, whatever else the machine runs beside it (wall time is not, on a shared one)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_value(text: str):
    for cast in (int, parse_number):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train key=value")
    parser.add_argument("--variant", default=None, help="results folder suffix (default: from --set)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    protocol = tomllib.loads((PROTOCOLS / f"{args.protocol}.toml").read_text())
    base = dict(protocol["train"])
    for override in args.overrides:
        key, _, value = override.partition("=")
        base[key] = parse_value(value)
    variant = args.variant or "-".join(o.replace("=", "") for o in args.overrides)
    out_dir = RESULTS / (args.protocol + (f"-{variant}" if variant else ""))
    methods = args.methods or list(protocol["methods"])
    for seed in args.seeds:
        for method in methods:
            result_path = out_dir / f"{method}-seed{seed}.json"
            if result_path.exists() and not args.force:
                print(f"skip {result_path} (exists)")
                continue
            values = {**base, **protocol["methods"][method], "seed": seed}
            config = TrainConfig.from_dict(values)
            run_dir = RUNS / out_dir.name / f"{method}-seed{seed}"
            started, cpu_started = time.perf_counter(), cpu_seconds()
            how = continue_or_start(config, run_dir)
            report = train(config, run_dir, **how)
            seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            write_result(result_path, {
                "protocol": args.protocol, "variant": variant, "method": method, "seed": seed,
                "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                "continued_from_checkpoint": "resume" in how,
                "config": resolved_config(config).to_dict(), "run_dir": str(run_dir),
                "epoch_seconds": [m["seconds"] for m in metrics],
                "epoch_cpu_seconds": [m.get("cpu_seconds") for m in metrics],
                **({"collapse_checks": [m["collapse_check"] for m in metrics]} if "collapse_check" in metrics[0] else {}),
                "final_train_loss": metrics[-1]["loss"],
                **({"diagnostics": [m["diagnostics"] for m in metrics]} if "diagnostics" in metrics[0] else {}),
                "report": report,
            })
            robust = report["summary"]["robust"]
            standard = report["summary"]["standard"]
            print(f"{method} seed {seed}: {seconds:.0f}s  std maj/min {standard['majority']:.3f}/{standard['minority']:.3f}"
                  f"  rob maj/min {robust['majority']:.3f}/{robust['minority']:.3f}", flush=True)


if __name__ == "__main__":
    main()
