"""Oversampling: data-level methods that add synthetic minority examples, and ``robx
oversample``, GL-GAN's evaluation of them (dissertation 2.4).

A plugin package: it adds its own registration hook, :func:`register_oversamplers`
(``add_hookspecs``, as pytest's ``pytest_addhooks``), so any installed package can register
an oversampler beside the built-in ones: imbalanced-learn's samplers (:mod:`.samplers`) and
GL-GAN (:mod:`.glgan`, also a training plugin, ``--plugins glgan``). The evaluation lives in
:mod:`.evaluation`, the command in :mod:`.command`; robx's core imports none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from robx import Collects, OptionError, hookimpl, hookspec

name = "oversampling"

#: the kind of entry :func:`register_oversamplers` collects (``registry().entry(KIND, name)``)
KIND = "oversampler"
REGISTERS = {"register_oversamplers": Collects(KIND, "robx oversample --method")}

#: ``register(name, make, options=None)``, the argument of :func:`register_oversamplers`
RegisterOversampler = Callable[..., None]


@hookspec
def register_oversamplers(register: RegisterOversampler) -> None:
    """Register data-level oversamplers: ``register(name, make, options=None)``.

    ``make(options, seed)`` returns an :class:`Oversampler`, whose ``fit_resample(X, y) ->
    (X_res, y_res)`` (imbalanced-learn's) keeps the original rows first, then the synthetic
    ones; ``options`` is a dataclass of its settings (``--set NAME.KEY=VALUE``). ``robx
    oversample --method NAME`` evaluates it.
    """


@hookimpl
def add_hookspecs(add: Callable[[object], None]) -> None:
    add(sys.modules[__name__])


class Oversampler(Protocol):
    def fit_resample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def check_minority_neighbours(labels: np.ndarray, k_neighbors: int, who: str) -> None:
    """One-line errors for data an interpolating oversampler cannot serve: one class only,
    or a class with no more than ``k_neighbors`` examples (SMOTE's neighbours are its own)."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise OptionError(f"{who}: the training set has one class only ({classes.tolist()}); nothing to oversample")
    smallest = int(counts.argmin())
    if counts[smallest] <= k_neighbors:
        raise OptionError(f"{who}: class {classes[smallest]} has {counts[smallest]} training examples, but "
                          f"k_neighbors={k_neighbors} needs more than that; lower {who}.k_neighbors")


def centroid_spread(points: np.ndarray) -> float:
    """Mean Euclidean distance of the points to their centroid (0 for one point or none)."""
    if len(points) < 2:
        return 0.0
    return float(np.linalg.norm(points - points.mean(axis=0), axis=1).mean())
