"""End to end beside the authors' CFA code: TRADES + CCM + CCR trained by the authors'
train.py and by robx on the same data, model, schedule and seeds, both scored per class by
the PGD-20 evaluator of ``dafa_e2e.py`` (torchattacks' PGD, written outside both).

    python benchmarks/parity/cfa_e2e.py --reference PATH/TO/CFA [--side authors robx] [--seeds 0 1 2]
    python benchmarks/parity/cfa_e2e.py --table

PATH/TO/CFA is a checkout of github.com/PKU-ML/CFA (its commit is recorded). Its train.py
runs as its own ``__main__`` (``runpy``), with ``--mode TRADES --ccm --ccr``, in a scratch
folder (it writes models/ and logs/ there). What is replaced, before it runs: ``utils.dev``
(the device: the CPU), ``utils.load_valid_dataset`` (the data below, as loaders: training
images through the authors' own train transform, RandomCrop 32 with reflect padding 4 and
horizontal flip, from generate_validation.py), ``model.PreActResNet18`` (robx's ``cnn4``)
and ``utils.normalize_cifar`` (the identity: cnn4 normalises its inputs itself). The model
the comparison scores is train.py's ``model``, the last iterate; FAWA is compared step by
step (benchmarks/parity/steps.py), not here: with 10 epochs of a small CNN no epoch's
worst validation class reaches its gate (0.24), so the authors' FAWA model would stay at
its initialisation.

Protocol: the balanced 2000-image CIFAR-10 subset of ``dafa_e2e.py`` (200 training and 100
test images per class); cnn4; TRADES beta 6, PGD-5 at eps 8/255, step 2/255; 10 epochs,
SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, the rate /10 at 50 % and /100 at
75 % of the epochs (train.py's ``lr_schedule``); CCM and CCR (lambda 0.5 each) from epoch 2,
calibrated by the previous epoch's training robust accuracy per class (``--begin 2``; the
paper begins at 10 of 200). robx: ``--plugins trades,cfa --set cfa.start_epoch=2 --set
cfa.fawa=false --crop-padding reflect`` (the authors' crop pads by reflection).

Each run writes ``benchmarks/results/parity/cfa-e2e/<side>-cfa-seed<k>.json`` and is
skipped when that file exists (resumable).
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from benchmarks.parity.dafa_e2e import (ALPHA, BETA, EPS, STEPS, Logits, per_class_scores,  # noqa: E402
                                        reference_commit, subset_and_model, table)

OUT = RESULTS / "parity" / "cfa-e2e"
EPOCHS, BEGIN = 10, 2


def protocol_config(seed: int, overrides: dict[str, Any]) -> Any:
    from robx.core.config import TrainConfig

    values: dict[str, Any] = dict(
        dataset="cifar10", imbalance="none", n_max=200, n_test_per_class=100, data_seed=0, model="cnn4",
        plugins=["trades", "cfa"], epochs=EPOCHS, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
        weight_decay=5e-4, schedule="step", milestones=[0.5, 0.75], gamma=0.1, eps=EPS, alpha=ALPHA, steps=STEPS,
        eval_steps=20, augment=True, crop_padding="reflect", seed=seed,
        plugin_options={"trades": {"beta": BETA}, "cfa": {"start_epoch": BEGIN, "fawa": False, "beta": BETA}})
    values.update(overrides)
    return TrainConfig(**values)


Trace = dict[str, list[list[float]]]


def authors_run(reference: Path, seed: int, padding: str = "reflect") -> tuple[torch.nn.Module, Trace]:
    """train.py as ``__main__`` on robx's subset and model (the replacements in the module
    docstring). ``padding``: the random crop's padding mode; ``"constant"`` (zeros, robx's)
    is a hybrid that isolates the augmentation's part in a difference. Also returns train.py's
    per-epoch training accuracies per class (its ``cw_tensor``: clean after the step, robust
    on the step's x' in train mode, the numbers its calibration reads)."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    config = protocol_config(seed, {})
    torch.manual_seed(seed)
    data, _ = subset_and_model(config)
    images = data.train.x.permute(0, 2, 3, 1).numpy()
    labels = data.train.y.numpy()
    train_transform = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode=padding),
                                          transforms.RandomHorizontalFlip(), transforms.ToTensor()])

    class Train(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> Any:
            from PIL import Image

            return train_transform(Image.fromarray(images[index])), int(labels[index])

    # train.py's own evaluations each epoch (test, validation, EMA, FAWA): on 100 test images
    # each, to save time; the evaluator below scores the final model on all 1000
    held_out = torch.utils.data.TensorDataset(data.test.x[:100].float() / 255, data.test.y[:100])

    def load_valid_dataset(dataset: str = "cifar10", batch_size: int = 128) -> tuple[Any, Any, Any]:
        return (DataLoader(Train(), batch_size=128, shuffle=True), DataLoader(held_out, batch_size=128),
                DataLoader(held_out, batch_size=128))

    def build() -> torch.nn.Module:
        _, model = subset_and_model(config)
        return Logits(model)

    sys.path.insert(0, str(reference))
    for name in ("utils", "model", "attack"):
        sys.modules.pop(name, None)
    try:
        utils = importlib.import_module("utils")
        utils.dev = lambda _id: "cpu"
        utils.load_valid_dataset = load_valid_dataset
        utils.normalize_cifar = lambda x: x
        importlib.import_module("model").PreActResNet18 = build
        previous, argv = os.getcwd(), sys.argv
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)
            sys.argv = ["train.py", "--mode", "TRADES", "--ccm", "--ccr", "--epochs", str(EPOCHS), "--begin",
                        str(BEGIN), "--attack-iters", str(STEPS), "--beta", str(int(BETA))]
            torch.manual_seed(seed)  # before the model, as a seeded run of train.py would be
            try:
                finished = runpy.run_path(str(reference / "train.py"), run_name="__main__")
            finally:
                os.chdir(previous)
                sys.argv = argv
    finally:
        sys.path.remove(str(reference))
    cw_tensor = finished["cw_tensor"]  # epochs x (train clean, train robust, valid..., test...) x classes
    return finished["model"].model, {"train_clean": cw_tensor[:, 0].tolist(), "train_robust": cw_tensor[:, 1].tolist()}


