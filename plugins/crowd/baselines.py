"""ICED's baselines for ``robx crowd``: majority vote or Dawid-Skene, then LR or a DNN.

The baselines of ICED's evaluation (dissertation 3.3.2.1): labels inferred by majority
vote (MV, crowd-kit's) or Dawid-Skene (D&S), then a classifier trained on them:
scikit-learn's logistic regression (LR) or the DNN (``robx.plugins.common.FeatureClassifier``,
Adam 1e-3, ``epochs`` passes, batch 32).

``ds-lr`` / ``ds-dnn`` run D&S as the chapter describes it, with the conventional uniform
class prior held fixed (``robx.plugins.crowd.labels.dawid_skene_em``, 100 steps): the D&S whose failure
on imbalanced true labels ICED's premise is. ``dsck-lr`` / ``dsck-dnn`` use crowd-kit's
``DawidSkene``, which re-estimates the class prior every step (a stronger baseline than the
chapter's; docs/results.md reports both). ``mv-lr``, ``mv-dnn`` as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robx import check_ranges, hookimpl
from robx.plugins.common import FeatureClassifier, fit_epochs
from robx.plugins.crowd import RegisterCrowdLearner
from robx.plugins.crowd.labels import dawid_skene, dawid_skene_em, majority_vote

#: the plugin's name (its module's, "baselines", would not say whose)
name = "crowd-baselines"


@dataclass
class DNNOptions:
    epochs: int = 45  # ICED's 3 x 5 warm-up epochs + 30 iterations
    lr: float = 1e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("epochs", "batch_size"), positive=("lr",))


class InferThenClassify:
    """Infer hard labels from the crowd (``infer``), then fit ``classifier`` on them."""

    def __init__(self, infer: str, classifier: str, options: DNNOptions | None, seed: int) -> None:
        self.infer, self.classifier, self.options, self.seed = infer, classifier, options or DNNOptions(), seed

    def fit(self, x: np.ndarray, crowd_labels: np.ndarray, num_classes: int) -> InferThenClassify:
        if self.infer == "mv":
            self.inferred_labels = majority_vote(crowd_labels)
        elif self.infer == "dsck":
            self.inferred_labels = dawid_skene(crowd_labels)
        else:
            self.inferred_labels = dawid_skene_em(crowd_labels, num_classes, 100, prior="uniform")[0].argmax(axis=1)
        if self.classifier == "lr":
            from sklearn.linear_model import LogisticRegression

            self.model = LogisticRegression(max_iter=1000, random_state=self.seed).fit(x, self.inferred_labels)
            return self
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = FeatureClassifier(x.shape[1], num_classes)
            optimizer = torch.optim.Adam(self.model.parameters(), lr=self.options.lr)
            fit_epochs(self.model, optimizer, torch.from_numpy(x), torch.from_numpy(self.inferred_labels),
                       self.options.epochs, self.options.batch_size)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.classifier == "lr":
            return self.model.predict(x)
        self.model.eval()
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).argmax(dim=1).numpy()


@hookimpl
def register_crowd_learners(register: RegisterCrowdLearner) -> None:
    for infer in ("mv", "ds", "dsck"):
        register(f"{infer}-lr", lambda options, seed, infer=infer: InferThenClassify(infer, "lr", None, seed))
        register(f"{infer}-dnn", lambda options, seed, infer=infer: InferThenClassify(infer, "dnn", options, seed),
                 options=DNNOptions)
