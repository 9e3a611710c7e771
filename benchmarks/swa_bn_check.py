"""How much a weight-averaged model's robust accuracy depends on the data its BatchNorm
statistics are recomputed on.

The engine recomputes BN for a weight average (``swa``, ``ema``, ``imbmix``, ``cfa``)
through the training data path: adversarial examples against the averaged weights, then the
plugins' ``augment`` (mixed rows under Imb-Mix), the step's own forward passes. This check
evaluates, on the same stratified test subset with the run's PGD-20:

* ``shipped``: the evaluated model in the run's checkpoint (BN from the training data path,
  averaged with the weights for runs with ``<plugin>.batchnorm = "average"`` or ``cfa``, or,
  for runs from before engine v2, from clean training images);
* ``train_path_bn``: only where ``shipped`` has averaged BN statistics: the same averaged
  weights, BN recomputed through the training data path as the engine's default does;
* ``clean_bn``: the same averaged weights, BN recomputed on the clean training images
  (``torch.optim.swa_utils.update_bn``, as the reference SWA does and robx did before);
* ``final``: the last training iterate with its running BN statistics (no averaging).

    python benchmarks/swa_bn_check.py runs/cifar10-lt-cpu/srat+imbmix-seed0
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core import run as rundir  # noqa: E402
from robx.core.engine import Run, SilentProgress, averaged_eval_model, evaluate_run, load_run  # noqa: E402
from robx.core.errors import RobxError  # noqa: E402


def clean_training_batches(run: Run, batch_size: int = 256) -> list[torch.Tensor]:
    x = run.data.train.x
    return [run.task.inputs(x[start : start + batch_size]).to(run.state.device) for start in range(0, len(x), batch_size)]


def averages_batchnorm(run_dir: Path) -> bool:
    """Whether the run's evaluated model holds averaged BN statistics (from its recorded options)."""
    plugins = json.loads((run_dir / rundir.CONFIG_FILE).read_text())["plugins"]
    return "cfa" in plugins or any(options.get("batchnorm") == "average" for options in plugins.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n-eval", type=int, default=None, help="stratified test subset (default: all)")
    args = parser.parse_args()
    run = load_run(args.run_dir)
    payload = rundir.load_checkpoint(args.run_dir / rundir.CHECKPOINT_FILE)
    if "eval_model" not in payload:
        raise RobxError(f"{args.run_dir} has no averaged model (run it with swa, ema, imbmix or cfa)")
    shipped = run.state.model
    clean_bn = copy.deepcopy(shipped)
    update_bn(clean_training_batches(run), clean_bn, device=run.state.device)
    final = copy.deepcopy(shipped)
    final.load_state_dict(payload["model"])
    variants = [("shipped", shipped), ("clean_bn", clean_bn), ("final", final)]
    if averages_batchnorm(args.run_dir):
        run.state.model = final  # as after training: the averaged weights attacked with the last iterate's BN
        variants.insert(1, ("train_path_bn", averaged_eval_model(run, dict(shipped.named_parameters()))))
    results = {}
    for name, model in variants:
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
