"""The evaluation of a registered oversampler (``robx oversample``; GL-GAN's protocol).

The evaluation is the chapter's (dissertation 2.4.1): a registered classification dataset
with its protocol (imbalanced training split, balanced test split), each oversampler's
augmented training set, scikit-learn's MLPClassifier, LinearSVC and AdaBoost with their
defaults trained on it, and macro-F1, micro-F1 and MCC on the test split. Beside them, the
share of synthetic examples whose nearest real training example belongs to another class
(the "interleaving" the chapter says SMOTE suffers from).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robx import OptionError, WRITTEN_BY, apply_protocol, atomic_write, make_directory, registry, write_json
from robx.plugins.oversampling import KIND, centroid_spread


#: The chapter's classifiers (scikit-learn defaults; ``random_state`` the seed)
CLASSIFIERS: tuple[str, ...] = ("mlpclassifier", "linearsvc", "adaboost")


def make_classifier(name: str, seed: int) -> Any:
    from sklearn.ensemble import AdaBoostClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    makers = {"mlpclassifier": MLPClassifier, "linearsvc": LinearSVC, "adaboost": AdaBoostClassifier}
    if name not in makers:
        raise OptionError(f"unknown classifier '{name}'; available: {', '.join(CLASSIFIERS)}")
    return makers[name](random_state=seed)


def classification_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, matthews_corrcoef

    return {"macro_f1": float(f1_score(truth, predicted, average="macro")),
            "micro_f1": float(f1_score(truth, predicted, average="micro")),
            "mcc": float(matthews_corrcoef(truth, predicted))}


def interleaving_share(real_x: np.ndarray, real_y: np.ndarray, synthetic_x: np.ndarray,
                       synthetic_y: np.ndarray) -> float | None:
    """Share of synthetic examples whose nearest real training example (Euclidean) has
    another class; ``None`` without synthetic examples."""
    if len(synthetic_x) == 0:
        return None
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=1).fit(real_x).kneighbors(synthetic_x, return_distance=False)[:, 0]
    return float(np.mean(real_y[nearest] != synthetic_y))


def spreads(real_x: np.ndarray, real_y: np.ndarray, synthetic_x: np.ndarray,
            synthetic_y: np.ndarray) -> dict[str, float | None]:
    """How far the synthetic examples of each minority class spread, beside its real ones:
    the mean Euclidean distance to the class centroid, averaged over the classes that got
    synthetic examples (a collapsed generator's spread is near 0); ``None`` without any."""
    classes = np.unique(synthetic_y)
    if len(classes) == 0:
        return {"synthetic_spread": None, "real_minority_spread": None}
    return {"synthetic_spread": float(np.mean([centroid_spread(synthetic_x[synthetic_y == c]) for c in classes])),
            "real_minority_spread": float(np.mean([centroid_spread(real_x[real_y == c]) for c in classes]))}


@dataclass
class OversampleJob:
    """One evaluation: a dataset under its protocol, one oversampler, one seed."""

    dataset: str
    method: str
    seed: int = 0
    ratio: float | None = None  # minority : majority = 1 : ratio; None = the dataset's default
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    classifiers: tuple[str, ...] = CLASSIFIERS
    data_root: str | None = None


def prepared_arrays(job: OversampleJob) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(task data, train x, train y, test x, test y): the dataset under its protocol with the
    job's seed (so every seed draws its own imbalanced subset), inputs flattened."""
    found = registry()
    spec = found.dataset(job.dataset)
    task = found.task_for(job.dataset)
    data = spec.read(job.data_root, job.seed, job.dataset_options)
    if task.labels_per_target:
        raise OptionError(f"dataset '{job.dataset}' labels every target; oversampling needs one class per example")
    ratio = job.ratio if job.ratio is not None else float(spec.defaults.get("ratio", 1.0))
    imbalance = str(spec.defaults.get("imbalance", "step")) if ratio != 1 else "none"
    data = apply_protocol(data, imbalance, ratio, spec.defaults.get("n_max"), None, 0.0, job.seed, per_target=False)
    as_task = task(data)

    def flat(x: Any) -> np.ndarray:
        inputs = as_task.inputs(x)
        return inputs.reshape(len(inputs), -1).numpy().astype(np.float32)

    return data, flat(data.train.x), data.train.labels.numpy(), flat(data.test.x), data.test.labels.numpy()


def run_oversample(job: OversampleJob) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(report, arrays): the augmented training set and every classifier's scores."""
    spec = registry().entry(KIND, job.method)
    for name in job.classifiers:
        make_classifier(name, 0)  # unknown names fail before any work
    data, x_train, y_train, x_test, y_test = prepared_arrays(job)
    started = time.perf_counter()
    sampler = spec.build(job.method_options, job.seed)
    x_res, y_res = sampler.fit_resample(x_train, y_train)
    resample_seconds = time.perf_counter() - started
    n_real = len(x_train)
    if not np.array_equal(y_res[:n_real], y_train):
        raise OptionError(f"oversampler '{job.method}' did not keep the original rows first")
    synthetic_x, synthetic_y = x_res[n_real:], y_res[n_real:]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default MLP and LinearSVC stop at max_iter, as in the chapter
        for name in job.classifiers:
            classifier = make_classifier(name, job.seed).fit(x_res, y_res)
            results[name] = classification_scores(y_test, classifier.predict(x_test))
    counts = np.bincount(y_train, minlength=data.num_classes).tolist()
    report = {
        "dataset": job.dataset, "method": job.method, "seed": job.seed, "classes": data.classes,
        "method_options": job.method_options, "dataset_options": job.dataset_options,
        "train_counts": counts, "generated": len(synthetic_x),
        "test_counts": np.bincount(y_test, minlength=data.num_classes).tolist(),
        "resample_seconds": round(resample_seconds, 2),
        "interleaving": interleaving_share(x_train, y_train, synthetic_x, synthetic_y),
        **spreads(x_train, y_train, synthetic_x, synthetic_y),
        **({"details": sampler.details} if getattr(sampler, "details", None) else {}),
        "classifiers": results,
    }
    arrays = {"x": x_res, "y": y_res, "generated": np.arange(len(x_res)) >= n_real}
    return report, arrays


#: What ``robx oversample --out`` writes; the report last, naming its writer (``--force`` checks it)
OUTPUTS = ("report.json", "augmented.npz")
WRITER = "robx oversample"


def write_outputs(out: Path, report: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """augmented.npz (plain arrays: ``np.load(allow_pickle=False)`` reads them), then
    report.json; each atomically."""
    make_directory(out)
    atomic_write(out / "augmented.npz", lambda handle: np.savez_compressed(handle, **arrays))
    write_json(out / "report.json", {**report, WRITTEN_BY: WRITER})
