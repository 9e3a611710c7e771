"""``digits``: scikit-learn's bundled 8x8 digits (1,797 images), the embedded default.

Pixels scaled to [0, 1] (mean and std of about 0.3; normalising is left out on purpose, so
the model sees exactly what the attack perturbs); a stratified 75/25 train/test split with
the data seed. Its defaults are the digits-demo protocol (PROTOCOLS.md): Step-10, smallcnn16,
Linf eps 0.1, PGD-10 training, PGD-20 evaluation, 25 one-cycle epochs.
"""

from __future__ import annotations

import numpy as np
import torch

from robx.core.data import Split, TaskData
from robx.core.hookspecs import hookimpl
from robx.core.registry import RegisterDataset


def load_digits_data(data_root: str | None, seed: int) -> TaskData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=digits.target, random_state=seed)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return TaskData("digits", [str(d) for d in range(10)], Split(x[train], y[train], y[train]),
                    Split(x[test], y[test], y[test]), (0.0,), (1.0,))


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("digits", load_digits_data, task="classification", default=True, defaults=dict(
        model="smallcnn16", epochs=25, batch_size=64, lr=0.05, schedule="onecycle",
        eps=0.1, alpha=0.025, steps=10, eval_steps=20,
        imbalance="step", ratio=10.0, augment=False,
    ))
