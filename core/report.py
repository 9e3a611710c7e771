"""``report.json`` of a run and its per-class accuracy plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robx.core.evaluate import AttackSettings, EvalResult
from robx.core.metrics import majority_classes, summarize


def build_report(
    result: EvalResult,
    class_names: list[str],
    class_counts: list[int],
    attack: AttackSettings,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-class standard/robust accuracy and their summaries (PROTOCOLS.md, Metrics).

    Majority/minority halves come from the *training* class counts.
    """
    standard, robust, test_counts = result.per_class(len(class_names))
    report = {
        "class_names": class_names,
        "class_counts": class_counts,
        "test_counts": test_counts,
        "majority_classes": majority_classes(class_counts),
        "attack": {"name": attack.name, "eps": attack.eps, "alpha": attack.alpha,
                   "steps": attack.steps, "norm": attack.norm, "description": attack.describe()},
        "per_class": {"standard": standard, "robust": robust},
        "summary": {"standard": summarize(standard, class_counts), "robust": summarize(robust, class_counts)},
    }
    report.update(extra or {})
    return report


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def plot_per_class(report: dict[str, Any], path: Path, title: str) -> None:
    """Grouped bars of per-class standard and robust accuracy; minority classes hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    standard = report["per_class"]["standard"]
    robust = report["per_class"]["robust"]
    majority = set(report["majority_classes"])
    positions = range(len(names))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.8))
    for offset, values, label, color in ((-width / 2, standard, "standard", "#4c72b0"),
                                         (width / 2, robust, "robust", "#dd8452")):
        bars = ax.bar([p + offset for p in positions], values, width, label=label, color=color)
        for c, bar in enumerate(bars):
            if c not in majority:
                bar.set_hatch("//")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([f"{n}\n(n={k})" for n, k in zip(names, report["class_counts"])], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, title="hatched = minority", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
