"""How much a weight-averaged model's robust accuracy depends on the data its BatchNorm
statistics are recomputed on.

The engine recomputes BN for a weight average (``swa``, ``ema``, ``imbmix``, ``cfa``)
through the training data path: adversarial examples against the averaged weights, then the
plugins' ``augment`` (mixed rows under Imb-Mix), the step's own forward passes. This check
evaluates, on the same stratified test subset with the run's PGD-20:

* ``shipped``: the evaluated model in the run's checkpoint, its BN statistics as the run's
  ``batchnorm`` option chose (``core/averaging.py``: recomputed through the training data
  path, averaged with the weights, or the last iterate's; runs from before engine v2
  recomputed them on clean training images);
* ``train_path_bn``: the same averaged weights, BN recomputed through the training data
  path (unless that is what ``shipped`` has);
* ``last_bn``: the same averaged weights with the last iterate's BN statistics (unless that
  is what ``shipped`` has);
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
from robx.core import rundir  # noqa: E402
from robx.core.averaging import with_parameters  # noqa: E402
from robx.core.engine import Run, SilentProgress, averaged_eval_model, evaluate_run, load_run  # noqa: E402
from robx.core.errors import RobxError  # noqa: E402


def clean_training_batches(run: Run, batch_size: int = 256) -> list[torch.Tensor]:
    x = run.data.train.x
    return [run.task.inputs(x[start : start + batch_size]).to(run.state.device) for start in range(0, len(x), batch_size)]


def shipped_batchnorm(run_dir: Path) -> str:
    """Where the shipped model's BN statistics came from, by the run's recorded options."""
    plugins = json.loads((run_dir / rundir.CONFIG_FILE).read_text())["plugins"]
    if "cfa" in plugins:
        return "average"
    chosen = [options["batchnorm"] for options in plugins.values() if "batchnorm" in options]
    return chosen[0] if chosen else "recompute"


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
    averaged = dict(shipped.named_parameters())
    last_bn = with_parameters(final, averaged)  # averaged weights, the last iterate's buffers
    variants = [("shipped", shipped)]
    source = shipped_batchnorm(args.run_dir)
    if source != "recompute":
        run.state.model = final  # as after training: the averaged weights attacked with the last iterate's BN
        variants.append(("train_path_bn", averaged_eval_model(run, averaged)))
    if source != "last":
        variants.append(("last_bn", last_bn))
    variants += [("clean_bn", clean_bn), ("final", final)]
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
    write_result(path, {"run_dir": str(args.run_dir), "n_eval": args.n_eval, "shipped_batchnorm": source,
                        "results": results})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
