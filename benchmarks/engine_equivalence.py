"""Does an engine change keep every built-in selection's numbers? (issue 31)

Trains a fixed set of selections briefly (digits: 2-4 epochs with 2-step attacks; NYC crime:
one epoch, 7-day history) and records, per selection, a digest of the final weights and the
per-class robust scores. Run it once on the checkout before a change and once after; equal
digests mean the change is bit-for-bit neutral on this machine:

    git worktree add /tmp/before <commit> && python benchmarks/engine_equivalence.py --checkout /tmp/before --name before
    python benchmarks/engine_equivalence.py --name after
    python benchmarks/engine_equivalence.py --compare before after

``--checkout DIR`` imports robx from that checkout (a package of links is made under a
temporary directory and put first on ``sys.path``) instead of the installed one. Results:
benchmarks/results/engine-equivalence/<name>.json. The crime cases need $ROBX_DATA's crime
grids and are skipped without them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "engine-equivalence"

DIGITS = dict(dataset="digits", epochs=2, steps=2, eval_steps=5, n_eval=120, batch_size=128)
CRIME = dict(dataset="nyc-crime", epochs=1, batch_size=16, steps=2, eval_steps=2, n_eval=64,
             dataset_options={"history": 7})
CASES: dict[str, dict] = {
    "pgd": dict(DIGITS, plugins=["pgd"]),
    "natural": dict(DIGITS, plugins=["natural"]),
    "trades": dict(DIGITS, plugins=["trades"]),
    "mart": dict(DIGITS, plugins=["mart"]),
    "fairtat": dict(DIGITS, plugins=["fairtat"]),
    "trades+fairtat": dict(DIGITS, plugins=["trades", "fairtat"]),
    "dafa+trades": dict(DIGITS, plugins=["dafa", "trades"], epochs=3),
    "topk": dict(DIGITS, plugins=["topk"]),
    "srat+imbmix": dict(DIGITS, plugins=["srat", "imbmix"], epochs=4),
    "swa": dict(DIGITS, plugins=["swa", "pgd"], epochs=4),
    "trades+cfa": dict(DIGITS, plugins=["trades", "cfa"], val_fraction=0.1),
    "crime-stpgd": dict(CRIME, plugins=["topk", "pgd"],
                        plugin_options={"topk": {"saliency_steps": 5}, "pgd": {"start_scale": 0.1}}),
    "crime-mingre": dict(CRIME, plugins=["mingre"]),
    # the embedded default in full (`robx train`: PGD-AT, Step-10 digits, PGD-20 evaluation)
    "digits-demo": dict(dataset="digits"),
}


def use_checkout(root: Path) -> None:
    """Import robx from the checkout at ``root`` (its folders mapped as the installed package)."""
    package = Path(tempfile.mkdtemp()) / "robx"
    package.mkdir()
    for name in ("__init__.py", "__main__.py"):
        (package / name).symlink_to(root / "robx" / name)
    for folder in ("core", "plugins", "kernels", "cli"):
        (package / folder).symlink_to(root / folder)
    sys.path.insert(0, str(package.parent))


def digest(state: dict) -> str:
    hashed = hashlib.sha256()
    for key, value in sorted(state.items()):
        hashed.update(key.encode())
        hashed.update(value.cpu().numpy().tobytes())
    return hashed.hexdigest()[:16]


def run_cases(only: set[str] | None = None) -> dict[str, dict]:
    import torch

    from robx.core.config import TrainConfig
    from robx.core.data import data_roots
    from robx.core.engine import train

    has_crime = any((root / "crime").is_dir() for root in data_roots())
    results = {}
    for name, case in CASES.items():
        if only is not None and name not in only:
            continue
        if case["dataset"] == "nyc-crime" and not has_crime:
            print(f"{name}: skipped (no crime data under $ROBX_DATA)", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            report = train(TrainConfig(**case), Path(tmp) / "run")
            payload = torch.load(Path(tmp) / "run" / "checkpoint.pt", weights_only=True)
        results[name] = {"weights": digest(payload["model"]), "robust": report["per_class"]["robust"]}
        print(f"{name}: {results[name]['weights']}", file=sys.stderr)
    return results


def compare(before: str, after: str) -> int:
    old = json.loads((OUT / f"{before}.json").read_text())
    new = json.loads((OUT / f"{after}.json").read_text())
    differ = 0
    for name in old["cases"]:
        if name not in new["cases"]:
            print(f"{name}: only in {before}")
            continue
        same = old["cases"][name] == new["cases"][name]
        differ += not same
        print(f"{name}: {'same' if same else 'DIFFERENT'}")
    print(f"{before} ({old['checkout_commit'][:12]}) vs {after} ({new['checkout_commit'][:12]}): {differ} of {len(old['cases'])} differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="result name (before, after, ...)")
    parser.add_argument("--checkout", type=Path, help="import robx from this checkout")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--only", help="comma-separated cases, added to an existing result of that name")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.name:
        parser.error("--name is required (or --compare)")
    if args.checkout:
        use_checkout(args.checkout.resolve())
        os.environ["ROBX_COMMIT"] = args.checkout.name
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
    from benchmarks import meta

    commit = meta.git_commit() if not args.checkout else _checkout_commit(args.checkout)
    only = set(args.only.split(",")) if args.only else None
    cases = run_cases(only)
    path = OUT / f"{args.name}.json"
    if only is not None and path.exists():
        cases = {**json.loads(path.read_text())["cases"], **cases}
    import robx

    meta.write_result(OUT / f"{args.name}.json", {"robx_imported_from": robx.__file__, "checkout_commit": commit,
                                                  "cases": cases})
    return 0


def _checkout_commit(root: Path) -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
