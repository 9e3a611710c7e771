"""``stgnn``: a spatiotemporal graph network with a negative-binomial head (the crime task's model).

Input: a history of graph signals, shape (batch, T, nodes, channels) (crime: T days of
every grid cell's counts per category, z-scored), with a learnt 8-dim embedding of each
node appended to every step and a learnt offset of every node's and category's decoder
output (natural training on NYC, 20 epochs, non-zero MAE: 1.06 with neither, 1.005 with
both; 40 epochs 0.978; the historical mean of each cell 0.942). Two blocks of

    causal temporal convolution (per node, stride 2) -> graph convolution  A_hat H W  -> ReLU,

with A_hat = D^-1/2 (A + I) D^-1/2 the symmetrically normalised adjacency (Kipf & Welling;
the STGCN block shape of Yu et al. 2018 without its gating; the strides quarter the steps
the graph products run on, which is what makes a CPU epoch minutes), then the last step is the
node embedding (the features, (batch, nodes, hidden)). A decoder gives, per node and
category, the negative-binomial mean mu > 0 and dispersion alpha > 0 through softplus
(the NB2 form, Var = mu + mu^2 / alpha): outputs (batch, nodes, categories, 2) =
(mu, alpha). Plain torch, not torch_geometric: the graph is fixed and small (a few hundred
grid cells, at most 9 neighbours each), so each block needs one sparse (nodes x nodes)
product, which ``torch.sparse.mm`` does (fwd + bwd of a batch of 16 NYC examples: 0.12 s
on 2 CPU cores).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx.core.errors import OptionError
from robx.core.hookspecs import hookimpl
from robx.core.models import RegisterModel
from robx.core.task import ModelInput


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
                 node_dim: int = 8) -> None:
        super().__init__()
        self.register_buffer("graph", normalized_adjacency(adjacency))
        # a learnt vector per node, beside its history: a cell's base rate is better learnt
        # over all training days than read from 30 sparse ones (Graph WaveNet's node embeddings)
        self.node_embedding = nn.Parameter(0.1 * torch.randn(len(adjacency), node_dim))
        self.blocks = nn.ModuleList([SpatioTemporalBlock(channels + node_dim, hidden, kernel),
                                     SpatioTemporalBlock(hidden, hidden, kernel)])
        self.decoder = nn.Linear(hidden, 2 * outputs)
        # and a learnt offset of each node's and category's (mu, alpha) before the softplus
        self.node_bias = nn.Parameter(torch.zeros(len(adjacency), outputs, 2))
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, nodes, _ = x.shape
        h = torch.cat([x, self.node_embedding.expand(batch, steps, nodes, -1)], dim=3)
        graph = self.graph.to_sparse()
        for block in self.blocks:
            h = block(h, graph)
        features = h[:, -1]  # (batch, nodes, hidden): the embedding after the whole history
        raw = self.decoder(features).view(*features.shape[:2], self.outputs, 2) + self.node_bias
        return features, F.softplus(raw) + 1e-6  # mu > 0, alpha > 0


def stgnn(spec: ModelInput, hidden: int = 32) -> nn.Module:
    if spec.graph is None or len(spec.shape) != 3:
        raise OptionError(f"model 'stgnn' needs graph examples of shape (time, nodes, channels) with a graph; "
                          f"got shape {spec.shape}{'' if spec.graph is not None else ' and no graph'}")
    _, nodes, channels = spec.shape
    if spec.graph.shape != (nodes, nodes):
        raise OptionError(f"model 'stgnn': the graph is {tuple(spec.graph.shape)} for {nodes} nodes")
    return STGNN(spec.graph, channels, spec.outputs, hidden)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("stgnn", stgnn)
