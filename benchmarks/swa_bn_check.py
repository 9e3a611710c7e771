"""How much a weight-averaged (SWA) model's robust accuracy depends on the data its BatchNorm
statistics are recomputed on.

``swa`` and ``imbmix`` recompute BN on the clean training images (torch's ``update_bn``, as the
reference SWA does). An adversarially trained network saw adversarial (and, under Imb-Mix,
mixed) batches, so this check evaluates, on the same stratified test subset with the run's
PGD-20:

* ``swa_clean_bn``: the averaged model as shipped (BN from clean training images);
* ``swa_adversarial_bn``: the same averaged weights, BN recomputed on PGD adversarial examples
  of the training images (the run's training attack, against the shipped averaged model);
* ``final``: the last training iterate with its running BN statistics (no averaging).

    python benchmarks/swa_bn_check.py runs/cifar10-lt-cpu/srat+imbmix-seed0
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core import run as rundir  # noqa: E402
from robx.core.attacks import pgd  # noqa: E402
from robx.core.data import to_unit_float  # noqa: E402
from robx.core.engine import Run, SilentProgress, evaluate_run, load_run  # noqa: E402
from robx.core.errors import RobxError  # noqa: E402


def adversarial_training_batches(run: Run, model: torch.nn.Module, batch_size: int = 256) -> list[torch.Tensor]:
    """PGD adversarial examples of every training image under the run's training attack."""
    config, data = run.config, run.data
    assert config.eps is not None and config.alpha is not None and config.steps is not None
    torch.manual_seed(config.seed)
    batches = []
    for start in range(0, len(data.y_train), batch_size):
        x = to_unit_float(data.x_train[start : start + batch_size]).to(run.state.device)
        y = data.y_train[start : start + batch_size].to(run.state.device)
        batches.append(pgd(model, x, y, eps=config.eps, alpha=config.alpha, steps=config.steps, norm=config.norm))
    return batches  # built before update_bn, which runs under no_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n-eval", type=int, default=None, help="stratified test subset (default: all)")
    args = parser.parse_args()
    run = load_run(args.run_dir)
    payload = rundir.load_checkpoint(args.run_dir / rundir.CHECKPOINT_FILE)
    if "eval_model" not in payload:
        raise RobxError(f"{args.run_dir} has no averaged model (run it with swa or imbmix)")
    shipped = run.state.model
    adversarial_bn = copy.deepcopy(shipped)
    update_bn(adversarial_training_batches(run, shipped), adversarial_bn, device=run.state.device)
    final = copy.deepcopy(shipped)
    final.load_state_dict(payload["model"])
    results = {}
    for name, model in (("swa_clean_bn", shipped), ("swa_adversarial_bn", adversarial_bn), ("final", final)):
        model.eval()
        started = time.perf_counter()
        report = evaluate_run(run, model, SilentProgress(), n_eval=args.n_eval)
        results[name] = {"seconds": round(time.perf_counter() - started, 1), "summary": report["summary"],
                         "per_class": report["per_class"], "attack": report["attack"]}
        summary = report["summary"]
        print(f"{name}: standard {summary['standard']['overall']:.3f}  robust {summary['robust']['overall']:.3f} "
              f"(majority {summary['robust']['majority']:.3f}, minority {summary['robust']['minority']:.3f})",
              flush=True)
    path = RESULTS / "swa-bn-check" / f"{args.run_dir.parent.name}-{args.run_dir.name}.json"
    write_result(path, {"run_dir": str(args.run_dir), "n_eval": args.n_eval, "results": results})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
