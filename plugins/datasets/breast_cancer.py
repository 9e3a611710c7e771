"""``breast-cancer``: scikit-learn's bundled Wisconsin diagnostic table (569 tumours, 30
features) as GL-GAN's chapter builds its binary sets (2.4.1.1): benign (majority) and
malignant (minority) balanced at 212 each, 80 % training candidates and a balanced 20 % test
split; features min-max scaled to [0, 1] with the training candidates' range (the test
split clipped to it). The protocol keeps 1 minority candidate in 20 (8 of 170).
"""

from __future__ import annotations

import numpy as np
import torch

from robx import RegisterDataset, Split, TaskData, balanced_pair, hookimpl


def load_breast_cancer_pair(data_root: str | None, seed: int) -> TaskData:
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    x = torch.from_numpy(table.data.astype(np.float32))
    benign, malignant = list(table.target_names).index("benign"), list(table.target_names).index("malignant")
    train, test = balanced_pair(x, torch.from_numpy(table.target.astype(np.int64)), benign, malignant, seed)
    low, high = train.x.min(dim=0).values, train.x.max(dim=0).values
    span = torch.where(high > low, high - low, torch.ones_like(high))

    def scaled(split: Split) -> Split:
        return Split(((split.x - low) / span).clamp(0, 1), split.y, split.labels)

    return TaskData("breast-cancer", ["benign", "malignant"], scaled(train), scaled(test))


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("breast-cancer", load_breast_cancer_pair, task="classification", defaults=dict(
        model="mlp", epochs=30, batch_size=32, lr=0.05, schedule="onecycle",
        eps=0.05, alpha=0.0125, steps=10, eval_steps=20,
        imbalance="step", ratio=20.0, augment=False,
    ))
