"""The embedded default (digits-demo protocol): wall time of `robx train`, the per-class
picture over seeds, and PGD-20 agreement with torchattacks on the trained models.

    python benchmarks/digits_demo.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402


def independent_pgd20(run_dir: Path) -> dict[str, float]:
    import torchattacks

    from robx.core.engine import load_run
    from robx.core.evaluate import evaluate
    from robx.core.registry import registry

    run = load_run(run_dir, device="cpu")
    model = run.state.model.eval()
    x, y = run.task.inputs(run.data.test.x), run.data.test.y
    eps, alpha = run.config.eps, run.config.eval_alpha
    torch.manual_seed(123)
    ours = evaluate(model, run.task, run.data.test, registry().plan_attack(run.task, "pgd", eps=eps, alpha=alpha, steps=20),
                    device=torch.device("cpu"))

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.model(inputs)[1]

    torch.manual_seed(456)
    x_adv = torchattacks.PGD(LogitsOnly().eval(), eps=eps, alpha=alpha, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        theirs = (model(x_adv)[1].argmax(1) == y).float().mean().item()
    return {"robx_pgd20": ours.robust_scores.mean().item(), "torchattacks_pgd20": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_dir = Path(tmp) / f"seed{seed}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "robx.cli.main", "train", "--seed", str(seed), "--out", str(run_dir)],
                           check=True, capture_output=True)
            seconds = time.perf_counter() - started
            report = json.loads((run_dir / "report.json").read_text())
            runs.append({"seed": seed, "wall_seconds": round(seconds, 2), "summary": report["summary"],
                         "per_class": report["per_class"], "class_counts": report["class_counts"],
                         "agreement": independent_pgd20(run_dir)})
            print(f"seed {seed}: {seconds:.1f}s  robust majority {report['summary']['robust']['majority']:.3f} "
                  f"minority {report['summary']['robust']['minority']:.3f}  {runs[-1]['agreement']}")
    path = write_result(RESULTS / "digits-demo" / "pgd-at.json", {"protocol": "digits-demo", "runs": runs})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
