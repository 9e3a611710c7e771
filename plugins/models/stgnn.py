"""``stgnn``: a spatiotemporal graph network with a negative-binomial head (the crime task's model).

Input: a history of graph signals, shape (batch, T, nodes, channels) (crime: T days of
every grid cell's counts per category, z-scored), with a learnt 8-dim embedding of each
node appended to every step (Graph WaveNet's node embeddings). Two blocks of

    causal temporal convolution (per node, stride 2) -> graph convolution  A_hat H W  -> ReLU,

with A_hat = D^-1/2 (A + I) D^-1/2 the symmetrically normalised adjacency (Kipf & Welling;
the STGCN block shape of Yu et al. 2018 without its gating; the strides quarter the steps
the graph products run on, which is what makes a CPU epoch minutes). Two kernel-3 stride-2
convolutions see only the last 7 steps from their last output, so the node embedding
(the features, (batch, nodes, hidden)) reads the **whole history** (``whole_history``):

    features = ReLU(W [h_last ; mean_t h_t ; mean of the input over all T ; mean of the
                       input on the same weekday as the target (t-7, t-14, ...)])

(the mean over the second block's outputs covers every day; the two input means are the
long-window and weekly-seasonal skips). A decoder gives, per node and category, the
negative-binomial mean mu > 0 and dispersion alpha > 0 through softplus (the NB2 form,
Var = mu + mu^2 / alpha): outputs (batch, nodes, categories, 2) = (mu, alpha), plus a learnt
offset of every node's and category's (mu, alpha) before the softplus. With ``base_rate``
(the task's mean training target of every output, ``ModelInput.target_mean``), mu's offset
starts at softplus^-1(that mean) and the decoder at zero, so an untrained model predicts
each cell's historical mean, which it then learns to correct (measured, natural training
on NYC, 10 epochs, non-zero MAE: docs/results.md, crime-cpu).

``stgnn-last-week`` is the model before that change (issue 30): features from the last
step only (7 days of the 30 seen) and every offset learnt from zero; kept to reproduce the
earlier tables. Plain torch, not torch_geometric: the graph is fixed and small (a few hundred
grid cells, at most 9 neighbours each), so each block needs one sparse (nodes x nodes)
product, which ``torch.sparse.mm`` does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx import ModelInput, OptionError, RegisterModel, hookimpl


def normalized_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 (self loops added where missing)."""
    with_loops = ((adjacency + torch.eye(len(adjacency))) > 0).float()
    scale = with_loops.sum(dim=1).rsqrt()
    return scale[:, None] * with_loops * scale[None, :]


class SpatioTemporalBlock(nn.Module):
    """Causal temporal convolution per node (stride 2: half the steps), one graph
    convolution, ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.temporal = nn.Conv1d(channels_in, channels_out, kernel, stride=stride)
        self.spatial = nn.Linear(channels_out, channels_out)

    def forward(self, h: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        batch, steps, nodes, channels = h.shape
        per_node = h.permute(0, 2, 3, 1).reshape(batch * nodes, channels, steps)
        # left padding only (no step sees a later one), aligned so that the last output ends on the last step
        per_node = F.pad(per_node, (self.kernel - 1 + (steps - 1) % self.stride, 0))
        mixed = self.temporal(per_node)
        mixed = self.spatial(mixed.view(batch, nodes, -1, mixed.shape[-1]).transpose(2, 3))  # (b, nodes, t, c)
        out_steps = mixed.shape[2]
        # A_hat H: a sparse product, the grid graph has <= 9 entries a row
        spread = torch.sparse.mm(graph, mixed.transpose(0, 1).reshape(nodes, -1)).view(nodes, batch, out_steps, -1)
        return F.relu(spread.permute(1, 2, 0, 3))


class STGNN(nn.Module):
    """(batch, T, nodes, C) -> (node embeddings (batch, nodes, hidden), NB (mu, alpha) (batch, nodes, C, 2))."""

    def __init__(self, adjacency: torch.Tensor, channels: int, outputs: int, hidden: int = 32, kernel: int = 3,
                 node_dim: int = 8, whole_history: bool = True, base_rate: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("graph", normalized_adjacency(adjacency))
        self.node_embedding = nn.Parameter(0.1 * torch.randn(len(adjacency), node_dim))
        self.blocks = nn.ModuleList([SpatioTemporalBlock(channels + node_dim, hidden, kernel),
                                     SpatioTemporalBlock(hidden, hidden, kernel)])
        self.whole_history = whole_history
        # [last step ; mean over steps] of the blocks and [all-days ; same-weekday] means of the input
        self.summary = nn.Linear(2 * hidden + 2 * channels, hidden) if whole_history else None
        self.decoder = nn.Linear(hidden, 2 * outputs)
        self.node_bias = nn.Parameter(torch.zeros(len(adjacency), outputs, 2))
        if base_rate is not None:
            if base_rate.shape != (len(adjacency), outputs):
                raise OptionError(f"model 'stgnn': the base rate is {tuple(base_rate.shape)}, not (nodes, outputs) "
                                  f"= {(len(adjacency), outputs)}")
            with torch.no_grad():
                mean = base_rate.float().clamp(min=1e-3)
                self.node_bias[..., 0] = mean + torch.log(-torch.expm1(-mean))  # softplus^-1
                self.decoder.weight.zero_()
                self.decoder.bias.zero_()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, nodes, _ = x.shape
        h = torch.cat([x, self.node_embedding.expand(batch, steps, nodes, -1)], dim=3)
        graph = self.graph.to_sparse()
        for block in self.blocks:
            h = block(h, graph)
        if self.summary is None:
            features = h[:, -1]  # the last step: the last 7 days of the history
        else:
            # the same weekday as the target: days t-7, t-14, ... of the history
            weekday = x[:, torch.arange(steps - 7, -1, -7, device=x.device)] if steps >= 7 else x
            features = F.relu(self.summary(torch.cat([h[:, -1], h.mean(dim=1), x.mean(dim=1), weekday.mean(dim=1)],
                                                     dim=2)))
        raw = self.decoder(features).view(*features.shape[:2], self.outputs, 2) + self.node_bias
        return features, F.softplus(raw) + 1e-6  # mu > 0, alpha > 0


def stgnn(spec: ModelInput, hidden: int = 32, whole_history: bool = True, base_rate: bool = True,
          name: str = "stgnn") -> nn.Module:
    if spec.graph is None or len(spec.shape) != 3:
        raise OptionError(f"model '{name}' needs graph examples of shape (time, nodes, channels) with a graph; "
                          f"got shape {spec.shape}{'' if spec.graph is not None else ' and no graph'}")
    _, nodes, channels = spec.shape
    if spec.graph.shape != (nodes, nodes):
        raise OptionError(f"model '{name}': the graph is {tuple(spec.graph.shape)} for {nodes} nodes")
    return STGNN(spec.graph, channels, spec.outputs, hidden, whole_history=whole_history,
                 base_rate=spec.target_mean if base_rate else None)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("stgnn", stgnn)
    register("stgnn-last-week", lambda spec: stgnn(spec, whole_history=False, base_rate=False,
                                                       name="stgnn-last-week"))
