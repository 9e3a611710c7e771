"""``digits``: scikit-learn's bundled 8x8 digits (1,797 images), the embedded default.

Pixels scaled to [0, 1] (mean and std of about 0.3; normalising is left out on purpose, so
the model sees exactly what the attack perturbs); a stratified 75/25 train/test split with
the data seed. Its defaults are the digits-demo protocol (docs/protocols.md): Step-10, smallcnn16,
Linf eps 0.1, PGD-10 training, PGD-20 evaluation, 25 one-cycle epochs.

``digits-binary``: two of its digits (options ``majority``, ``minority``; 4 and 7 by
default) as GL-GAN's chapter builds its binary sets: balanced, 80 % training candidates, a
balanced 20 % test split; the protocol keeps 1 minority candidate in 20 (7 of 144).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robx import OptionError, RegisterDataset, Split, TaskData, balanced_pair, hookimpl


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


@dataclass
class DigitsPairOptions:
    majority: int = 4  # the case study's digits (dissertation 2.5: MNIST "4" vs "7")
    minority: int = 7


def load_digits_pair(data_root: str | None, seed: int, options: DigitsPairOptions) -> TaskData:
    """Two digits, balanced, 80 % training candidates and a balanced 20 % test split."""
    from sklearn.datasets import load_digits

    for digit in (options.majority, options.minority):
        if not 0 <= digit <= 9 or options.majority == options.minority:
            raise OptionError(f"digits-binary needs two different digits 0-9, got {options.majority} and "
                              f"{options.minority}")
    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    train, test = balanced_pair(x, torch.from_numpy(digits.target.astype(np.int64)), options.majority,
                                options.minority, seed)
    return TaskData("digits-binary", [str(options.majority), str(options.minority)], train, test)


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    register("digits", load_digits_data, task="classification", default=True, defaults=dict(
        model="smallcnn16", epochs=25, batch_size=64, lr=0.05, schedule="onecycle",
        eps=0.1, alpha=0.025, steps=10, eval_steps=20,
        imbalance="step", ratio=10.0, augment=False,
    ))
    # GL-GAN's USPS-like set (dissertation 2.4.1.1): 144 majority candidates; ratio 20 keeps 7
    # minority ones, USPS's count in Table 2.1 (r = 0.01 would keep one, too few for SMOTE)
    register("digits-binary", load_digits_pair, task="classification", options=DigitsPairOptions, defaults=dict(
        model="mlp", epochs=30, batch_size=32, lr=0.05, schedule="onecycle",
        eps=0.1, alpha=0.025, steps=10, eval_steps=20,
        imbalance="step", ratio=20.0, augment=False,
    ))
