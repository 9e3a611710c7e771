"""``robx``: train, evaluate and inspect plugins.

User errors (``RobxError`` and bad command-line usage) print one line to stderr and
exit with status 2; nothing already on disk is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import contextlib
import dataclasses
import inspect
import json
import os
import signal
import sys
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from robx.core.registry import registry, resolved_config
from robx.core.config import MAX_BATCH, MAX_SEED, TrainConfig, load_toml
from robx.core.errors import Interrupted, OptionError, RobxError
from robx.core.options import coerce, parse_number
from robx.core.discovery import available_plugins
from robx.core.options import parse_set_overrides

app = typer.Typer(
    name="robx",
    help="Adversarial training for imbalanced data and class-fair robustness.",
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _number(value: Optional[str], name: str) -> Optional[float]:
    if value is None:
        return None
    try:
        return parse_number(value)
    except ValueError as error:
        raise OptionError(f"--{name} expects a number such as 0.03 or 8/255, got {value!r}") from error


def _default_run_dir(config: TrainConfig) -> Path:
    """runs/DATASET-PLUGINS-seedS-TIME, the plugins as listed (with the loss), or the
    fallback adversary's name when none is: a name, not a second resolution of the selection."""
    from robx.core.discovery import fallback_adversary
    from robx.core.selection import DEFAULT_LOSS

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    listed = [*config.plugins, *([config.loss] if config.loss != DEFAULT_LOSS else [])]
    names = "+".join(listed) or fallback_adversary()
    dataset = config.dataset or registry().default_dataset
    return Path("runs") / f"{_name_part(dataset)}-{names}-seed{config.seed}-{stamp}"


def _name_part(name: str) -> str:
    """A dataset or model name as part of a directory name: folder:/data/pets -> folder-pets."""
    scheme, colon, rest = name.partition(":")
    return f"{scheme}-{Path(rest).name}" if colon else name


#: the most processes ``--nproc`` starts on one machine
MAX_PROCESSES = 1024

#: TrainConfig fields given on the command line another way (``--set``).
_NOT_OPTIONS = ("dataset_options", "plugin_options")


def _metavar(annotation: Any, choices: list[str]) -> str:
    if choices:
        return "[" + "|".join(choices) + "]"
    kinds = [a for a in (annotation, *typing.get_args(annotation)) if a is not type(None)]
    if typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in kinds):
        return "A,B,..."
    for kind, name in ((int, "INT"), (float, "NUMBER")):
        if kind in kinds:
            return name
    return "TEXT"


def config_parameters() -> list[inspect.Parameter]:
    """One ``robx train`` option per :class:`TrainConfig` field, named, typed and explained by
    the field (its ``setting`` metadata): the config is the one list of what a run can set.
    Values arrive as given (a bool as a flag pair, anything else as text) and are parsed by
    :func:`config_values` with the config's own coercion, so ``--eps 8/255`` and a TOML
    ``eps = 0.031`` go through one path."""
    hints = typing.get_type_hints(TrainConfig)
    parameters = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in _NOT_OPTIONS:
            continue
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        is_bool = bool in (hints[field.name], *typing.get_args(hints[field.name]))
        if is_bool and "/" not in flag:
            flag = f"{flag}/--no-{flag[2:]}"
        text = field.metadata.get("help", "")
        choices = [str(c) for a in (hints[field.name], *typing.get_args(hints[field.name]))
                   if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]
        if choices and not all(c in text for c in choices):
            text += f" One of: {', '.join(choices)}."
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        if default not in (None, [], {}) and not is_bool:
            text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        option = typer.Option(flag, help=text, show_default=False,
                              metavar=None if is_bool else _metavar(hints[field.name], choices),
                              rich_help_panel="Run settings (also TOML keys)")
        annotation = Annotated[Optional[bool] if is_bool else Optional[str], option]
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=annotation))
    return parameters


