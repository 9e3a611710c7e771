"""Run a data-level protocol (``benchmarks/protocols/<name>.toml`` with ``kind =
"oversample"``, through ``robx.plugins.oversampling.evaluation``, or ``kind = "crowd"``, through
``robx.plugins.crowd.evaluation``): every dataset x method x seed, one JSON per run under
``benchmarks/results/<name>/<dataset>/<method>-seed<k>.json``, with command, commit and
machine. Finished runs are skipped, so an interrupted sweep resumes.

    python benchmarks/data_protocol.py glgan-cpu --seeds 0 1 2 [--datasets digits-binary]
    python benchmarks/data_protocol.py iced-cpu --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from robx.core.config import tomllib  # noqa: E402
from robx.core.errors import RobxError  # noqa: E402
from robx.plugins.crowd.evaluation import CrowdJob, run_crowd  # noqa: E402
from robx.plugins.oversampling.evaluation import OversampleJob, run_oversample  # noqa: E402

PROTOCOLS = Path(__file__).resolve().parent / "protocols"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+")
    parser.add_argument("--methods", nargs="+")
    args = parser.parse_args()
    protocol = tomllib.loads((PROTOCOLS / f"{args.protocol}.toml").read_text())
    kind = protocol.get("kind")
    if kind not in ("oversample", "crowd"):
        raise SystemExit(f"{args.protocol} is not a data-level protocol (kind = \"oversample\" or \"crowd\")")
    for dataset in args.datasets or protocol["datasets"]:
        for name, method in protocol["methods"].items():
            if args.methods and name not in args.methods:
                continue
            for seed in args.seeds:
                path = RESULTS / args.protocol / dataset / f"{name}-seed{seed}.json"
                if path.exists():
                    continue
                options = dict(method.get("options", {}))
                started = time.perf_counter()
                try:
                    if kind == "oversample":
                        report, _ = run_oversample(OversampleJob(dataset, method["method"], seed, method.get("ratio"),
                                                                 options, classifiers=tuple(protocol["classifiers"])))
                    else:
                        report = run_crowd(CrowdJob(dataset, method["method"], seed, options))
                    error = None
                except RobxError as failure:  # e.g. ADASYN finding no majority neighbour: recorded, not hidden
                    report, error = None, str(failure)
                seconds = round(time.perf_counter() - started, 1)
                write_result(path, {"protocol": args.protocol, "dataset": dataset, "name": name, "seed": seed,
                                    "report": report, "error": error, "wall_seconds": seconds})
                print(f"{dataset} {name} seed {seed}: {seconds} s" + (f" ({error})" if error else ""), flush=True)


if __name__ == "__main__":
    main()
