"""Markdown tables of an oversampling protocol's results (GL-GAN's Tables 2.2-2.6 layout:
classifier x metric rows, one column per method, mean +- std over seeds), the interleaving
row, and the claim counts the docs quote.

    python benchmarks/oversample_table.py benchmarks/results/glgan-cpu
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = (("macro_f1", "macro F1"), ("micro_f1", "micro F1"), ("mcc", "MCC"))


def load(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """dataset -> method -> reports (failed runs kept as None)."""
    found: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("*/*.json")):
        record = json.loads(path.read_text())
        found[record["dataset"]][record["name"]].append(record["report"])
    return found


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "n/a"


def protocol_order(folder: Path) -> tuple[list[str], list[str]]:
    """(datasets, methods) in the protocol file's order (the folder is named after it)."""
    from robx.core.config import tomllib

    path = Path(__file__).resolve().parent / "protocols" / f"{folder.name}.toml"
    protocol = tomllib.loads(path.read_text()) if path.exists() else {"datasets": [], "methods": {}}
    return list(protocol["datasets"]), list(protocol["methods"])


def main() -> None:
    folder = Path(sys.argv[1])
    results = load(folder)
    dataset_order, order = protocol_order(folder)
    wins = defaultdict(int)
    pairs = 0
    for dataset in sorted(results, key=lambda d: dataset_order.index(d) if d in dataset_order else len(dataset_order)):
        methods = results[dataset]
        names = sorted(methods, key=lambda m: order.index(m) if m in order else len(order))
        reports = [r for r in methods[names[0]] if r]
        counts = reports[0]["train_counts"] if reports else "?"
        print(f"\n**{dataset}** (training {counts}, seeds {len(methods[names[0]])})\n")
        print("| classifier | metric | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        classifiers = list(reports[0]["classifiers"]) if reports else []
        for classifier in classifiers:
            for key, label in METRICS:
                row = [cell([r["classifiers"][classifier][key] for r in methods[m] if r]) for m in names]
                print(f"| {classifier} | {label} | " + " | ".join(row) + " |")
            if "glgan" in methods:
                pairs += 1
                for key in ("macro_f1", "mcc"):
                    mean = {m: np.mean([r["classifiers"][classifier][key] for r in methods[m] if r]) for m in names}
                    if all(mean["glgan"] > mean[m] for m in ("smote", "random") if m in mean):
                        wins[key] += 1
        interleaving = [cell([100 * r["interleaving"] for r in methods[m] if r and r["interleaving"] is not None])
                        for m in names]
        print("| synthetic examples nearest to another class (%) | | " + " | ".join(interleaving) + " |")
        for key, label in (("synthetic_spread", "synthetic minority spread (mean distance to centroid)"),
                           ("real_minority_spread", "real minority spread")):
            row = [cell([r[key] for r in methods[m] if r and r.get(key) is not None]) for m in names]
            print(f"| {label} | | " + " | ".join(row) + " |")
        for key, label in (("latent_saturated_share", "GL-GAN latent coordinates saturated (|z| > 0.99)"),
                           ("minority_latent_spread", "GL-GAN minority latent spread"),
                           ("synthetic_latent_spread", "GL-GAN synthetic latent spread")):
            row = [cell([r["details"][key] for r in methods[m] if r and key in r.get("details", {})]) for m in names]
            print(f"| {label} | | " + " | ".join(row) + " |")
        print("| seeds | | " + " | ".join(str(len([r for r in methods[m] if r])) for m in names) + " |")
        seconds = [f"{np.mean([r['resample_seconds'] for r in methods[m] if r]):.1f}" for m in names]
        print("| oversampling time (s) | | " + " | ".join(seconds) + " |")
    if pairs:
        print(f"\nGL-GAN above both SMOTE and random oversampling (mean over seeds): macro-F1 in {wins['macro_f1']} "
              f"of {pairs} classifier x dataset pairs, MCC in {wins['mcc']} of {pairs}.")


if __name__ == "__main__":
    main()
