"""The bad-input and fault matrix of docs/reliability.md: every case runs ``robx`` as a user
would (a subprocess, in a directory of its own) and is *clean* when it ends as the docs
promise -- bad input: exit 2, one ``robx: error:`` line on stderr, no traceback, and every
file in its directory byte-identical afterwards; a case that should work: exit 0, no
traceback. Writes ``benchmarks/results/reliability/cpu.json`` with each case's outcome.

    python benchmarks/reliability.py [--jobs 2] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402

ROBX = [sys.executable, "-m", "robx.cli.main"]
QUICK = ["--epochs", "1", "--steps", "1", "--eval-steps", "1", "--n-eval", "50"]
NOT_A_REPORT = '{"per_class": [1], "summary": 3}'

# (setup, arguments, expected): setups are named below; "refuse" = exit 2, one line, nothing
# changed; "ok" = exit 0 without a traceback
TRAIN_BAD = [
    ["--epochs", "0"], ["--epochs", "-1"], ["--epochs", "many"], ["--batch-size", "0"], ["--batch-size", "-3"],
    ["--lr", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--eps", "-1"], ["--eps", "2"], ["--eps", "nan"],
    ["--eps", "eight"], ["--alpha", "-1"], ["--steps", "0"], ["--eval-steps", "0"], ["--n-eval", "0"],
    ["--ratio", "0.5"], ["--ratio", "nan"], ["--ratio", "inf"], ["--ratio", "-5"], ["--ratio", "1e12"],
    ["--n-max", "0"], ["--n-max", "5", "--ratio", "10"], ["--n-max", "5", "--ratio", "5", "--val-fraction", "0.9"],
    ["--val-fraction", "1"], ["--val-fraction", "-0.1"], ["--seed", "-1"], ["--seed", str(2**32)],
    ["--norm", "l3"], ["--optimizer", "lbfgs"], ["--schedule", "cosine"], ["--imbalance", "zipf"],
    ["--device", "tpu"], ["--precision", "fp16"], ["--compile", "fast"], ["--nproc", "0"],
    ["--dataset", "mnist"], ["--model", "vgg"], ["--plugins", "nosuch"], ["--plugins", ","],
    ["--plugins", "natural,pgd"], ["--loss", "hinge"], ["--set", "pgd.nosuch=1"], ["--set", "garbage"],
    ["--set", "srat.lam=strong"], ["--set", "dataset.nosuch=1"], ["--model", "mlp", "--batch-size", "1"],
    ["--plugins", "cfa,ema"], ["--plugins", "dafa,fairtat"], ["--sync-bn", "--device", "cpu"],
    ["--dist-bn", "mean"], ["--task", "regression"], ["--config", "missing.toml"],
    ["--set", "imbmix.tau=2"], ["--set", "drw.beta=1"], ["--set", "focal.gamma=-1"], ["--set", "ldam.scale=0"],
    ["--set", "ema.decay=1.5"], ["--set", "swa.start=-0.5"], ["--set", "trades.beta=-1"],
    ["--dataset", "digits", "--set", "dataset.history=3"],
]
CASES: list[tuple[str, list[str], str]] = (
    [("none", ["train", *args], "refuse") for args in TRAIN_BAD]
    + [
        ("notutf8", ["train", "--config", "bad.toml"], "refuse"),
        ("adir", ["train", "--config", "adir"], "refuse"),
        ("badtoml", ["train", "--config", "bad.toml"], "refuse"),
        ("unknownkey", ["train", "--config", "bad.toml"], "refuse"),
        ("afile", ["train", "--out", "afile"], "refuse"),
        ("run", ["train", "--out", "run"], "refuse"),
        ("run", ["train", "--resume", "run", "--epochs", "3", "--lr", "0.2", "--model", "mlp"], "refuse"),
        ("run", ["train", "--resume", "run", "--force"], "refuse"),
        ("none", ["train", "--resume", "nowhere"], "refuse"),
        ("run-mlp", ["train", "--resume", "run"], "refuse"),
        ("run-shape", ["train", "--resume", "run"], "refuse"),
        ("run-badconfig", ["train", "--resume", "run"], "refuse"),
        ("run-pickle", ["train", "--resume", "run"], "refuse"),
        ("link:per_class.png", ["train", "--resume", "run"], "refuse"),
        ("link:metrics.jsonl", ["train", "--resume", "run"], "refuse"),
        ("link:checkpoint.pt", ["train", "--resume", "run"], "refuse"),
        ("held", ["train", "--resume", "run"], "refuse"),
        ("held", ["train", "--out", "run", "--force", *QUICK], "refuse"),
        ("cifar:object", ["train", "--dataset", "cifar10", "--out", "r"], "refuse"),
        ("cifar:missing", ["train", "--dataset", "cifar10", "--out", "r"], "refuse"),
        ("cifar:truncated", ["train", "--dataset", "cifar10", "--out", "r"], "refuse"),
        ("cifar:shape", ["train", "--dataset", "cifar10", "--out", "r"], "refuse"),
        ("logits-model", ["train", "--model", "logits", "--out", "r"], "refuse"),
        ("none", ["train", "--n-eval", "3", "--out", "r", "--epochs", "1", "--steps", "1", "--eval-steps", "1"],
         "refuse"),
        # eval
        ("none", ["eval", "nowhere"], "refuse"),
        ("run", ["eval", "run", "--steps", "0"], "refuse"),
        ("run", ["eval", "run", "--norm", "l3", "--eps", "0.1"], "refuse"),
        ("run", ["eval", "run", "--norm", "l2"], "refuse"),
        ("run", ["eval", "run", "--n-eval", "0"], "refuse"),
        ("run", ["eval", "run", "--victims", "2"], "refuse"),
        ("run", ["eval", "run", "--eps", "2"], "refuse"),
        ("run", ["eval", "run", "--eps", "-1"], "refuse"),
        ("run", ["eval", "run", "--eps", "x"], "refuse"),
        ("run", ["eval", "run", "--batch-size", "0"], "refuse"),
        ("run", ["eval", "run", "--attack", "bogus"], "refuse"),
        ("run", ["eval", "run", "--attack", "stpgd"], "refuse"),
        ("run-mlp", ["eval", "run"], "refuse"),
        ("run-shape", ["eval", "run"], "refuse"),
        ("run-nockpt", ["eval", "run"], "refuse"),
        ("run-pickle", ["eval", "run"], "refuse"),
        ("run-badconfig", ["eval", "run"], "refuse"),
        ("link:per_class.png", ["eval", "run"], "refuse"),
        ("link:metrics.jsonl", ["eval", "run"], "refuse"),
        ("held", ["eval", "run"], "refuse"),
        ("run", ["eval", "run", "--steps", "1", "--n-eval", "20"], "ok"),
        # report
        ("none", ["report", "nowhere"], "refuse"),
        ("notrep", ["report", "notrep.json"], "refuse"),
        ("notrep2", ["report", "notrep.json"], "refuse"),
        ("notjson", ["report", "notrep.json"], "refuse"),
        ("listjson", ["report", "notrep.json"], "refuse"),
        ("adir", ["report", "adir"], "refuse"),
        ("run", ["report", "run", "--kind", "both"], "refuse"),
        ("run", ["report", "run", "--plot", "nowhere/p.png"], "refuse"),
        ("run", ["report", "run", "--plot", "run"], "refuse"),
        ("run", ["report", "run", "--plot", "/proc/robx.png"], "refuse"),
        ("run", ["report", "run", "--baseline", "nosuch"], "refuse"),
        ("run", ["report", "run", "--plot", "p.png"], "ok"),
        # oversample
        ("none", ["oversample", "--method", "nosuch"], "refuse"),
        ("none", ["oversample", "--method", "random", "--dataset", "nosuch"], "refuse"),
        ("none", ["oversample", "--method", "random", "--dataset", "digits"], "ok"),  # ten classes oversample too
        *[("none", ["oversample", "--method", "random", "--ratio", ratio], "refuse")
          for ratio in ("0", "nan", "-5", "1e12", "inf", "0.5", "many")],
        ("none", ["oversample", "--method", "random", "--seed", "-1"], "refuse"),
        ("none", ["oversample", "--method", "random", "--classifiers", "xgboost"], "refuse"),
        ("none", ["oversample", "--method", "random", "--set", "smote.k_neighbors=1"], "refuse"),
        ("none", ["oversample", "--method", "smote", "--set", "smote.k_neighbors=0"], "refuse"),
        ("none", ["oversample", "--method", "smote", "--set", "smote.k_neighbors=500"], "refuse"),
        ("none", ["oversample", "--method", "glgan", "--set", "glgan.latent_dim=0"], "refuse"),
        ("none", ["oversample", "--method", "glgan", "--set", "glgan.lr=-1"], "refuse"),
        ("none", ["oversample", "--method", "random", "--set", "dataset.majority=11"], "refuse"),
        ("afile", ["oversample", "--method", "random", "--out", "afile"], "refuse"),
        ("foreign", ["oversample", "--method", "random", "--out", "out", "--force"], "refuse"),
        ("foreign", ["oversample", "--method", "random", "--out", "out"], "refuse"),
        ("none", ["oversample", "--method", "random", "--out", "/proc/robx-out"], "refuse"),
        ("own-out", ["oversample", "--method", "random", "--classifiers", "linearsvc", "--out", "out", "--force"],
         "ok"),
        # crowd
        ("none", ["crowd", "--method", "nosuch"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--dataset", "digits"], "refuse"),
        ("none", ["crowd", "--method", "mv-dnn", "--set", "mv-dnn.batch_size=0"], "refuse"),
        ("none", ["crowd", "--method", "mv-dnn", "--set", "mv-dnn.epochs=-1"], "refuse"),
        ("none", ["crowd", "--method", "mv-dnn", "--set", "mv-dnn.lr=0"], "refuse"),
        ("none", ["crowd", "--method", "iced", "--set", "iced.k_neighbors=0"], "refuse"),
        ("none", ["crowd", "--method", "iced", "--set", "iced.warmup=never"], "refuse"),
        ("none", ["crowd", "--method", "iced", "--set", "iced.iterations=-1"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--set", "dataset.hardest_error=1.5"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--set", "dataset.easiest_error=-0.1"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--set", "dataset.easiest_error=0.6"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--set", "dataset.workers=0"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--set", "dataset.minority_removed=1"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--seed", "-1"], "refuse"),
        ("afile", ["crowd", "--method", "mv-lr", "--out", "afile"], "refuse"),
        ("foreign", ["crowd", "--method", "mv-lr", "--out", "out", "--force"], "refuse"),
        ("none", ["crowd", "--method", "mv-lr", "--out", "/proc/robx-out"], "refuse"),
        # your own data and model (docs/data.md)
        ("none", ["train", "--dataset", "folder:nowhere", "--out", "r"], "refuse"),
        ("none", ["train", "--dataset", "npz:nowhere.npz", "--out", "r"], "refuse"),
        ("afile", ["train", "--dataset", "npz:afile", "--out", "r"], "refuse"),
        ("none", ["train", "--dataset", "digits:somewhere", "--out", "r"], "refuse"),
        ("none", ["train", "--image-size", "6", "--out", "r"], "refuse"),
        ("none", ["train", "--model", "torchvision:nosuch", "--out", "r"], "refuse"),
        ("none", ["train", "--model", "torchvision", "--out", "r"], "refuse"),
        ("none", ["train", "--model", "timm:resnet18", "--out", "r"], "refuse"),
        ("none", ["train", "--weights", "missing.safetensors", "--out", "r"], "refuse"),
        ("afile", ["train", "--weights", "afile", "--out", "r"], "refuse"),
        ("run-pickle", ["train", "--weights", "run/checkpoint.pt", "--out", "r"], "refuse"),
        ("none", ["audit", "missing.pt", "--arch", "smallcnn"], "refuse"),
        ("run", ["audit", "run/checkpoint.pt", "--arch", "mlp", "--attacks", "pgd"], "refuse"),
        ("run", ["audit", "run/checkpoint.pt", "--arch", "smallcnn16", "--attacks", "fgsm"], "refuse"),
        ("run", ["audit", "run/checkpoint.pt", "--arch", "smallcnn16", "--attacks", "pgd", "--set", "pgd.x=1"],
         "refuse"),
        ("afile", ["audit", "afile", "--arch", "smallcnn16", "--attacks", "pgd", "--out", "afile"], "refuse"),
        ("run", ["audit", "run/checkpoint.pt", "--arch", "smallcnn16", "--attacks", "pgd", "--steps", "2",
                 "--n-eval", "50", "--out", "audit"], "ok"),
        # plugins from installed packages
        ("twin-plugins", ["train", "--plugins", "alp,logit-pairing", "--out", "r"], "refuse"),
        ("twin-plugins", ["plugins"], "ok"),
        ("twin-plugins", ["train", "--dataset", "brokenset", "--out", "r"], "refuse"),
        ("none", ["bogus"], "refuse"),
    ]
    + [(setup, ["train", "--dataset", "npz:data.npz", "--out", "r", *QUICK], "refuse") for setup in (
        "npz:biglabel", "npz:uint64", "npz:gaps", "npz:fewnames", "npz:emptytrain", "npz:emptytest", "npz:oneclass",
        "npz:notrainclass", "npz:overflow", "npz:nan")]
    + [
        ("npz:untested", ["train", "--dataset", "npz:data.npz", "--out", "r", *QUICK, "--batch-size", "4"], "ok"),
        ("folder:oneclass", ["train", "--dataset", "folder:imgs", "--out", "r"], "refuse"),
        ("folder:bomb", ["train", "--dataset", "folder:imgs", "--out", "r"], "refuse"),
        ("folder:hugebomb", ["train", "--dataset", "folder:imgs", "--out", "r"], "refuse"),
        ("folder:bomb", ["train", "--dataset", "folder:imgs", "--image-size", "8", "--out", "r"], "refuse"),
        ("folder:plain", ["train", "--dataset", "folder:imgs", "--image-size", "100000", "--out", "r"], "refuse"),
        *[(f"folder:{kind}", ["train", "--dataset", "folder:imgs", "--out", "r", *QUICK, "--batch-size", "4"], "ok")
          for kind in ("16bit", "palette-rgba", "single-image-class", "junk", "xdg-file", "xdg-proc", "cache-empty",
                       "cache-truncated", "cache-shape")],
        ("folder-run", ["train", "--resume", "run"], "refuse"),
        ("folder-run", ["eval", "run"], "refuse"),
        ("npz-run", ["eval", "run"], "refuse"),
        # weights files and models
        ("weights:empty", ["audit", "w.safetensors", "--arch", "smallcnn16", "--attacks", "pgd"], "refuse"),
        ("weights:garbage", ["audit", "w.safetensors", "--arch", "smallcnn16", "--attacks", "pgd"], "refuse"),
        ("weights:header", ["train", "--weights", "w.safetensors", "--out", "r"], "refuse"),
        ("weights:nan", ["audit", "w.pt", "--arch", "smallcnn16", "--attacks", "pgd"], "refuse"),
        ("weights:int64", ["train", "--weights", "w.pt", "--out", "r"], "refuse"),
        ("weights:bool", ["train", "--weights", "w.pt", "--out", "r"], "refuse"),
        ("adir", ["train", "--weights", "adir", "--out", "r"], "refuse"),
        ("folder:rgb32", ["train", "--dataset", "folder:imgs", "--model", "torchvision:googlenet", "--out", "r",
                          *QUICK, "--batch-size", "4"], "ok"),
        ("none", ["train", "--model", "torchvision:fasterrcnn_resnet50_fpn", "--out", "r"], "refuse"),
        ("none", ["train", "--model", "torchvision:lraspp_mobilenet_v3_large", "--out", "r"], "refuse"),
        # installed plugins and commands that fail
        *[("misbehaving", ["train", "--plugins", name, "--out", "r", *QUICK], "fail")
          for name in ("raising", "listweights", "textloss", "vectorloss", "shortweights", "noadversary")],
        ("misbehaving", ["crashes"], "fail"),
        ("misbehaving", ["leaves-with-three"], "exit:3"),
        # ranges
        ("none", ["train", "--lr", "inf"], "refuse"),
        ("bigtoml", ["train", "--config", "big.toml"], "refuse"),
        ("none", ["train", "--steps", "1000000"], "refuse"),
        ("none", ["train", "--n-eval", "5"], "refuse"),
        ("run", ["eval", "run", "--n-eval", "5"], "refuse"),
        ("run", ["eval", "run", "--steps", "100000"], "refuse"),
        ("run", ["eval", "run", "--eps", "inf"], "refuse"),
        ("none", ["train", "--nproc", "5000"], "refuse"),
        # interrupts: a real signal to a real process; then (train) the resume must finish the run
        ("none", ["train", "--epochs", "30", "--out", "r"], "signal:SIGINT"),
        ("none", ["train", "--epochs", "30", "--out", "r"], "signal:SIGTERM"),
        ("run", ["eval", "run", "--steps", "500"], "signal:SIGINT"),
        ("run", ["audit", "run/checkpoint.pt", "--arch", "smallcnn16", "--attacks", "pgd", "--steps", "500",
                 "--out", "audit"], "signal:SIGTERM"),
        ("none", ["oversample", "--method", "glgan", "--out", "out"], "signal:SIGINT"),
        ("none", ["crowd", "--method", "iced", "--out", "out"], "signal:SIGTERM"),
    ]
)

LOGITS_MODEL = '''
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

TWIN_PLUGINS = '''
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
    register("brokenset", None, task="classification")
    raise RuntimeError("the dataset server is down")
'''


MISBEHAVING = '''
import torch
import typer
from robx import hookimpl

def plugin(name, hook, answer):
    def implementation(self, step):
        return answer(step)
    implementation.__name__ = hook
    return type(name, (), {"__doc__": f"{hook} misbehaving", "name": name, hook: hookimpl(implementation)})

def boom(step):
    raise RuntimeError("the plugin's own bug")

Raising = plugin("raising", "extra_loss", boom)
ListWeights = plugin("listweights", "weight_samples", lambda step: [1.0] * len(step.inputs))
TextLoss = plugin("textloss", "extra_loss", lambda step: "0.1")
VectorLoss = plugin("vectorloss", "extra_loss", lambda step: torch.zeros(3, requires_grad=True))
ShortWeights = plugin("shortweights", "weight_samples", lambda step: torch.ones(3))
NoAdversary = plugin("noadversary", "generate_adversary", lambda step: step.y)

def crashes():
    """Raises."""
    raise KeyError("a key the command wanted")

def leaves_with_three():
    """Ends with status 3."""
    raise typer.Exit(code=3)

@hookimpl
def register_commands(register):
    register("crashes", crashes)
    register("leaves-with-three", leaves_with_three)
'''
MISBEHAVING_ENTRIES = {"raising": "Raising", "listweights": "ListWeights", "textloss": "TextLoss",
                       "vectorloss": "VectorLoss", "shortweights": "ShortWeights", "noadversary": "NoAdversary",
                       "commands": ""}


def install(site: Path, module: str, source: str, entries: dict[str, str]) -> None:
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[robx]\n" + "".join(f"{k} = {module}{':' + v if v else ''}\n" for k, v in entries.items()))


def prepare(setup: str, case: Path, finished: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """Make the case's directory; returns a process holding the run's lock for "held"."""
    from robx.core.rundir import load_checkpoint, save_checkpoint

    def run_copy() -> Path:
        return Path(shutil.copytree(finished, case / "run"))

    kind, _, detail = setup.partition(":")
    if kind in ("run", "held", "run-mlp", "run-shape", "run-nockpt", "run-badconfig", "run-pickle", "link"):
        run = run_copy()
        if kind == "run-mlp":
            config = json.loads((run / "config.json").read_text())
            config["config"]["model"] = "mlp"
            (run / "config.json").write_text(json.dumps(config))
        elif kind == "run-shape":
            payload = load_checkpoint(run / "checkpoint.pt")
            key = next(k for k, v in payload["model"].items() if v.dim() == 4)
            payload["model"][key] = torch.zeros(3, *payload["model"][key].shape[1:])
            save_checkpoint(run / "checkpoint.pt", payload)
        elif kind == "run-nockpt":
            (run / "checkpoint.pt").unlink()
        elif kind == "run-badconfig":
            (run / "config.json").write_text('{"config": {"epochs": "many"}}')
        elif kind == "run-pickle":
            import pickle

            class Payload:
                def __reduce__(self):
                    return (os.system, (f"touch {case / 'pwned'}",))
            (run / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
        elif kind == "link":
            (case / "outside.txt").write_text("not robx's\n")
            (run / detail).unlink(missing_ok=True)
            (run / detail).symlink_to(case / "outside.txt")
        elif kind == "held":
            holder = subprocess.Popen([sys.executable, "-c", "import time; from robx.core.rundir import RunDirLock\n"
                                       f"with RunDirLock({str(run)!r}, 'train'):\n"
                                       "    print('held', flush=True); time.sleep(300)"],
                                      stdout=subprocess.PIPE, text=True, env=env)
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            return holder
    files = {"notutf8": ("bad.toml", b"epochs = 1\n# \xff\xfe\n"), "badtoml": ("bad.toml", b"epochs = = 1\n"),
             "unknownkey": ("bad.toml", b"epoch = 1\n"), "afile": ("afile", b"x"),
             "notrep": ("notrep.json", b'{"a": 1}'), "notrep2": ("notrep.json", NOT_A_REPORT.encode()),
             "notjson": ("notrep.json", b"{not json"), "listjson": ("notrep.json", b"[1, 2]"),
             "adir": ("adir/x", b""), "foreign": ("out/report.json", b'{"mine": 1}\n')}
    if kind in files:
        name, content = files[kind]
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(content)
    if kind == "own-out":
        subprocess.run(ROBX + ["oversample", "--method", "random", "--classifiers", "linearsvc", "--out", "out"],
                       cwd=case, env=env, capture_output=True, check=True)
    if kind == "cifar":
        folder = case / "data" / "cifar10"
        folder.mkdir(parents=True)
        x, y = np.zeros((20, 32, 32, 3), np.uint8), np.arange(20) % 10
        np.savez(folder / "test.npz", x=x, y=y)
        train = {"object": dict(x=np.array([object()] * 20, dtype=object), y=y), "missing": dict(x=x),
                 "truncated": dict(x=x, y=y), "shape": dict(x=np.zeros((20, 3, 32, 32), np.uint8), y=y)}[detail]
        np.savez(folder / "train.npz", **train)
        if detail == "truncated":
            data = (folder / "train.npz").read_bytes()
            (folder / "train.npz").write_bytes(data[:len(data) // 2])
        env["ROBX_DATA"] = str(case / "data")
    if kind == "npz":
        own_npz(case / "data.npz", detail)
    if kind == "bigtoml":
        (case / "big.toml").write_text("epochs = 1e20\n")
    if kind in ("folder", "folder-run"):  # robx's decoded-image cache: outside the user's files the case compares
        env["XDG_CACHE_HOME"] = str(case.parent / f"cache-{case.name}")
        own_folder(case, detail or "plain", env)
    if kind == "folder-run":
        from robx.core.config import TrainConfig
        from robx.core.engine import train

        os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
        train(TrainConfig(dataset=f"folder:{case / 'imgs'}", epochs=1, steps=1, eval_steps=1, batch_size=8),
              case / "run")
        from PIL import Image

        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(case / "imgs" / "b" / "extra.png")
    if kind == "npz-run":
        from robx.core.config import TrainConfig
        from robx.core.engine import train

        own_npz(case / "data.npz", "plain")
        train(TrainConfig(dataset=f"npz:{case / 'data.npz'}", epochs=1, steps=1, eval_steps=1, batch_size=4),
              case / "run")
        own_npz(case / "data.npz", "other")
    if kind == "weights":
        own_weights(case, detail, finished)
    if kind == "misbehaving":
        site = case.parent / f"site-{case.name}"
        install(site, "robx_misbehaving", MISBEHAVING, MISBEHAVING_ENTRIES)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    if kind in ("logits-model", "twin-plugins"):
        site = case.parent / f"site-{case.name}"
        if kind == "logits-model":
            install(site, "robx_logits", LOGITS_MODEL, {"logits": ""})
        else:
            install(site, "robx_pairs", TWIN_PLUGINS, {"alp": "AdversarialLogitPairing",
                                                        "logit-pairing": "AdversarialLogitPairing", "broken": ""})
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return None


def own_npz(path: Path, kind: str) -> None:
    """An npz of 8x8 grey images, 3 classes (12 training, 6 test examples), broken as ``kind`` says."""
    rng = np.random.default_rng(1 if kind == "other" else 0)
    y_train, y_test = np.array([0, 1, 2] * 4), np.array([0, 1, 2] * 2)
    arrays = {"x_train": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
              "x_test": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)}
    if kind == "biglabel":
        y_train[-1] = 10**9
    elif kind == "uint64":
        y_train = y_train.astype(np.uint64)
        y_train[-1] = 2**64 - 1
    elif kind == "gaps":
        y_train, y_test = y_train * 2, y_test * 2
    elif kind == "fewnames":
        arrays["class_names"] = np.array(["a", "b"])
    elif kind == "emptytrain":
        arrays["x_train"], y_train = arrays["x_train"][:0], y_train[:0]
    elif kind == "emptytest":
        arrays["x_test"], y_test = arrays["x_test"][:0], y_test[:0]
    elif kind == "oneclass":
        y_train, y_test = y_train * 0, y_test * 0
    elif kind == "notrainclass":
        y_train = y_train % 2
    elif kind == "overflow":
        arrays["x_train"] = np.full((12, 4), 1e300)
        arrays["x_test"] = np.zeros((6, 4))
    elif kind == "nan":
        arrays["x_train"] = np.full((12, 4), np.nan, np.float32)
        arrays["x_test"] = np.zeros((6, 4), np.float32)
    elif kind == "untested":
        y_test = y_test % 2
    np.savez(path, y_train=y_train, y_test=y_test, **arrays)


def own_folder(case: Path, kind: str, env: dict[str, str]) -> None:
    """An image folder (two classes of six 8x8 RGB images), changed as ``kind`` says."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = case / "imgs"
    size = 32 if kind == "rgb32" else 8
    for name in ("a",) if kind == "oneclass" else ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    if kind == "bomb":
        Image.new("1", (10000, 9000)).save(root / "a" / "huge.png")
    elif kind == "hugebomb":
        Image.new("1", (20000, 10000)).save(root / "a" / "huge.png")
    elif kind == "16bit":
        for name in ("a", "b"):
            for i in range(6):
                Image.fromarray((rng.integers(0, 65536, (8, 8))).astype(np.uint16)).save(root / name / f"{i}.png")
    elif kind == "palette-rgba":
        Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(root / "a" / "0.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P").save(root / "b" / "0.png")
    elif kind == "single-image-class":
        (root / "rare").mkdir()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "rare" / "0.png")
    elif kind == "junk":
        (root / "..a").mkdir()
        (root / "a" / "notes.txt").write_text("not an image")
        (root / "a" / "gone.png").symlink_to(case / "nowhere.png")
        (case / "outside.png").write_bytes((root / "b" / "0.png").read_bytes())
        (root / "b" / "out.png").symlink_to(case / "outside.png")
    elif kind == "xdg-file":
        (case / "cachefile").write_text("a file, not a directory")
        env["XDG_CACHE_HOME"] = str(case / "cachefile")
    elif kind == "xdg-proc":
        env["XDG_CACHE_HOME"] = "/proc/robx-cache"
    elif kind.startswith("cache-"):
        decode = [sys.executable, "-c", f"from robx.core.registry import registry\n"
                  f"registry().dataset('folder:{root}').read(None, 0, {{}})"]
        subprocess.run(decode, env=env, check=True, capture_output=True)
        (cache,) = (Path(env["XDG_CACHE_HOME"]) / "robx" / "folders").iterdir()
        if kind == "cache-empty":
            cache.write_bytes(b"")
        elif kind == "cache-truncated":
            cache.write_bytes(cache.read_bytes()[:100])
        else:
            np.save(cache, np.zeros((3, 1, 2, 2), np.uint8))


