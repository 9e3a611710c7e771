"""ICED: learning from imbalanced crowd-labelled data (Wang's dissertation, ch. 3), reconstructed.

**A reconstruction**: no code is public; the formulas are the chapter's, the choices it leaves open are ours and are named below.

A classifier F = FC(G(x)) learns from W workers' labels whose true classes are imbalanced.
Two modules augment each other, after a warm-up:

* **Warm-up** (Algorithm 3.1): every example's label certainty S(x) (eq. 3.4, inverse
  variance of its one-hot crowd labels: maximal for unanimity, minimal for a tie), its
  majority-vote label, and groups by certainty: the highest, second-highest and
  third-highest distinct certainty levels, the rest "low" and unused. F trains
  ``warmup_epochs`` on the third-highest group, then on the second, then on the highest
  (``warmup = "certainty"``); ``"together"`` trains the same examples at once for 3 x
  ``warmup_epochs`` (the chapter's Trad-II), ``"all"`` every example at once (Trad-I).
  Those are Table 3.3's lengths in epochs (``warmup_length = "epochs"``), under which
  ICED-w and Trad-II take far fewer optimiser steps than Trad-I (the groups are small);
  ``"steps"`` gives every warm-up Trad-I's number of steps (3 x ``warmup_epochs`` passes
  over every example; ICED-w a third per group, in whole epochs of the group), so that the
  comparison is of what is fed, not of how long.
* **Iteration** (Algorithm 3.2), ``iterations`` times:
  1. *Synthetic minority embeddings* (eq. 3.3, 3.5): z = G(x); the candidates are the
     examples whose current label is the minority class; for candidate z_i and one of its
     ``k_neighbors`` nearest candidates z_r, z' = z_i + delta (z_r - z_i) with
     delta = S(x_r) / (S(x_i) + S(x_r)) + eta, eta ~ U(-``delta_noise``, ``delta_noise``),
     clipped to [0, 1]; as many as the majority outnumbers the minority, the candidates
     taken in turn (R = that count / m repetitions).
  2. *Synthetic crowd labels*: for each z', the ``k_neighbors`` nearest real embeddings;
     worker u's synthetic label is drawn from worker u's labels of those neighbours
     (missing if u labelled none of them), "simulating the annotation behaviour of each
     worker".
  3. *Decoding*: x' = Q(z') with a "pre-trained decoder" Q (the chapter's words; what it
     is trained on is ours). ``synthesis = "autoencoder"`` (the default): the embeddings of
     steps 1-2 are those of an autoencoder (E, Q) pre-trained after the warm-up on the real
     inputs for ``decoder_epochs`` (reconstruction MSE), as chapter 2's autoencoder, so Q
     inverts the space the interpolation happens in. ``"classifier"`` (robx before commit 703e196, 2026-12-06):
     z = G(x), the classifier's own features, and Q trained to map G(x) back to x, then
     ``decoder_refresh`` epochs per iteration because G moves; G keeps what separates the
     classes and drops the rest, so Q's images of interpolated features are poor (measured:
     55-65 % of them inferred minority; docs/results.md).
  4. *True-label inference* (eq. 3.1-3.2): Dawid-Skene EM on the real and synthetic crowd
     labels together (``robx.plugins.crowd.labels.dawid_skene_em``), started from the majority-vote
     posteriors, with the class prior Phi held uniform (``prior = "uniform"``: the
     "conventional uniform prior" the chapter says makes D&S fail on imbalanced labels, and
     which the balanced synthetic set makes right); ``"estimated"`` re-estimates Phi each
     M-step, as crowd-kit's D&S does (an ablation: it removes the premise); ``ds_iterations``
     steps.
  5. *Training*: one epoch of F on the real and synthetic examples with the inferred labels.

The real examples' inferred labels after each iteration are kept (``history``) so the
report can score them against the truth (the chapter's Figure 3.2: D&S-orig, D&S-first,
D&S-final), with the share of the synthetic examples D&S labels minority
(``synthetic_minority_share``), the warm-up's optimiser steps and the decoder's
reconstruction error. DNN, optimiser and batch as the D&S+DNN baseline (Adam 1e-3, batch 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from robx import OptionError, check_ranges, hookimpl
from robx.plugins.common import FeatureClassifier, fit_epochs
from robx.plugins.crowd import RegisterCrowdLearner
from robx.plugins.crowd.labels import MISSING, dawid_skene_em, majority_vote


def label_certainty(matrix: np.ndarray, num_classes: int, epsilon: float = 1e-3) -> np.ndarray:
    """Eq. 3.4: S(x) = 1 / (E_u ||y_u - E_u y||^2 + eps) over the example's one-hot crowd
    labels (missing ones left out). For one-hot labels the variance is 1 - sum_c p_c^2,
    p_c the share of the example's labels that say c: 0 for unanimity (S maximal), largest
    for a tie (S minimal)."""
    given = matrix != MISSING
    shares = np.stack([((matrix == c) & given).sum(axis=1) for c in range(num_classes)], axis=1)
    shares = shares / np.maximum(given.sum(axis=1, keepdims=True), 1)
    return 1.0 / (1.0 - (shares ** 2).sum(axis=1) + epsilon)


@dataclass
class ICEDOptions:
    warmup: Literal["certainty", "together", "all"] = "certainty"
    warmup_epochs: int = 5  # per certainty group (Table 3.3: "5 x 3")
    warmup_length: Literal["epochs", "steps"] = "epochs"
    prior: Literal["uniform", "estimated"] = "uniform"
    synthesis: Literal["autoencoder", "classifier"] = "autoencoder"
    iterations: int = 30
    k_neighbors: int = 5
    delta_noise: float = 0.1
    decoder_epochs: int = 50
    decoder_refresh: int = 2
    ds_iterations: int = 50
    lr: float = 1e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        # iterations = 0: the warm-up alone (Table 3.3's comparison)
        check_ranges(self, at_least_one=("warmup_epochs", "k_neighbors", "decoder_epochs", "decoder_refresh",
                                         "ds_iterations", "batch_size"),
                     positive=("lr",), non_negative=("delta_noise", "iterations"))
        for name, allowed in (("warmup", ("certainty", "together", "all")), ("warmup_length", ("epochs", "steps")),
                              ("prior", ("uniform", "estimated")), ("synthesis", ("autoencoder", "classifier"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


class Autoencoder(torch.nn.Module):
    """E: x -> z and Q: z -> x, two layers each (ReLU), trained on reconstruction (MSE)."""

    def __init__(self, inputs: int, hidden: int = 128, embedding: int = 32) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, embedding))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(embedding, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, inputs))


def batches_per_epoch(examples: int, batch_size: int) -> int:
    return -(-examples // batch_size)


def certainty_groups(certainty: np.ndarray) -> list[np.ndarray]:
    """[third-highest, second-highest, highest] certainty groups (Algorithm 3.1), each the
    examples at one distinct certainty level; lower levels form the unused low group."""
    levels = np.unique(np.round(certainty, 9))[::-1][:3]
    groups = [np.flatnonzero(np.isclose(certainty, level, rtol=0, atol=1e-6)) for level in levels]
    return groups[::-1]


class ICED:
    """The learner (``fit``, ``predict``, ``inferred_labels``, ``history``)."""

    def __init__(self, options: ICEDOptions | None = None, seed: int = 0) -> None:
        self.options = options or ICEDOptions()
        self.seed = seed
        self.history: list[dict] = []
        self.details: dict = {}

    def fit(self, x: np.ndarray, crowd: np.ndarray, num_classes: int) -> ICED:
        o = self.options
        counts = np.bincount(majority_vote(crowd), minlength=num_classes)
        if counts.min() <= o.k_neighbors:
            raise OptionError(f"iced: the minority has {counts.min()} majority-vote examples, but k_neighbors="
                              f"{o.k_neighbors} needs more than that; lower iced.k_neighbors")
        rng = np.random.default_rng(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._fit(torch.from_numpy(x), crowd, num_classes, rng)
        return self

    def _fit(self, x: torch.Tensor, crowd: np.ndarray, num_classes: int, rng: np.random.Generator) -> None:
        from sklearn.neighbors import NearestNeighbors

        o = self.options
        certainty = label_certainty(crowd, num_classes)
        labels = majority_vote(crowd)
        self.model = FeatureClassifier(x.shape[1], num_classes)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr)
        groups = certainty_groups(certainty)
        self.details["warmup_group_sizes"] = [len(g) for g in groups]  # third-highest, second, highest
        # Trad-I's length in optimiser steps: 3 x warmup_epochs passes over every example
        trad_i_steps = 3 * o.warmup_epochs * batches_per_epoch(len(x), o.batch_size)

        def epochs_for(examples: int, share: float) -> int:
            if o.warmup_length == "epochs":
                return o.warmup_epochs * round(3 * share)
            return max(1, round(share * trad_i_steps / batches_per_epoch(examples, o.batch_size)))

        warmup_steps = 0
        if o.warmup == "certainty":
            for group in groups:
                epochs = epochs_for(len(group), 1 / 3)
                fit_epochs(self.model, optimizer, x[group], torch.from_numpy(labels[group]), epochs, o.batch_size)
                warmup_steps += epochs * batches_per_epoch(len(group), o.batch_size)
        else:
            chosen = np.concatenate(groups) if o.warmup == "together" else np.arange(len(x))
            epochs = epochs_for(len(chosen), 1.0)
            fit_epochs(self.model, optimizer, x[chosen], torch.from_numpy(labels[chosen]), epochs, o.batch_size)
            warmup_steps = epochs * batches_per_epoch(len(chosen), o.batch_size)
        self.details["warmup_steps"] = warmup_steps
        posterior, _ = dawid_skene_em(crowd, num_classes, o.ds_iterations, o.prior)
        self.details["ds_original_labels"] = posterior.argmax(axis=1).tolist()
        self.inferred_labels = labels
        if o.iterations == 0:
            return
        if o.synthesis == "autoencoder":
            autoencoder = Autoencoder(x.shape[1], embedding=self.model.head.in_features)
            encode, decoder = autoencoder.encoder, autoencoder.decoder
            coder_optimizer = torch.optim.Adam(autoencoder.parameters(), lr=o.lr)
        else:
            encode = self.model.features
            decoder = torch.nn.Sequential(torch.nn.Linear(self.model.head.in_features, 128), torch.nn.ReLU(),
                                          torch.nn.Linear(128, x.shape[1]))
            coder_optimizer = torch.optim.Adam(decoder.parameters(), lr=o.lr)
        self._fit_decoder(encode, decoder, coder_optimizer, x, o.decoder_epochs)
        self.details["reconstruction_mse"] = self._reconstruction_error(encode, decoder, x)
        self.inferred_labels = labels
        minority_shares = []
        for _ in range(o.iterations):
            with torch.no_grad():
                z = encode(x).numpy()
            counts = np.bincount(labels, minlength=num_classes)
            minority, majority = int(counts.argmin()), int(counts.argmax())
            candidates = np.flatnonzero(labels == minority)
            needed = int(counts[majority] - counts[minority])
            if needed <= 0 or len(candidates) < 2:
                self.history.append({"inferred_labels": labels.tolist(), "synthetic": 0})
                fit_epochs(self.model, optimizer, x, torch.from_numpy(labels), 1, o.batch_size)
                continue
            k = min(o.k_neighbors, len(candidates) - 1)
            neighbours = NearestNeighbors(n_neighbors=k + 1).fit(z[candidates]).kneighbors(
                z[candidates], return_distance=False)[:, 1:]
            base = np.arange(needed) % len(candidates)
            partner = neighbours[base, rng.integers(0, k, needed)]
            i, r = candidates[base], candidates[partner]
            delta = certainty[r] / (certainty[i] + certainty[r]) + rng.uniform(-o.delta_noise, o.delta_noise, needed)
            delta = np.clip(delta, 0.0, 1.0)[:, None]
            z_new = z[i] + delta * (z[r] - z[i])
            synthetic_crowd = self._synthetic_labels(z, crowd, z_new, rng)
            with torch.no_grad():
                x_new = decoder(torch.from_numpy(z_new.astype(np.float32)))
            augmented_crowd = np.concatenate([crowd, synthetic_crowd])
            posterior, _ = dawid_skene_em(augmented_crowd, num_classes, o.ds_iterations, o.prior)
            augmented_labels = posterior.argmax(axis=1)
            labels = augmented_labels[:len(x)]
            synthetic_minority = float(np.mean(augmented_labels[len(x):] == minority))
            minority_shares.append(synthetic_minority)
            self.history.append({"inferred_labels": labels.tolist(), "synthetic": needed,
                                 "synthetic_minority_share": synthetic_minority})
            fit_epochs(self.model, optimizer, torch.cat([x, x_new]), torch.from_numpy(augmented_labels), 1,
                       o.batch_size)
            if o.synthesis == "classifier":  # G moved: the decoder follows it
                self._fit_decoder(encode, decoder, coder_optimizer, x, o.decoder_refresh)
        self.inferred_labels = labels
        self.details["synthetic_minority_share"] = float(np.mean(minority_shares)) if minority_shares else None

    def _fit_decoder(self, encode: torch.nn.Module, decoder: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     x: torch.Tensor, epochs: int) -> None:
        """Reconstruction (summed squared error per example): the autoencoder's encoder and
        decoder together, or only the decoder of the classifier's frozen embedding."""
        trains_encoder = encode is not self.model.features
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(self.options.batch_size):
                with torch.set_grad_enabled(trains_encoder):
                    z = encode(x[batch])
                loss = (decoder(z) - x[batch]).pow(2).sum(dim=1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    @staticmethod
    def _reconstruction_error(encode: torch.nn.Module, decoder: torch.nn.Module, x: torch.Tensor) -> float:
        """Mean squared error per input feature of x -> z -> x."""
        with torch.no_grad():
            return float((decoder(encode(x)) - x).pow(2).mean())

    def _synthetic_labels(self, z: np.ndarray, crowd: np.ndarray, z_new: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
        """Worker u's label of z': one of u's labels of z''s k nearest real embeddings."""
        from sklearn.neighbors import NearestNeighbors

        near = NearestNeighbors(n_neighbors=self.options.k_neighbors).fit(z).kneighbors(z_new, return_distance=False)
        labels = np.full((len(z_new), crowd.shape[1]), MISSING, dtype=np.int64)
        for row, members in enumerate(near):
            for worker in range(crowd.shape[1]):
                given = crowd[members, worker]
                given = given[given != MISSING]
                if len(given):
                    labels[row, worker] = given[rng.integers(len(given))]
            if (labels[row] == MISSING).all():  # no worker labelled a neighbour: the nearest's labels
                labels[row] = crowd[members[0]]
        return labels

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).argmax(dim=1).numpy()


@hookimpl
def register_crowd_learners(register: RegisterCrowdLearner) -> None:
    register("iced", lambda options, seed: ICED(options, seed), options=ICEDOptions)
