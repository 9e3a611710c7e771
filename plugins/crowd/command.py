"""``robx crowd``: ICED's evaluation protocol for any registered crowd learner.

Learn a classifier from imbalanced crowd labels with a registered crowd learner (ICED, MV
or D&S with a classifier, :mod:`.evaluation`) and score it on the true test labels
(accuracy, F1, and the share of training labels inferred right, as Tables 3.2-3.3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from robx import MAX_SEED, RegisterCommand, hookimpl

#: the plugin's name (its module's, "crowd", is the crowd task's)
name = "crowd-command"
console = Console()


def crowd(
    method: Annotated[str, typer.Option(help="A registered crowd learner: iced, mv-lr, mv-dnn, ds-lr, ds-dnn.")],
    dataset: Annotated[str, typer.Option(help="A crowd-labelled dataset: digits-crowd, breast-cancer-crowd, cifar10-pair-crowd.")] = "digits-crowd",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the data (workers, removal, split) and the learner.")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="METHOD.KEY=VALUE or dataset.KEY=VALUE (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write report.json here.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output directory.")] = False,
) -> None:
    """Learn a classifier from imbalanced crowd labels and score it on the true test labels
    (ICED's evaluation: accuracy, F1, and how many training labels it inferred right)."""
    from robx.plugins.crowd.evaluation import OUTPUTS, WRITER, CrowdJob, run_crowd, write_crowd_report
    from robx import prepare_output_dir
    from robx import method_set_overrides

    method_options, dataset_options = method_set_overrides(method, set_ or [])
    if out is not None:
        prepare_output_dir(out, OUTPUTS, WRITER, force)
    with console.status(f"{method} on {dataset} (seed {seed})"):
        report = run_crowd(CrowdJob(dataset, method, seed, method_options, dataset_options))
    counts = ", ".join(f"{c} {n}" for c, n in zip(report["classes"], report["train_counts"]))
    table = Table(title=f"{method} on {dataset}, seed {seed}: training {counts} (true classes), "
                        f"{report['workers']} workers; test {sum(report['test_counts'])} balanced", title_justify="left")
    for column in ("test accuracy", "test F1", "training labels inferred right", "majority vote's"):
        table.add_column(column, justify="right")
    table.add_row(f"{report['accuracy']:.4f}", f"{report['f1']:.4f}", f"{report['inferred_label_accuracy']:.4f}",
                  f"{report['majority_vote_accuracy']:.4f}")
    console.print(table)
    if report["history"]:
        accuracy = [entry["inferred_accuracy"] for entry in report["history"] if "inferred_accuracy" in entry]
        console.print(f"inferred-label accuracy per iteration: {' '.join(f'{a:.3f}' for a in accuracy)}")
    if out is not None:
        write_crowd_report(out, report)
        console.print(f"written: {out / 'report.json'}")


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("crowd", crowd)
