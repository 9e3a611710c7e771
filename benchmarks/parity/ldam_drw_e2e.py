"""End to end beside the authors' LDAM-DRW code: natural training with the LDAM loss and
deferred re-weighting, by the authors' cifar_train.py and by robx, on the same imbalanced
data, model, schedule and seeds, both scored per class by one evaluator written outside both.

    python benchmarks/parity/ldam_drw_e2e.py --reference PATH/TO/LDAM-DRW [--side authors robx] [--seeds 0 1 2]
    python benchmarks/parity/ldam_drw_e2e.py --table

PATH/TO/LDAM-DRW is a checkout of github.com/kaidic/LDAM-DRW (its commit is recorded). Its
cifar_train.py runs as its own ``__main__`` (``runpy``) with ``--loss_type LDAM
--train_rule DRW --seed K -j 0`` in a scratch folder (it writes its logs and checkpoints
there). What is replaced, before it runs: ``imbalance_cifar.IMBALANCECIFAR10`` and
``torchvision.datasets.CIFAR10`` (the data below, through the authors' own transforms,
their Normalize included), ``models.resnet32`` (robx's ``cnn4`` with the cosine head its
``use_norm`` asks for, without robx's input normalisation, since the authors' transforms
normalise), ``tensorboardX`` (absent here: a writer that drops what it is given), and the
device calls (``.cuda()``, ``torch.cuda.FloatTensor``; benchmarks/parity/steps.py). The
model scored is the authors' last checkpoint (``ckpt.pth.tar``).

Protocol: CIFAR-10, robx's ``--imbalance exp --ratio 100 --n-max 500 --n-test-per-class 100
--data-seed 0`` (500 down to 5 training images per class, 100 test images per class);
cnn4; 200 epochs (the authors': DRW's switch is hard-coded at epoch 160), SGD lr 0.1,
momentum 0.9, weight decay 2e-4, batch 128, linear warm-up over 5 epochs, the rate x0.01
after 160 and again after 180 epochs (adjust_learning_rate); LDAM max margin 0.5, s 30;
DRW beta 0.9999 from epoch 160. robx: ``--plugins natural,drw --loss ldam --warmup-epochs 5
--schedule step --milestones 0.8,0.9 --gamma 0.01 --weight-decay 2e-4`` and its own
augmentation (random crop with zero padding 4 and flip, as the authors' transforms).
Standard accuracy per class (the models are not adversarially trained).

Each run writes ``benchmarks/results/parity/ldam-drw-e2e/<side>-ldam-drw-seed<k>.json`` and
is skipped when that file exists (resumable).
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from benchmarks.parity.dafa_e2e import Logits, reference_commit  # noqa: E402
from benchmarks.parity.steps import on_this_machine  # noqa: E402

OUT = RESULTS / "parity" / "ldam-drw-e2e"
EPOCHS = 200
AUTHORS_MEAN, AUTHORS_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # cifar_train.py's Normalize


def protocol_config(seed: int, overrides: dict[str, Any]) -> Any:
    from robx.core.config import TrainConfig

    values: dict[str, Any] = dict(
        dataset="cifar10", imbalance="exp", ratio=100, n_max=500, n_test_per_class=100, data_seed=0, model="cnn4",
        plugins=["natural", "drw"], loss="ldam", epochs=EPOCHS, batch_size=128, lr=0.1, momentum=0.9,
        nesterov=False, weight_decay=2e-4, schedule="step", milestones=[0.8, 0.9], gamma=0.01, warmup_epochs=5,
        augment=True, seed=seed)
    values.update(overrides)
    return TrainConfig(**values)


def subset(config: Any) -> Any:
    from robx.core.data import apply_protocol
    from robx.core.registry import registry, resolved_config

    resolved = resolved_config(config)
    data = registry().dataset(resolved.dataset).read(resolved.data_root, resolved.data_seed,
                                                     resolved.dataset_options)
    return apply_protocol(data, resolved.imbalance, resolved.ratio, resolved.n_max, resolved.n_test_per_class,
                          resolved.val_fraction, resolved.data_seed, per_target=False)


def cnn4_without_normalisation(num_classes: int = 10, use_norm: bool = False) -> torch.nn.Module:
    """robx's cnn4 as the authors' resnet32 is built: inputs come normalised, the head is
    cosine with ``use_norm``."""
    from robx.core.registry import registry, resolved_config
    from robx.core.task import ModelInput

    spec = ModelInput(shape=(3, 32, 32), outputs=num_classes, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      head="cosine" if use_norm else "linear")
    return Logits(registry().build_model("cnn4", spec))


class Normalised(torch.nn.Module):
    """The authors' trained model as the evaluator calls it: pixels in [0, 1] in, their
    Normalize first, ``(features, logits)`` out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(AUTHORS_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(AUTHORS_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((x - self.mean) / self.std)
        return logits, logits


def authors_run(reference: Path, seed: int) -> torch.nn.Module:
    from PIL import Image
    from torch.utils.data import Dataset

    data = subset(protocol_config(seed, {}))

    def images_of(split: Any) -> np.ndarray:
        return split.x.permute(0, 2, 3, 1).numpy()

    class Imbalanced(Dataset):
        """IMBALANCECIFAR10's interface on robx's subset (its training split)."""

        def __init__(self, *args: Any, train: bool = True, transform: Any = None, **kwargs: Any) -> None:
            split = data.train if train else data.test
            self.images, self.labels, self.transform = images_of(split), split.y.numpy(), transform

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, index: int) -> Any:
            return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])

        def get_cls_num_list(self) -> list[int]:
            return [int((self.labels == c).sum()) for c in range(10)]

    class Test(Imbalanced):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(train=False, transform=kwargs.get("transform"))

    class DroppingWriter:
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        def add_scalar(self, *args: Any, **kwargs: Any) -> None: ...
        def add_scalars(self, *args: Any, **kwargs: Any) -> None: ...
        def add_figure(self, *args: Any, **kwargs: Any) -> None: ...

    tensorboard = types.ModuleType("tensorboardX")
    tensorboard.SummaryWriter = DroppingWriter  # type: ignore[attr-defined]
    sys.path.insert(0, str(reference))
    for name in ("models", "imbalance_cifar", "losses", "utils", "tensorboardX"):
        sys.modules.pop(name, None)
    sys.modules["tensorboardX"] = tensorboard
    previous, argv = os.getcwd(), sys.argv
    try:
        importlib.import_module("imbalance_cifar").IMBALANCECIFAR10 = Imbalanced
        importlib.import_module("models").resnet32 = cnn4_without_normalisation
        with tempfile.TemporaryDirectory() as scratch, on_this_machine(torch.float32), \
                mock.patch("torchvision.datasets.CIFAR10", Test):
            os.chdir(scratch)
            sys.argv = ["cifar_train.py", "--loss_type", "LDAM", "--train_rule", "DRW", "--epochs", str(EPOCHS),
                        "--seed", str(seed), "-j", "0", "--print-freq", "1000"]
            try:
                runpy.run_path(str(reference / "cifar_train.py"), run_name="__main__")
                saved = next(Path(scratch, "checkpoint").glob("*/ckpt.pth.tar"))
                state = torch.load(saved, map_location="cpu", weights_only=False)["state_dict"]
            finally:
                os.chdir(previous)
                sys.argv = argv
    finally:
        sys.path.remove(str(reference))
        sys.modules.pop("tensorboardX", None)
    model = cnn4_without_normalisation(10, use_norm=True)
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return Normalised(model)


