"""Do the tests catch a broken method? Break each method plugin's core formula, one at a
time, and run the default test suite's files that exercise it.

    python benchmarks/mutation.py [--only NAME ...] [--tests-per-mutation FILE ...]

Each mutation is one text replacement in one file (``MUTATIONS``: the formula, and what it
breaks), applied to a copy of the checkout at HEAD under a temporary folder; robx is imported
from that copy (a package of links first on ``PYTHONPATH``). pytest then runs the test files
named for the mutation (``-x``: the first failure is enough) with the default markers. A
mutation is *caught* when a test fails. Writes benchmarks/results/mutation/cpu.json with,
per mutation, caught or not, the first failing test and the seconds it took; a finished
mutation is skipped when its result is already there for this commit (resumable); each
result names the commit it ran at.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.meta import RESULTS, STARTED_AT_COMMIT, write_result  # noqa: E402

OUT = RESULTS / "mutation" / "cpu.json"

# name -> (file, original text, mutated text, what it breaks, the test files to run)
MUTATIONS: dict[str, tuple[str, str, str, str, list[str]]] = {
    "trades": ("plugins/trades.py", "return self.options.beta * kl.mean()", "return 0.5 * self.options.beta * kl.mean()",
               "the KL term's weight beta", ["tests/test_parity.py", "tests/test_baselines.py"]),
    "trades-attack": ("plugins/trades.py", "kl_per_sample(clean_logits, adv_logits)",
                      "kl_per_sample(adv_logits, clean_logits)", "the KL direction of TRADES' attack",
                      ["tests/test_parity.py", "tests/test_baselines.py"]),
    "mart": ("plugins/mart.py", "torch.log(1.0001 - others.amax(dim=1))", "torch.log(1.0001 - others.amin(dim=1))",
             "the boosted CE's largest wrong class", ["tests/test_parity.py", "tests/test_baselines.py"]),
    "dafa": ("plugins/dafa.py", "weights[i] -= lam * p[j, i] * p[i, i]", "weights[i] -= lam * p[i, j] * p[j, j]",
             "DAFA's second branch (the older upstream rule)", ["tests/test_parity.py", "tests/test_fairness.py"]),
    "cfa": ("plugins/cfa.py", "return scaled / (1.0 + scaled)", "return scaled / (2.0 + scaled)",
            "CCR's b_c", ["tests/test_parity.py", "tests/test_fairness.py"]),
    "ldam": ("plugins/ldam.py", "clamp(min=1).pow(-0.25)", "clamp(min=1).pow(-0.5)", "LDAM's n^(-1/4) margins",
             ["tests/test_parity.py", "tests/test_baselines.py"]),
    "drw": ("plugins/common.py", "(1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)",
            "(1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts.sqrt())) / (1.0 - beta)",
            "the effective number of samples (cb, drw, resample)",
            ["tests/test_parity.py", "tests/test_baselines.py", "tests/test_formulas.py"]),
    "focal": ("plugins/focal.py", ".pow(gamma) * cross_entropy", ".pow(gamma + 1) * cross_entropy",
              "the focusing exponent", ["tests/test_baselines.py", "tests/test_formulas.py"]),
    "balanced_softmax": ("plugins/balanced_softmax.py", "clamp(min=1).log()", "clamp(min=1).log() * 0.5",
                         "the log prior", ["tests/test_baselines.py", "tests/test_formulas.py"]),
    "mixup": ("plugins/common.py", "return lam * inputs + (1.0 - lam) * inputs[partner]",
              "return (1.0 - lam) * inputs + lam * inputs[partner]", "the input mixing weight",
              ["tests/test_formulas.py", "tests/test_baselines.py"]),
    "remix": ("plugins/common.py", "(ratio >= kappa) & (lam < tau), torch.zeros_like(ratio)",
              "(ratio >= kappa) & (lam < tau), torch.ones_like(ratio)", "Remix's label factor",
              ["tests/test_baselines.py", "tests/test_srat_imbmix.py"]),
    "resample": ("plugins/resample.py", "return per_class[labels.cpu()]", "return per_class.sqrt()[labels.cpu()]",
                 "the sampling probability", ["tests/test_formulas.py", "tests/test_baselines.py"]),
    "pgd": ("plugins/pgd.py", "start_scale=self.options.start_scale)", "start_scale=1.0)",
            "the start radius option (STPGD's 0.1)", ["tests/test_formulas.py", "tests/test_attacks.py",
                                                       "tests/test_crime.py"]),
    "fairtat": ("plugins/fairtat.py", "softmax(temperature * cfps", "softmax(cfps", "the target temperature",
                ["tests/test_formulas.py", "tests/test_fairness.py"]),
    "ema": ("plugins/ema.py", "(1 + averaged) / (10 + averaged)", "(1 + averaged) / (5 + averaged)",
            "the EMA warm-up", ["tests/test_baselines.py"]),
    "swa": ("core/averaging.py", "average.add(model, decay=decay)", "average.add(model, decay=0.5 if decay is None "
            "else decay)", "SWA's equal average", ["tests/test_parity.py", "tests/test_baselines.py"]),
    "separation": ("plugins/separation.py", "return self.options.lam * supcon(", "return 0.5 * self.options.lam * supcon(",
                   "L_sep's weight", ["tests/test_srat_imbmix.py"]),
    "copies": ("plugins/copies.py", "int(round(n_max / max(n, 1))) - 1", "int(round(n_max / max(n, 1)))",
               "Imb-Mix's t_c", ["tests/test_srat_imbmix.py"]),
    "topk": ("plugins/topk.py", "return grad.norm(dim=1).flatten(1)", "return grad.abs().sum(dim=1).flatten(1)",
             "the unit saliency's L2 norm", ["tests/test_formulas.py", "tests/test_crime.py", "tests/test_plugins.py"]),
    "mingre": ("plugins/mingre.py", "return mu + mu * mu / alpha", "return mu + mu / alpha",
               "the negative binomial's variance", ["tests/test_mingre.py"]),
    "glgan": ("plugins/oversampling/glgan.py", "return (real_scores - 1).pow(2).mean() + fake_weight * fake_scores.pow(2).mean()",
              "return (real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean()",
              "the discriminator's weight on the synthetic examples", ["tests/test_glgan.py"]),
    "iced": ("plugins/crowd/iced.py", "return 1.0 / (1.0 - (shares ** 2).sum(axis=1) + epsilon)",
             "return 1.0 / (1.0 - (shares ** 2).mean(axis=1) + epsilon)", "ICED's per-example agreement weight",
             ["tests/test_iced.py"]),
}


def linked_checkout(source: Path, folder: Path) -> Path:
    """``folder``/robx: the package made of links to the copy's folders (as the installed
    robx maps them), for ``PYTHONPATH``."""
    package = folder / "robx"
    package.mkdir(parents=True)
    for name in ("__init__.py", "__main__.py"):
        (package / name).symlink_to(source / "robx" / name)
    for name in ("core", "plugins", "kernels", "cli"):
        (package / name).symlink_to(source / name)
    return folder


def run_mutation(name: str) -> dict:
    file, original, mutated, breaks, tests = MUTATIONS[name]
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(copy), "HEAD"], cwd=ROOT, check=True)
        try:
            target = copy / file
            text = target.read_text()
            if text.count(original) != 1:
                return {"mutation": name, "error": f"{file} holds the original text {text.count(original)} times"}
            target.write_text(text.replace(original, mutated))
            path = linked_checkout(copy, Path(scratch) / "path")
            env = dict(os.environ, PYTHONPATH=str(path))
            # -P: the copy's own robx/ folder (beside its tests) must not shadow the linked
            # package, or its submodules come from the installed checkout, unmutated
            where = subprocess.run([sys.executable, "-P", "-c", f"import robx.{Path(file).with_suffix('').as_posix().replace('/', '.')} as m; print(m.__file__)"],
                                   cwd=copy, env=env, capture_output=True, text=True, check=True).stdout.strip()
            if not where.startswith(str(path)):
                return {"mutation": name, "error": f"robx was imported from {where}, not from the mutated copy"}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-P", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=copy, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            failed = [line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
            return {"mutation": name, "file": file, "breaks": breaks, "tests_run": tests, "caught": done.returncode != 0,
                    "first_failure": failed[0] if failed else None, "pytest_exit": done.returncode,
                    "summary": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "",
                    "seconds": round(seconds, 1)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(copy)], cwd=ROOT, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MUTATIONS))
    options = parser.parse_args()
    done = json.loads(OUT.read_text()) if OUT.exists() else {}
    results = {r["mutation"]: {"commit": done.get("commit"), **r} for r in done.get("mutations", [])}
    for name in options.only or list(MUTATIONS):
        if name in results and results[name]["commit"] == STARTED_AT_COMMIT:
            continue
        results[name] = {"commit": STARTED_AT_COMMIT, **run_mutation(name)}
        result = results[name]
        print(f"{name}: {'caught by ' + str(result.get('first_failure')) if result.get('caught') else 'NOT caught'} "
              f"({result.get('seconds')} s) {result.get('error', '')}", flush=True)
        write_result(OUT, {"mutations": list(results.values()),
                           "caught": sum(bool(r.get("caught")) for r in results.values()), "of": len(results)})


if __name__ == "__main__":
    main()
