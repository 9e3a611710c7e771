"""Several processes: torchrun spawns 2 processes on the gloo backend, and the run must be the
run of one process (robx.core.distributed).

Comparisons are against a single-process run of the same command. One process averages a
batch of B; two processes average B/2 each and DDP averages their gradients, which is the
same gradient up to float rounding, for a model without BatchNorm and without random draws
(the attack's random start off, no augmentation on digits). With BatchNorm each process
normalises its own half (dist_bn), which is a different, equally valid, model: for it these
tests check only what must still be exact (counts, agreement, schema).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robx.core.config import TrainConfig
from robx.core.distributed import SINGLE, Processes, rank_shards
from robx.core.engine import train
from robx.core.errors import OptionError
from robx.core.rundir import load_checkpoint
from test_plugins import install_distribution

# the README's `torchrun` (the console script torch installs beside this Python), else its module
_SCRIPT = Path(sys.executable).parent / "torchrun"
TORCHRUN = [str(_SCRIPT) if _SCRIPT.exists() else sys.executable, *([] if _SCRIPT.exists() else
            ["-m", "torch.distributed.run"]), "--standalone"]

# a model without BatchNorm, registered by an external package (robx's own all have BN)
NO_BATCHNORM_MODEL = '''
import math
import torch.nn as nn
from robx import hookimpl
from robx.core.models import classifier


@hookimpl
def register_models(register):
    def relu_mlp(spec):
        width = math.prod(spec.shape)
        return classifier(spec, nn.Sequential(nn.Flatten(), nn.Linear(width, 32), nn.ReLU()), 32)

    register("relu-mlp", relu_mlp)
'''

# short digits runs: 720 training examples (5 x 131 + 5 x 13)
SHORT = ["--steps", "3", "--eval-steps", "3", "--n-eval", "60"]


def environment(site: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def robx(*args: object, nproc: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``robx ARGS`` in one process, or under ``torchrun --nproc_per_node NPROC -m robx ARGS``."""
    launcher = [*TORCHRUN, f"--nproc_per_node={nproc}", "-m", "robx"] if nproc > 1 else [sys.executable, "-m", "robx"]
    done = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=env or environment(),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def wait_for_first_epoch(job: subprocess.Popen, run_dir: Path) -> None:
    """Until the job has written its first epoch's metrics (failing if it ends first)."""
    deadline = time.monotonic() + 240
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text()):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first epoch"
        time.sleep(0.05)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def schema(value: object) -> object:
    """The keys of a JSON value, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {key: schema(item) for key, item in value.items()}
    if isinstance(value, list):
        return [schema(value[0])] if value else []
    return type(value).__name__


def test_global_batches_are_cut_into_disjoint_slices_weighted_by_size():
    batches = list(torch.arange(23).split(7))  # 7, 7, 7, 2
    two = [rank_shards(batches, Processes(rank, 2)) for rank in (0, 1)]
    three = [rank_shards(batches, Processes(rank, 3)) for rank in (0, 1, 2)]
    for shards in (two, three):
        world = len(shards)
        everything = torch.cat([idx for rank in shards for idx, _ in rank])
        assert sorted(everything.tolist()) == list(range(23))  # every example once
        for step in range(len(shards[0])):
            sizes = [len(rank[step][0]) for rank in shards]
            assert max(sizes) - min(sizes) <= 1
            # DDP averages the processes' gradients: weights W n_r / n make it the batch mean
            assert sum(rank[step][1] for rank in shards) == pytest.approx(world)
    assert [len(idx) for idx, _ in two[0]] == [4, 4, 4, 1] and [len(idx) for idx, _ in two[1]] == [3, 3, 3, 1]
    # the last 2 examples cannot feed 3 processes: they join the batch before (9 = 3 + 3 + 3)
    assert [len(idx) for idx, _ in three[0]] == [3, 3, 3] and [len(idx) for idx, _ in three[2]] == [2, 2, 3]
    assert [share for _, share in two[1]] == [3 * 2 / 7] * 3 + [1.0]
    assert rank_shards(batches, SINGLE) == [(b, 1.0) for b in batches]
    with pytest.raises(OptionError, match="batch size of at least 3"):
        rank_shards(list(torch.arange(10).split(2)), Processes(0, 3))
    with pytest.raises(OptionError, match=r"cannot be shared by 3 process\(es\)"):
        rank_shards([torch.arange(2)], Processes(0, 3))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gloo_runs(tmp_path: Path, args: list[str], site: Path) -> tuple[Path, Path]:
    """``robx ARGS`` in one process (run directory ``one``) and in two processes joined as
    torchrun would join them (RANK, WORLD_SIZE, MASTER_* in the environment, gloo; ``two``)."""
    code = "import sys; from robx.cli.main import main; sys.exit(main(sys.argv[1:]))"
    port = free_port()

    def started(out: Path, rank: int, world: int) -> subprocess.Popen:
        env = environment(site)
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    jobs = [started(tmp_path / "one", 0, 1), started(tmp_path / "two", 0, 2), started(tmp_path / "two", 1, 2)]
    for job in jobs:
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
    return tmp_path / "one", tmp_path / "two"


def assert_same_weights(one: Path, two: Path) -> None:
    first, second = (load_checkpoint(path / "checkpoint.pt")["model"] for path in (one, two))
    for name, weights in first.items():
        scale = float(weights.abs().max()) + 1e-12
        assert float((second[name] - weights).abs().max()) / scale < 1e-5, name


def test_two_gloo_processes_train_the_weights_of_one_process(tmp_path):
    """The default run's multi-process check (the torchrun tests below are slow): two
    processes, each training on its half of every batch, end with the weights of one process
    training on the whole batches, for a model without BatchNorm."""
    site = install_distribution(tmp_path / "site", "robx_relu_mlp", NO_BATCHNORM_MODEL, {"relu-mlp": ""})
    one, two = gloo_runs(tmp_path, ["train", "--model", "relu-mlp", "--epochs", "1", "--batch-size", "49", "--set",
                                    "pgd.random_start=false", "--steps", "2", "--eval-steps", "1", "--n-eval", "20"],
                         site)
    assert_same_weights(one, two)
    (m1,), (m2,) = metrics(one), metrics(two)
    assert m2["train"]["counts"] == m1["train"]["counts"] == [131] * 5 + [13] * 5
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert json.loads((two / "config.json").read_text())["processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", [["fgsm", "--set", "fgsm.random_start=false"], ["free", "--set", "free.replays=2"]],
                         ids=["fgsm", "free"])
def test_single_step_and_free_training_under_two_processes_train_the_weights_of_one(tmp_path, method):
    """FGSM from x and Free AT under two processes train the single process's weights. Free's
    carried delta is the global batch's (each process updates its slice's rows, which are
    gathered after every replay): the batch of 49 cuts into slices of 25 and 24 and the last
    batch of 34 into 17 and 17, whose rows of the carried delta are global rows 0-16 and
    17-33, as in one process. Free's step is the sign of each slice's input gradient, which
    the slices' loss weights (2 x 25 / 49, 2 x 24 / 49) scale but cannot flip."""
    site = install_distribution(tmp_path / "site", "robx_relu_mlp", NO_BATCHNORM_MODEL, {"relu-mlp": ""})
    one, two = gloo_runs(tmp_path, ["train", "--model", "relu-mlp", "--plugins", method[0], *method[1:], "--epochs",
                                    "2", "--batch-size", "49", "--eval-steps", "1", "--n-eval", "20"], site)
    assert_same_weights(one, two)
    assert [m["loss"] for m in metrics(two)] == pytest.approx([m["loss"] for m in metrics(one)], rel=1e-5)
    if method[0] == "free":
        deltas = [load_checkpoint(path / "checkpoint.pt")["plugins"]["free"]["delta"] for path in (one, two)]
        assert deltas[0].shape[0] == 49 and float(deltas[0].abs().max()) > 0
        assert torch.allclose(deltas[1], deltas[0], atol=1e-6)


