"""The command line as a user meets it: the demo, one-line errors with exit 2, eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ROBX = [sys.executable, "-m", "robx.cli.main"]
QUICK = ["--epochs", "1", "--steps", "1", "--eval-steps", "2", "--n-eval", "60"]


def robx(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(ROBX + list(args), capture_output=True, text=True, cwd=cwd)


def test_default_train_is_the_digits_demo(tmp_path):
    """Acceptance: `robx train` with no options trains the digits demo, minority robust <
    majority robust (its time is measured by benchmarks/digits_demo.py, not here)."""
    result = robx("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "minority" in result.stdout and "robust" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"] == "digits" and report["plugins"] == ["pgd"]
    assert report["attack"]["steps"] == 20
    assert report["summary"]["robust"]["minority"] < report["summary"]["robust"]["majority"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--plugins", "nosuch"], "unknown plugin 'nosuch'; available:"),
        (["train", "--set", "pgd.nosuch=1"], "unknown option 'pgd.nosuch'"),
        (["train", "--set", "pgd.random_start=perhaps"], "expects bool"),
        (["train", "--set", "garbage"], "PLUGIN.KEY=VALUE"),
        (["train", "--plugins", "natural,pgd"], "both generate adversarial examples"),
        (["train", "--plugins", "cfa,ema"], "plugins 'cfa' and 'ema' both choose the evaluated model"),
        (["train", "--plugins", "dafa,fairtat"], "plugins 'dafa' and 'fairtat' both set the per-class attack budget"),
        (["train", "--epochs", "0"], "epochs must be in 1..100000, got 0"),
        (["train", "--epochs", "many"], "--epochs"),
        (["train", "--eps", "eight"], "--eps expects float, got 'eight'"),
        (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--model", "vgg"], "unknown model 'vgg'"),
        (["train", "--norm", "l3"], "--norm must be one of linf, l2, got 'l3'"),
        (["train", "--plugins", ","], "--plugins expects comma-separated plugin names, got ','"),
        (["train", "--plugins", "pgd,,trades"], "--plugins expects comma-separated plugin names"),
        (["train", "--plugins", "srat", "--set", "srat.lam=strong"], "option 'srat.lam' expects float, got 'strong'"),
        (["train", "--config", "missing.toml"], "config file not found"),
        (["eval", "nowhere"], "not a robx run directory"),
        (["train", "--resume", "nowhere"], "cannot resume"),
        (["train", "--nproc", "2", "--resume", "nowhere"], "cannot resume"),  # before torchrun starts
        (["train", "--nproc", "2", "--plugins", "nope"], "unknown plugin 'nope'"),
        (["train", "--nproc", "0"], "--nproc must be in 1..1024, got 0"),
        (["train", "--nproc", "4", "--batch-size", "3"], "--batch-size 3 is the global batch"),
        (["train", "--dist-bn", "mean"], "--dist-bn must be one of reduce, broadcast"),
        (["train", "--sync-bn", "--device", "cpu"], "sync_bn needs CUDA"),
        (["train", "--compile", "fast"], "--compile must be one of off, default, reduce-overhead, max-autotune"),
        (["train", "--precision", "fp16"], "--precision must be one of fp32, bf16"),
        (["train", "--milestones", "0.5,x"], "--milestones[1] expects float, got 'x'"),
        (["train", "--momentum", "fast"], "--momentum expects float, got 'fast'"),
        (["bogus"], "No such command"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(robx_here, tmp_path, args, message):
    result = robx_here(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for rejected input


def test_config_file_with_plugin_section_and_cli_override(robx_here, tmp_path):
    (tmp_path / "run.toml").write_text('epochs = 1\nsteps = 1\neval_steps = 2\nn_eval = 60\n'
                                       'plugins = ["pgd"]\n[pgd]\nrandom_start = false\n')
    result = robx_here("train", "--config", "run.toml", "--seed", "3", "--out", "r")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["seed"] == 3 and saved["plugins"]["pgd"]["random_start"] is False
    (tmp_path / "bad.toml").write_text("epochs = 1\nlearning_rat = 3\n")
    bad = robx_here("train", "--config", "bad.toml")
    assert bad.returncode == 2 and "unknown config key(s): learning_rat" in bad.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('epochs = "ten"\n', "config key 'epochs' expects int, got 'ten'"),
        ("epochs = 2.5\n", "config key 'epochs' expects int, got 2.5"),
        ("eps = true\n", "config key 'eps' expects float, got True"),
        ('plugins = "srat"\n', "config key 'plugins' expects a list, got 'srat'"),
        ('plugins = ["srat", 3]\n', "config key 'plugins'[1] expects str, got 3"),
        ('plugins = [""]\n', "plugins holds an empty name"),
        ('schedule = "cosine"\n', "config key 'schedule' must be one of step, onecycle, constant"),
        ("milestones = [50, 75]\n", "milestones are fractions of the epochs"),
        ('plugins = ["pgd"]\n[pgd]\nrandom_start = 3\n', "option 'pgd.random_start' expects bool, got 3"),
        ("epochs = [\n", "is not valid TOML"),
    ],
)
def test_bad_config_files_give_one_line_and_exit_2(robx_here, tmp_path, toml, message):
    (tmp_path / "bad.toml").write_text(toml)
    result = robx_here("train", "--config", "bad.toml", "--out", "r")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_existing_out_is_kept_without_force(robx_here, tmp_path):
    assert robx_here("train", *QUICK, "--out", "r").returncode == 0
    before = (tmp_path / "r" / "report.json").read_text()
    again = robx_here("train", *QUICK, "--seed", "5", "--out", "r")
    assert again.returncode == 2 and "--force" in again.stderr
    assert (tmp_path / "r" / "report.json").read_text() == before
    assert robx_here("train", *QUICK, "--seed", "5", "--out", "r", "--force").returncode == 0


def test_eval_reevaluates_a_run_with_chosen_settings(robx_here, trained_run):
    result = robx_here("eval", str(trained_run), "--steps", "10", "--eps", "0.05", "--n-eval", "100")
    assert result.returncode == 0, result.stderr
    (written,) = trained_run.glob("eval-pgd10-linf-eps0.05-*.json")
    report = json.loads(written.read_text())
    assert report["attack"]["eps"] == pytest.approx(0.05) and report["n_test"] == 100
    full = json.loads((trained_run / "report.json").read_text())
    assert report["summary"]["robust"]["overall"] >= full["summary"]["robust"]["overall"] - 0.05


def test_plugins_command_lists_builtins(robx_here):
    result = robx_here("plugins")
    assert result.returncode == 0
    assert "natural" in result.stdout and "pgd" in result.stdout and "generate_adversary" in result.stdout
    reference = robx_here("plugins", "--markdown")
    assert reference.returncode == 0
    assert "## `srat`: SRAT" in reference.stdout and "| `trades.beta` | `float` | `6.0` |" in reference.stdout


def test_loss_option_and_baseline_combination(robx_here, tmp_path):
    result = robx_here("train", *QUICK, "--loss", "ldam", "--plugins", "drw,trades", "--out", "r")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["plugins"] == ["drw", "trades", "ldam"]
    bad = robx_here("train", "--loss", "nosuch")
    assert bad.returncode == 2 and "unknown plugin 'nosuch'" in bad.stderr
    meaningless = robx_here("train", "--plugins", "mart", "--loss", "focal")
    assert meaningless.returncode == 2 and "both define the training loss" in meaningless.stderr


def test_eval_attacks_and_report(robx_here, trained_run, tmp_path):
    cw = robx_here("eval", str(trained_run), "--attack", "cw", "--n-eval", "100")
    assert cw.returncode == 0, cw.stderr
    (written,) = trained_run.glob("eval-cw20-linf-*.json")
    assert json.loads(written.read_text())["attack"]["name"] == "cw"
    l2 = robx_here("eval", str(trained_run), "--norm", "l2")
    assert l2.returncode == 2 and "give --eps" in l2.stderr
    unknown = robx_here("eval", str(trained_run), "--attack", "fgsm2")
    assert unknown.returncode == 2 and "unknown attack 'fgsm2'" in unknown.stderr
    report = robx_here("report", str(trained_run), "--plot", str(tmp_path / "cmp.png"))
    assert report.returncode == 0, report.stderr
    assert "robust accuracy" in report.stdout and "pgd" in report.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    markdown = robx_here("report", str(trained_run), "--plot", str(tmp_path / "cmp.png"), "--markdown")
    summary = json.loads((trained_run / "report.json").read_text())["summary"]
    header, rule, row = markdown.stdout.strip().splitlines()
    assert header.startswith("| method | seeds | sta overall") and rule.startswith("|---|")
    assert row.split(" | ")[6].startswith(f"{100 * summary['robust']['overall']:.1f} ± 0.0")
    missing = robx_here("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no run directory or result file" in missing.stderr


def test_every_config_field_is_a_train_option_parsed_by_the_configs_own_coercion():
    """The CLI is generated from TrainConfig: each field (but the two --set tables) is an option,
    including the ones the hand-written CLI had left out (augment, momentum, eval_alpha, ...)."""
    import dataclasses

    import typer

    from robx.cli.main import app
    from robx.cli.options import config_values
    from robx.core.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {param.name for param in command.params}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"dataset_options", "plugin_options"}
    assert fields <= options
    args = ["--no-augment", "--momentum", "0.5", "--nesterov", "--eval-alpha", "1/255", "--milestones", "0.3,0.6",
            "--data-seed", "7", "--n-test-per-class", "20", "--data-on-host", "--plugins", "srat,imbmix"]
    context = command.make_context("train", args)
    values = config_values({name: context.params[name] for name in fields})
    assert values == {"augment": False, "momentum": 0.5, "nesterov": True, "eval_alpha": 1 / 255,
                      "milestones": [0.3, 0.6], "data_seed": 7, "n_test_per_class": 20, "data_on_device": False,
                      "plugins": ["srat", "imbmix"]}


def test_a_dataset_without_defaults_is_told_every_missing_key_at_once(monkeypatch):
    import dataclasses

    from robx.core.config import TrainConfig
    from robx.core.errors import OptionError
    from robx.core.registry import registry, resolved_config

    found = registry()
    bare = dataclasses.replace(found.datasets["digits"], name="bare", defaults={})
    monkeypatch.setitem(found.datasets, "bare", bare)
    # the classification task fills in its recipe: only the model is left to name
    with pytest.raises(OptionError) as raised:
        resolved_config(TrainConfig(dataset="bare", epochs=1))
    assert str(raised.value) == "dataset 'bare' sets no model; give them in the config or on the command line (--model)"
    config = resolved_config(TrainConfig(dataset="bare", model="smallcnn"))
    assert (config.imbalance, config.epochs, config.steps, config.eval_steps) == ("original", 10, 10, 20)
    assert config.eps == pytest.approx(8 / 255) and config.alpha == pytest.approx(2 / 255)
    # a task without defaults: every missing key at once
    monkeypatch.setattr(found.tasks["classification"].task, "defaults", {})
    with pytest.raises(OptionError) as raised:
        resolved_config(TrainConfig(dataset="bare", epochs=1))
    message = str(raised.value)
    assert message.startswith("dataset 'bare' sets no imbalance, ratio, model, batch_size, lr, schedule, eps, alpha, "
                              "steps, eval_steps, augment;")
    assert "(--imbalance --ratio --model --batch-size" in message and "epochs" not in message.split(";")[0]


def test_the_retired_random_start_key_is_one_line_and_old_runs_keep_their_meaning(robx_here, tmp_path):
    from robx.core.config import TrainConfig
    from robx.core.engine.checkpoints import migrated
    from robx.core.errors import OptionError

    with pytest.raises(OptionError, match=r"config key 'random_start' is gone: .*ADVERSARY.random_start=false"):
        TrainConfig.from_dict({"random_start": False})
    (tmp_path / "old.toml").write_text("random_start = false\n")
    refused = robx_here("train", "--config", "old.toml")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "robx: error: config key 'random_start' is gone: the start is the adversary's choice: set the fallback "
        "adversary's own option, --set ADVERSARY.random_start=false (TOML: [ADVERSARY] random_start = false; robx "
        "plugins lists the options)")
    old = {"dataset": "digits", "plugins": ["srat"], "random_start": False}  # pgd is srat's fallback adversary
    assert migrated(old) == {"dataset": "digits", "plugins": ["srat"], "plugin_options": {"pgd": {"random_start": False}}}
    assert migrated({"plugins": ["trades"], "random_start": False}) == {"plugins": ["trades"]}  # pgd never ran
    assert migrated({"plugins": [], "random_start": True}) == {"plugins": []}
