"""Bad input and faults end clean: one stderr line, exit 2, no traceback, and the files
around are byte-identical afterwards; every write is whole or not at all; a run directory
has one writer at a time (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robx.cli.main import main
from robx.core.distributed import Processes, rank_shards
from robx.core.engine import train
from robx.core.errors import WriteError
from robx.core.files import atomic_write, write_text_atomically
from robx.core.run import load_checkpoint, save_checkpoint

from conftest import tiny_config
from test_plugins import _cli_env, install_distribution

ROBX = [sys.executable, "-m", "robx.cli.main"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished digits run, copied by the tests that change it."""
    run_dir = tmp_path_factory.mktemp("reliability") / "run"
    train(tiny_config(epochs=1, steps=1, eval_steps=1, n_eval=50), run_dir)
    return run_dir


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links as their target text), by relative path."""
    files = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            files[key] = os.readlink(path).encode()
        elif path.is_file():
            files[key] = path.read_bytes()
        else:
            files[key] = b"<dir>"
    return files


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``robx ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


# --- setups: each prepares tmp_path and returns the arguments -------------------------------

def copy_run(finished: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(finished, tmp / "run"))


def with_file(name: str, content: bytes):
    def setup(tmp: Path, finished: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    return setup


def foreign_report(tmp: Path, finished: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "report.json").write_text('{"mine": "a report robx did not write"}\n')


def other_models_weights(tmp: Path, finished: Path) -> None:
    run = copy_run(finished, tmp)
    config = json.loads((run / "config.json").read_text())
    config["config"]["model"] = "mlp"
    (run / "config.json").write_text(json.dumps(config))


def changed_shape(tmp: Path, finished: Path) -> None:
    run = copy_run(finished, tmp)
    payload = load_checkpoint(run / "checkpoint.pt")
    key = next(k for k, v in payload["model"].items() if v.dim() == 4)
    payload["model"][key] = torch.zeros(3, *payload["model"][key].shape[1:])
    save_checkpoint(run / "checkpoint.pt", payload)


def cifar_npz(kind: str):
    def setup(tmp: Path, finished: Path) -> None:
        folder = tmp / "data" / "cifar10"
        folder.mkdir(parents=True)
        x, y = np.zeros((20, 32, 32, 3), np.uint8), np.arange(20) % 10
        np.savez(folder / "test.npz", x=x, y=y)
        if kind == "object":
            np.savez(folder / "train.npz", x=np.array([object()] * 20, dtype=object), y=y)
        elif kind == "missing":
            np.savez(folder / "train.npz", x=x)
        else:
            np.savez(folder / "train.npz", x=x, y=y)
            data = (folder / "train.npz").read_bytes()
            (folder / "train.npz").write_bytes(data[:len(data) // 2])
    return setup


def planted_link(name: str):
    def setup(tmp: Path, finished: Path) -> None:
        run = copy_run(finished, tmp)
        (tmp / "outside.txt").write_text("not robx's\n")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(tmp / "outside.txt")
    return setup


def run_only(tmp: Path, finished: Path) -> None:
    copy_run(finished, tmp)


def nothing(tmp: Path, finished: Path) -> None:
    pass


NOT_UTF8 = b"epochs = 1\n# \xff\xfe\n"
NOT_A_REPORT = b'{"per_class": [1], "summary": 3}\n'

CASES = [
    # oversample: the ratio, the seed, the output directory
    (nothing, ["oversample", "--method", "random", "--ratio", "0"], "imbalance ratio must be a finite number >= 1"),
    (nothing, ["oversample", "--method", "random", "--ratio", "nan"], "finite number >= 1, got nan"),
    (nothing, ["oversample", "--method", "random", "--ratio", "-5"], "finite number >= 1, got -5"),
    (nothing, ["oversample", "--method", "random", "--ratio", "inf"], "finite number >= 1, got inf"),
    (nothing, ["oversample", "--method", "random", "--ratio", "1e12"], "the ratio can be at most 143"),
    (nothing, ["oversample", "--method", "random", "--seed", "-1"], "Invalid value for '--seed'"),
    (with_file("afile", b"x"), ["oversample", "--method", "random", "--out", "afile"], "is a file, not a directory"),
    (foreign_report, ["oversample", "--method", "random", "--out", "out", "--force"],
     "out/report.json was not written by robx oversample"),
    (foreign_report, ["oversample", "--method", "random", "--out", "out"], "already exists; pass --force"),
    (nothing, ["oversample", "--method", "smote", "--set", "smote.k_neighbors=0"], "k_neighbors must be >= 1"),
    # crowd: learner and dataset options, the seed, the output
    (nothing, ["crowd", "--method", "mv-dnn", "--set", "mv-dnn.batch_size=0"], "batch_size must be >= 1, got 0"),
    (nothing, ["crowd", "--method", "mv-dnn", "--set", "mv-dnn.epochs=-1"], "epochs must be >= 1, got -1"),
    (nothing, ["crowd", "--method", "iced", "--set", "iced.k_neighbors=0"], "k_neighbors must be >= 1, got 0"),
    (nothing, ["crowd", "--method", "mv-lr", "--set", "dataset.hardest_error=1.5"], "hardest_error must be in [0, 1]"),
    (nothing, ["crowd", "--method", "mv-lr", "--set", "dataset.easiest_error=-0.1"], "easiest_error must be in [0, 1]"),
    (nothing, ["crowd", "--method", "mv-lr", "--seed", "-1"], "Invalid value for '--seed'"),
    (with_file("afile", b"x"), ["crowd", "--method", "mv-lr", "--out", "afile"], "is a file, not a directory"),
    # train: config files, seeds, splits, budgets, batch sizes
    (with_file("bad.toml", NOT_UTF8), ["train", "--config", "bad.toml"], "is not UTF-8 text"),
    (with_file("adir/x", b""), ["train", "--config", "adir"], "cannot read config file adir: Is a directory"),
    (nothing, ["train", "--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    (nothing, ["train", "--ratio", "inf"], "ratio must be a finite number >= 1"),
    (nothing, ["train", "--n-max", "5", "--ratio", "5", "--val-fraction", "0.9"],
     "class '5' is left with 0 training examples"),
    (nothing, ["train", "--n-max", "5", "--ratio", "10"], "the ratio can be at most 5"),
    (nothing, ["train", "--eps", "2"], "eps 2 (linf) exceeds the inputs' range"),
    (nothing, ["train", "--model", "mlp", "--batch-size", "1"], "BatchNorm layers"),
    # a received run: options on resume, other weights, links, budgets
    (run_only, ["train", "--resume", "run", "--epochs", "3", "--lr", "0.2", "--model", "mlp"],
     "--model, --epochs, --lr cannot be given with it"),
    (other_models_weights, ["eval", "run"], "does not fit model 'mlp' of the run's config"),
    (other_models_weights, ["train", "--resume", "run"], "does not fit model 'mlp' of the run's config"),
    (changed_shape, ["eval", "run"], "in the checkpoint"),
    (planted_link("per_class.png"), ["train", "--resume", "run"], "is a symbolic link"),
    (planted_link("metrics.jsonl"), ["eval", "run"], "is a symbolic link"),
    (run_only, ["eval", "run", "--eps", "2"], "--eps 2 (linf) exceeds the inputs' range"),
    # report: not a report, nowhere to plot
    (with_file("notrep.json", b'{"a": 1}'), ["report", "notrep.json"], "notrep.json is not a robx report"),
    (with_file("notrep.json", NOT_A_REPORT), ["report", "notrep.json"], "no 'class_names' list"),
    (run_only, ["report", "run", "--plot", "nowhere/plot.png"], "the directory nowhere does not exist"),
]


@pytest.mark.parametrize(("setup", "args", "message"), CASES,
                         ids=[" ".join(args)[:60] for _, args, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(setup, args, message, tmp_path, finished_run,
                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path, finished_run)
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["object", "missing", "truncated"])
def test_a_broken_cifar_npz_is_one_line_naming_the_file(kind, tmp_path, monkeypatch, capsys):
    cifar_npz(kind)(tmp_path, tmp_path)
    monkeypatch.setenv("ROBX_DATA", str(tmp_path / "data"))
    before = snapshot(tmp_path)
    code, err = run_cli(["train", "--dataset", "cifar10", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "train.npz is not a CIFAR npz with x and y arrays" in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's read-only /proc")
@pytest.mark.parametrize("args", [["oversample", "--method", "random", "--out", "/proc/robx-out"],
                                  ["crowd", "--method", "mv-lr", "--out", "/proc/robx-out"],
                                  ["report", "run", "--plot", "/proc/robx.png"]])
def test_an_unwritable_destination_is_refused_before_the_work(args, tmp_path, finished_run, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    copy_run(finished_run, tmp_path)
    started = time.perf_counter()
    code, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err, err
    assert time.perf_counter() - started < 5  # refused up front, not after the classifiers


def test_oversample_force_replaces_its_own_outputs_and_keeps_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["oversample", "--method", "random", "--classifiers", "linearsvc", "--out", "out"]
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    first = json.loads((tmp_path / "out" / "report.json").read_text())
    assert first["written_by"] == "robx oversample"
    assert run_cli(args + ["--seed", "1", "--force"], capsys)[0] == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["seed"] == 1
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine\n"
    with np.load(tmp_path / "out" / "augmented.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) == {"x", "y", "generated"}
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


# --- atomic writes -------------------------------------------------------------------------

def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")

    def half_then_fail(handle):
        handle.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="report.json: No space left on device; the file there is unchanged"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_file_size_limit_leaves_the_old_file(tmp_path):
    """``ulimit -f`` as the issue measured it: the old plot was truncated by a direct write."""
    target = tmp_path / "per_class.png"
    target.write_bytes(b"old plot")
    script = textwrap.dedent(f"""
        import resource, signal
        from robx.core.errors import WriteError
        from robx.core.files import write_text_atomically
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_text_atomically({str(target)!r}, "x" * 100_000)
        except WriteError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "the file there is unchanged" in result.stdout
    assert target.read_bytes() == b"old plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_class.png"]


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "per_class.png"
    target.write_bytes(b"old plot")
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import pathlib, time
        from robx.core.files import atomic_write
        def slow(handle):
            handle.write(b"half a plot")
            handle.flush()
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        atomic_write(pathlib.Path({str(target)!r}), slow)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == b"old plot"


