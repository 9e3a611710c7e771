"""End to end beside the authors' DAFA code: TRADES (and TRADES + DAFA) trained by the
authors' loss functions and by robx on the same data, model, schedule and seeds, both scored
per class by one PGD-20 evaluator written outside both (torchattacks' PGD).

    python benchmarks/parity/dafa_e2e.py --reference PATH/TO/DAFA [--method trades|dafa]
        [--side authors robx] [--seeds 0 1 2 3] [--epochs 10] [--set KEY=VALUE ...]

PATH/TO/DAFA is a checkout of github.com/rucy74/DAFA (its commit is recorded). Its files
are imported unmodified; its ``.cuda()`` calls are made no-ops on a machine without CUDA
(the only patch). The protocol (the one an outside check used):

* data: the 2000-image balanced CIFAR-10 subset robx builds with ``--imbalance none --n-max
  200 --n-test-per-class 100 --data-seed 0`` (200 training and 100 test images per class),
  handed to the authors' side as PIL images through their own transforms (RandomCrop 32,
  padding 4; RandomHorizontalFlip; ToTensor);
* model: robx's ``cnn4`` (its input normalisation included) on both sides;
* TRADES beta 6, PGD-5 at eps 8/255, step 2/255; 10 epochs, SGD lr 0.1, momentum 0.9,
  Nesterov, weight decay 5e-4, batch 128, the rate x0.1 after 70, 80 and 90 % of the epochs;
  DAFA: lam 1, warm-up 70/110 of the epochs;
* evaluation: torchattacks PGD-20 (eps 8/255, step 2/255, random start) on the 1000 test
  images, model in eval mode, seeded.

Each run writes ``benchmarks/results/parity/dafa-e2e/<side>-<method>[-variant]-seed<k>.json``
and is skipped when that file exists (resumable); ``--table`` prints the per-class table.
``--set KEY=VALUE`` changes robx's config for a variant (``--variant NAME`` names it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.meta import RESULTS, write_result  # noqa: E402

OUT = RESULTS / "parity" / "dafa-e2e"
EPS, ALPHA, STEPS, BETA = 8 / 255, 2 / 255, 5, 6.0
MILESTONES = (0.7, 0.8, 0.9)
DAFA_WARMUP = 70 / 110


def protocol_config(method: str, seed: int, epochs: int, overrides: dict[str, Any]) -> Any:
    from robx.core.config import TrainConfig

    values: dict[str, Any] = dict(
        dataset="cifar10", imbalance="none", n_max=200, n_test_per_class=100, data_seed=0, model="cnn4",
        plugins=["trades"] + (["dafa"] if method == "dafa" else []), epochs=epochs, batch_size=128, lr=0.1,
        momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step", milestones=list(MILESTONES), gamma=0.1,
        eps=EPS, alpha=ALPHA, steps=STEPS, eval_steps=20, augment=True, seed=seed,
        plugin_options={"trades": {"beta": BETA}, **({"dafa": {"lam": 1.0, "warmup": DAFA_WARMUP}}
                                                    if method == "dafa" else {})})
    values.update(overrides)
    return TrainConfig(**values)


def subset_and_model(config: Any) -> tuple[Any, torch.nn.Module]:
    """robx's subset (TaskData after the protocol) and a fresh cnn4 for it."""
    from robx.core.data import apply_protocol
    from robx.core.registry import registry, resolved_config
    from robx.core.task import ModelInput

    resolved = resolved_config(config)
    found = registry()
    data = found.dataset(resolved.dataset).read(resolved.data_root, resolved.data_seed, resolved.dataset_options)
    data = apply_protocol(data, resolved.imbalance, resolved.ratio, resolved.n_max, resolved.n_test_per_class,
                          resolved.val_fraction, resolved.data_seed, per_target=False)
    spec = ModelInput(shape=tuple(data.train.x.shape[1:]), outputs=data.num_classes, mean=data.mean, std=data.std)
    return data, found.build_model("cnn4", spec)


