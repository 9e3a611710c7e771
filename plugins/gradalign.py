"""GradAlign (Andriushchenko & Flammarion, "Understanding and improving fast adversarial
training", NeurIPS 2020): FGSM training plus a gradient-alignment regulariser that keeps
the loss locally linear, so single-step training does not overfit catastrophically.

* Adversary: FGSM from x itself (their ``--attack_init zero``), one step of
  alpha = 1.25 eps (``--fgsm_alpha 1.25``), projected onto the eps-ball and the input box.
* ``extra_loss`` (eq. 5 of the paper): lambda * (1 - mean_i cos(g_i(x), g_i(x + eta_i))),
  g_i(z) = grad_z CE(f(z), y_i), eta ~ U(-eps, eps) (not clamped to the box, as their
  ``get_uniform_delta``). As in the authors' code, the gradient at x enters as a constant and
  the one at x + eta is differentiated (double backpropagation; their README: backpropagating
  through both "doesn't make a substantial difference"), and examples with a zero gradient at
  either point are left out of the mean. lambda = 0.2 is theirs for eps = 8/255; they grow it
  with eps (0.063 at 4/255, 0.356 at 10/255, 0.632 at 12/255: ``sh/exps_diff_eps_cifar10.sh``).

The budget is each example's own (``step.attack.eps``: ``class_eps[y]`` from DAFA, FAIR-TAT
or CFA), for the FGSM step and for eta. Linf only, as in the paper.

Deviations, on purpose: robx's attacks, and so this regulariser's gradients, see the model
in eval mode (BatchNorm on running statistics; plugins never run the model in train mode,
the engine owns those passes). The authors take both in train mode and reuse the FGSM
gradient as g(x), which in robx's eval-mode attack is not exposed: robx computes g(x) in a
pass of its own, one forward-backward more per step than their code (docs/fast.md counts it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, RobxError, Step, TrainState, check_ranges, eval_mode, hookimpl, logits_of


def input_gradient(model: torch.nn.Module, point: torch.Tensor, y: torch.Tensor, loss, *,
                   create_graph: bool) -> torch.Tensor:
    """grad_z sum_i loss(f(z)_i, y_i) at ``point`` (per example: the examples do not interact
    in eval mode)."""
    point = point.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(logits_of(model, point), y).sum(), point, create_graph=create_graph)
    return gradient


class GradAlign(Plugin):
    """FGSM + GradAlign (Andriushchenko & Flammarion 2020): lambda (1 - cos(g(x), g(x + eta)))."""

    name = "gradalign"

    @dataclass
    class Options:
        lam: float = 0.2  # the authors' value at eps = 8/255
        step_size: float = 1.25  # FGSM's alpha as a multiple of eps

        def __post_init__(self) -> None:
            check_ranges(self, non_negative=("lam",), positive=("step_size",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def check_run(self, state: TrainState) -> None:
        if state.config.norm != "linf":
            raise RobxError(f"gradalign is an Linf method (its uniform eta and FGSM step); the run's norm is "
                            f"'{state.config.norm}'")

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        return step.attack.scaled(steps=1, step_size=self.options.step_size)(start="none")

    @hookimpl
    def extra_loss(self, step: Step) -> torch.Tensor:
        attack = step.attack
        assert attack is not None
        eps = attack.eps.view(-1, *([1] * (step.x.dim() - 1)))
        eta = (torch.rand_like(step.x) * 2 - 1) * eps
        with eval_mode(attack.model):
            at_x = input_gradient(attack.model, step.x, step.y, attack.task_loss, create_graph=False)
            at_noise = input_gradient(attack.model, step.x + eta, step.y, attack.task_loss, create_graph=True)
        at_x, at_noise = at_x.flatten(1), at_noise.flatten(1)
        norm_x, norm_noise = at_x.norm(dim=1), at_noise.norm(dim=1)
        kept = (norm_x > 0) & (norm_noise > 0)
        if not bool(kept.any()):
            return at_noise.sum() * 0.0
        cos = ((at_x[kept] / norm_x[kept, None]) * (at_noise[kept] / norm_noise[kept, None])).sum(dim=1)
        return self.options.lam * (1.0 - cos.mean())
