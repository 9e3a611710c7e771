"""Markdown tables of a crowd protocol's results (iced-cpu): ICED's Table 3.2 layout
(accuracy and F1 per dataset and method, mean +- std over seeds), the training labels each
inference got right (Figure 3.2: MV, D&S before ICED, after its first and last iteration),
and Table 3.3's warm-up comparison; with ``--plot`` also docs/iced-inferred.png (ICED's
inferred-label accuracy per iteration).

    python benchmarks/crowd_table.py benchmarks/results/iced-cpu [--plot]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.oversample_table import protocol_order  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "n/a"


def main() -> None:
    folder = Path(sys.argv[1])
    found: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("*/*.json")):
        record = json.loads(path.read_text())
        if record["report"] is not None:
            found[record["dataset"]][record["name"]].append(record["report"])
    dataset_order, method_order = protocol_order(folder)
    datasets = sorted(found, key=lambda d: dataset_order.index(d) if d in dataset_order else len(dataset_order))
    main_methods = [m for m in method_order if not m.startswith("warmup-")]
    warmups = [m for m in method_order if m.startswith("warmup-")]

    print("\nTest accuracy / macro-F1 (Table 3.2 layout):\n")
    print("| method | " + " | ".join(f"{d} accuracy | {d} F1" for d in datasets) + " |")
    print("|---|" + "---|---|" * len(datasets))
    for method in main_methods:
        cells = []
        for d in datasets:
            runs = found[d].get(method, [])
            cells += [cell([r["accuracy"] for r in runs]), cell([r["f1"] for r in runs])]
        print(f"| {method} | " + " | ".join(cells) + " |")

    print("\nTraining labels inferred right (Figure 3.2: MV; D&S before ICED, after its first and last iteration):\n")
    print("| dataset | training (true classes) | workers | MV | D&S, uniform prior | D&S, prior estimated (crowd-kit) "
          "| ICED's D&S-orig | D&S-first | D&S-final | synthetic examples inferred minority |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in [m for m in main_methods if m.startswith("iced")]:
        for d in datasets:
            iced = found[d].get(name, [])
            counts = iced[0]["train_counts"] if iced else "?"
            workers = iced[0]["workers"] if iced else "?"
            print(f"| {d} ({name}) | {counts} | {workers} | {cell([r['majority_vote_accuracy'] for r in iced])} | "
                  f"{cell([r['inferred_label_accuracy'] for r in found[d].get('ds-lr', [])])} | "
                  f"{cell([r['inferred_label_accuracy'] for r in found[d].get('dsck-lr', [])])} | "
                  f"{cell([r['details']['ds_original_accuracy'] for r in iced])} | "
                  f"{cell([r['history'][0]['inferred_accuracy'] for r in iced if r['history']])} | "
                  f"{cell([r['history'][-1]['inferred_accuracy'] for r in iced if r['history']])} | "
                  f"{cell([r['details']['synthetic_minority_share'] for r in iced if r['details'].get('synthetic_minority_share') is not None])} |")

    print("\nThe classifier after the warm-up only (Table 3.3):\n")
    print("| dataset | warm-up | accuracy | F1 | optimiser steps | examples used |")
    print("|---|---|---|---|---|---|")
    for d in datasets:
        for m in warmups:
            runs = found[d].get(m, [])
            steps = [r["details"].get("warmup_steps") for r in runs if r["details"].get("warmup_steps") is not None]
            used = [sum(r["details"]["warmup_group_sizes"]) for r in runs]
            if m.startswith("warmup-trad-i") and not m.startswith("warmup-trad-ii"):
                used = [sum(r["train_counts"]) for r in runs]
            print(f"| {d} | {m.removeprefix('warmup-')} | {cell([r['accuracy'] for r in runs])} | "
                  f"{cell([r['f1'] for r in runs])} | {cell(steps) if steps else '?'} | {cell(used) if used else '?'} |")

    if "--plot" in sys.argv:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.8), squeeze=False)
        for ax, d in zip(axes[0], datasets):
            for r in found[d].get("iced", []):
                curve = [r["details"]["ds_original_accuracy"]] + [h["inferred_accuracy"] for h in r["history"]]
                color = f"C{r['seed'] % 10}"
                ax.plot(range(len(curve)), curve, color=color, alpha=0.85, label=f"seed {r['seed']}: ICED's D&S")
                ax.axhline(r["majority_vote_accuracy"], color=color, alpha=0.7, linestyle="--",
                           label=f"seed {r['seed']}: majority vote")
            ax.set_title(d, fontsize=10)
            ax.set_xlabel("ICED iteration (0: before the first)")
            ax.set_ylabel("training labels inferred right")
            ax.legend(fontsize=6, ncol=2)
        fig.suptitle("iced-cpu: training labels ICED's Dawid-Skene infers right, per iteration", fontsize=10)
        fig.tight_layout()
        fig.savefig(DOCS / "iced-inferred.png", dpi=110)
        print(f"\n{DOCS / 'iced-inferred.png'}")


if __name__ == "__main__":
    main()
