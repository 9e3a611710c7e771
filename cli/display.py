"""Rich progress bars and tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from robx.core.metrics import is_balanced, summary_keys
from robx.core.report import untested_note
from robx.core.stats import EpochStats


class RichProgress:
    """Implements the engine's ``Progress`` protocol with two rich bars."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.epoch_task: Any = None
        self.batch_task: Any = None
        self.eval_task: Any = None
        self.started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.bars.stop()

    def _start(self) -> None:
        # Started on first use, so that a run rejected during validation prints nothing.
        if not self.started:
            self.bars.start()
            self.started = True

    def start_training(self, epochs: int, first_epoch: int) -> None:
        self._start()
        self.epoch_task = self.bars.add_task("epochs", total=epochs, completed=first_epoch, info="")

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.batch_task is None:
            self.batch_task = self.bars.add_task("batches", total=batches, info="")
        self.bars.reset(self.batch_task, total=batches, description=f"epoch {epoch}", info="")

    def advance_batch(self) -> None:
        self.bars.advance(self.batch_task)

    def end_epoch(self, stats: EpochStats) -> None:
        info = f"loss {stats.loss:.3f}"
        if stats.train.robust is not None:
            info += f"  train robust {stats.train.metric} {stats.train.robust.mean():.3f}"
        if stats.train.clean is not None:
            info += f"  clean {stats.train.clean.mean():.3f}"
        self.bars.update(self.epoch_task, advance=1, info=info)

    def start_eval(self, total: int, description: str) -> None:
        self._start()
        self.eval_task = self.bars.add_task(description, total=total, info="")

    def advance_eval(self, n: int) -> None:
        self.bars.advance(self.eval_task, n)

    def end_eval(self) -> None:
        pass


class LineProgress:
    """The engine's ``Progress`` without a terminal (CI, a log file, ``| tee``): one full line
    per epoch and per evaluation, nothing overwritten, nothing cut at the console's width."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start_training(self, epochs: int, first_epoch: int) -> None:
        self.epochs = epochs

    def start_epoch(self, epoch: int, batches: int) -> None:
        pass

    def advance_batch(self) -> None:
        pass

    def end_epoch(self, stats: EpochStats) -> None:
        parts = [f"epoch {stats.epoch + 1}/{self.epochs}", f"loss {stats.loss:.4f}", f"lr {stats.lr:.4g}"]
        for split, numbers in (("train", stats.train), ("val", stats.val)):
            if numbers is None:
                continue
            for kind, values in (("clean", numbers.clean), ("robust", numbers.robust)):
                if values is not None:
                    scored = values[numbers.counts > 0]
                    parts.append(f"{split} {kind} {numbers.metric} {scored.mean():.3f} (classes "
                                 f"{scored.min():.3f}-{scored.max():.3f})")
        parts.append(f"{stats.seconds:.1f} s")
        self.console.print("  ".join(parts), soft_wrap=True, markup=False)

    def start_eval(self, total: int, description: str) -> None:
        self.console.print(f"{description}: {total} test examples", soft_wrap=True, markup=False)

    def advance_eval(self, n: int) -> None:
        pass

    def end_eval(self) -> None:
        pass


def progress_for(console: Console) -> RichProgress | LineProgress:
    """Bars in a terminal (or a notebook), one line per epoch elsewhere."""
    return RichProgress(console) if console.is_terminal or console.is_jupyter else LineProgress(console)


def report_table(report: dict[str, Any], title: str) -> Table:
    """Per-class standard and robust accuracy, then the summaries."""
    balanced = is_balanced(report["class_counts"])
    caption = None if balanced else ("majority / minority: the half of the classes with the most / fewest training "
                                     "examples; disparity: majority minus minority")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("class")
    table.add_column("n train", justify="right")
    if not balanced:
        table.add_column("group")
    table.add_column("standard", justify="right")
    table.add_column("robust", justify="right")
    majority = set(report["majority_classes"])
    for c, name in enumerate(report["class_names"]):
        group = [] if balanced else ["majority" if c in majority else "minority"]
        table.add_row(name, str(report["class_counts"][c]), *group,
                      *(_score(report["per_class"][kind][c]) for kind in ("standard", "robust")))
    table.add_section()
    for key in summary_keys(balanced) + (() if balanced else ("disparity",)):
        table.add_row(key, "", *([] if balanced else [""]), f"{report['summary']['standard'][key]:.3f}",
                      f"{report['summary']['robust'][key]:.3f}", style="bold" if key == "overall" else None)
    return table


def _score(value: float | None) -> str:
    return "no test examples" if value is None else f"{value:.3f}"


def details_tables(report: dict[str, Any]) -> list[Table]:
    """The task's own tables (``report["details"]["tables"]``), e.g. the crime task's errors
    on zero and non-zero targets beside the trivial predictors."""
    tables = []
    for spec in report.get("details", {}).get("tables", []):
        table = Table(title=spec["title"], title_justify="left")
        for i, column in enumerate(spec["columns"]):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in spec["rows"]:
            table.add_row(*(cell if isinstance(cell, str) else "–" if cell is None else f"{cell:.3f}" for cell in row))
        tables.append(table)
    return tables


def print_report(console: Console, report: dict[str, Any], title: str) -> None:
    """The per-class table, then the task's own tables."""
    for table in (report_table(report, title), *details_tables(report)):
        console.print(table)
    for note in (report.get("note"), untested_note(report)):
        if note:
            console.print(f"note: {note}")