class CleanBatchNormPasses:
    """A diagnostic plugin (``--variant authors-bn``): after each step, two no-grad
    train-mode passes over the clean batch, so that BatchNorm's running statistics take the
    clean batch three times per step, as in the authors' loop (cw_trades_loss passes x twice,
    train_epoch once more after the step to log clean accuracy). Nothing else changes."""

    name = "authors-bn"

    def after_step(self, step: Any, state: Any) -> None:
        with torch.no_grad():
            state.model.train()
            for _ in range(2):
                state.model(step.x)


def robx_run(seed: int, scratch: Path, variant: str = "") -> tuple[torch.nn.Module, Trace]:
    """robx train on the protocol; also returns its per-epoch training accuracies per class
    (metrics.jsonl, the statistics CFA's calibration reads)."""
    import json

    from unittest import mock

    from robx import hookimpl
    from robx.core import discovery as plugin_module
    from robx.core.engine import load_run, train
    from robx.core.discovery import PluginSpec, available_plugins

    run_dir = scratch / f"robx-cfa-{seed}-{time.time_ns()}"
    overrides: dict[str, Any] = {"eval_steps": 1, "n_eval": 10}
    if variant in ("authors-bn", "zero-padding"):  # the runs before robx had the reflect crop
        overrides["crop_padding"] = "zeros"
    extra = {}
    if variant in ("authors-bn", "authors-bn-reflect"):
        plugin = type("CleanBatchNormPasses", (CleanBatchNormPasses,),
                      {"after_step": hookimpl(CleanBatchNormPasses.after_step)})
        extra = {"authors-bn": PluginSpec("authors-bn", "benchmark", plugin)}
        overrides["plugins"] = ["trades", "cfa", "authors-bn"]
    found = {**available_plugins(), **extra}
    with mock.patch.object(plugin_module, "available_plugins", lambda: found):
        train(protocol_config(seed, overrides), run_dir)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [record for record in epochs if "train" in record]
    trace = {"train_clean": [record["train"]["clean"] for record in epochs],
             "train_robust": [record["train"]["robust"] for record in epochs],
             "train_counts": [record["train"]["counts"] for record in epochs]}
    return load_run(run_dir).state.model, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of PKU-ML/CFA")
    parser.add_argument("--side", nargs="+", choices=("authors", "robx"), default=["authors", "robx"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--table", action="store_true", help="print the per-class table of the results")
    parser.add_argument("--variant", default="", choices=("", "authors-bn", "authors-bn-reflect", "zero-padding"),
                        help="robx's side with a diagnostic change (named in the results)")
    parser.add_argument("--hybrid", default="", choices=("", "zero-padding"),
                        help="the authors' side with robx's zero padding in the crop (named in the results)")
    options = parser.parse_args()
    if options.table:
        print(table("cfa", options.hybrid or options.variant, OUT))
        return
    torch.set_num_threads(2)
    commit = reference_commit(options.reference) if options.reference else None
    with tempfile.TemporaryDirectory() as scratch:
        for seed in options.seeds:
            for side in options.side:
                tag = (f"-{options.hybrid}" if side == "authors" and options.hybrid else
                       f"-{options.variant}" if side == "robx" and options.variant else "")
                path = OUT / f"{side}-cfa{tag}-seed{seed}.json"
                if path.exists():
                    continue
                started = time.perf_counter()
                if side == "authors":
                    assert options.reference is not None, "--reference PATH is needed for the authors' side"
                    model, trace = authors_run(options.reference, seed, "constant" if options.hybrid else "reflect")
                else:
                    model, trace = robx_run(seed, Path(scratch), options.variant)
                seconds = time.perf_counter() - started
                data, _ = subset_and_model(protocol_config(seed, {}))
                scores = per_class_scores(model, data, seed)
                write_result(path, {"side": side, "method": "cfa", "variant": tag.lstrip("-"), "seed": seed,
                                    "epochs": EPOCHS, "begin": BEGIN,
                                    "reference": {"repository": "PKU-ML/CFA", "commit": commit},
                                    "class_names": data.classes, "train_seconds": round(seconds, 1), **scores,
                                    "per_epoch": trace})
                print(f"{side} cfa seed {seed}: std {np.mean(scores['standard']):.3f} robust "
                      f"{np.mean(scores['robust']):.3f} worst robust {min(scores['robust']):.2f} ({seconds:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
