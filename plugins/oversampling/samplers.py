"""imbalanced-learn's oversamplers for ``robx oversample``: GL-GAN's baselines.

The baselines of GL-GAN's evaluation (dissertation 2.4.2): ``none`` (the imbalanced set as is), ``random``
(RandomOverSampler: minority duplicates), ``smote``, ``borderline-smote`` and ``adasyn``,
each with imbalanced-learn's defaults, balancing every class to the majority's count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robx import OptionError, check_ranges, hookimpl
from robx.plugins.oversampling import Oversampler, RegisterOversampler, check_minority_neighbours


#: the plugin's name (its module's, "samplers", would not say what they sample)
name = "oversamplers"


class NoResampling:
    def fit_resample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y


@dataclass
class NeighbourOptions:
    k_neighbors: int = 5

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("k_neighbors",))


class Checked:
    """An imbalanced-learn sampler, behind robx's one-line check of its neighbour count."""

    def __init__(self, sampler: Oversampler, k_neighbors: int | None, name: str) -> None:
        self.sampler, self.k_neighbors, self.name = sampler, k_neighbors, name

    def fit_resample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        check_minority_neighbours(y, self.k_neighbors if self.k_neighbors is not None else 0, self.name)
        try:
            return self.sampler.fit_resample(x, y)
        except (ValueError, RuntimeError) as error:  # e.g. ADASYN finding no majority neighbour
            raise OptionError(f"{self.name}: {str(error).splitlines()[0]}") from error


@hookimpl
def register_oversamplers(register: RegisterOversampler) -> None:
    from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE, RandomOverSampler

    register("none", lambda options, seed: NoResampling())
    register("random", lambda options, seed: Checked(RandomOverSampler(random_state=seed), None, "random"))
    register("smote", lambda options, seed: Checked(
        SMOTE(k_neighbors=options.k_neighbors, random_state=seed), options.k_neighbors, "smote"),
        options=NeighbourOptions)
    register("borderline-smote", lambda options, seed: Checked(
        BorderlineSMOTE(k_neighbors=options.k_neighbors, random_state=seed), options.k_neighbors, "borderline-smote"),
        options=NeighbourOptions)
    register("adasyn", lambda options, seed: Checked(
        ADASYN(n_neighbors=options.k_neighbors, random_state=seed), options.k_neighbors, "adasyn"),
        options=NeighbourOptions)