def robx_run(seed: int, scratch: Path) -> torch.nn.Module:
    from robx.core.engine import load_run, train

    run_dir = scratch / f"robx-ldam-drw-{seed}-{time.time_ns()}"
    train(protocol_config(seed, {"eval_steps": 1, "n_eval": 10}), run_dir)
    return load_run(run_dir).state.model


def standard_scores(model: torch.nn.Module, data: Any) -> dict[str, list[float]]:
    """Standard accuracy per class on the test subset (model in eval mode)."""
    model.eval()
    x, y = data.test.x.float() / 255, data.test.y
    with torch.no_grad():
        correct = torch.cat([model(x[s:s + 250])[1].argmax(1) == y[s:s + 250] for s in range(0, len(y), 250)])
    per_class = [float(correct[y == c].float().mean()) for c in range(data.num_classes)]
    return {"standard": per_class, "robust": per_class}  # the table's second column repeats the first


def standard_table() -> str:
    """Standard accuracy per class (training count in the header), mean +- std over seeds,
    both sides, and robx minus the authors with Welch's t."""
    import json

    from benchmarks.parity.dafa_e2e import welch_t

    sides: dict[str, list[dict]] = {}
    for path in sorted(OUT.glob("*-ldam-drw-seed*.json")):
        result = json.loads(path.read_text())
        sides.setdefault(result["side"], []).append(result)
    if not sides:
        return "no results"
    first = next(iter(sides.values()))[0]
    names, counts = first["class_names"], first["class_counts"]
    header = ("| side | overall | last 3 classes | "
              + " | ".join(f"{name} ({count})" for name, count in zip(names, counts)) + " |")
    rows = [header, "|" + "---|" * (3 + len(names))]

    def overall(r: dict) -> float:
        return float(np.mean(r["standard"]))

    def tail(r: dict) -> float:
        return float(np.mean(r["standard"][-3:]))

    for side, results in sorted(sides.items()):
        cells = [f"{side} ({len(results)} seeds)"]
        for value in (overall, tail, *[(lambda r, c=c: r["standard"][c]) for c in range(len(names))]):
            values = [value(r) for r in results]
            spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{np.mean(values):.3f} ± {spread:.3f}")
        rows.append("| " + " | ".join(cells) + " |")
    if {"authors", "robx"} <= set(sides):
        cells = ["robx − authors (Welch t)"]
        for value in (overall, tail, *[(lambda r, c=c: r["standard"][c]) for c in range(len(names))]):
            a, b = [value(r) for r in sides["authors"]], [value(r) for r in sides["robx"]]
            cells.append(f"{np.mean(b) - np.mean(a):+.3f} (t {welch_t(a, b):+.1f})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of kaidic/LDAM-DRW")
    parser.add_argument("--side", nargs="+", choices=("authors", "robx"), default=["authors", "robx"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--table", action="store_true", help="print the per-class table of the results")
    options = parser.parse_args()
    if options.table:
        print(standard_table())
        return
    torch.set_num_threads(2)
    commit = reference_commit(options.reference) if options.reference else None
    with tempfile.TemporaryDirectory() as scratch:
        for seed in options.seeds:
            for side in options.side:
                path = OUT / f"{side}-ldam-drw-seed{seed}.json"
                if path.exists():
                    continue
                started = time.perf_counter()
                if side == "authors":
                    assert options.reference is not None, "--reference PATH is needed for the authors' side"
                    model = authors_run(options.reference, seed)
                else:
                    model = robx_run(seed, Path(scratch))
                seconds = time.perf_counter() - started
                data = subset(protocol_config(seed, {}))
                scores = standard_scores(model, data)
                write_result(path, {"side": side, "method": "ldam-drw", "seed": seed, "epochs": EPOCHS,
                                    "reference": {"repository": "kaidic/LDAM-DRW", "commit": commit},
                                    "class_counts": data.class_counts(), "class_names": data.classes,
                                    "train_seconds": round(seconds, 1), **scores})
                print(f"{side} ldam-drw seed {seed}: std {np.mean(scores['standard']):.3f} "
                      f"tail (last 3 classes) {np.mean(scores['standard'][-3:]):.3f} ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