class Logits(torch.nn.Module):
    """robx's model as ``x -> logits`` (the authors' code and torchattacks call it so)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]


def authors_run(reference: Path, method: str, seed: int, epochs: int,
                hybrid: str = "") -> tuple[torch.nn.Module, list[float] | None]:
    """The authors' training loop (train.py's, with their trades_loss and calculate_class_weights
    called as they are) on robx's subset and model. ``hybrid`` swaps one part for robx's, to
    find which part makes a difference: ``augment`` (robx's batch crop and flip instead of
    the torchvision transforms)."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sys.path.insert(0, str(reference))
    losses = importlib.import_module("losses")
    utils = importlib.import_module("utils")
    datasets = importlib.import_module("datasets")
    transform = datasets.get_transform("cifar10", train=True)

    config = protocol_config(method, seed, epochs, {})
    torch.manual_seed(seed)  # as train.py: before the model and the loader
    data, model = subset_and_model(config)
    images = data.train.x.permute(0, 2, 3, 1).numpy()  # uint8 HWC, as torchvision's CIFAR10.data
    labels = data.train.y.numpy()

    class Subset(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> Any:
            if hybrid == "augment":  # robx crops and flips the batch below
                return (torch.from_numpy(images[index]).permute(2, 0, 1).float() / 255, int(labels[index])), index
            return (transform(Image.fromarray(images[index])), int(labels[index])), index

    loader = DataLoader(Subset(), batch_size=128, shuffle=True)
    model = Logits(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    args = SimpleNamespace(pgd_step_size=ALPHA, pgd_num_steps=STEPS, epsilon=EPS, beta=BETA, n_class=10)
    class_weights = torch.ones(10)
    warmup = max(1, round(DAFA_WARMUP * epochs))
    for epoch in range(1, epochs + 1):
        lr = 0.1 * 0.1 ** sum(epoch - 1 >= round(m * epochs) for m in MILESTONES)
        for group in optimizer.param_groups:
            group["lr"] = lr
        memory = ({"probs": np.zeros((len(labels), 10)), "labels": np.zeros(len(labels))}
                  if method == "dafa" and epoch == warmup else None)
        model.train()
        for (x, y), indices in loader:
            if hybrid == "augment":
                from robx.plugins.tasks.classification import crop_flip

                x = crop_flip(x)
            model.train()
            optimizer.zero_grad()
            loss, _ = losses.trades_loss(model=model, x_natural=x, y=y, optimizer=optimizer, args=args,
                                         class_weights=class_weights, batch_indices=indices, memory_dict=memory)
            model.train()
            loss.backward()
            optimizer.step()
        if memory is not None:
            class_weights = torch.as_tensor(utils.calculate_class_weights(memory, 1.0), dtype=torch.float32)
    return model.model, class_weights.tolist() if method == "dafa" else None


def robx_run(method: str, seed: int, epochs: int, overrides: dict[str, Any],
             scratch: Path) -> tuple[torch.nn.Module, list[float] | None]:
    from robx.core.engine import load_run, train
    from robx.core.rundir import load_checkpoint

    run_dir = scratch / f"robx-{method}-{seed}-{time.time_ns()}"
    # robx's own end-of-run evaluation is cut to a token one: the evaluator below scores the model
    train(protocol_config(method, seed, epochs, {"eval_steps": 1, "n_eval": 10, **overrides}), run_dir)
    weights = load_checkpoint(run_dir / "checkpoint.pt")["plugins"].get("dafa", {}).get("weights")
    return load_run(run_dir).state.model, None if weights is None else weights.tolist()


def per_class_scores(model: torch.nn.Module, data: Any, seed: int) -> dict[str, Any]:
    """Standard and PGD-20 accuracy per class on the test subset (torchattacks' PGD)."""
    import torchattacks

    logits = Logits(model).eval()
    x = data.test.x.float() / 255
    y = data.test.y
    torch.manual_seed(1000 + seed)
    attack = torchattacks.PGD(logits, eps=EPS, alpha=ALPHA, steps=20, random_start=True)
    clean, robust = [], []
    for start in range(0, len(y), 250):
        xb, yb = x[start:start + 250], y[start:start + 250]
        with torch.no_grad():
            clean.append(logits(xb).argmax(1) == yb)
        adversarial = attack(xb, yb)
        with torch.no_grad():
            robust.append(logits(adversarial).argmax(1) == yb)
    correct = {"standard": torch.cat(clean).float(), "robust": torch.cat(robust).float()}
    return {kind: [float(values[y == c].mean()) for c in range(data.num_classes)] for kind, values in correct.items()}


def reference_commit(reference: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(method: str, variant: str, out: Path = OUT) -> str:
    """Mean +- std over seeds: overall standard / robust, and per class, both sides."""
    rows = []
    sides = {}
    for path in sorted(out.glob(f"*-{method}{'-' + variant if variant else ''}-seed*.json")):
        result = json.loads(path.read_text())
        sides.setdefault(result["side"], []).append(result)
    names = None
    for side, results in sorted(sides.items()):
        names = results[0]["class_names"]
        line = [f"{side} ({len(results)} seeds)"]
        for kind in ("standard", "robust"):
            overall = [float(np.mean(r[kind])) for r in results]
            line.append(f"{np.mean(overall):.3f} ± {np.std(overall, ddof=1) if len(overall) > 1 else 0:.3f}")
        for c in range(len(names)):
            values = [r["robust"][c] for r in results]
            std_values = [r["standard"][c] for r in results]
            line.append(f"{np.mean(std_values):.2f} / {np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}")
        rows.append("| " + " | ".join(line) + " |")
    if names is None:
        return "no results"
    if {"authors", "robx"} <= set(sides):
        rows.append(difference_row(sides["authors"], sides["robx"], len(names)))
    header = "| side | std overall | robust overall | " + " | ".join(f"{n} std / rob" for n in names) + " |"
    return "\n".join([header, "|" + "---|" * (3 + len(names)), *rows])


def welch_t(a: list[float], b: list[float]) -> float:
    """Welch's t of mean(b) - mean(a) (nan with fewer than two runs a side or no spread)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    spread = (np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)) ** 0.5
    return float((np.mean(b) - np.mean(a)) / spread) if spread > 0 else float("nan")


def difference_row(authors: list[dict], robx: list[dict], classes: int) -> str:
    """robx - authors: overall standard and robust, and per class standard / robust, with
    Welch's t of each difference over the seeds."""
    cells = ["robx − authors (Welch t)"]
    for kind in ("standard", "robust"):
        a, b = [float(np.mean(r[kind])) for r in authors], [float(np.mean(r[kind])) for r in robx]
        cells.append(f"{np.mean(b) - np.mean(a):+.3f} (t {welch_t(a, b):+.1f})")
    for c in range(classes):
        parts = []
        for kind in ("standard", "robust"):
            a, b = [r[kind][c] for r in authors], [r[kind][c] for r in robx]
            parts.append(f"{np.mean(b) - np.mean(a):+.2f} ({welch_t(a, b):+.1f})")
        cells.append(" / ".join(parts))
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of rucy74/DAFA")
    parser.add_argument("--method", choices=("trades", "dafa"), default="trades")
    parser.add_argument("--side", nargs="+", choices=("authors", "robx"), default=["authors", "robx"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="robx config KEY=VALUE (a variant)")
    parser.add_argument("--variant", default="", help="the name of a robx variant's results")
    parser.add_argument("--hybrid", default="", choices=("", "augment"),
                        help="the authors' side with one part of robx's (named in the results)")
    parser.add_argument("--table", action="store_true", help="print the per-class table of the results")
    options = parser.parse_args()
    if options.table:
        print(table(options.method, options.variant))
        return
    torch.set_num_threads(2)
    overrides = {}
    for item in options.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    import tempfile

    commit = reference_commit(options.reference) if options.reference else None
    with tempfile.TemporaryDirectory() as scratch:
        for seed in options.seeds:
            for side in options.side:
                tag = options.variant if side == "robx" else (f"hybrid-{options.hybrid}" if options.hybrid else "")
                name = f"{side}-{options.method}{'-' + tag if tag else ''}"
                path = OUT / f"{name}-seed{seed}.json"
                if path.exists():
                    continue
                started = time.perf_counter()
                if side == "authors":
                    assert options.reference is not None, "--reference PATH is needed for the authors' side"
                    model, weights = authors_run(options.reference, options.method, seed, options.epochs,
                                                 options.hybrid)
                else:
                    model, weights = robx_run(options.method, seed, options.epochs, overrides, Path(scratch))
                seconds = time.perf_counter() - started
                data, _ = subset_and_model(protocol_config(options.method, seed, options.epochs, {}))
                scores = per_class_scores(model, data, seed)
                write_result(path, {"side": side, "method": options.method, "variant": tag, "seed": seed,
                                    "epochs": options.epochs, "overrides": overrides if side == "robx" else {},
                                    "reference": {"repository": "rucy74/DAFA", "commit": commit},
                                    "class_names": data.classes, "train_seconds": round(seconds, 1),
                                    **({"dafa_class_weights": [round(w, 4) for w in weights]} if weights else {}),
                                    **scores})
                print(f"{name} seed {seed}: std {np.mean(scores['standard']):.3f} robust "
                      f"{np.mean(scores['robust']):.3f} ship {scores['standard'][8]:.2f}/{scores['robust'][8]:.2f} "
                      f"({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