@pytest.mark.slow
def test_gradalign_s_double_backward_runs_under_two_processes(tmp_path):
    """GradAlign differentiates an input gradient (create_graph) through the model beside the
    DDP-wrapped training pass; its eta is each process's own draw, so the run is not the
    single process's, but the engine's epoch-end check that both processes hold the same
    weights must pass (the regulariser's weight gradients are averaged with the rest), and
    the regulariser must have been on."""
    robx("train", "--plugins", "gradalign", "--epochs", "2", "--batch-size", "48", *SHORT,
         "--out", tmp_path / "two", nproc=2)
    last = metrics(tmp_path / "two")[-1]
    assert last["train"]["counts"] == [131] * 5 + [13] * 5
    assert last["loss_terms"]["gradalign"] > 0


@pytest.mark.slow
def test_two_processes_with_half_batches_train_the_weights_of_one_process(tmp_path):
    """(a) and (b): 2 ranks x B/2 = 1 rank x B after one epoch; counts exactly equal."""
    site = install_distribution(tmp_path / "site", "robx_relu_mlp", NO_BATCHNORM_MODEL, {"relu-mlp": ""})
    env = environment(site)
    # B = 49 is odd: the processes' slices are 25 and 24 and the last batch is 34 long
    args = ["train", "--model", "relu-mlp", "--epochs", "1", "--batch-size", "49", "--set", "pgd.random_start=false",
            *SHORT]
    robx(*args, "--out", tmp_path / "one", env=env)
    robx(*args, "--out", tmp_path / "two", nproc=2, env=env)
    one, two = (load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("one", "two"))
    for name, weights in one.items():
        scale = float(weights.abs().max()) + 1e-12
        assert float((two[name] - weights).abs().max()) / scale < 1e-5, name
    changed = max(float((two[k] - v).abs().max()) for k, v in one.items())
    assert changed < 1e-5
    (m1,), (m2,) = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert m2["train"]["counts"] == m1["train"]["counts"] == [131] * 5 + [13] * 5
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m2["train"]["robust"] == pytest.approx(m1["train"]["robust"], abs=1.5 / 13)  # a flipped argmax at most
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2


