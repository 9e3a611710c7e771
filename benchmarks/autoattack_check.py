"""PGD-20 and AutoAttack (standard, reference implementation) on the same stratified test
subset of a trained run: AutoAttack's robust accuracy must not be above PGD-20's.

    python benchmarks/autoattack_check.py runs/cifar10-lt-cpu/pgd-at-seed0 --n-eval 500
    python benchmarks/autoattack_check.py --table cifar10-fair-cpu   # Markdown table of the results so far
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core.engine import SilentProgress, eval_attack, evaluate_run, load_run  # noqa: E402


def print_table(prefix: str) -> None:
    """Average and worst-class robust accuracy (%) under PGD-20 and AutoAttack, one row per run."""
    print("| run | images | PGD-20 avg | AutoAttack avg | PGD-20 worst | AutoAttack worst | AA minutes |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted((RESULTS / "autoattack-check").glob(f"{prefix}*.json")):
        data = json.loads(path.read_text())
        pgd, aa = (data["results"][name]["summary"]["robust"] for name in ("pgd", "autoattack"))
        minutes = data["results"]["autoattack"]["seconds"] / 60
        print(f"| {path.stem.removeprefix(prefix).lstrip('-')} | {data['n_eval']} | {100 * pgd['overall']:.1f} | "
              f"{100 * aa['overall']:.1f} | {100 * pgd['worst']:.1f} | {100 * aa['worst']:.1f} | {minutes:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--table", metavar="PREFIX", help="print the results whose names start with PREFIX")
    args = parser.parse_args()
    if args.table is not None:
        print_table(args.table)
        return
    if args.run_dir is None:
        parser.error("give a run directory or --table PREFIX")
    run = load_run(args.run_dir)
    results = {}
    for name in ("pgd", "autoattack"):
        attack = eval_attack(run, name)
        started = time.perf_counter()
        report = evaluate_run(run, run.state.model, SilentProgress(), attack, args.n_eval)
        results[name] = {"seconds": round(time.perf_counter() - started, 1), "attack": report["attack"],
                         "summary": report["summary"], "per_class": report["per_class"], "n_test": report["n_test"]}
        print(f"{attack.describe()}: robust {report['summary']['robust']['overall']:.4f} "
              f"({results[name]['seconds']}s)", flush=True)
    path = RESULTS / "autoattack-check" / f"{args.run_dir.parent.name}-{args.run_dir.name}.json"
    write_result(path, {"run_dir": str(args.run_dir), "n_eval": args.n_eval, "results": results,
                        "autoattack_not_above_pgd20": results["autoattack"]["summary"]["robust"]["overall"]
                        <= results["pgd"]["summary"]["robust"]["overall"]})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
