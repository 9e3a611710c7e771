"""Crowd label matrices: checks, majority vote and Dawid-Skene, and synthetic workers.

A crowd label matrix has one row per example and one column per worker; entries are class
indices, or :data:`MISSING` where the worker did not label the example. Majority vote and
Dawid-Skene come from crowd-kit (extra ``robx[crowd]``), imported only where used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robx import OptionError, RobxError

MISSING = -1


def _crowdkit() -> Any:
    try:
        import crowdkit.aggregation as aggregation
    except ImportError as error:
        raise RobxError("crowd-labelled data needs crowd-kit: pip install 'robx[crowd]'") from error
    return aggregation


def check_crowd_labels(matrix: np.ndarray, num_classes: int) -> None:
    """One-line errors for a label matrix no crowd learner can use."""
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise OptionError(f"crowd labels must be an (examples, workers) matrix, got shape {matrix.shape}")
    bad = (matrix != MISSING) & ((matrix < 0) | (matrix >= num_classes))
    if bad.any():
        raise OptionError(f"crowd labels must be classes 0..{num_classes - 1} or {MISSING} (missing); found "
                          f"{int(matrix[bad][0])}")
    empty_workers = np.flatnonzero((matrix == MISSING).all(axis=0))
    if len(empty_workers):
        raise OptionError(f"worker {int(empty_workers[0])} labelled no example (a column of missing labels); drop it")
    unlabelled = np.flatnonzero((matrix == MISSING).all(axis=1))
    if len(unlabelled):
        raise OptionError(f"example {int(unlabelled[0])} has no crowd label ({len(unlabelled)} such examples)")
    if len(np.unique(matrix[matrix != MISSING])) < 2:
        raise OptionError("the crowd labels hold one class only; nothing to learn")


def crowd_frame(matrix: np.ndarray) -> Any:
    """crowd-kit's long format: one (task, worker, label) row per given label."""
    import pandas as pd

    tasks, workers = np.nonzero(matrix != MISSING)
    return pd.DataFrame({"task": tasks, "worker": workers, "label": matrix[tasks, workers]})


def _as_array(series: Any, n: int) -> np.ndarray:
    return np.array(series.reindex(range(n)).to_numpy(dtype=np.int64))


def majority_vote(matrix: np.ndarray) -> np.ndarray:
    """crowd-kit's majority vote (ties go to the lowest class)."""
    return _as_array(_crowdkit().MajorityVote().fit_predict(crowd_frame(matrix)), len(matrix))


def dawid_skene(matrix: np.ndarray, iterations: int = 100) -> np.ndarray:
    """crowd-kit's Dawid-Skene (EM initialised from majority vote)."""
    return _as_array(_crowdkit().DawidSkene(n_iter=iterations).fit_predict(crowd_frame(matrix)), len(matrix))


def dawid_skene_em(crowd: np.ndarray, num_classes: int, iterations: int = 50,
                   prior: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """(posteriors (examples, classes), class prior): Dawid-Skene as soft EM (dissertation
    eq. 3.1-3.2).

    Start: each example's majority-vote shares as its posterior and a uniform prior Phi.
    M-step: Psi_u(a, b) = sum_i T(i, a) [y_iu = b] / sum_i T(i, a) [u labelled i] (a small
    floor keeps logs finite); E-step: T(i, a) ~ Phi_a prod_u Psi_u(a, y_iu) over the given
    labels. ``prior = "uniform"`` holds Phi uniform throughout, the "conventional uniform
    prior" the chapter says makes D&S fail on imbalanced true labels (what ICED's balanced
    synthetic set repairs); ``"estimated"`` re-estimates Phi_a = mean_i T(i, a) every step,
    as crowd-kit's ``DawidSkene`` does."""
    if prior not in ("uniform", "estimated"):
        raise OptionError(f"the D&S prior must be uniform or estimated, got {prior!r}")
    given = crowd != MISSING
    one_hot = np.stack([(crowd == c) & given for c in range(num_classes)], axis=2).astype(np.float64)  # (n, W, C)
    posterior = one_hot.sum(axis=1)
    posterior /= posterior.sum(axis=1, keepdims=True)
    class_prior = np.full(num_classes, 1.0 / num_classes)
    for _ in range(iterations):
        counts = np.einsum("ia,iub->uab", posterior, one_hot) + 1e-6  # (W, true a, given b)
        confusion = counts / counts.sum(axis=2, keepdims=True)
        log_post = np.log(class_prior)[None, :] + np.einsum("iub,uab->ia", one_hot, np.log(confusion))
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        converged = np.abs(new - posterior).max() < 1e-7
        posterior = new
        if prior == "estimated":
            class_prior = np.clip(new.mean(axis=0), 1e-6, None)
        if converged:
            break
    return posterior, class_prior


def simulate_workers(x: np.ndarray, truth: np.ndarray, workers: int, seed: int, easiest_error: float = 0.05,
                     hardest_error: float = 0.45, skill_spread: float = 0.4,
                     missing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(crowd labels, mislabelling probability per example): the synthetic workers of
    dissertation 3.3.1.1, made concrete (the chapter gives no numbers; ours below).

    A network (scikit-learn's MLPClassifier, one hidden layer of 64) is trained on the
    examples until its training accuracy reaches 98 % (or 300 epochs); its softmax
    probability of the true class orders each class's examples from easiest to hardest,
    and the example's mislabelling probability rises linearly with that rank from
    ``easiest_error`` to ``hardest_error``. Worker u has a skill factor s_u drawn from
    U(1 - skill_spread, 1 + skill_spread) and mislabels example i with probability
    min(0.95, s_u q_i), choosing a wrong class uniformly; each label is missing with
    probability ``missing``."""
    import warnings

    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    network = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1, warm_start=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(300):
            network.fit(x, truth)
            if network.score(x, truth) >= 0.98:
                break
    confidence = network.predict_proba(x)[np.arange(len(truth)), np.searchsorted(network.classes_, truth)]
    error = np.empty(len(truth))
    for c in np.unique(truth):
        members = np.flatnonzero(truth == c)
        ranks = np.argsort(np.argsort(-confidence[members]))  # 0 = most confident
        error[members] = easiest_error + (hardest_error - easiest_error) * ranks / max(len(members) - 1, 1)
    classes = int(truth.max()) + 1
    skills = rng.uniform(1 - skill_spread, 1 + skill_spread, workers)
    wrong_probability = np.minimum(0.95, error[:, None] * skills[None, :])
    wrong = rng.random((len(truth), workers)) < wrong_probability
    shift = rng.integers(1, max(classes, 2), (len(truth), workers))  # a wrong class, uniformly
    labels = np.where(wrong, (truth[:, None] + shift) % classes, truth[:, None])
    labels[rng.random(labels.shape) < missing] = MISSING
    for row in np.flatnonzero((labels == MISSING).all(axis=1)):  # every example keeps one label
        worker = rng.integers(workers)
        labels[row, worker] = truth[row] if not wrong[row, worker] else (truth[row] + shift[row, worker]) % classes
    return labels.astype(np.int64), error
