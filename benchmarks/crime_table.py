"""The crime-cpu tables of docs/results.md from the protocol's result JSONs.

    python benchmarks/crime_table.py benchmarks/results/crime-cpu benchmarks/results/crime-cpu-chicago

For each results folder: per method, mean +- std over its seeds of the MAE on zero and on
non-zero targets and their disparity, the NB NLL (all and non-zero targets), event
detection (Recall@20 / MAP@20) and its disparity between event and non-event regions
(Rec-D / MAP-D), clean and under STPGD-20, and the wall minutes of a run; the trivial predictors (the same on every seed's
test days) below; then MinGRE's victim diagnostics, the mean over its epochs and seeds of
the minority share of its victims' targets and gradient mass, beside plain top-K's on the
same batches. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
COLUMNS = ("mae zero", "mae non-zero", "mae disparity", "nll", "nll non-zero")
DETECTION = ("recall@20", "map@20", "rec-d", "map-d")
TRIVIAL = ("all-zero", "historical mean", "90-day mean", "same weekday", "last value")
DIAGNOSTICS = (("victim_minority_share", "minority share of the victims' targets"),
               ("victim_minority_mass", "minority share of the victims' gradient mass"))


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def load(folder: Path) -> dict[str, list[dict]]:
    """Results by method, in the order the protocol lists its methods."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*-seed*.json")):
        result = json.loads(path.read_text())
        runs.setdefault(result["method"], []).append(result)
    if not runs:
        return runs
    protocol = next(iter(runs.values()))[0]["protocol"]
    order = list(tomllib.loads((PROTOCOLS / f"{protocol}.toml").read_text())["methods"])
    return dict(sorted(runs.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def table(folder: Path) -> str:
    runs = load(folder)
    if not runs:
        return f"{folder}: no results\n"
    attack = next(iter(runs.values()))[0]["report"]["attack"]["name"]
    head = ["method", "seeds"] + [f"{c} {view}" for c in COLUMNS + DETECTION for view in ("clean", attack)] + [
        "min / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, results in runs.items():
        predictors = [r["report"]["details"]["predictors"] for r in results]
        cells = [method, ",".join(str(r["seed"]) for r in results)]
        for column in COLUMNS + DETECTION:
            for view in ("model, clean", f"model, {attack}"):
                cells.append(mean_std([p[view][column] for p in predictors]))
        cells.append(f"{statistics.mean(r['wall_seconds'] for r in results) / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(runs.values()))[0]["report"]["details"]["predictors"]
    for name in (n for n in TRIVIAL if n in first):
        row = first[name]
        cells = [f"*{name}*", "-"] + ["-" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS + DETECTION
                                      for _ in (0, 1)] + ["-"]
        lines.append("| " + " | ".join(cells) + " |")
    out = [f"**{folder.name}** (STPGD-20 columns: the same inputs attacked; trivial predictors need no model)", "",
           *lines, ""]
    diagnosed = {m: rs for m, rs in runs.items() if "diagnostics" in rs[0]}
    if diagnosed:
        out += ["| method | " + " | ".join(f"{label}: MinGRE / plain top-K" for _, label in DIAGNOSTICS)
                + " | all nodes | victims shared with plain |", "|---|---|---|---|---|"]
        for method, results in diagnosed.items():
            epochs = [d for r in results for d in r["diagnostics"]]
            cells = [method]
            for key, _ in DIAGNOSTICS:
                ours = statistics.mean(d[f"mingre.{key}"] for d in epochs)
                plain = statistics.mean(d[f"mingre.{key}_plain"] for d in epochs)
                cells.append(f"{ours:.3f} / {plain:.3f} ({ours / plain:.1f}x)")
            cells += [f"{statistics.mean(d['mingre.minority_share_all'] for d in epochs):.3f}",
                      f"{statistics.mean(d['mingre.victim_overlap'] for d in epochs):.2f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    for folder in parser.parse_args().folders:
        print(table(folder))


if __name__ == "__main__":
    main()
