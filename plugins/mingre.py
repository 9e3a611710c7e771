"""MinGRE: minority-aware adversarial training of spatiotemporal graph models under
zero inflation (arXiv 2504.00721). **A reconstruction**: no code is
public and only a summary of the paper was available to us; every
formula below is robx's reading of it, and where the summary is silent the choice is ours
and says so.

The problem (the crime task): next-day counts of every graph node and category, most of
them zero. Each target is labelled majority (zero) or minority (non-zero). STPGD attacks
only K = ``fraction`` of the nodes, those with the largest saliency; minority targets are
few and their gradients small, so plain top-K picks majority nodes and adversarial training
leaves the minority behind. MinGRE is a two-stage iteration per batch:

1. **Victims by reweighted saliency** (``select_victims``, ``reweight = true``).
   * Per-target loss weights: the loss whose input gradient ranks the nodes is
     sum_j w_{c(j)} L_j over the targets j, with class-balanced w_c = n / (K n_c) from the
     run's class counts (``loss_weights = "balanced"``; ``"none"``: w = 1). It is computed
     as the sum of one gradient per class, g = sum_c w_c dL_c/dX (the "decomposition into
     loss weights").
   * Gradient flow over time: unlike STPGD, the gradient is not averaged over the
     history before ranking; every step t of every segment b keeps its own weight
     (below), read at the same point STPGD reads it (``saliency_steps`` noisy whole-input
     iterations, ``robx.core.attacks.saliency_point``).
   * A cross-segment encoder (:class:`CrossSegmentEncoder`): the batch's segments (days)
     attend to each other at every (time, node) on the input reshaped to (T, N, B, D)
     (attention between datapoints), then every node attends over time and pools its
     history with temporal attention a_t(b, t, n), then the nodes attend to each other
     (spatial self-attention), and a head predicts P(y_{b,n,c} > 0). It is trained on the
     clean batch with binary cross-entropy against "minority target" at every step, before
     the victims are chosen (its own Adam; our choice: the summary names no objective for
     it, and "which regions will have events" is what the reweighting needs).
     Spatial attention a_n(b, n) = mean_c P(y_{b,n,c} > 0); segment attention a_s(b) =
     the segment's mean a_n over the batch's mean.
   * Node score and victims:
         A(b, t, n) = a_s(b) a_n(b, n) T a_t(b, t, n)
         s_n = || ReLU( 1/B sum_b A(b, t, n) g(b, t, n, :) ) ||_2 over (t, channels)
     and the K largest s_n move, through the ``topk_victims`` kernel. With unit loss
     weights and uniform attention (A = 1) s_n is exactly STPGD's saliency
     ||ReLU(batch-mean dL/dX_n)||_2.
   The adversary (``generate_adversary``, yielding to any other selected one) is STPGD
   from those victims: Linf PGD with the run's eps / alpha / steps from U(-eps/10, eps/10).
2. **Training on the adversarial batch** with the task's loss (NB NLL) + lam UCL:
   **uncertainty-guided contrastive loss** (``ucl = true``, ``extra_loss``): the
   supervised contrastive loss (Khosla et al.) of the L2-normalised node embeddings of x'
   (the model's features, (batch, nodes, hidden)), class = the node has a minority target
   in the batch's next day, each anchor weighted by its NB variance sum_c mu + mu^2 / alpha
   divided by the mean over the anchors (so weights average 1; uncertain nodes pull and push
   hardest), through the ``supcon`` kernel's anchor-weight path. ``anchors`` random nodes
   of the batch serve as anchors (our choice, for a CPU's memory and time: the n^2
   similarities of every node of 16 days are 16 M pairs). lam and the temperature are not in
   the summary: lam = 0.1, t = 0.1 (SRAT's).

Diagnostics (``state.log_diagnostic``, per epoch in metrics.jsonl; the paper's claim (iii)
that the minority's share rises about 2x): on the same batch, point and model, for MinGRE's
victims and for plain top-K's (STPGD's ranking of the unweighted gradient):
``mingre.victim_minority_share`` / ``_plain`` (the share of the victims' targets that are
minority), ``mingre.victim_minority_mass`` / ``_plain`` (the minority's share of the victims'
gradient mass, each ranking's own gradient: || 1/B sum_b A w_min dL_min/dX_n || over
|| .. ||_min + || .. ||_maj, summed over the victims; A = 1, w = 1 for plain), the same for
all nodes (``mingre.minority_share_all``), and ``mingre.victim_overlap`` (shared victims / K).

The plugin needs examples of shape (time, nodes, channels) labelled per node and channel,
a task with node victims and a model whose outputs end in (mu, alpha) (the crime task and
``stgnn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx import Plugin, RobxError, Step, TrainState, attack_mode, average_gradients, hookimpl, logits_of
from robx.kernels import supcon, topk_victims

#: the random start's radius as a fraction of eps (STPGD: U(-eps/10, eps/10))
START_SCALE = 0.1


def nb_variance(mu: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Var = mu + mu^2 / alpha of a negative binomial with mean mu and dispersion alpha."""
    return mu + mu * mu / alpha


