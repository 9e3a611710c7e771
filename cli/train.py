"""``robx train``: train a run, or resume one, in this process or in torchrun processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from robx.api import default_run_dir
from robx.cli.app import app, console, metric_name, saved_device
from robx.cli.options import config_values, with_config_options
from robx.core.config import TrainConfig, load_toml
from robx.core.errors import Interrupted, OptionError, RobxError
from robx.core.options import parse_set_overrides
from robx.core.registry import resolved_config


#: the most processes ``--nproc`` starts on one machine
MAX_PROCESSES = 1024


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
        run_dir = distributed.from_main(out or default_run_dir(config), processes)
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
    from robx.cli.display import print_report, progress_for
    from robx.core.engine import SilentProgress
    from robx.core.engine import train as run_training

    if not processes.main:
        run_training(config, run_dir, force=force, resume=resume, progress=SilentProgress())
        return
    if resume:
        from robx.core.engine import saved_config
        from robx.core.rundir import finished_epoch

        done = finished_epoch(run_dir)
        if done is not None:
            console.print(f"robx: resuming {run_dir} at epoch {done + 2} of {saved_config(run_dir).epochs} "
                          f"(its checkpoint holds {done + 1})", soft_wrap=True)
    from robx.core.engine.build import describe_device, resolve_device

    console.print(f"device: {describe_device(resolve_device(config.device))}")
    with progress_for(console) as progress:
        report = run_training(config, run_dir, force=force, resume=resume, progress=progress)
    print_report(console, report, f"{run_dir}: test {metric_name(report)} ({report['attack']['description']}), "
                                  f"{report.get('checkpoint', 'last')} checkpoint")
    if "collapse" in report:
        console.print(f"catastrophic overfitting in epoch(s) {', '.join(map(str, report['collapse']['epochs']))}"
                      + (": the report is the best checkpoint's, kept before it" if report["checkpoint"] == "best"
                         else ""), soft_wrap=True)
    if "best" in report:
        best = report["best"]
        console.print(f"best checkpoint: epoch {best['epoch']} ({best['metric']} {best['score']:.3f} on validation), "
                      f"{run_dir / 'best.pt'}; its test report: {run_dir / best['report']}")
    console.print(f"run directory: {run_dir} (report.json, the plot {run_dir / 'per_class.png'})", soft_wrap=True)


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
        out = out or default_run_dir(config)
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
