"""``report.json`` of a run and its per-class accuracy plot."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from robx.core.attack_plans import AttackPlan
from robx.core.errors import RobxError
from robx.core.evaluate import EvalResult
from robx.core.files import atomic_write
from robx.core.metrics import is_balanced, majority_classes, summarize
from robx.core.task import Metric

ACCURACY = {"name": "accuracy", "higher_is_better": True}  # what reports from before tasks measured


def build_report(
    result: EvalResult,
    class_names: list[str],
    class_counts: list[int],
    attack: AttackPlan,
    metric: Metric,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-class standard (clean) and robust (attacked) score of the task's metric and their
    summaries (docs/protocols.md, Metrics).

    Majority/minority halves come from the *training* class counts.
    """
    standard, robust, test_counts = result.per_class(len(class_names))
    better = metric.higher_is_better
    report = {
        "metric": {"name": metric.name, "higher_is_better": better},
        "class_names": class_names,
        "class_counts": class_counts,
        "test_counts": test_counts,
        "majority_classes": majority_classes(class_counts),
        "attack": attack.to_json(),
        "per_class": {"standard": standard, "robust": robust},
        "summary": {"standard": summarize(standard, class_counts, better),
                    "robust": summarize(robust, class_counts, better)},
    }
    untested = [name for name, count in zip(class_names, test_counts) if not count]
    if untested:
        report["untested_classes"] = untested
    report.update(extra or {})
    return report


def untested_note(report: dict[str, Any]) -> str | None:
    """The line under a report's table when some classes had no test examples."""
    untested = report.get("untested_classes")
    if not untested:
        return None
    names = ", ".join(f"'{name}'" for name in untested)
    return (f"{'class' if len(untested) == 1 else 'classes'} {names} had no test examples: no score, and left out "
            "of the overall, majority, minority and worst figures")


def _scores(values: list[float | None]) -> list[float]:
    """Per-class scores for a plot: a class without test examples as NaN (no bar)."""
    return [float("nan") if value is None else value for value in values]


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(fig)


def plot_per_class(report: dict[str, Any], path: Path, title: str) -> None:
    """Grouped bars of per-class standard and robust scores; minority classes hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    standard = _scores(report["per_class"]["standard"])
    robust = _scores(report["per_class"]["robust"])
    metric = report.get("metric", ACCURACY)
    balanced = is_balanced(report["class_counts"])
    majority = set(range(len(names))) if balanced else set(report["majority_classes"])
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
    if max(v for v in standard + robust if v == v) <= 1.0:  # rates: leave room above 1 for the legend
        ax.set_ylim(0, 1.18)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(metric["name"] + ("" if metric["higher_is_better"] else " (lower is better)"))
    ax.set_title("\n".join(textwrap.wrap(title, width=int(fig.get_figwidth() * 13))), fontsize=10)  # fits the figure
    minority_key = [] if balanced else [plt.Rectangle((0, 0), 1, 1, fill=False, hatch="//")]
    ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False,
              handles=ax.get_legend_handles_labels()[0] + minority_key,
              labels=["standard", "robust", "minority class"][: 2 + len(minority_key)])
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------
# comparing runs: `robx report`
# ---------------------------------------------------------------------------

SUMMARY_KEYS = ("overall", "majority", "minority", "worst")


def load_reports(paths: list[Path]) -> list[dict[str, Any]]:
    """Reports from run directories, result JSONs (``{"method", "seed", "report"}``) or
    folders of either. Each gets a ``method`` label (default: its plugins joined by +)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and (path / "report.json").exists():
            files.append(path / "report.json")
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.name != "config.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise RobxError(f"no run directory or result file at {path}")
    explicit = {path for path in paths if path.is_file()}
    reports = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RobxError(f"cannot read {file}: {error}") from error
        report = data.get("report", data) if isinstance(data, dict) else data
        looks_like_one = isinstance(report, dict) and "per_class" in report and "summary" in report
        if not looks_like_one and file not in explicit:
            continue  # found by walking a folder, and not a report (e.g. a benchmark of something else)
        problem = report_problem(report)
        if problem is not None:
            raise RobxError(f"{file} is not a robx report: {problem}")
        report = dict(report)
        report["method"] = data.get("method") or report.get("method") or run_label(report)
        report["source"] = str(file)
        reports.append(report)
    if not reports:
        raise RobxError(f"no robx reports found in {', '.join(map(str, paths))}")
    return reports


