"""Crowd-labelled datasets, made from registered balanced pairs as ICED's chapter makes its
synthetic sets (dissertation 3.3.1.1): synthetic workers label every training candidate of
the pair, then 90 % of the minority candidates are removed.

``digits-crowd`` (ICED's USPS-Syn) from ``digits-binary``, ``breast-cancer-crowd`` (the
tabular set standing for GSAD-Syn) from ``breast-cancer``, ``cifar10-pair-crowd`` (Gisette-Syn's
construction) from ``cifar10-pair``; each reads its pair through the registry, so the pair's
own options and data location apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from robx import RegisterDataset, Split, TaskData, check_ranges, hookimpl, registry
from robx.plugins.crowd.labels import majority_vote, simulate_workers

#: the plugin's name (its module's, "datasets", would not say whose)
name = "crowd-datasets"


@dataclass
class CrowdData(TaskData):
    """Task data whose training targets are crowd labels (examples x workers)."""

    #: the true classes of the training examples, for diagnostics (inferred-label accuracy)
    #: only, never for training
    train_truth: torch.Tensor | None = None


@dataclass
class CrowdDataOptions:
    """How a crowd-labelled binary set is made from a balanced pair (dissertation 3.3.1.1)."""

    workers: int = 5
    minority_removed: float = 0.9  # share of the minority's training candidates removed
    missing: float = 0.0  # share of missing labels
    easiest_error: float = 0.05
    hardest_error: float = 0.45

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("workers",), fractions=("easiest_error", "hardest_error"))
        if not 0 <= self.minority_removed < 1 or not 0 <= self.missing < 1:
            raise ValueError(f"minority_removed and missing must be in [0, 1), got {self.minority_removed} and "
                             f"{self.missing}")
        if self.easiest_error > self.hardest_error:
            raise ValueError(f"easiest_error {self.easiest_error} is above hardest_error {self.hardest_error}")


def crowd_dataset(name: str, classes: list[str], train: Split, test: Split, seed: int,
                  options: CrowdDataOptions) -> CrowdData:
    """A :class:`CrowdData` of crowd-labelled training examples from a balanced
    pair's training candidates (label 1 = the minority): synthetic workers label every
    candidate (:func:`simulate_workers`, difficulty from a network trained on the balanced
    candidates), then ``minority_removed`` of the minority candidates are dropped by their
    true label. Inputs become float features in [0, 1]; the test split keeps true labels."""
    def features(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).reshape(len(x), -1)

    x, truth = features(train.x), train.labels.numpy()
    crowd, _ = simulate_workers(x.numpy(), truth, options.workers, seed, options.easiest_error,
                                options.hardest_error, missing=options.missing)
    rng = np.random.default_rng(seed)
    minority = rng.permutation(np.flatnonzero(truth == 1))
    dropped = minority[:int(round(options.minority_removed * len(minority)))]
    kept = torch.from_numpy(np.setdiff1d(np.arange(len(truth)), dropped))
    crowd_t = torch.from_numpy(crowd)[kept]
    voted = torch.from_numpy(majority_vote(crowd_t.numpy()).copy())
    x_test = features(test.x)
    return CrowdData(name, classes, Split(x[kept], crowd_t, voted), Split(x_test, test.labels, test.labels),
                     train_truth=train.labels[kept])


@dataclass
class DigitsCrowdOptions(CrowdDataOptions):
    """Table 3.1's USPS-Syn: 9 workers. Its three highest certainty groups hold 103 of 734
    examples (14 %); errors from 0.35 to 0.5 put 38 % there with a majority vote right on
    66 % of the candidates (heavier noise takes the vote toward chance before the share
    falls further: 0.45-0.5 gives 30 % at 53 %)."""

    majority: int = 4
    minority: int = 7
    workers: int = 9
    easiest_error: float = 0.35
    hardest_error: float = 0.5


@dataclass
class BreastCancerCrowdOptions(CrowdDataOptions):
    """Table 3.1's GSAD-Syn (the tabular set it stands for): 11 workers; errors from 0.2 to
    0.5 put about 19 % of the candidates in the three highest certainty groups (GSAD-Syn:
    507 of 2,575, 20 %)."""

    workers: int = 11
    easiest_error: float = 0.2
    hardest_error: float = 0.5


@dataclass
class PairCrowdOptions(CrowdDataOptions):
    """Table 3.1's Gisette-Syn: 7 workers; errors from 0.15 to 0.5 put about 64 % of the
    candidates in the three highest certainty groups (Gisette-Syn: 2,043 of 3,080, 66 %)."""

    majority: str = "cat"
    minority: str = "dog"
    per_class: int = 1000
    workers: int = 7
    easiest_error: float = 0.15
    hardest_error: float = 0.5


def crowd_labelled(name: str, pair: str, pair_options: tuple[str, ...] = ()) -> Callable[..., CrowdData]:
    """The loader of the dataset ``name``: the registered balanced ``pair`` (given the crowd
    options' fields named in ``pair_options``), crowd-labelled."""

    def load(data_root: str | None, seed: int, options: CrowdDataOptions) -> CrowdData:
        given = {field: getattr(options, field) for field in pair_options}
        base = registry().dataset(pair).read(data_root, seed, given)
        return crowd_dataset(name, base.classes, base.train, base.test, seed, options)

    return load


@hookimpl
def register_datasets(register: RegisterDataset) -> None:
    # ICED's USPS-Syn: 143 majority and 14 minority training examples (90 % removed), 9 workers
    register("digits-crowd", crowd_labelled("digits-crowd", "digits-binary", ("majority", "minority")),
             task="crowd-classification", options=DigitsCrowdOptions,
             defaults=dict(model="mlp", epochs=30, batch_size=32, lr=0.05, schedule="onecycle", eps=0.1,
                           alpha=0.025, steps=10, eval_steps=20, imbalance="original", ratio=1.0, augment=False))
    # ICED's construction on the table: 170 benign and 17 malignant training examples, 11 workers
    register("breast-cancer-crowd", crowd_labelled("breast-cancer-crowd", "breast-cancer"),
             task="crowd-classification", options=BreastCancerCrowdOptions,
             defaults=dict(model="mlp", epochs=30, batch_size=32, lr=0.05, schedule="onecycle", eps=0.05,
                           alpha=0.0125, steps=10, eval_steps=20, imbalance="original", ratio=1.0, augment=False))
    # ICED's construction on a CIFAR-10 pair: 800 majority, 80 minority training images
    register("cifar10-pair-crowd", crowd_labelled("cifar10-pair-crowd", "cifar10-pair",
                                                  ("majority", "minority", "per_class")),
             task="crowd-classification", options=PairCrowdOptions,
             defaults=dict(model="mlp", epochs=30, batch_size=128, lr=0.05, schedule="onecycle",
                           eps=8 / 255, alpha=2 / 255, steps=5, eval_steps=20, imbalance="original", ratio=1.0,
                           augment=False))