def config_values(given: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line as TrainConfig values; a bad value is one line
    naming the option as typed."""
    hints = typing.get_type_hints(TrainConfig)
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        flag = (fields[name].metadata.get("flag") or "--" + name.replace("_", "-")).split("/")[0]
        if typing.get_origin(hints[name]) is list:
            items = [item.strip() for item in value.split(",")]
            if not all(items):
                raise OptionError(f"{flag} expects comma-separated {fields[name].metadata['items']}, got {value!r}")
            value = items
        values[name] = coerce(value, hints[name], flag)
    return values


def _own_parameters(command: Callable[..., None]) -> tuple[inspect.Signature, dict[str, Any]]:
    """``command``'s signature without its ``**`` parameter, and its type hints."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=fixed), typing.get_type_hints(command, include_extras=True)


def _with_parameters(command: Callable[..., None], own: tuple[inspect.Signature, dict[str, Any]],
                     added: list[inspect.Parameter]) -> None:
    """Give ``command`` its own parameters and ``added`` ones (received through its ``**``
    parameter), for Typer to turn into options."""
    signature, hints = own
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *added])
    command.__annotations__ = {**hints, **{p.name: p.annotation for p in added}}


def with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (taking ``**settings``) with one keyword parameter per config option."""
    _with_parameters(command, _own_parameters(command), config_parameters())
    return command


def train(
    context: typer.Context,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="TOML config file.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Plugin option PLUGIN.KEY=VALUE, or dataset.KEY=VALUE (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/<dataset>-<plugins>-seed<k>-<time>).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run directory.")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its checkpoint.")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Train with N processes on this machine (runs torchrun; one per GPU on CUDA).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resize the images of --dataset folder:PATH to S x S (the same as --set dataset.image_size=S).")] = None,
    **settings: Any,
) -> None:
    """Train a model; with no options, the digits demo (PGD-AT on Step-10 imbalanced digits)."""
    from robx.core import distributed

    if resume is not None:
        refuse_options_on_resume(context)
        if nproc is not None:
            return launch_processes(context, nproc, resume)
        with distributed.joined(saved_device(resume)) as processes:
            _train_on(processes, TrainConfig(), resume, resume=True)
        return

    values: dict[str, Any] = load_toml(config_file) if config_file else {}
    values.update(config_values(settings))
    options = {name: dict(table) for name, table in values.get("plugin_options", {}).items()}
    overrides = parse_set_overrides(set_ or [])
    values["dataset_options"] = {**values.get("dataset_options", {}), **overrides.pop("dataset", {})}
    if image_size is not None:
        values["dataset_options"]["image_size"] = image_size
    for name, table in overrides.items():
        options.setdefault(name, {}).update(table)
    values["plugin_options"] = options
    config = TrainConfig.from_dict(values)
    if nproc is not None:
        return launch_processes(context, nproc, None, config, out, force)
    with distributed.joined(config.device) as processes:
        run_dir = distributed.from_main(out or _default_run_dir(config), processes)
        _train_on(processes, config, run_dir, force=force)


app.command("train")(with_config_options(train))


def refuse_options_on_resume(context: typer.Context) -> None:
    """``--resume`` continues a run exactly as its config.json says: the learning-rate
    schedule, DRW's and SWA's starts are fractions of the saved epochs and the checkpoint holds
    that model and optimiser, so no option may change; ``--nproc`` only says how many
    processes carry on."""
    given = [param.opts[0] for param in context.command.params
             if param.name not in ("resume", "nproc")
             and getattr(context.get_parameter_source(param.name), "name", "DEFAULT") != "DEFAULT"]
    if given:
        raise OptionError(f"--resume continues the run as its config.json says, so {', '.join(given)} cannot be "
                          "given with it (the schedule, DRW and SWA depend on the saved epochs); start a new run "
                          "with --out to change them")


def _train_on(processes: Any, config: TrainConfig, run_dir: Path, *, force: bool = False, resume: bool = False) -> None:
    """Train (every process of a torchrun job calls this); process 0 draws and prints."""
    from robx.cli.display import RichProgress, print_report
    from robx.core.engine import SilentProgress
    from robx.core.engine import train as run_training

    if not processes.main:
        run_training(config, run_dir, force=force, resume=resume, progress=SilentProgress())
        return
    with RichProgress(console) as progress:
        report = run_training(config, run_dir, force=force, resume=resume, progress=progress)
    print_report(console, report, f"{run_dir}: test {metric_name(report)} ({report['attack']['description']})")
    console.print(f"run directory: {run_dir}")


def saved_device(run_dir: Path) -> str:
    """The device a run directory's config names (a resumed job joins the right backend)."""
    try:
        return str(json.loads((Path(run_dir) / "config.json").read_text())["config"].get("device", "auto"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "auto"  # the engine reports the unreadable run directory in one line


def launch_processes(context: typer.Context, nproc: int, resume: Optional[Path], config: Optional[TrainConfig] = None,
                     out: Optional[Path] = None, force: bool = False) -> None:
    """``robx train --nproc N ...``: the same command under ``torchrun --standalone
    --nproc_per_node N -m robx train ...`` (one machine; torchrun's rendezvous on a free
    port), with the run directory chosen here so every process writes the same one. A
    failed process ends the job; this says which checkpoint is left to resume from."""
    import subprocess

    from robx.core import distributed
    from robx.core.plugins import PluginHost
    from robx.core.rundir import check_new_run_dir, load_checkpoint

    if not 1 <= nproc <= MAX_PROCESSES:
        raise OptionError(f"--nproc must be in 1..{MAX_PROCESSES}, got {nproc}")
    if distributed.launched_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        raise OptionError("--nproc starts torchrun itself; under torchrun give --nproc_per_node to torchrun instead")
    args = forwarded_options(context, skip=("nproc", "out", "force"))
    if config is not None:  # bad input is one line here, not N processes' tracebacks
        resolved = resolved_config(config)
        PluginHost(resolved.plugins, resolved.plugin_options, resolved.loss)
        if resolved.batch_size is not None and resolved.batch_size < nproc:
            raise OptionError(f"--batch-size {resolved.batch_size} is the global batch: it leaves some of the "
                              f"{nproc} processes without an example")
        out = out or _default_run_dir(config)
        check_new_run_dir(out, force)
        args += ["--out", str(out)] + (["--force"] if force else [])
    else:
        assert resume is not None
        out = resume
        if not (out / "config.json").exists():
            raise RobxError(f"cannot resume: {out / 'config.json'} does not exist")
        load_checkpoint(out / "checkpoint.pt")  # unreadable or not plain data: one line here
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "robx", "train", *args]
    job = subprocess.Popen(command)
    try:
        code = job.wait()
    except Interrupted as interruption:
        # torchrun passes the signal on to its processes, which stop as one robx process does
        job.send_signal(interruption.signal_number)
        job.wait()
        raise interruption.keeping(kept_after_job(nproc, out)) from None
    if code != 0:
        raise ProcessesFailed(code, nproc, out)


def kept_after_job(nproc: int, run_dir: Path) -> str:
    """What a stopped ``robx train --nproc`` job left in its run directory."""
    from robx.core.rundir import finished_epoch

    epoch = finished_epoch(run_dir)
    if epoch is None:
        return f"no epoch had finished, so there is no checkpoint in {run_dir}"
    return (f"the checkpoint after epoch {epoch + 1} in {run_dir} is intact: continue with "
            f"robx train --nproc {nproc} --resume {run_dir}")


class ProcessesFailed(RobxError):
    """The torchrun job of ``robx train --nproc`` ended with a failed process."""

    def __init__(self, code: int, nproc: int, run_dir: Path) -> None:
        super().__init__(f"training with {nproc} processes stopped (torchrun exit status {code}; its log is "
                         f"above); {kept_after_job(nproc, run_dir)}")
        self.code = code
        self.exit_code = 1


def forwarded_options(context: typer.Context, skip: tuple[str, ...]) -> list[str]:
    """The options given on this command line, as arguments again (for torchrun's processes)."""
    args: list[str] = []
    for param in context.command.params:
        value = context.params.get(param.name)
        if param.name in skip or value is None or context.get_parameter_source(param.name).name == "DEFAULT":
            continue
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            args.append(flag if value else param.secondary_opts[0])
        elif isinstance(value, (list, tuple)):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def metric_name(report: dict[str, Any]) -> str:
    metric = report.get("metric", {"name": "accuracy", "higher_is_better": True})
    return metric["name"] + ("" if metric["higher_is_better"] else " (lower is better)")


def score_format(rows: list[dict[str, Any]]) -> tuple[str, Callable[[float], str]]:
    """How `robx report` writes the rows' metric (one metric: ``aggregate`` checks it):
    accuracy in %, any other as it is (the crime task's absolute error)."""
    if rows[0]["metric"]["name"] == "accuracy":
        return "accuracy (%)", lambda value: f"{100 * value:.1f}"
    return metric_name(rows[0]), lambda value: f"{value:.3f}"


def attack_parameters() -> list[inspect.Parameter]:
    """One option per own setting of the registered attacks (``--victims`` of stpgd), named,
    typed and explained by the attack's options dataclass, as ``robx train``'s options come
    from the config: an installed attack's settings appear without a CLI edit."""
    owners: dict[str, list[str]] = {}
    found: dict[str, dataclasses.Field[Any]] = {}
    for spec in registry().attacks.values():
        for field in dataclasses.fields(spec.options) if spec.options is not None else ():
            owners.setdefault(field.name, []).append(spec.name)
            found.setdefault(field.name, field)
    parameters = []
    for name, field in found.items():
        text = f"{field.metadata.get('help', '')} For {', '.join(owners[name])}.".strip()
        if field.default is not dataclasses.MISSING:
            text += f" (default: {field.default})"
        option = typer.Option("--" + name.replace("_", "-"), help=text, show_default=False, metavar="VALUE",
                              rich_help_panel="Attack settings")
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[str], option]))
    return parameters


