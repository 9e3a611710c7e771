"""``robx oversample``: GL-GAN's evaluation protocol for any registered oversampler.

Oversample an imbalanced training set with a registered oversampler (GL-GAN, SMOTE, ...,
:mod:`.evaluation`) and score scikit-learn classifiers trained on the result on a
balanced test split (macro-F1, micro-F1, MCC, as the chapter's Tables 2.2-2.6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from robx import MAX_SEED, RegisterCommand, hookimpl

#: the plugin's name (its module's, "oversample", would not say it is the command)
name = "oversample-command"
console = Console()


def oversample(
    method: Annotated[str, typer.Option(help="A registered oversampler: glgan, smote, borderline-smote, adasyn, random, none.")],
    dataset: Annotated[str, typer.Option(help="A classification dataset, e.g. digits-binary, breast-cancer, cifar10-pair.")] = "digits-binary",
    ratio: Annotated[Optional[float], typer.Option(help="Majority : minority training ratio (default: the dataset's).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the imbalanced subset, the oversampler and the classifiers.")] = 0,
    classifiers: Annotated[str, typer.Option(help="Comma-separated: mlpclassifier, linearsvc, adaboost (scikit-learn defaults).")] = "mlpclassifier,linearsvc,adaboost",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="METHOD.KEY=VALUE or dataset.KEY=VALUE (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write report.json and augmented.npz (x, y, generated) here.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output directory.")] = False,
) -> None:
    """Oversample an imbalanced training set and score scikit-learn classifiers trained on it
    (GL-GAN's evaluation: macro-F1, micro-F1 and MCC on a balanced test split)."""
    from robx import prepare_output_dir
    from robx.plugins.oversampling.evaluation import OUTPUTS, WRITER, OversampleJob, run_oversample, write_outputs
    from robx import method_set_overrides

    method_options, dataset_options = method_set_overrides(method, set_ or [])
    if out is not None:
        prepare_output_dir(out, OUTPUTS, WRITER, force)
    names = tuple(c.strip() for c in classifiers.split(",") if c.strip())
    job = OversampleJob(dataset, method, seed, ratio, method_options, dataset_options, names)
    with console.status(f"{method} on {dataset} (seed {seed})"):
        report, arrays = run_oversample(job)
    counts = ", ".join(f"{c} {n}" for c, n in zip(report["classes"], report["train_counts"]))
    table = Table(title=f"{method} on {dataset}, seed {seed}: training {counts}, +{report['generated']} synthetic; "
                        f"test {sum(report['test_counts'])} balanced", title_justify="left")
    for column in ("classifier", "macro-F1", "micro-F1", "MCC"):
        table.add_column(column, justify="right" if column != "classifier" else "left")
    for name, scores in report["classifiers"].items():
        table.add_row(name, f"{scores['macro_f1']:.4f}", f"{scores['micro_f1']:.4f}", f"{scores['mcc']:.4f}")
    console.print(table)
    if report["interleaving"] is not None:
        console.print(f"synthetic examples whose nearest real training example has another class: "
                      f"{100 * report['interleaving']:.1f} %; oversampling took {report['resample_seconds']:.1f} s")
    if out is not None:
        write_outputs(out, report, arrays)
        console.print(f"written: {out / 'report.json'}, {out / 'augmented.npz'}")


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("oversample", oversample)