@pytest.mark.slow
def test_per_class_counts_of_a_batchnorm_model_and_its_sampler_are_exact(tmp_path):
    """(b) with BatchNorm and (e) resample: the class-balanced sampler draws the same global
    examples on every process, so the epoch's per-class counts are the single process's."""
    args = ["train", "--plugins", "resample", "--epochs", "1", "--batch-size", "64", *SHORT]
    robx(*args, "--out", tmp_path / "one")
    robx(*args, "--out", tmp_path / "two", nproc=2)
    for m1, m2 in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert m2["train"]["counts"] == m1["train"]["counts"]
        assert sum(m2["train"]["counts"]) == 720
        assert min(m2["train"]["counts"]) > 40  # resampled: the 13-example classes drawn often
    report1 = json.loads((tmp_path / "one" / "report.json").read_text())
    report2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert schema(report2) == schema(report1)


@pytest.mark.slow
@pytest.mark.parametrize("attack", [[], ["--attack", "autoattack", "--n-eval", "10"]], ids=["pgd", "autoattack"])
def test_sharded_evaluation_is_the_single_process_evaluation(trained_run, attack):
    """(c): each process attacks whole evaluation batches and the flags are gathered."""
    if attack:
        pytest.importorskip("pyautoattack")
    args = ["eval", trained_run, "--steps", "5", "--n-eval", "100", "--batch-size", "5" if attack else "16", *attack]
    reports = []
    for nproc in (1, 2):
        robx(*args, nproc=nproc)
        written = max(Path(trained_run).glob("eval-*.json"), key=lambda path: path.stat().st_mtime_ns)
        reports.append(json.loads(written.read_text()))
    assert reports[1] == reports[0]
    assert reports[0]["n_test"] == (10 if attack else 100)


