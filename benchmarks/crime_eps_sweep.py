"""How strong STPGD is on the crime models at each budget: `robx eval` of trained runs at
eps 0.5, 1, 2, 4 (z units; step eps / 5, 20 steps, 10 % victim nodes).

    python benchmarks/crime_eps_sweep.py runs/crime-cpu/natural-seed0 runs/crime-cpu/stpgd-at-seed0

For each run and budget: the model's clean and attacked non-zero MAE, NLL, Recall@20 and
MAP@20 (the crime report's details). Results: benchmarks/results/crime-eps-sweep/<name>.json
(--name, default "cpu"), with command, commit and machine; runs already in it are skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402

BUDGETS = (0.5, 1.0, 2.0, 4.0)
COLUMNS = ("mae non-zero", "mae zero", "nll", "recall@20", "map@20", "rec-d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args()
    out = RESULTS / "crime-eps-sweep" / f"{args.name}.json"
    done = json.loads(out.read_text())["runs"] if out.exists() else {}
    for run in args.runs:
        key = f"{run.parent.name}/{run.name}"
        if key in done:
            print(f"skip {key} (in {out})")
            continue
        rows = {}
        for eps in BUDGETS:
            before = set(run.glob("eval-*.json"))
            subprocess.run([sys.executable, "-m", "robx", "eval", str(run), "--attack", "stpgd", "--eps", str(eps),
                            "--alpha", str(eps / 5), "--steps", "20"], check=True, stdout=subprocess.DEVNULL)
            written = sorted(set(run.glob("eval-*.json")) - before, key=lambda p: p.stat().st_mtime) or \
                sorted(run.glob("eval-*.json"), key=lambda p: p.stat().st_mtime)
            report = json.loads(written[-1].read_text())
            predictors = report["details"]["predictors"]
            rows[str(eps)] = {view: {c: predictors[f"model, {view}"][c] for c in COLUMNS} for view in ("clean", "stpgd")}
            print(key, eps, {c: round(rows[str(eps)]["stpgd"][c], 3) for c in COLUMNS}, flush=True)
        done[key] = rows
        write_result(out, {"budgets": BUDGETS, "alpha": "eps / 5", "steps": 20, "runs": done})


if __name__ == "__main__":
    main()
