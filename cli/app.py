"""The ``robx`` Typer app, its console, and what several commands share."""

from __future__ import annotations

from collections.abc import Callable

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from robx.core.errors import OptionError
from robx.core.options import parse_number

app = typer.Typer(
    name="robx",
    help="Adversarial training for imbalanced data and class-fair robustness.",
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)
console = Console()


def number(value: Optional[str], name: str) -> Optional[float]:
    if value is None:
        return None
    try:
        return parse_number(value)
    except ValueError as error:
        raise OptionError(f"--{name} expects a number such as 0.03 or 8/255, got {value!r}") from error


def metric_name(report: dict[str, Any]) -> str:
    metric = report.get("metric", {"name": "accuracy", "higher_is_better": True})
    return metric["name"] + ("" if metric["higher_is_better"] else " (lower is better)")


def score_format(rows: list[dict[str, Any]]) -> tuple[str, Callable[[float], str]]:
    """How `robx report` writes the rows' metric (one metric: ``aggregate`` checks it):
    accuracy in %, any other as it is (the crime task's absolute error)."""
    if rows[0]["metric"]["name"] == "accuracy":
        return "accuracy (%)", lambda value: f"{100 * value:.1f}"
    return metric_name(rows[0]), lambda value: f"{value:.3f}"


def saved_device(run_dir: Path) -> str:
    """The device a run directory's config names (a resumed job joins the right backend)."""
    try:
        return str(json.loads((Path(run_dir) / "config.json").read_text())["config"].get("device", "auto"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "auto"  # the engine reports the unreadable run directory in one line


def name_part(name: str) -> str:
    """A dataset or model name as part of a directory name: folder:/data/pets -> folder-pets."""
    scheme, colon, rest = name.partition(":")
    return f"{scheme}-{Path(rest).name}" if colon else name