def test_a_planted_link_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(outside)
    write_text_atomically(link, "new\n")
    assert outside.read_text() == "keep me\n"
    assert not link.is_symlink() and link.read_text() == "new\n"


def test_eval_refuses_a_run_with_a_planted_link_and_the_target_stays(tmp_path, finished_run, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    planted_link("per_class.png")(tmp_path, finished_run)
    code, err = run_cli(["eval", "run"], capsys)
    assert code == 2 and "per_class.png is a symbolic link" in err
    assert (tmp_path / "outside.txt").read_text() == "not robx's\n"


# --- one writer per run directory ----------------------------------------------------------

@pytest.mark.slow
def test_a_held_run_directory_refuses_eval_resume_and_force_naming_the_holder(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from robx.core.run import RunDirLock\n"
                               f"with RunDirLock({str(run)!r}, 'train'):\n"
                               "    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        for args in (["eval", str(run)], ["train", "--resume", str(run)],
                     ["train", "--out", str(run), "--force", "--epochs", "1"]):
            result = subprocess.run(ROBX + args, capture_output=True, text=True)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [result.stderr.strip()]
            assert f"is in use by process {holder.pid} on " in result.stderr and "(robx train, since" in result.stderr
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    freed = subprocess.run(ROBX + ["eval", str(run), "--steps", "1", "--n-eval", "20"], capture_output=True, text=True)
    assert freed.returncode == 0, freed.stderr  # the kernel dropped the lock with its holder


def test_two_concurrent_trainings_into_one_directory_never_mix(tmp_path):
    out = tmp_path / "run"
    base = ROBX + ["train", "--epochs", "2", "--steps", "1", "--eval-steps", "1", "--n-eval", "50", "--out", str(out)]
    first = subprocess.Popen(base + ["--seed", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(base + ["--seed", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = [(process.wait(), process.stderr.read()) for process in (first, second)]
    winners = [seed for seed, (code, _) in zip((1, 2), results) if code == 0]
    assert len(winners) == 1, results
    loser_error = next(err for code, err in results if code != 0)
    assert ("is in use by process" in loser_error or "already exists" in loser_error), loser_error
    config = json.loads((out / "config.json").read_text())["config"]
    report = json.loads((out / "report.json").read_text())
    assert config["seed"] == report["seed"] == winners[0]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


# --- BatchNorm and the last batch ----------------------------------------------------------

def test_a_last_batch_of_one_joins_the_batch_before_when_batchnorm_needs_two():
    batches = list(torch.arange(9).split(4))  # 4, 4, 1
    merged = rank_shards(batches, Processes(0, 1), smallest=2)
    assert [len(idx) for idx, _ in merged] == [4, 5]
    assert torch.equal(torch.cat([idx for idx, _ in merged]), torch.arange(9))
    assert [len(idx) for idx, _ in rank_shards(batches, Processes(0, 1))] == [4, 4, 1]  # no BatchNorm: kept


# --- installed packages that break the rules -----------------------------------------------

LOGITS_ONLY = '''
import torch.nn as nn
from robx import hookimpl


class Logits(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.flatten(1))


@hookimpl
def register_models(register):
    register("logits", lambda spec: Logits())
'''


def test_a_model_returning_logits_only_is_one_line_before_anything_is_written(tmp_path):
    site = install_distribution(tmp_path / "site", "robx_logits", LOGITS_ONLY, {"logits": ""})
    result = subprocess.run(ROBX + ["train", "--model", "logits", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, env=_cli_env(site, tmp_path / "u"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("robx: error: model 'logits' returned one tensor of shape (2, 10) for a batch "
                                     "of 2; robx models return (features, outputs), each with one row per example "
                                     "(build it with robx.core.models.classifier)")
    assert not (tmp_path / "r").exists()


TWO_NAMES = '''
import torch.nn.functional as F
from robx import hookimpl


class AdversarialLogitPairing:
    """Pairs clean and adversarial logits."""

    name = "alp"
    reads = ("clean", "adversarial")

    @hookimpl
    def extra_loss(self, step):
        return F.mse_loss(step.adv_outputs, step.clean_outputs)


@hookimpl
def register_datasets(register):
    raise RuntimeError("the dataset server is down")
'''


def test_misnamed_twin_and_broken_plugins_are_warned_once_and_the_rest_works(tmp_path):
    site = install_distribution(tmp_path / "site", "robx_pairs", TWO_NAMES,
                                {"alp": "AdversarialLogitPairing", "logit-pairing": "AdversarialLogitPairing",
                                 "broken": ""})
    env = _cli_env(site, tmp_path / "u")
    listing = subprocess.run(ROBX + ["plugins", "--json"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    warnings = listing.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("robx: warning: ") for line in warnings), listing.stderr
    assert ("plugin 'logit-pairing' from robx-pairs 0.3 names robx_pairs:AdversarialLogitPairing whose name is "
            "'alp': the entry-point name must be the plugin's name; skipped") in warnings[0]
    assert "broken (robx-pairs 0.3): register_datasets failed: RuntimeError: the dataset server is down" in warnings[1]
    names = [row["name"] for row in json.loads(listing.stdout)["plugins"]]
    assert names.count("alp") == 1 and "logit-pairing" not in names
    selected = subprocess.run(ROBX + ["train", "--plugins", "alp,logit-pairing", "--out", str(tmp_path / "r")],
                              capture_output=True, text=True, env=env)
    assert selected.returncode == 2 and "the entry-point name must be the plugin's name" in \
        selected.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()
