"""robx from Python: train a run, load one, evaluate it, audit any model (docs/api.md).

The same options, checks and outputs as the command line: :func:`train` is ``robx train``
(a run directory with its checkpoint, config.json, metrics.jsonl and report.json), and
:func:`evaluate` and :func:`audit` build their attacks through the one registry path that
``robx eval`` and ``robx audit`` use. A bad option is a :class:`robx.OptionError` naming it.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from robx.core.config import TrainConfig
from robx.core.errors import OptionError
from robx.core.metrics import is_balanced, summary_keys
from robx.core.registry import registry


@dataclass(frozen=True)
class Report:
    """A run's or an evaluation's per-class results, as plain data.

    ``rows``: one dict per class (``class``, ``count``: training examples, ``standard``,
    ``robust``: the task's metric on clean and attacked test inputs); ``summary``: the overall
    (mean over classes), majority and minority (means over the more frequent half of the
    classes and the rest), worst-class scores and the disparity (majority minus minority,
    positive when the minority fares worse) of each; ``data``: everything the report holds
    (report.json's content)."""

    data: Mapping[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        per_class = self.data["per_class"]
        return [{"class": name, "count": count, "standard": standard, "robust": robust}
                for name, count, standard, robust in zip(self.data["class_names"], self.data["class_counts"],
                                                         per_class["standard"], per_class["robust"])]

    @property
    def summary(self) -> dict[str, dict[str, float | None]]:
        return {kind: dict(values) for kind, values in self.data["summary"].items()}

    @property
    def attack(self) -> str:
        return str(self.data["attack"]["description"])

    def to_markdown(self) -> str:
        """The per-class table, then the summary, as Markdown."""
        def score(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        lines = [f"| class | training examples | standard | robust ({self.attack}) |", "|---|---|---|---|"]
        lines += [f"| {row['class']} | {row['count']} | {score(row['standard'])} | {score(row['robust'])} |"
                  for row in self.rows]
        keys = summary_keys(is_balanced(self.data["class_counts"]))
        lines += ["", "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {kind} | " + " | ".join(score(values.get(key)) for key in keys) + " |"
                  for kind, values in self.summary.items()]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Grouped bars of per-class standard and robust scores (minority classes hatched),
        written to ``path`` (the format from its suffix)."""
        from robx.core.report import plot_per_class

        target = Path(path)
        plot_per_class(dict(self.data), target, title or f"{self.data.get('dataset', '')}: {self.attack}")
        return target


@dataclass(frozen=True)
class Run:
    """A run directory written by :func:`train` (or ``robx train``)."""

    path: Path

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def report(self) -> Report:
        """The test-set report written when training ended."""
        report_file = self.path / "report.json"
        if not report_file.is_file():
            raise OptionError(f"{self.path} has no report.json: its training has not finished")
        return Report(json.loads(report_file.read_text()))

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per trained epoch (metrics.jsonl)."""
        metrics = self.path / "metrics.jsonl"
        return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] \
            if metrics.is_file() else []

    @property
    def best_report(self) -> Report | None:
        """The test report of the best checkpoint (``keep_best``), or ``None`` without one."""
        best_file = self.path / "report-best.json"
        return Report(json.loads(best_file.read_text())) if best_file.is_file() else None

    def model(self, device: str | None = None, checkpoint: str = "last") -> nn.Module:
        """The evaluated model (the weight average where the run keeps one), in eval mode;
        ``checkpoint="best"``: the one ``keep_best`` kept."""
        from robx.core.engine import load_run

        return load_run(self.path, device, checkpoint).state.model.eval()

    def evaluate(self, attack: str | None = None, **settings: Any) -> Report:
        return evaluate(self, attack, **settings)


def _config(dataset: str | None, plugins: Sequence[str] | str, options: Mapping[str, Any]) -> TrainConfig:
    names = {field.name for field in fields(TrainConfig)}
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            raise OptionError(f"robx.train got an unknown option '{key}'"
                              + (f"; did you mean '{close[0]}'?" if close else f"; options: {', '.join(sorted(names))}"))
    listed = [name.strip() for name in plugins.split(",")] if isinstance(plugins, str) else list(plugins)
    return TrainConfig.from_dict({**options, "dataset": dataset, "plugins": [name for name in listed if name]})


def train(dataset: str | None = None, plugins: Sequence[str] | str = (), *, out: str | Path | None = None,
          force: bool = False, progress: bool = True, **options: Any) -> Run:
    """Train a run, as ``robx train`` does, and return it.

    ``dataset``: a registered dataset (default: the embedded digits); ``plugins``: names or a
    comma-separated string (``"srat,imbmix"``); ``options``: any ``robx train`` option by its
    Python name (``epochs=5``, ``eps=8/255``, ``loss="ldam"``, ``plugin_options={"srat":
    {"lam": 0.5}}``, ``dataset_options={...}``); ``out``: the run directory (default:
    ``runs/<dataset>-<plugins>-seed<k>-<time>``); ``progress``: the progress bars (a
    terminal's or a notebook's), ``False`` for none."""
    from robx.core.engine import SilentProgress
    from robx.core.engine import train as run_training

    config = _config(dataset, plugins, options)
    run_dir = Path(out) if out is not None else default_run_dir(config)
    if progress:
        from rich.console import Console

        from robx.cli.display import progress_for

        with progress_for(Console()) as bars:
            run_training(config, run_dir, force=force, progress=bars)
    else:
        run_training(config, run_dir, force=force, progress=SilentProgress())
    return Run(run_dir)


def default_run_dir(config: TrainConfig) -> Path:
    """runs/DATASET-PLUGINS-seedS-TIME (``robx train`` and :func:`train` without ``out``): the
    dataset by its short name, the plugins as listed with the loss, or the fallback adversary's
    name when none is."""
    from robx.core.discovery import fallback_adversary
    from robx.core.selection import DEFAULT_LOSS

    listed = [*config.plugins, *([config.loss] if config.loss != DEFAULT_LOSS else [])]
    scheme, colon, rest = (config.dataset or registry().default_dataset or "data").partition(":")
    dataset = f"{scheme}-{Path(rest).name}" if colon else scheme  # folder:/data/pets -> folder-pets
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset}-{'+'.join(listed) or fallback_adversary()}-seed{config.seed}-{stamp}"


def load_run(path: str | Path) -> Run:
    """The run in ``path`` (a directory ``robx train`` or :func:`train` wrote)."""
    run_dir = Path(path)
    if not (run_dir / "config.json").is_file():
        raise OptionError(f"{run_dir} is not a robx run directory (no config.json)")
    return Run(run_dir)


def evaluate(run: Run | str | Path, attack: str | None = None, *, eps: float | None = None,
             alpha: float | None = None, steps: int | None = None, n_eval: int | None = None,
             device: str | None = None, checkpoint: str = "last", **options: Any) -> Report:
    """The run's evaluated model under ``attack`` (a registered attack of its task; default:
    the task's), at the run's budget unless ``eps`` / ``alpha`` / ``steps`` are given;
    ``options``: the attack's own settings (``victims=0.1`` for STPGD); ``checkpoint``: last or
    best (``keep_best``). As ``robx eval``, without writing into the run directory."""
    from robx.core.engine import SilentProgress, eval_attack, evaluate_run
    from robx.core.engine import load_run as load

    loaded = load(Path(run.path if isinstance(run, Run) else run), device, checkpoint)  # the evaluated weights
    plan = eval_attack(loaded, attack, eps=eps, alpha=alpha, steps=steps, options=options)
    report = evaluate_run(loaded, loaded.state.model, SilentProgress(), plan, n_eval)
    return Report({**report, "checkpoint": checkpoint, **({"best": loaded.best} if checkpoint == "best" else {})})


def audit(model: nn.Module, dataset: str, attacks: Sequence[str] = ("pgd",), *, eps: float | None = None,
          alpha: float | None = None, steps: int | None = None, n_eval: int | None = None, seed: int = 0,
          device: str = "auto", dataset_options: Mapping[str, Any] | None = None) -> dict[str, Report]:
    """Any classifier robx did not train, per class, on a registered dataset's test split:
    one :class:`Report` per attack (by its description). ``model(x)`` returns logits (or
    robx's ``(features, logits)``) for the dataset's inputs as its task prepares them; the
    budget is the dataset's unless given (``alpha``: eps / 4 where only eps is)."""
    from robx.core.engine import SilentProgress, build_run, eval_attack, evaluate_run

    budget = {key: value for key, value in (("eps", eps), ("alpha", alpha)) if value is not None}
    if "eps" in budget and "alpha" not in budget:
        budget["alpha"] = budget["eps"] / 4
    config = TrainConfig.from_dict({"dataset": dataset, "plugins": [], "epochs": 1, "seed": seed, "device": device,
                                    "dataset_options": dict(dataset_options or {}), **budget,
                                    **({"eval_steps": steps} if steps is not None else {})})
    with tempfile.TemporaryDirectory() as unused:
        run = build_run(config, Path(unused) / "run")
    plans = [eval_attack(run, name) for name in attacks]  # every attack checked before any work
    wrapped = _Logits(model).to(run.state.device).eval()
    return {plan.describe(): Report(evaluate_run(run, wrapped, SilentProgress(), plan, n_eval)) for plan in plans}


class _Logits(nn.Module):
    """A plain classifier as robx's models are called: ``(features, logits)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        logits = out[1] if isinstance(out, tuple) else out
        return logits, logits
