"""Time to robustness, per class: the fast adversarial-training table of docs/fast.md.

The runs come from the shipped protocols with PGD-10 training for the PGD baseline (every
other method sets its own attack):

    OMP_NUM_THREADS=1 python benchmarks/run_protocol.py cifar10-lt-cpu --set steps=10 \\
        --methods pgd-at fgsm-rs nfgsm gradalign free --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/run_protocol.py cifar10-lt-cpu --set steps=10 \\
        --methods drcb-ldam nfgsm-drcb-ldam fgsm-rs-drcb-ldam cb nfgsm-cb --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/run_protocol.py cifar10-fair-cpu --set steps=10 \\
        --methods pgd-at fgsm-rs nfgsm gradalign free --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/run_protocol.py cifar10-fair-cpu --set steps=10 \\
        --methods dafa nfgsm-dafa --seeds 0
    python benchmarks/time_to_robustness.py            # the Markdown tables of what finished

Cost is CPU seconds of the training epochs (one torch thread, so the figure does not depend
on what else the machine ran; ``cpu_seconds`` of each epoch in metrics.jsonl), and the
forward-backward passes a training example costs per epoch; robust accuracy is the run's
report (PGD-20 on the test set). Cells are the mean over the seeds that finished, with
their number (robust and minority robust: ± the standard deviation over the seeds), and the
difference, in points, from the PGD-10 run with the same imbalance method (PGD-10 AT for a
method alone); the catastrophic-overfitting check's collapses are counted over all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS  # noqa: E402
from robx.core.engine.collapse import collapse_starts  # noqa: E402

#: forward-backward passes per training example and epoch (attack + update), by method:
#: PGD-10 AT 10 + 1; FGSM-RS and N-FGSM 1 + 1; GradAlign 1 + 1 + 2 (g(x), and g(x + eta)
#: differentiated twice); Free AT m replays of 1 pass (the epochs divided by m)
PASSES = {"pgd-at": 11, "fgsm-rs": 2, "nfgsm": 2, "gradalign": 4, "free": 8,
          "drcb-ldam": 11, "cb": 11, "dafa": 11, "nfgsm-drcb-ldam": 2, "fgsm-rs-drcb-ldam": 2, "nfgsm-cb": 2,
          "nfgsm-dafa": 2}
#: the PGD-10 run each method is measured against: PGD-10 AT with the same imbalance method
COUNTERPART = {"fgsm-rs": "pgd-at", "nfgsm": "pgd-at", "gradalign": "pgd-at", "free": "pgd-at",
               "nfgsm-drcb-ldam": "drcb-ldam", "fgsm-rs-drcb-ldam": "drcb-ldam", "nfgsm-cb": "cb", "nfgsm-dafa": "dafa"}
ORDER = ["pgd-at", "fgsm-rs", "nfgsm", "gradalign", "free", "drcb-ldam", "nfgsm-drcb-ldam", "fgsm-rs-drcb-ldam",
         "cb", "nfgsm-cb", "dafa", "nfgsm-dafa"]


def runs(folder: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        data = json.loads(path.read_text())
        found.setdefault(data["method"], []).append(data)
    return found


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def cell(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def spread(values: list[float]) -> str:
    """Mean and, over two or more seeds, the standard deviation, in percent."""
    if not values:
        return "-"
    text = cell(statistics.fmean(values))
    return text + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def difference(value: float | None, reference: float | None) -> str:
    return "-" if value is None or reference is None else f"{100 * (value - reference):+.1f}"


def row(method: str, results: list[dict[str, Any]], baseline_cpu: float | None) -> dict[str, Any]:
    robust = [r["report"]["summary"]["robust"] for r in results]
    standard = [r["report"]["summary"]["standard"] for r in results]
    cpu_epoch, cpu_total, collapses = [], [], 0
    for result in results:
        cpus = result.get("epoch_cpu_seconds") or []
        if cpus and None not in cpus:  # runs from before robx recorded it have wall time only
            cpu_epoch.append(statistics.fmean(cpus))
            cpu_total.append(sum(cpus))
        # the rule of this robx on the recorded checks (runs made before a fall had to be confirmed flagged dips)
        checks = [check["robust"] for check in result.get("collapse_checks", [])]
        collapses += len(collapse_starts(checks, result["config"].get("collapse_check", 0.5), last_epoch=True))
    checked = any("collapse_checks" in result for result in results)  # runs from before the check have none
    total = mean(cpu_total)
    return {
        "method": method, "seeds": len(results), "passes": PASSES.get(method),
        "epochs": results[0]["config"]["epochs"], "cpu_epoch": mean(cpu_epoch), "cpu_total": total,
        "share": None if total is None or not baseline_cpu else total / baseline_cpu,
        "clean": mean([s["overall"] for s in standard]), "robust": mean([s["overall"] for s in robust]),
        "minority": mean([s["minority"] for s in robust]), "worst": mean([s["worst"] for s in robust]),
        "robust_spread": spread([s["overall"] for s in robust]), "minority_spread": spread([s["minority"] for s in robust]),
        "collapses": collapses if checked else "-",
    }


def timing_epoch_cpu(folder: Path) -> float | None:
    """PGD-10 AT's training CPU seconds per epoch from the short timing runs beside ``folder``
    (``--set epochs=3 --variant timing-steps10``: the per-epoch cost does not depend on the
    schedule), for results that did not record CPU time."""
    timing = folder.parent / folder.name.replace("-steps10", "-timing-steps10")
    cpus = [c for r in runs(timing).get("pgd-at", []) for c in (r.get("epoch_cpu_seconds") or []) if c is not None]
    return statistics.fmean(cpus) if cpus else None


def pgd10_cpu(found: dict[str, list[dict[str, Any]]], folder: Path) -> tuple[float | None, bool]:
    """PGD-10 AT's training CPU seconds, and whether it is an estimate: its own runs' mean
    where they recorded it; else the runs that train with the same PGD-10 attack beside a
    reweighting (cb, drw, dafa: the same 11 passes); else the timing runs' seconds per epoch
    times its epochs."""
    for methods in (["pgd-at"], [m for m in found if PASSES.get(m) == 11]):
        totals = [row(m, found[m], None)["cpu_total"] for m in methods if m in found]
        totals = [t for t in totals if t is not None]
        if totals:
            return statistics.fmean(totals), False
    per_epoch = timing_epoch_cpu(folder)
    if per_epoch is None or "pgd-at" not in found:
        return None, False
    return per_epoch * found["pgd-at"][0]["config"]["epochs"], True


def table(folder: Path) -> str:
    found = runs(folder)
    baseline_cpu, estimated = pgd10_cpu(found, folder)
    rows = {method: row(method, results, baseline_cpu) for method, results in found.items()}
    lines = ["| method | seeds | passes / example / epoch | epochs | train CPU s / epoch | train CPU s | of PGD-10 AT's "
             "| clean | robust | minority robust | worst-class robust | robust, minority vs PGD-10 counterpart "
             "| collapses |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in sorted(found, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER)):
        r, label = rows[method], method
        if method == "pgd-at" and r["cpu_total"] is None and estimated:  # marked: from the timing runs
            r["cpu_total"], r["share"] = baseline_cpu, 1.0
            r["cpu_epoch"] = baseline_cpu / r["epochs"]
            label = "pgd-at (CPU: timing runs)"
        versus = rows.get(COUNTERPART.get(method, ""))
        against = "-" if versus is None else (f"{COUNTERPART[method]}: {difference(r['robust'], versus['robust'])}, "
                                              f"{difference(r['minority'], versus['minority'])}")
        lines.append(f"| {label} | {r['seeds']} | {r['passes'] or '-'} | {r['epochs']} | {cell(r['cpu_epoch'], 1, 1)} | "
                     f"{cell(r['cpu_total'], 1, 0)} | {cell(r['share'], 1, 2)} | {cell(r['clean'])} | "
                     f"{r['robust_spread']} | {r['minority_spread']} | {cell(r['worst'])} | {against} | "
                     f"{r['collapses']} |")
    return "\n".join(lines)


def autoattack_table(folder: Path) -> str | None:
    """PGD-20 beside AutoAttack (standard, the reference implementation) on the same stratified
    test subset, from ``benchmarks/autoattack_check.py RUN --n-eval N`` of this folder's runs."""
    found = sorted((RESULTS / "autoattack-check").glob(f"{folder.name}-*.json"))
    if not found:
        return None
    lines = ["| run | test images | PGD-20 overall | AutoAttack overall | AutoAttack majority | PGD-20 minority "
             "| AutoAttack minority | AutoAttack worst class |", "|---|---|---|---|---|---|---|---|"]
    for path in found:
        data = json.loads(path.read_text())
        pgd, aa = (data["results"][name]["summary"]["robust"] for name in ("pgd", "autoattack"))
        lines.append(f"| {path.stem.removeprefix(folder.name + '-')} | {data['n_eval']} | {cell(pgd['overall'])} | "
                     f"{cell(aa['overall'])} | {cell(aa.get('majority'))} | {cell(pgd.get('minority'))} | "
                     f"{cell(aa.get('minority'))} | "
                     f"{cell(aa['worst'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", default=["cifar10-lt-cpu-steps10", "cifar10-fair-cpu-steps10"])
    args = parser.parse_args()
    for name in args.folders:
        folder = RESULTS / name
        if folder.is_dir():
            print(f"\n{name}\n")
            print(table(folder))
            attacked = autoattack_table(folder)
            if attacked:
                print(f"\n{name} autoattack\n")
                print(attacked)


if __name__ == "__main__":
    main()