#: the commands whose options include the registered attacks' settings, with their own signatures
_ATTACK_COMMANDS: dict[Callable[..., None], tuple[inspect.Signature, dict[str, Any]]] = {}


def with_attack_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (taking ``**attack_options``) with one keyword parameter per registered
    attack setting (:func:`attack_parameters`), added when the command line is read
    (:func:`add_attack_options`), once the installed plugins are known."""
    _ATTACK_COMMANDS[command] = _own_parameters(command)
    _with_parameters(command, _ATTACK_COMMANDS[command], [])
    return command


def add_attack_options() -> None:
    """The registered attacks' settings as options of ``robx eval`` and ``robx audit``."""
    added = attack_parameters()
    for command, own in _ATTACK_COMMANDS.items():
        _with_parameters(command, own, added)


def _settings_of(attack: str) -> set[str]:
    """The own settings of the registered attack ``attack`` (none for an unknown name)."""
    spec = registry().attacks.get(attack)
    return {f.name for f in dataclasses.fields(spec.options)} if spec is not None and spec.options else set()


def attack_settings(names: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The attack settings given on the command line, by the attack of ``names`` they belong
    to; one that none of them takes is an error naming the attacks that do."""
    given = {key: value for key, value in given.items() if value is not None}
    for key in given:
        if not any(key in _settings_of(name) for name in names):
            takers = [name for name in registry().attacks if key in _settings_of(name)]
            raise OptionError(f"--{key.replace('_', '-')} is a setting of {', '.join(takers)}, not of "
                              f"{', '.join(names)}")
    return {name: {key: value for key, value in given.items() if key in _settings_of(name)} for name in names}


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
                     batch_size)


def _evaluate_on(processes: Any, run_dir: Path, attack_name: Optional[str], attack_options: dict[str, Any],
                 eps: Optional[str], alpha: Optional[str], steps: Optional[int], norm: Optional[str],
                 n_eval: Optional[int], device: Optional[str], batch_size: Optional[int]) -> None:
    from robx.cli.display import RichProgress, print_report
    from robx.core.engine import SilentProgress, eval_attack, evaluate_run, load_run
    from robx.core.files import write_json

    run = load_run(run_dir, device)
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
    attack = eval_attack(run, name, eps=_number(eps, "eps"), alpha=_number(alpha, "alpha"), steps=steps,
                         options=attack_settings([name], attack_options)[name])
    if not processes.main:
        evaluate_run(run, run.state.model, SilentProgress(), attack, n_eval)
        return
    with RichProgress(console) as progress:
        report = evaluate_run(run, run.state.model, progress, attack, n_eval)
    name = f"eval-{attack.tag}-n{report['n_test']}.json"
    write_json(Path(run_dir) / name, report)
    print_report(console, report, f"{run_dir}: test {metric_name(report)} ({attack.describe()})")
    console.print(f"written: {Path(run_dir) / name}")


app.command("eval")(with_attack_options(eval_))


#: what robx audit writes: the summary first (it names its writer, see prepare_output_dir)
AUDIT_OUTPUTS = ("audit.json", "per-class.png")


def audit(
    model_file: Annotated[Path, typer.Argument(help="The model's weights: .safetensors or a torch state dict "
                                                    "(read without unpickling code).")],
    arch: Annotated[str, typer.Option(help="Its architecture: a registered model (robx plugins), "
                                           "torchvision:NAME or timm:NAME.")],
    dataset: Annotated[Optional[str], typer.Option(help="Test set and class counts: a registered dataset, "
                                                        "folder:PATH or npz:PATH (default: digits).")] = None,
    attacks: Annotated[str, typer.Option(help="Comma-separated registered attacks of the task (`robx plugins` lists "
                                              "them; autoattack needs the autoattack extra).")] = "pgd,autoattack",
    eps: Annotated[Optional[str], typer.Option(help="Budget, e.g. 8/255 (default: the dataset's or task's).")] = None,
    alpha: Annotated[Optional[str], typer.Option(help="PGD step size (default: eps / 4).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="PGD steps (default: the dataset's evaluation steps).")] = None,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    n_eval: Annotated[Optional[int], typer.Option(help="A stratified test subset of this size.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="dataset.KEY=VALUE (repeatable).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resize the images of --dataset folder:PATH to S x S.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write audit.json and per-class.png here (default: "
                                                     "runs/audit-<arch>-<dataset>-<time>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace robx's outputs in an existing --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the attacks' random starts.")] = 0,
    **attack_options: Any,
) -> None:
    """Robust for whom? Evaluate a model robx did not train, per class: standard and attacked
    accuracy, majority / minority / worst class, and where the attack pushes each class."""
    import tempfile

    from robx.cli.display import RichProgress, print_report
    from robx.core.engine import build_run, eval_attack, evaluate_run
    from robx.core.files import prepare_output_dir
    from robx.core.models import load_initial_weights

    names = [name.strip() for name in attacks.split(",") if name.strip()]
    if not names:
        raise OptionError(f"--attacks expects comma-separated attack names, got {attacks!r}")
    if n_eval is not None and n_eval < 1:
        raise OptionError("--n-eval must be >= 1")
    config = _audit_config(arch, dataset, eps, alpha, steps, norm, set_ or [], image_size, device, seed)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = out or Path("runs") / f"audit-{_name_part(arch)}-{_name_part(config.dataset or '')}-{stamp}"
    with tempfile.TemporaryDirectory() as unused:
        run = build_run(config, Path(unused) / "run")
    console.print(f"robx: {load_initial_weights(run.state.model, model_file, with_head=True)}")
    prepared = []
    settings = attack_settings(names, attack_options)
    for name in names:  # every attack checked (installed, options, budget) before any work
        prepared.append(eval_attack(run, name, options=settings[name]))
    prepare_output_dir(target, AUDIT_OUTPUTS, "robx audit", force)
    reports = {}
    for attack in prepared:
        with RichProgress(console) as progress:
            report = evaluate_run(run, run.state.model, progress, attack, n_eval)
        for key in ("plugins", "epochs", "parts"):
            report.pop(key, None)
        reports[attack.tag] = {**report, "model_file": str(model_file.resolve()), "arch": arch}
        print_report(console, report, f"{model_file.name} ({arch}) on {config.dataset}: {attack.describe()}")
        _print_attacked_confusion(report)
    _write_audit(target, model_file, arch, config.dataset or "", reports)


def _write_audit(target: Path, model_file: Path, arch: str, dataset: str, reports: dict[str, Any]) -> None:
    """audit.json (every attack's report) and per-class.png (the first attack's)."""
    from robx.core.files import WRITTEN_BY, make_directory, write_json
    from robx.core.report import plot_per_class

    make_directory(target)
    first = next(iter(reports.values()))
    plot_per_class(first, target / "per-class.png", f"{model_file.name} ({arch}): {next(iter(reports))}")
    write_json(target / "audit.json", {"model_file": str(model_file.resolve()), "arch": arch,
                                       "dataset": dataset, "attacks": reports, WRITTEN_BY: "robx audit"})
    console.print(f"written: {target / 'audit.json'}, {target / 'per-class.png'}")


def _audit_config(arch: str, dataset: Optional[str], eps: Optional[str], alpha: Optional[str], steps: Optional[int],
                  norm: str, assignments: list[str], image_size: Optional[int], device: str, seed: int) -> TrainConfig:
    """The configuration an audit evaluates with: the dataset's defaults, the given budget
    (alpha eps / 4 where only eps is given), ``--set dataset.KEY=VALUE`` only."""
    overrides = parse_set_overrides(assignments)
    if image_size is not None:
        overrides.setdefault("dataset", {})["image_size"] = str(image_size)
    if set(overrides) - {"dataset"}:
        raise OptionError(f"--set {sorted(set(overrides) - {'dataset'})[0]}.KEY: robx audit takes dataset.KEY only")
    budget = {key: _number(value, key) for key, value in (("eps", eps), ("alpha", alpha)) if value is not None}
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


@app.command("report")
def report_(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, result JSONs, or folders of them.")],
    plot: Annotated[Path, typer.Option(help="Where to write the per-class comparison plot (PNG).")] = Path("robx-report.png"),
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
            "detail": ", ".join([*(f"--{name.replace('_', '-')}" for name in sorted(_settings_of(a.name))),
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


#: robx's own commands, the ones this module defines (read before any plugin's is added)
OWN_COMMANDS: frozenset[str] = frozenset(info.name for info in app.registered_commands if info.name)


def add_registered_commands() -> None:
    """Add the commands plugins register (``register_commands``) to the app (once per
    process). A plugin that registers one of robx's own names is left out, with one warning."""
    from robx.core.discovery import warn_skipped

    found = registry()
    for spec in list(found.commands.values()):
        if spec.name in OWN_COMMANDS:
            message = f"command name '{spec.name}' from {spec.origin} is robx's own"
            if spec.origin in found.builtin:
                raise RobxError(message)
            found.skip(spec.origin, message)
            warn_skipped(message)
    present = {info.name for info in app.registered_commands}
    for spec in found.commands.values():
        if spec.name not in present:
            app.command(spec.name)(spec.function)


def _raise_interrupted(signal_number: int, frame: Any) -> None:
    """SIGINT / SIGTERM: unwind the command (its ``finally`` blocks release the lock and remove
    a new run without a checkpoint) as :class:`Interrupted`. A second signal ends the process
    at once, as the signal's default does."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    raise Interrupted(signal_number)


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` for the block (the main thread only: Python
    delivers signals there), the previous handlers restored after it."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {name: signal.signal(getattr(signal, name), _raise_interrupted) for name in ("SIGINT", "SIGTERM")}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _say(line: str, error: BaseException | None = None) -> None:
    """One stderr line from process 0 (every process of a torchrun job meets the same input);
    ``ROBX_DEBUG=1`` puts the traceback of what caused it above."""
    from robx.core.distributed import PeerLostError

    if os.environ.get("RANK", "0") != "0" and not isinstance(error, PeerLostError):
        return
    if error is not None and os.environ.get("ROBX_DEBUG", "") not in ("", "0"):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(line, file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one line and exit status 2 for every user error, 128 + N for the
    signal N that interrupted a command (130: SIGINT, 143: SIGTERM), and the status a command
    exits with (``typer.Exit(code)``) for the rest."""
    try:
        with interrupts_raised():
            add_registered_commands()
            add_attack_options()
            command = typer.main.get_command(app)
            code = command.main(args=argv, prog_name="robx", standalone_mode=False)
    except Interrupted as interruption:
        _say(f"robx: {interruption if interruption.kept else f'{interruption}; nothing was written'}")
        sys.exit(interruption.exit_code)
    except RobxError as error:
        _say(f"robx: error: {error}", error)
        sys.exit(error.exit_code)
    except Exception as error:
        # Typer's usage errors (click's, vendored as typer._click in new releases) carry format_message()
        if type(error).__name__ == "Abort":
            print("robx: aborted", file=sys.stderr)
            sys.exit(130)
        if hasattr(error, "format_message"):
            print(f"robx: error: {error.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise
    # a command's typer.Exit(code) comes back as its return value outside standalone mode
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
