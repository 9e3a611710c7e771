"""PGD-20 and AutoAttack (standard, reference implementation) on the same stratified test
subset of a trained run: AutoAttack's robust accuracy must not be above PGD-20's.

    python benchmarks/autoattack_check.py runs/cifar10-lt-cpu/pgd-at-seed0 --n-eval 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core.engine import SilentProgress, default_eval_attack, evaluate_run, load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n-eval", type=int, default=500)
    args = parser.parse_args()
    run = load_run(args.run_dir)
    results = {}
    for name in ("pgd", "autoattack"):
        attack = default_eval_attack(run.config)
        attack.name = name
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
