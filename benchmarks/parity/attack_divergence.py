"""How far two float-equivalent TRADES attacks drift apart: the authors' ``trades_loss`` (from
a checkout of rucy74/DAFA, unmodified) against itself with only the rounding of the model's
logits changed, and against robx's TRADES adversary, from the same weights, batch and start
noise, for 1 to 5 PGD steps.

    python benchmarks/parity/attack_divergence.py --reference PATH/TO/DAFA

At the start of training the KL objective at x + 0.001 N(0, 1) is ~1e-9 and its input
gradient ~1e-9, computed to ~0.3 % relative error in float32. Sign-PGD moves every pixel by a
full step whichever way that gradient points, so the ~0.2 % of pixels whose sign rounding
decides move the other way, and each following step amplifies the difference. The result
(``benchmarks/results/parity/attack-divergence.json``) is the share of pixels whose x'
differs after each step, for both pairs: equal shares mean robx's attack is as close to the
authors' as their own code is to itself under a change of rounding.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.meta import RESULTS, write_result  # noqa: E402
from benchmarks.parity.dafa_e2e import ALPHA, BETA, EPS, protocol_config, reference_commit  # noqa: E402


class FirstTrainPass(torch.nn.Module):
    """robx's model as ``x -> logits``, keeping the input of the first train-mode call (the
    authors' trades_loss runs its first train-mode pass on x'); ``rounded`` computes the
    logits as (z + 1) - 1, the same numbers up to rounding."""

    def __init__(self, model: torch.nn.Module, rounded: bool) -> None:
        super().__init__()
        self.model, self.rounded, self.seen = model, rounded, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.seen is None:
            self.seen = x.detach().clone()
        logits = self.model(x)[1]
        return (logits + 1.0) - 1.0 if self.rounded else logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of rucy74/DAFA")
    options = parser.parse_args()
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sys.path.insert(0, str(options.reference))
    losses = importlib.import_module("losses")
    import robx.core.plugins as plugins
    from robx.core.engine import build_run, train_step

    rows = []
    for steps in range(1, 6):
        run = build_run(protocol_config("trades", 0, 10, {"steps": steps}), Path("unused"))
        model = run.state.model
        start = copy.deepcopy(model.state_dict())
        x = run.data.train.x[:128].float() / 255
        y = run.data.train.y[:128]
        args = SimpleNamespace(pgd_step_size=ALPHA, pgd_num_steps=steps, epsilon=EPS, beta=BETA, n_class=10)
        authors = {}
        for rounded in (False, True):
            model.load_state_dict(start)
            wrapped = FirstTrainPass(model, rounded)
            torch.manual_seed(5)
            losses.trades_loss(wrapped, x, y, torch.optim.SGD(model.parameters(), lr=0.1), args, torch.ones(10))
            authors[rounded] = wrapped.seen
        model.load_state_dict(start)
        captured = {}
        generate = plugins.PluginHost.generate_adversary

        def capture(host, step, state):
            captured["x_adv"] = generate(host, step, state).detach().clone()
            return captured["x_adv"]

        plugins.PluginHost.generate_adversary = capture  # type: ignore[method-assign]
        try:
            torch.manual_seed(5)
            train_step(run, x, y, y, run.task.statistics(run.state.device), {})
        finally:
            plugins.PluginHost.generate_adversary = generate  # type: ignore[method-assign]

        def differing(a: torch.Tensor, b: torch.Tensor) -> float:
            return round(float(((a - b).abs() > 1e-6).float().mean()), 4)

        rows.append({"steps": steps, "authors_vs_authors_rounded": differing(authors[False], authors[True]),
                     "authors_vs_robx": differing(authors[False], captured["x_adv"])})
        print(rows[-1], flush=True)
    write_result(RESULTS / "parity" / "attack-divergence.json",
                 {"reference": {"repository": "rucy74/DAFA", "commit": reference_commit(options.reference)},
                  "batch": "the first 128 training images of the 2000-image CIFAR-10 subset, cnn4 at initialisation",
                  "rows": rows})


if __name__ == "__main__":
    main()
