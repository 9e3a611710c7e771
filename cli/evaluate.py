"""``robx eval`` (a run's checkpoint, other attack settings) and ``robx audit`` (a model robx
did not train), per class.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from robx.cli.app import app, console, metric_name, name_part, number, saved_device
from robx.cli.options import attack_settings, with_attack_options
from robx.core.config import MAX_BATCH, MAX_SEED, TrainConfig
from robx.core.errors import OptionError, RobxError
from robx.core.options import parse_set_overrides
from robx.core.registry import registry, resolved_config


def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `robx train`.")],
    attack_name: Annotated[Optional[str], typer.Option("--attack", help="A registered attack of the run's task "
                                                       "(`robx plugins` lists them); default: the task's.")] = None,
    eps: Annotated[Optional[str], typer.Option(help="Budget, e.g. 8/255 (default: the run's).")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="Step size (default: the run's evaluation step).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Attack steps (default: the run's evaluation steps).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (default: the run's).")] = None,
    n_eval: Annotated[Optional[int], typer.Option(help="Stratified test subset size.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Evaluation batch (default: the run's, 256); under torchrun the unit each process takes.")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, or best: the checkpoint --keep-best kept (best.pt).")] = "last",
    **attack_options: Any,
) -> None:
    """Re-evaluate a run's checkpoint with chosen attack settings; writes eval-*.json in the run.
    Under ``torchrun`` the batches are shared by the processes (the same numbers)."""
    from robx.core import distributed

    from robx.core.engine import run_dir_held
    from robx.core.rundir import CONFIG_FILE, check_no_links

    if not (run_dir / CONFIG_FILE).is_file():
        raise RobxError(f"{run_dir} is not a robx run directory (no {CONFIG_FILE})")
    check_no_links(run_dir)
    with distributed.joined(device or saved_device(run_dir)) as processes, \
            run_dir_held(run_dir, "eval", processes):
        _evaluate_on(processes, run_dir, attack_name, attack_options, eps, alpha, steps, norm, n_eval, device,
                     batch_size, checkpoint)


def _evaluate_on(processes: Any, run_dir: Path, attack_name: Optional[str], attack_options: dict[str, Any],
                 eps: Optional[str], alpha: Optional[str], steps: Optional[int], norm: Optional[str],
                 n_eval: Optional[int], device: Optional[str], batch_size: Optional[int], checkpoint: str) -> None:
    from robx.cli.display import print_report, progress_for
    from robx.core.engine import SilentProgress, eval_attack, evaluate_run, load_run
    from robx.core.files import write_json

    run = load_run(run_dir, device, checkpoint)
    if batch_size is not None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise OptionError(f"--batch-size must be in 1..{MAX_BATCH}, got {batch_size}")
        run.config.eval_batch_size = batch_size
    if norm is not None and norm != run.config.norm and eps is None:
        raise OptionError(f"the run was trained for {run.config.norm}; give --eps (and --alpha) for --norm {norm}")
    if n_eval is not None and n_eval < 1:
        raise OptionError("--n-eval must be >= 1")
    if norm is not None:
        run.config.norm = norm  # type: ignore[assignment]  # checked with the rest where the attack is planned
    name = registry().attack_name(attack_name, run.task)
    attack = eval_attack(run, name, eps=number(eps, "eps"), alpha=number(alpha, "alpha"), steps=steps,
                         options=attack_settings([name], attack_options)[name])
    if not processes.main:
        evaluate_run(run, run.state.model, SilentProgress(), attack, n_eval)
        return
    with progress_for(console) as progress:
        report = evaluate_run(run, run.state.model, progress, attack, n_eval)
    report = {**report, "checkpoint": checkpoint, **({"best": run.best} if checkpoint == "best" else {})}
    name = f"eval-{attack.tag}-n{report['n_test']}{'-best' if checkpoint == 'best' else ''}.json"
    write_json(Path(run_dir) / name, report)
    print_report(console, report, f"{run_dir}: test {metric_name(report)} ({attack.describe()}), {checkpoint} checkpoint"
                                  + (f" (epoch {run.best['epoch']})" if checkpoint == "best" and run.best else ""))
    console.print(f"written: {Path(run_dir) / name}")


app.command("eval")(with_attack_options(eval_))


#: what robx audit writes: the summary first (it names its writer, see prepare_output_dir)
AUDIT_OUTPUTS = ("audit.json", "per_class.png")


def audit(
    model_file: Annotated[Path, typer.Argument(help="The model's weights: .safetensors or a torch state dict "
                                                    "(read without unpickling code).")],
    arch: Annotated[str, typer.Option(help="Its architecture: a registered model (robx plugins), "
                                           "torchvision:NAME or timm:NAME.")],
    dataset: Annotated[Optional[str], typer.Option(help="Test set and class counts: a registered dataset, "
                                                        "folder:PATH or npz:PATH (default: digits).")] = None,
    attacks: Annotated[Optional[str], typer.Option(help="Comma-separated registered attacks of the task (`robx "
                                                        "plugins` lists them); default: pgd, and autoattack where its "
                                                        "extra is installed.")] = None,
    eps: Annotated[Optional[str], typer.Option(help="Budget, e.g. 8/255 (default: the dataset's or task's).")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="PGD step size (default: eps / 4).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="PGD steps (default: the dataset's evaluation steps).")] = None,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    n_eval: Annotated[Optional[int], typer.Option(help="A stratified test subset of this size.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset.KEY=VALUE (repeatable).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resize the images of --dataset folder:PATH to S x S.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write audit.json and per_class.png here (default: "
                                                     "runs/audit-<arch>-<dataset>-<time>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace robx's outputs in an existing --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the attacks' random starts.")] = 0,
    **attack_options: Any,
) -> None:
    """Robust for whom? Evaluate a model robx did not train, per class: standard and attacked
    accuracy, majority / minority / worst class, and where the attack pushes each class."""
    import tempfile

    from robx.cli.display import print_report, progress_for
    from robx.core.engine import build_run, eval_attack, evaluate_run
    from robx.core.files import prepare_output_dir
    from robx.core.models import load_initial_weights

    names = _audit_attacks(attacks)
    if n_eval is not None and n_eval < 1:
        raise OptionError("--n-eval must be >= 1")
    config = _audit_config(arch, dataset, eps, alpha, steps, norm, set_ or [], image_size, device, seed)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = out or Path("runs") / f"audit-{name_part(arch)}-{name_part(config.dataset or '')}-{stamp}"
    with tempfile.TemporaryDirectory() as unused:
        run = build_run(config, Path(unused) / "run")
    console.print(f"robx: {load_initial_weights(run.state.model, model_file, with_head=True)}")
    prepared = []
    settings = attack_settings(names, attack_options)
    for name in names:  # every attack checked (installed, options, budget) before any work
        prepared.append(eval_attack(run, name, options=settings[name]))
    prepare_output_dir(target, AUDIT_OUTPUTS, "robx audit", force)
    reports = {}
    for attack in prepared:  # each finished attack written at once: a later one failing loses nothing
        with progress_for(console) as progress:
            report = evaluate_run(run, run.state.model, progress, attack, n_eval)
        for key in ("plugins", "epochs", "parts"):
            report.pop(key, None)
        reports[attack.tag] = {**report, "model_file": str(model_file.resolve()), "arch": arch}
        print_report(console, report, f"{model_file.name} ({arch}) on {config.dataset}: {attack.describe()}")
        _print_attacked_confusion(report)
        _write_audit(target, model_file, arch, config.dataset or "", reports)
    console.print(f"written: {target / 'audit.json'}, {target / 'per_class.png'}")


def _audit_attacks(attacks: Optional[str]) -> list[str]:
    """The attacks asked for; by default PGD, and AutoAttack where its extra is installed
    (said in one line where it is not)."""
    import importlib.util

    if attacks is None:
        if importlib.util.find_spec("pyautoattack") is not None:
            return ["pgd", "autoattack"]
        console.print("robx: auditing with pgd only: autoattack needs pip install 'robx[autoattack]'", markup=False)
        return ["pgd"]
    names = [name.strip() for name in attacks.split(",") if name.strip()]
    if not names:
        raise OptionError(f"--attacks expects comma-separated attack names, got {attacks!r}")
    return names


def _write_audit(target: Path, model_file: Path, arch: str, dataset: str, reports: dict[str, Any]) -> None:
    """audit.json (every attack's report) and per_class.png (the first attack's)."""
    from robx.core.files import WRITTEN_BY, make_directory, write_json
    from robx.core.report import plot_per_class

    make_directory(target)
    first = next(iter(reports.values()))
    plot_per_class(first, target / "per_class.png", f"{model_file.name} ({arch}): {next(iter(reports))}")
    write_json(target / "audit.json", {"model_file": str(model_file.resolve()), "arch": arch,
                                       "dataset": dataset, "attacks": reports, WRITTEN_BY: "robx audit"})


def _audit_config(arch: str, dataset: Optional[str], eps: Optional[str], alpha: Optional[str], steps: Optional[int],
                  norm: str, assignments: list[str], image_size: Optional[int], device: str, seed: int) -> TrainConfig:
    """The configuration an audit evaluates with: the dataset's defaults, the given budget
    (alpha eps / 4 where only eps is given), ``--set dataset.KEY=VALUE`` only."""
    overrides = parse_set_overrides(assignments)
    if image_size is not None:
        overrides.setdefault("dataset", {})["image_size"] = str(image_size)
    if set(overrides) - {"dataset"}:
        raise OptionError(f"--set {sorted(set(overrides) - {'dataset'})[0]}.KEY: robx audit takes dataset.KEY only")
    budget = {key: number(value, key) for key, value in (("eps", eps), ("alpha", alpha)) if value is not None}
    if "eps" in budget and "alpha" not in budget:
        budget["alpha"] = budget["eps"] / 4
    return resolved_config(TrainConfig(dataset=dataset, model=arch, plugins=[], epochs=1, seed=seed, device=device,
                                       norm=norm, dataset_options=overrides.get("dataset", {}), **budget,  # type: ignore[arg-type]
                                       **({"eval_steps": steps} if steps is not None else {})))


app.command("audit")(with_attack_options(audit))


def _print_attacked_confusion(report: dict[str, Any]) -> None:
    """Where the attack pushes each class (rows: true class; columns: predicted, % of the row)."""
    shares = report.get("details", {}).get("attacked_confusion")
    if not shares:
        return
    names = report["class_names"]
    table = Table(title="where the attack sends each class (row: true class, % predicted as each class)",
                  title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(str(name), justify="right")
    for name, row in zip(names, shares):
        table.add_row(str(name), *(f"{100 * share:.0f}" for share in row))
    console.print(table)
