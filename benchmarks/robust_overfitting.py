"""Robust overfitting at CPU scale, and what ``--keep-best`` keeps (docs/results.md).

Rice, Wong & Kolter (ICML 2020) found that PGD adversarial training's robust test accuracy
peaks soon after the first learning-rate decay and then falls while the training robust
accuracy keeps rising. This trains PGD-AT on a balanced CIFAR-10 subset (500 training
images per class, 10 % held out for validation, 200 test images per class; cnn4, PGD-5 at
8/255, SGD 0.1 with the step schedule, 30 epochs) with ``keep_best = "robust-overall"``, and
records each epoch's validation clean and robust accuracy, and the test report of the last
and of the best checkpoint. ``--dataset digits``: the embedded digits, balanced, 20 % held out,
its own protocol's model and budget, trained until its training robust accuracy is 1. Resumable: a finished run is read, an interrupted one resumed.

    python benchmarks/robust_overfitting.py [--checkout DIR] [--epochs 30]

Result: benchmarks/results/robust-overfitting/cifar10-balanced<N>-pgd-<epochs>.json (command,
commit, machine). ``--n-max 100 --epochs 60``: a tenth of the data, trained twice as long.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "robust-overfitting"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, help="import robx from this checkout (as engine_equivalence.py)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-max", type=int, default=500, help="training images per class (before validation)")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/robx-robust-overfitting"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    if args.checkout:
        from benchmarks.engine_equivalence import use_checkout

        use_checkout(args.checkout.resolve())
    from benchmarks import meta
    from robx.core.config import TrainConfig
    from robx.core.engine import train

    if args.dataset == "digits":  # its own protocol's model and budget (smallcnn16, eps 0.1, PGD-10), all 1,347 images
        config = TrainConfig(dataset="digits", imbalance="none", val_fraction=0.2, epochs=args.epochs, schedule="step",
                             lr=0.1, plugins=["pgd"], keep_best="robust-overall", seed=0)
        name = f"digits-balanced-pgd-{args.epochs}"
    else:
        config = TrainConfig(dataset="cifar10", imbalance="none", n_max=args.n_max, n_test_per_class=200,
                             val_fraction=0.1, epochs=args.epochs, schedule="step", lr=0.1, steps=5, eval_steps=20,
                             plugins=["pgd"], keep_best="robust-overall", seed=0)
        name = f"cifar10-balanced{args.n_max}-pgd-{args.epochs}"
    run_dir = args.runs / name
    if not (run_dir / "report.json").exists():
        train(config, run_dir, resume=(run_dir / "checkpoint.pt").exists())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = json.loads((run_dir / "report.json").read_text())
    best = json.loads((run_dir / "report-best.json").read_text())
    epochs = [{"epoch": r["epoch"], "lr": r["lr"], "train_robust": sum(r["train"]["robust"]) / len(r["train"]["robust"]),
               "val_clean": sum(r["val"]["clean"]) / len(r["val"]["clean"]),
               "val_robust": sum(r["val"]["robust"]) / len(r["val"]["robust"]), "seconds": r["seconds"]}
              for r in records]
    meta.write_result(OUT / f"{name}.json", {
        "config": config.to_dict(), "epochs": epochs,
        "last": {"epoch": args.epochs - 1, **last["summary"]},
        "best": {**last["best"], **best["summary"]},
    })
    for row in epochs:
        print(f"epoch {row['epoch']:>2}  lr {row['lr']:.4f}  train robust {row['train_robust']:.3f}  "
              f"val clean {row['val_clean']:.3f}  val robust {row['val_robust']:.3f}")
    print(f"test robust overall: last {last['summary']['robust']['overall']:.3f}, best (epoch {last['best']['epoch']}) "
          f"{best['summary']['robust']['overall']:.3f}")


if __name__ == "__main__":
    main()