def own_weights(case: Path, kind: str, finished: Path) -> None:
    from robx.core.rundir import load_checkpoint

    if kind in ("empty", "garbage", "header"):
        content = {"empty": b"", "garbage": b"garbage, not a safetensors file",
                   "header": (2**40).to_bytes(8, "little") + b"{}"}[kind]
        (case / "w.safetensors").write_bytes(content)
        return
    model = load_checkpoint(finished / "checkpoint.pt")["model"]
    key = next(k for k, v in model.items() if v.dim() == 4)
    model[key] = {"nan": torch.full_like(model[key], float("nan")), "int64": model[key].long(),
                  "bool": model[key].bool()}[kind]
    torch.save(model, case / "w.pt")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else
                                       p.read_bytes().hex() if p.is_file() else "<dir>")
            for p in sorted(root.rglob("*"))}


def run_case(index: int, setup: str, args: list[str], expected: str, finished: Path, work: Path) -> dict:
    case = work / f"case{index:03d}"
    case.mkdir()
    env = dict(os.environ, MPLBACKEND="Agg")
    holder = prepare(setup, case, finished, env)
    try:
        before = snapshot(case)
        started = time.perf_counter()
        if expected.startswith("signal:"):
            result = interrupted(args, case, env, getattr(signal, expected.partition(":")[2]))
        else:
            result = subprocess.run(ROBX + args, cwd=case, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("robx: error:")]
    traceback = "Traceback" in result.stderr
    unchanged = snapshot(case) == before
    one_line = len(errors) == 1 and lines[-1] == errors[0] and not traceback \
        and all(line.startswith("robx: ") for line in lines)
    outcome = {"setup": setup, "args": args, "expected": expected, "exit": result.returncode,
               "stderr": result.stderr.strip()[-600:], "traceback": traceback, "unchanged": unchanged}
    if expected == "refuse":  # bad input: exit 2, one line, nothing changed
        clean = result.returncode == 2 and one_line and unchanged
    elif expected == "fail":  # an installed plugin's failure: exit 1, one line naming the plugin
        clean = result.returncode == 1 and one_line and "plugin " in errors[0]
    elif expected.startswith("exit:"):
        clean = result.returncode == int(expected.partition(":")[2]) and not traceback
    elif expected.startswith("signal:"):
        number = getattr(signal, expected.partition(":")[2])
        said = bool(lines) and lines[-1].startswith(f"robx: interrupted by {expected.partition(':')[2]}; ")
        from robx.core.rundir import is_held

        released = not any(is_held(lock.parent) for lock in case.rglob(".robx.lock"))
        resumed = True
        if args[0] == "train" and "continue with robx train --resume" in result.stderr:
            again = subprocess.run(ROBX + ["train", "--resume", "r"], cwd=case, env=env, capture_output=True,
                                   text=True, timeout=600)
            resumed = again.returncode == 0 and (case / "r" / "report.json").is_file()
        elif args[0] != "train":
            resumed = unchanged  # nothing written, nothing half written
        clean = result.returncode == 128 + number and said and not traceback and released and resumed
        outcome.update(released=released, resumed=resumed)
    else:
        clean = result.returncode == 0 and not traceback
    return {**outcome, "seconds": round(seconds, 1), "clean": clean}


