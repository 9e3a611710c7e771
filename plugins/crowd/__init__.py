"""Crowd learning: classifiers learnt from imbalanced crowd labels, and ``robx crowd``,
ICED's evaluation of them (dissertation ch. 3).

A plugin package: it adds its own registration hook, :func:`register_crowd_learners`
(``add_hookspecs``, as pytest's ``pytest_addhooks``), so any installed package can register
a crowd learner beside the built-in ones (ICED, :mod:`.iced`; majority vote and Dawid-Skene
with a classifier, :mod:`.baselines`). It also brings what they learn from: the
crowd-classification task (:mod:`.task`), the crowd-labelled datasets made from registered
balanced pairs (:mod:`.datasets`), label matrices with crowd-kit's aggregations
(:mod:`.labels`), the evaluation (:mod:`.evaluation`) and the command (:mod:`.command`).
robx's core imports none of them, nor crowd-kit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from robx import Collects, hookimpl, hookspec

name = "crowd"

#: the kind of entry :func:`register_crowd_learners` collects (``registry().entry(KIND, name)``)
KIND = "crowd learner"
REGISTERS = {"register_crowd_learners": Collects(KIND, "robx crowd --method")}

#: ``register(name, make, options=None)``, the argument of :func:`register_crowd_learners`
RegisterCrowdLearner = Callable[..., None]


@hookspec
def register_crowd_learners(register: RegisterCrowdLearner) -> None:
    """Register learners from crowd-labelled data: ``register(name, make, options=None)``.

    ``make(options, seed)`` returns a :class:`CrowdLearner`: ``fit(x, crowd_labels,
    num_classes) -> self`` (``crowd_labels``: examples x workers, -1 where missing),
    ``predict(x) -> classes`` and ``inferred_labels`` (its estimate of the training
    examples' true classes); it may fill ``history`` (a list of dicts, one per iteration) and
    ``details`` (a dict) for the report, where every list of training labels under a key
    ``<name>_labels`` becomes ``<name>_accuracy``, its accuracy against the truth. ``robx
    crowd --method NAME`` evaluates it.
    """


@hookimpl
def add_hookspecs(add: Callable[[object], None]) -> None:
    add(sys.modules[__name__])


class CrowdLearner(Protocol):
    inferred_labels: np.ndarray

    def fit(self, x: np.ndarray, crowd_labels: np.ndarray, num_classes: int) -> CrowdLearner: ...
    def predict(self, x: np.ndarray) -> np.ndarray: ...
