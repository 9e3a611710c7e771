"""bf16 against fp32 training: robust accuracy must match within seed noise (issue 19, item 1).

    python benchmarks/precision.py --seeds 0 1 2               # the digits demo on CPU here
    python benchmarks/precision.py --device cuda --seeds 0 1 2 # on a GPU

Trains the digits demo (PGD-10 AT, 25 epochs) with ``--precision fp32`` and ``bf16`` per
seed and evaluates both in fp32 (PGD-20); writes per-run summaries and per-precision means and
standard deviations. Resumable: finished (precision, seed) runs in the result file are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402


def trained(precision: str, seed: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        done = subprocess.run([sys.executable, "-m", "robx", "train", "--precision", precision, "--seed", str(seed),
                               "--device", device, "--out", str(out)], capture_output=True, text=True,
                              env=dict(os.environ, MPLBACKEND="Agg"))
        if done.returncode != 0:
            raise SystemExit(f"{precision} seed {seed} failed:\n{done.stderr[-2000:]}")
        report = json.loads((out / "report.json").read_text())
        seconds = sum(json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines())
    summary = {kind: {group: report["summary"][kind][group] for group in ("overall", "majority", "minority", "worst")}
               for kind in ("standard", "robust")}
    return {"precision": precision, "seed": seed, "summary": summary, "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    path = RESULTS / "precision" / f"digits-demo-{args.device}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            if any(r["precision"] == precision and r["seed"] == seed for r in runs):
                continue
            runs.append(trained(precision, seed, args.device))
            print(json.dumps(runs[-1]))
            means = {}
            for name in ("fp32", "bf16"):
                mine = [r for r in runs if r["precision"] == name]
                if not mine:
                    continue
                means[name] = {f"{kind}_{group}": (statistics.mean(r["summary"][kind][group] for r in mine),
                                                   statistics.pstdev(r["summary"][kind][group] for r in mine))
                               for kind in ("standard", "robust") for group in ("overall", "minority", "worst")}
                means[name]["train_seconds"] = statistics.mean(r["train_seconds"] for r in mine)
            write_result(path, {"protocol": "digits demo (PGD-10 AT, 25 epochs), PGD-20 fp32 evaluation",
                                "runs": runs, "mean_and_std": means})


if __name__ == "__main__":
    main()
