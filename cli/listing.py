"""``robx report`` (runs side by side) and ``robx plugins`` (what is installed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from robx.cli.app import app, console, score_format
from robx.cli.options import settings_of
from robx.core.discovery import available_plugins
from robx.core.errors import OptionError
from robx.core.registry import registry


@app.command("report")
def report_(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, result JSONs, or folders of them.")],
    plot: Annotated[Optional[Path], typer.Option("--out", "--plot", help="Where to write the per-class comparison "
                                                 "plot (PNG; default: robx-report.png beside the first run).")] = None,
    kind: Annotated[str, typer.Option(help="Plot robust or standard per-class accuracy.")] = "robust",
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregated rows as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print one Markdown table (for a README).")] = False,
    baseline: Annotated[str | None, typer.Option(help="Method to score fairness against (DAFA's rho).")] = None,
) -> None:
    """Paper-style table over runs: one row per method, mean +- std over seeds."""
    from robx.core.metrics import summary_keys
    from robx.core.report import add_fairness_scores, aggregate, load_reports, plot_comparison

    from robx.core.files import check_writable

    if kind not in ("robust", "standard"):
        raise OptionError(f"--kind must be robust or standard, got {kind!r}")
    plot = plot or paths[0].resolve().parent / "robx-report.png"
    if plot.is_dir() or not plot.parent.is_dir():
        raise OptionError(f"--plot {plot}: " + ("a directory; give a PNG file name" if plot.is_dir()
                                                 else f"the directory {plot.parent} does not exist"))
    check_writable(plot.parent, plot.name)
    rows = aggregate(load_reports(paths))
    if baseline is not None:
        add_fairness_scores(rows, baseline)
    plot_comparison(rows, plot, kind)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if markdown:
        print(markdown_table(rows, baseline))
        return
    balanced = all(row["balanced"] for row in rows)
    keys = summary_keys(balanced)
    label, write = score_format(rows)
    for kind_name in ("standard", "robust"):
        halves = "" if balanced else " (majority/minority by training counts)"
        table = Table(title=f"{kind_name} {label}, mean ± std over seeds{halves}", title_justify="left")
        table.add_column("method", no_wrap=True)
        table.add_column("runs", justify="right")
        for key in keys:
            table.add_column(key, justify="right")
        if baseline is not None:
            table.add_column(f"rho vs {baseline}", justify="right")
        for row in rows:
            cells = [f"{write(row[f'{kind_name}.{key}'][0])} ± {write(row[f'{kind_name}.{key}'][1])}" for key in keys]
            if baseline is not None:
                cells.append(f"{row[f'{kind_name}.rho']:.3f}")
            table.add_row(row["method"], str(row["runs"]), *cells)
        console.print(table)
    console.print(f"plot: {plot}")


def markdown_table(rows: list[dict], baseline: str | None = None) -> str:
    """Standard and robust overall / majority / minority / worst (overall / worst when every
    run is class-balanced), mean ± std (accuracy in %), and the robust rho against ``baseline``
    when given."""
    from robx.core.metrics import summary_keys

    keys = summary_keys(all(row.get("balanced", False) for row in rows))
    _, write = score_format(rows)
    columns = [(kind, key) for kind in ("standard", "robust") for key in keys]
    header = "| method | seeds | " + " | ".join(f"{kind[:3]} {key}" for kind, key in columns)
    header += f" | rob rho vs {baseline} |" if baseline else " |"
    lines = [header, "|" + "---|" * (len(columns) + 2 + bool(baseline))]
    for row in rows:
        cells = [f"{write(row[f'{kind}.{key}'][0])} ± {write(row[f'{kind}.{key}'][1])}" for kind, key in columns]
        if baseline:
            cells.append(f"{row['robust.rho']:.3f}")
        seeds = ",".join(str(seed) for seed in row.get("seeds", []))
        lines.append(f"| {row['method']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@app.command("plugins")
def plugins_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print the method reference (docs/methods.md's generated part): each method "
                           "plugin's docstring, hooks and options with their defaults.")] = False,
) -> None:
    """List every available plugin, where it comes from and the hooks it implements, and the
    tasks, datasets and models they register."""
    specs = available_plugins()
    if markdown:
        from robx.cli.reference import methods_reference

        print(methods_reference(specs.values()), end="")
        return
    rows = [
        {"name": s.name, "origin": s.origin, "hooks": list(s.hooks), "summary": s.summary,
         "options": sorted(getattr(s.options_type, "__dataclass_fields__", {}))}
        for s in specs.values()
    ]
    found = registry()
    registered = (
        [{"kind": "task", "name": t.name, "origin": t.origin, "detail": t.task.metric.name} for t in found.tasks.values()]
        + [{"kind": "dataset", "name": d.name, "origin": d.origin,
            "detail": f"task {d.task}" + (", default" if d.name == found.default_dataset else "")}
           for d in found.datasets.values()]
        + [{"kind": "model", "name": m.name, "origin": m.origin, "detail": ""} for m in found.models.values()]
        + [{"kind": "attack", "name": a.name, "origin": a.origin,
            "detail": ", ".join([*(f"--{name.replace('_', '-')}" for name in sorted(settings_of(a.name))),
                                 *(["default"] if a.name == found.default_attack else [])])}
           for a in found.attacks.values()]
        + [{"kind": kind, "name": e.name, "origin": e.origin, "detail": found.kinds[kind].used_with}
           for kind, entries in found.entries.items() for e in entries.values()]
        + [{"kind": "command", "name": c.name, "origin": c.origin, "detail": f"robx {c.name}"}
           for c in found.commands.values()]
    )
    if as_json:
        print(json.dumps({"plugins": rows, "registered": registered}, indent=2))
        return
    wide = console.width >= 140
    table = Table(title="robx plugins (robx plugins --json for details)", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("origin")
    table.add_column("hooks", overflow="fold")
    table.add_column("options", overflow="fold")
    if wide:
        table.add_column("summary")
    for row in rows:
        cells = [row["name"], row["origin"], ", ".join(row["hooks"]), ", ".join(row["options"])]
        table.add_row(*cells, *([row["summary"]] if wide else []))
    console.print(table)
    kinds = ", ".join(["tasks", "datasets", "models", "attacks", *(f"{kind}s" for kind in found.kinds), "commands"])
    listing = Table(title=f"registered {kinds} (detail: where to use one)", title_justify="left")
    for column in ("kind", "name", "origin", "detail"):
        listing.add_column(column)
    for row in registered:
        listing.add_row(row["kind"], row["name"], row["origin"], row["detail"])
    console.print(listing)