def _rank_process(marker: str, local_rank: int) -> int | None:
    """The pid of the torchrun worker with LOCAL_RANK ``local_rank`` whose command names ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in command and "-m robx train" in command and f"LOCAL_RANK={local_rank}".encode() in variables:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the worker process through /proc")
def test_a_killed_process_ends_the_job_and_resume_finishes_it(tmp_path):
    """(d): SIGKILL one process mid-epoch; the job stops with one clear line, the checkpoint
    of the last finished epoch is intact, and ``--resume`` completes the run."""
    run_dir = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "robx", "train", "--nproc", "2", "--epochs", "4", *SHORT,
                            "--out", run_dir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=environment())
    wait_for_first_epoch(job, run_dir)
    finished = len(metrics(run_dir))
    victim = _rank_process(str(run_dir), 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("robx: error: training with 2 processes stopped")
    assert f"continue with robx train --nproc 2 --resume {run_dir}" in last
    kept = load_checkpoint(run_dir / "checkpoint.pt")
    assert kept["epoch"] + 1 >= finished and kept["epoch"] < 3
    assert not (run_dir / "report.json").exists()
    robx("train", "--nproc", "2", "--resume", run_dir)
    assert [m["epoch"] for m in metrics(run_dir)] == [0, 1, 2, 3]
    assert json.loads((run_dir / "report.json").read_text())["epochs"] == 4
    # with the same number of processes the resumed run is the uninterrupted one, bit for bit
    robx("train", "--epochs", "4", *SHORT, "--out", tmp_path / "straight", nproc=2)
    resumed, straight = (load_checkpoint(path / "checkpoint.pt")["model"] for path in (run_dir, tmp_path / "straight"))
    assert all(torch.equal(resumed[name], straight[name]) for name in straight)


@pytest.mark.slow
def test_a_single_process_run_resumes_under_two_processes(tmp_path, monkeypatch):
    """Resume with another number of processes: the epochs, batches and report go on."""
    import robx.core.engine as engine

    real_epoch = engine.train_epoch

    def killed(run, progress):
        if run.state.epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(run, progress)

    monkeypatch.setattr(engine.loop, "train_epoch", killed)
    config = TrainConfig(dataset="digits", epochs=2, steps=2, eval_steps=2, n_eval=60, batch_size=64)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run")
    robx("train", "--resume", tmp_path / "run", nproc=2)
    assert [m["epoch"] for m in metrics(tmp_path / "run")] == [0, 1]
    assert metrics(tmp_path / "run")[1]["train"]["counts"] == [131] * 5 + [13] * 5
    assert json.loads((tmp_path / "run" / "report.json").read_text())["n_test"] == 60


@pytest.mark.slow
@pytest.mark.parametrize("plugins", [["dafa,trades", "--set", "dafa.warmup=0.5"],
                                     ["srat,imbmix", "--set", "srat.start_epoch=1", "--set", "imbmix.swa_start=0.5"]],
                         ids=["dafa-trades", "srat-imbmix"])
def test_epoch_end_plugins_run_under_two_processes_with_the_report_schema_of_one(tmp_path, plugins):
    """(e): DAFA's class weights, SRAT's start and Imb-Mix's copies and SWA under 2 processes.
    The engine checks at every epoch end that the processes hold the same model, statistics,
    per-class quantities and plugins' saved state, so a finished run is the check that they agree."""
    args = ["train", "--plugins", *plugins, "--epochs", "2", "--batch-size", "64", *SHORT]
    robx(*args, "--out", tmp_path / "two", nproc=2)
    single = train(TrainConfig(dataset="digits", plugins=plugins[0].split(","), epochs=1, batch_size=64, steps=2,
                               eval_steps=2, n_eval=60), tmp_path / "one")
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert schema(report) == schema(json.loads(json.dumps(single)))
    last = metrics(tmp_path / "two")[-1]
    assert last["train"]["counts"] == [131] * 5 + [13] * 5
    if plugins[0].startswith("dafa"):
        assert len(set(last["class_eps"])) > 1  # DAFA's per-class budget is on after warm-up


@pytest.mark.slow
def test_mingre_s_encoder_is_the_same_on_every_process(tmp_path):
    """MinGRE trains its cross-segment encoder inside select_victims, on each process's
    slice of the batch; its gradients are averaged over the processes (weighted by slice) so
    that every process holds the same encoder. The engine's epoch-end agreement check
    compares the plugins' saved state, which holds the encoder, so a finished 2-process run is the
    check; the encoder must also have moved from its initialisation."""
    from robx.plugins.mingre import CrossSegmentEncoder
    from test_crime import tiny_city

    tiny_city(tmp_path / "data")
    robx("train", "--dataset", "nyc-crime", "--data-root", tmp_path / "data", "--plugins", "mingre", "--epochs", "2",
         "--batch-size", "8", "--steps", "2", "--eval-steps", "2", "--set", "dataset.history=7",
         "--out", tmp_path / "two", nproc=2)
    saved = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["plugins"]["mingre"]["encoder"]["model"]
    torch.manual_seed(0)
    initial = CrossSegmentEncoder(4, 7, 16).state_dict()
    assert any(not torch.equal(saved[name], value) for name, value in initial.items())


@pytest.mark.slow
def test_an_interrupted_nproc_job_exits_130_naming_the_checkpoint_and_resume_finishes_it(tmp_path):
    """SIGINT to ``robx train --nproc 2`` goes on to torchrun and its processes; the command
    exits 130 with one last line naming the intact checkpoint, and ``--nproc 2 --resume``
    completes the run."""
    run_dir = tmp_path / "stopped"
    job = subprocess.Popen([sys.executable, "-m", "robx", "train", "--nproc", "2", "--epochs", "4", *SHORT,
                            "--out", run_dir], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=environment())
    wait_for_first_epoch(job, run_dir)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("robx: interrupted by SIGINT; the checkpoint after epoch ")
    assert f"continue with robx train --nproc 2 --resume {run_dir}" in last
    robx("train", "--nproc", "2", "--resume", run_dir)
    assert [m["epoch"] for m in metrics(run_dir)] == [0, 1, 2, 3]
    assert json.loads((run_dir / "report.json").read_text())["epochs"] == 4
