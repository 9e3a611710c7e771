"""``synthetic``: a zero-inflated regression of 8 features, generated from the data seed.

x ~ U[0, 1]^8; y = max(0, 4 (w . (x - 1/2) - q)) with w ~ N(0, I) and q the 75th percentile
of w . (x - 1/2), so about three quarters of the targets are exactly zero (the majority
group) and the rest grow linearly (the minority group), as in crime counts. 1,200 training
and 400 test examples. It exists to prove the engine task-agnostic in tests and to show the
regression task in seconds; its defaults train an MLP with PGD-5 in input space.
"""

from __future__ import annotations

import torch

from robx import RegisterDataset, Split, TaskData, hookimpl

FEATURES, TRAIN, TEST = 8, 1200, 400


def load_synthetic(data_root: str | None, seed: int) -> TaskData:
    generator = torch.Generator().manual_seed(10_007 + seed)
    x = torch.rand(TRAIN + TEST, FEATURES, generator=generator)
    score = (x - 0.5) @ torch.randn(FEATURES, generator=generator)
    y = 4 * (score - score.quantile(0.75)).clamp(min=0)
    labels = (y > 0).long()
    train, test = Split(x[:TRAIN], y[:TRAIN], labels[:TRAIN]), Split(x[TRAIN:], y[TRAIN:], labels[TRAIN:])
    return TaskData("synthetic", ["zero", "non-zero"], train, test,
                    mean=(0.5,) * FEATURES, std=(12 ** -0.5,) * FEATURES)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("synthetic", load_synthetic, task="regression", defaults=dict(
        model="mlp", epochs=8, batch_size=64, lr=0.05, schedule="onecycle",
        eps=0.05, alpha=0.0125, steps=5, eval_steps=10, imbalance="original", ratio=1.0, augment=False,
    ))