class CrossSegmentEncoder(nn.Module):
    """(batch, T, nodes, channels) -> (event logits (batch, nodes, channels), temporal
    attention (batch, T, nodes), summing to 1 over T)."""

    def __init__(self, channels: int, steps: int, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, dim)
        self.time_position = nn.Parameter(0.02 * torch.randn(steps, 1, dim))
        self.segment = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.temporal = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.spatial = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.pool = nn.Linear(dim, 1)
        self.event = nn.Linear(dim, channels)

    @staticmethod
    def attend(layer: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
        return h + layer(h, h, h, need_weights=False)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, nodes, _ = x.shape
        h = self.embed(x) + self.time_position  # (B, T, N, D)
        dim = h.shape[-1]
        # attention between datapoints: at every (t, n), the B segments attend to each other
        h = self.attend(self.segment, h.permute(1, 2, 0, 3).reshape(steps * nodes, batch, dim))
        # temporal self-attention, then attention pooling over time, per segment and node
        h = h.view(steps, nodes, batch, dim).permute(2, 1, 0, 3).reshape(batch * nodes, steps, dim)
        h = self.attend(self.temporal, h)
        time_attention = self.pool(h).squeeze(-1).softmax(dim=1)  # (B * N, T)
        pooled = (time_attention[..., None] * h).sum(dim=1).view(batch, nodes, dim)
        pooled = self.attend(self.spatial, pooled)  # spatial self-attention
        return self.event(pooled), time_attention.view(batch, nodes, steps).transpose(1, 2)


class MinGRE(Plugin):
    """MinGRE (arXiv 2504.00721), reconstructed: reweighted STPGD victims + UCL."""

    name = "mingre"
    reads = ("adversarial",)
    yields = ("generate_adversary",)

    @dataclass
    class Options:
        reweight: bool = True
        ucl: bool = True
        lam: float = 0.1
        temperature: float = 0.1
        anchors: int = 1024
        fraction: float = 0.1
        saliency_steps: int = 5
        loss_weights: str = "balanced"
        encoder_dim: int = 16
        encoder_lr: float = 1e-3

        def __post_init__(self) -> None:
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
            if self.loss_weights not in ("balanced", "none"):
                raise ValueError(f"loss_weights must be balanced or none, got {self.loss_weights!r}")
            if self.lam < 0 or self.temperature <= 0 or self.anchors < 2 or self.saliency_steps < 1:
                raise ValueError("lam must be >= 0, temperature > 0, anchors >= 2, saliency_steps >= 1")
            if self.encoder_dim < 2 or self.encoder_dim % 2 or self.encoder_lr <= 0:
                raise ValueError("encoder_dim must be an even number >= 2 and encoder_lr > 0")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.encoder: CrossSegmentEncoder | None = None
        self.encoder_optimizer: torch.optim.Optimizer | None = None
        self.resumed_encoder: dict[str, Any] | None = None  # a checkpoint's, until train_start
        self.minority: int | None = None  # the class with the fewest targets, set by check_run

    # --- set-up and checkpointing ------------------------------------------------------

    @hookimpl
    def check_run(self, state: TrainState) -> None:
        train = state.task.data.train
        if state.task.victim_unit != "node" or train.x.dim() != 4 or train.labels.shape != train.y.shape \
                or train.labels.dim() != 3:
            raise RobxError(f"mingre needs graph signals (time, nodes, channels) labelled per node and channel, "
                            f"with node victims (the crime task); dataset '{state.config.dataset}' has examples "
                            f"{tuple(train.x.shape[1:])} labelled {tuple(train.labels.shape[1:])}")
        self.minority = int(state.class_counts.argmin())  # the class counts are fixed for the run

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        if not self.options.reweight:
            return
        _, steps, _, channels = state.task.data.train.x.shape
        with torch.random.fork_rng(devices=[]):  # its own draws: a resumed run's random stream stays the straight one's
            torch.manual_seed(state.config.seed)
            self.encoder = CrossSegmentEncoder(channels, steps, self.options.encoder_dim).to(state.device)
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=self.options.encoder_lr)
        if self.resumed_encoder is not None:
            self.encoder.load_state_dict(self.resumed_encoder["model"])
            self.encoder_optimizer.load_state_dict(self.resumed_encoder["optimizer"])
            self.resumed_encoder = None

    def state_dict(self) -> dict[str, Any]:
        if self.encoder is None or self.encoder_optimizer is None:
            return {}
        return {"encoder": {"model": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
                            "optimizer": self.encoder_optimizer.state_dict()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.resumed_encoder = saved.get("encoder")  # loaded once train_start has built the encoder

    # --- stage 1: victims and adversarial inputs --------------------------------------------

    def loss_weights(self, state: TrainState) -> torch.Tensor:
        counts = state.class_counts.double()
        if self.options.loss_weights == "none":
            return torch.ones_like(counts)
        return counts.sum() / (len(counts) * counts.clamp(min=1))

    def encoder_attention(self, x: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        """One training step of the encoder on the clean batch (BCE against the minority
        targets), and the attention A(b, t, n) its forward pass gave, shape (B, T, N)."""
        assert self.encoder is not None and self.encoder_optimizer is not None
        logits, time_attention = self.encoder(x)
        loss = F.binary_cross_entropy_with_logits(logits, events.float())
        self.encoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # several processes: each saw its slice; the same averaged step keeps the encoder identical
        average_gradients(self.encoder.parameters(), weight=len(x))
        self.encoder_optimizer.step()
        return attention(logits.detach(), time_attention.detach())

    @hookimpl
    def select_victims(self, step: Step, state: TrainState) -> torch.Tensor:
        o, attack = self.options, step.attack
        assert attack is not None
        if not o.reweight:
            return attack.salient_units(state.task, o.fraction, o.saliency_steps)
        minority = self.minority
        assert minority is not None, "check_run sets the minority class when the run is built"
        attention_weights = self.encoder_attention(step.x, step.labels == minority)
        point = attack.saliency_point(o.saliency_steps)
        gradients = class_gradients(attack.model, point, step.y, step.labels, state.task.attack_loss,
                                    state.num_classes)  # (classes, B, T, N, C)
        weighted = reweighted_gradients(gradients, self.loss_weights(state).to(gradients), attention_weights)
        scores = node_saliency(weighted.sum(dim=0))
        k = max(1, round(o.fraction * scores.shape[1]))
        chosen = topk_victims(scores, k)
        plain = topk_victims(node_saliency(gradients.sum(dim=0)), k)
        self.log_victims(state, step.labels == minority, chosen, plain, weighted, gradients, minority)
        return state.task.unit_mask(chosen, step.x)

    def log_victims(self, state: TrainState, is_minority: torch.Tensor, chosen: torch.Tensor, plain: torch.Tensor,
                    weighted: torch.Tensor, gradients: torch.Tensor, minority: int) -> None:
        node_minority = is_minority.float().mean(dim=(0, 2))  # (N,) share of each node's targets
        for suffix, victims, grads in (("", chosen[0], weighted), ("_plain", plain[0], gradients)):
            state.log_diagnostic(f"mingre.victim_minority_share{suffix}", node_minority[victims].mean())
            per_node = grads.mean(dim=1).transpose(1, 2).flatten(2).norm(dim=2)  # (classes, N)
            mass = per_node[:, victims].sum(dim=1)
            state.log_diagnostic(f"mingre.victim_minority_mass{suffix}", mass[minority] / mass.sum().clamp(min=1e-30))
        state.log_diagnostic("mingre.minority_share_all", node_minority.mean())
        state.log_diagnostic("mingre.victim_overlap", (chosen & plain).sum() / chosen.sum())

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        return step.attack(start_scale=START_SCALE)

    # --- stage 2: the uncertainty-guided contrastive loss -------------------------------------

    @hookimpl
    def extra_loss(self, step: Step, state: TrainState) -> torch.Tensor | None:
        o = self.options
        if not o.ucl or o.lam == 0:
            return None
        assert step.adv_features is not None and step.adv_outputs is not None and self.minority is not None
        if step.adv_outputs.shape[-1] != 2 or step.adv_features.shape[:2] != step.adv_outputs.shape[:2]:
            raise RobxError("mingre's UCL needs node embeddings (batch, nodes, hidden) and negative-binomial outputs "
                            f"(batch, nodes, channels, 2); the model gave {tuple(step.adv_features.shape)} and "
                            f"{tuple(step.adv_outputs.shape)}")
        return o.lam * uncertainty_contrastive_loss(
            step.adv_features, step.adv_outputs, step.labels == self.minority, o.temperature, o.anchors)


def class_gradients(model: nn.Module, point: torch.Tensor, y: torch.Tensor, labels: torch.Tensor,
                    loss_fn, num_classes: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """dL_c/dX at ``point`` for every class c, L_c the attack loss summed over the targets
    labelled c: shape (classes, *point.shape); their sum is the plain gradient."""
    point = point.detach().requires_grad_(True)
    with attack_mode(model):
        per_target = loss_fn(logits_of(model, point), y)
        grads = [torch.autograd.grad(per_target[labels == c].sum(), point, retain_graph=c < num_classes - 1)[0]
                 for c in range(num_classes)]
    return torch.stack(grads)


def attention(event_logits: torch.Tensor, time_attention: torch.Tensor) -> torch.Tensor:
    """A(b, t, n) = a_s(b) a_n(b, n) T a_t(b, t, n): a_n(b, n) = mean_c P(y_{b,n,c} > 0) from
    the encoder's (B, N, C) event logits, a_s(b) = mean_n a_n(b, n) / mean_{b,n} a_n, and the
    (B, T, N) temporal attention (summing to 1 over T). Uniform attention is A = 1."""
    spatial = event_logits.sigmoid().mean(dim=2)  # (B, N)
    segment = spatial.mean(dim=1) / spatial.mean().clamp(min=1e-12)  # (B,)
    return segment[:, None, None] * spatial[:, None, :] * time_attention * time_attention.shape[1]


def reweighted_gradients(gradients: torch.Tensor, loss_weights: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """w_c A(b, t, n) dL_c/dX(b, t, n, :) for (classes, B, T, N, C) gradients, (classes,)
    loss weights and (B, T, N) attention."""
    return loss_weights.view(-1, 1, 1, 1, 1) * gradients * attention[None, ..., None]


def node_saliency(grad: torch.Tensor) -> torch.Tensor:
    """(1, N) ||ReLU(1/B sum_b g(b, :, n, :))||_2 of a (B, T, N, C) gradient (STPGD's form)."""
    return grad.mean(dim=0).relu().square().sum(dim=(0, 2)).sqrt()[None]


def uncertainty_contrastive_loss(features: torch.Tensor, outputs: torch.Tensor, is_minority: torch.Tensor,
                                 temperature: float, anchors: int) -> torch.Tensor:
    """UCL: supcon over ``anchors`` random (segment, node) embeddings, class = the node has a
    minority target, anchor weight = its NB variance over the anchors' mean (detached)."""
    embeddings = F.normalize(features.flatten(0, 1).float(), dim=1)  # (B * N, hidden)
    node_classes = is_minority.any(dim=-1).flatten().long()
    mu, dispersion = outputs[..., 0], outputs[..., 1]
    variance = nb_variance(mu, dispersion).sum(dim=-1).flatten().detach().float()
    if len(embeddings) > anchors:
        keep = torch.randperm(len(embeddings), device=embeddings.device)[:anchors]
        embeddings, node_classes, variance = embeddings[keep], node_classes[keep], variance[keep]
    weights = variance / variance.mean().clamp(min=1e-12)
    return supcon(embeddings, node_classes, temperature, anchor_weights=weights)