def interrupted(args: list[str], case: Path, env: dict[str, str], number: int) -> subprocess.CompletedProcess:
    """Run ``robx ARGS`` and send it ``number`` mid-work: after its first epoch (train), else
    after 6 s (imports done, the work under way)."""
    job = subprocess.Popen(ROBX + args, cwd=case, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + (240 if args[0] == "train" else 6)
    metrics = case / "r" / "metrics.jsonl"
    while time.monotonic() < deadline and job.poll() is None:
        if args[0] == "train" and metrics.exists() and metrics.read_text():
            break
        time.sleep(0.05)
    if job.poll() is None:
        job.send_signal(number)
    out, err = job.communicate(timeout=300)
    return subprocess.CompletedProcess(args, job.returncode, out, err)


GUARD = """
import resource, sys, time
from robx.core.errors import DataError
from robx.core.registry import registry
spec = registry().dataset("npz:" + sys.argv[1])
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    spec.read(None, 0, {})
except DataError as error:
    print(time.perf_counter() - started, imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, error)
"""


def memory_guard(work: Path) -> dict:
    """An npz with one label of 1e9: the refusal's own time and memory (peak resident set
    before and after it, in a fresh process; the imports before it are torch's)."""
    own_npz(work / "biglabel.npz", "biglabel")
    done = subprocess.run([sys.executable, "-c", GUARD, str(work / "biglabel.npz")], capture_output=True, text=True,
                          timeout=300, check=True)
    seconds, imported, peak, message = done.stdout.strip().split(" ", 3)
    return {"refusal_seconds": round(float(seconds), 4), "peak_rss_mib_after_imports": int(imported) // 1024,
            "peak_rss_mib_after_refusal": int(peak) // 1024, "message": message}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="run the cases whose command line holds this")
    options = parser.parse_args()
    from robx.core.config import TrainConfig
    from robx.core.engine import train

    chosen = [(i, *case) for i, case in enumerate(CASES) if not options.only or options.only in " ".join(case[1])]
    with tempfile.TemporaryDirectory(prefix="robx-reliability-") as scratch:
        work = Path(scratch)
        finished = work / "finished-run"
        train(TrainConfig(dataset="digits", epochs=1, steps=1, eval_steps=1, n_eval=50), finished)
        with ThreadPoolExecutor(options.jobs) as pool:
            outcomes = list(pool.map(lambda case: run_case(*case, finished, work), chosen))
        guard = memory_guard(work)
    print(f"a label of 1e9 refused in {guard['refusal_seconds']:.4f} s; peak resident memory "
          f"{guard['peak_rss_mib_after_imports']} MiB after the imports, {guard['peak_rss_mib_after_refusal']} MiB after")
    for outcome in outcomes:
        if not outcome["clean"]:
            print(f"NOT CLEAN: robx {' '.join(outcome['args'])} ({outcome['setup']}): exit {outcome['exit']}, "
                  f"unchanged {outcome['unchanged']}\n  {outcome['stderr'][-300:]}")
    clean = sum(o["clean"] for o in outcomes)
    print(f"{clean} of {len(outcomes)} cases clean")
    if not options.only:
        path = write_result(RESULTS / "reliability" / "cpu.json",
                            {"cases": len(outcomes), "clean": clean, "memory_guard": guard, "outcomes": outcomes})
        print(f"written: {path}")


if __name__ == "__main__":
    main()