def report_problem(report: Any) -> str | None:
    """What keeps ``report`` from being a run's report.json as :func:`aggregate` reads it
    (the first missing or mistyped key), or None."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not an object"
    names = report.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "no 'class_names' list of class names"
    for key in ("class_counts", "majority_classes"):
        if not isinstance(report.get(key), list):
            return f"no '{key}' list"
    if not isinstance(report.get("per_class"), dict) or not isinstance(report.get("summary"), dict):
        return "'per_class' and 'summary' must be objects"
    for kind in ("standard", "robust"):
        scores = report["per_class"].get(kind)
        if not isinstance(scores, list) or len(scores) != len(names) or not any(map(number, scores)) \
                or not all(number(score) or score is None for score in scores):
            return f"'per_class.{kind}' must be {len(names)} numbers, one per class (null: no test examples)"
        summary = report["summary"].get(kind)
        if not isinstance(summary, dict):
            return f"no 'summary.{kind}' object"
        for key in SUMMARY_KEYS + ("disparity",):
            if not number(summary.get(key)):
                return f"no number at 'summary.{kind}.{key}'"
    metric = report.get("metric", ACCURACY)
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) \
            or not isinstance(metric.get("higher_is_better"), bool):
        return "'metric' must be an object with a 'name' and 'higher_is_better'"
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def run_label(report: dict[str, Any]) -> str:
    """How a run without a method name is labelled: its plugins joined by +, and its model
    (``pgd (resnet18)``), so that runs of two models never share a row."""
    plugins = "+".join(report.get("plugins", ["?"]))
    return f"{plugins} ({report['model']})" if report.get("model") else plugins


def aggregate(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: mean and sample std over its runs (seeds) of every summary,
    and the mean per-class scores. Runs must share their classes and metric."""
    kinds = {(tuple(r["class_names"]), r.get("metric", ACCURACY)["name"]) for r in reports}
    if len(kinds) > 1:
        raise RobxError("cannot put runs of different classes or metrics in one table: "
                        + "; ".join(f"{metric} over {', '.join(names)}" for names, metric in sorted(kinds)))
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        groups.setdefault(report["method"], []).append(report)
    rows = []
    for method, members in groups.items():
        row: dict[str, Any] = {"method": method, "runs": len(members),
                               "seeds": sorted(m.get("seed", -1) for m in members)}
        for kind in ("standard", "robust"):
            for key in SUMMARY_KEYS + ("disparity",):
                row[f"{kind}.{key}"] = _mean_std([m["summary"][kind][key] for m in members])
            per_class = [m["per_class"][kind] for m in members]
            row[f"per_class.{kind}"] = [_mean_std(scored)[0] if scored else None
                                        for scored in ([v for v in c if v is not None] for c in zip(*per_class))]
        row["class_names"] = members[0]["class_names"]
        row["metric"] = members[0].get("metric", ACCURACY)
        row["majority_classes"] = members[0]["majority_classes"]
        row["balanced"] = is_balanced(members[0]["class_counts"])
        rows.append(row)
    return rows


def fairness_score(average: float, worst: float, base_average: float, base_worst: float) -> float:
    """DAFA's rho (Lee et al. 2024): the relative gain in worst-class accuracy minus the
    relative loss in average accuracy against a baseline; > 0 means fairer at a fair price.
    ``nan`` when the baseline's worst class is at 0 (the relative gain is undefined)."""
    if base_worst <= 0 or base_average <= 0:
        return float("nan")
    return (worst - base_worst) / base_worst - (base_average - average) / base_average


def add_fairness_scores(rows: list[dict[str, Any]], baseline: str) -> None:
    """Add ``{kind}.rho`` to every row, from the mean overall (average) and worst-class
    accuracy against the row of method ``baseline``."""
    base = next((row for row in rows if row["method"] == baseline), None)
    if base is None:
        raise RobxError(f"baseline {baseline!r} is not among the methods: {', '.join(r['method'] for r in rows)}")
    for row in rows:
        for kind in ("standard", "robust"):
            row[f"{kind}.rho"] = fairness_score(row[f"{kind}.overall"][0], row[f"{kind}.worst"][0],
                                                base[f"{kind}.overall"][0], base[f"{kind}.worst"][0])


def plot_comparison(rows: list[dict[str, Any]], path: Path, kind: str = "robust") -> None:
    """Per-class score (mean over seeds) of every method, grouped by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = rows[0]["class_names"]
    balanced = rows[0].get("balanced", False)
    majority = set(range(len(names))) if balanced else set(rows[0]["majority_classes"])
    width = 0.8 / len(rows)
    # tab10 repeats its colours past ten methods, which makes bars of different methods look alike
    palette = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(names)), 4))
    for i, row in enumerate(rows):
        offsets = [c - 0.4 + width * (i + 0.5) for c in range(len(names))]
        ax.bar(offsets, _scores(row[f"per_class.{kind}"]), width, label=f"{row['method']} (n={row['runs']})",
               color=palette[i % len(palette)])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}{'' if c in majority else '*'}" for c, n in enumerate(names)], fontsize=8)
    metric = rows[0].get("metric", ACCURACY)
    if metric["name"] == "accuracy":  # room above 1.0 for the legend
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(f"{kind} {metric['name']} (mean over seeds)")
    ax.set_title(f"per-class {kind} {metric['name']}" + ("" if metric["higher_is_better"] else " (lower is better)")
                 + ("" if balanced else "; * = minority class"), fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
