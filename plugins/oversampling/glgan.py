"""GL-GAN: minority oversampling from local and global information (Wang's dissertation,
chapter 2). **A reconstruction**: no code is public; the formulas are
the chapter's, the choices it leaves open are ours and are named below.

Given an imbalanced training set X_org (classes as in the chapter: one majority, the rest
minority), GL-GAN makes synthetic minority examples that follow the minority's local
structure and the data's global distribution:

1. **Autoencoder** E/Q trained on (eq. 2.3) L_A = L_rec + Lambda_1 L_clu + Lambda_2 R(theta):
   * L_rec = 1/|X| sum ||Q(E(x)) - x||^2 (eq. 2.1);
   * L_clu = 1/|X_maj| sum ||E(x) - zbar_maj||^2 + lambda_1/|X_min| sum ||E(x) - zbar_min||^2
     - lambda_2 ||zbar_maj - zbar_min||^2 (eq. 2.2): one tight cluster per class, far apart;
   * R(theta): L2 weight decay (``weight_decay``).
   Several minority classes (a robx run on digits): each class's scatter term (weight 1 for
   the largest class, lambda_1 for the others) and the mean squared distance between the class
   means over all pairs; for two classes this is eq. 2.2 exactly.
2. **SMOTE among the minority latents** (imbalanced-learn's ``SMOTE``, k nearest minority
   neighbours, z' = z + eta (z_n - z)) until every class has the majority's count: the
   balanced latent set Z = Z_maj u Z_min u Z_syn.
3. **GAN** (Algorithm 2.1), G initialised from the decoder Q; the discriminator D and the
   classifier C are E plus one layer, initialised from E. Each round, on a mini-batch:
   * D (eq. 2.4, least squares): 1/|X| sum (D(x) - 1)^2 + lambda/|Z| sum (D(G(z)) - 0)^2
     (the real examples drawn class-balanced, below);
   * C (eq. 2.5): 1/|X| sum ||C(x) - Gamma_x||^2 + lambda/|Z| sum ||C(G(z)) - Gamma_z||^2,
     C's outputs as softmax probabilities, Gamma the one-hot label;
   * G (eq. 2.6): 1/|X| sum_{Z_org} ||G(z_i) - x_i||^2 + lambda_1/|Z| sum (D(G(z)) - 1)^2
     + lambda_2/|Z| sum ||C(G(z)) - Gamma_z||^2.
   The synthetic examples are G(Z_syn); the augmented set X_org u G(Z_syn) is balanced.

Choices the chapter leaves open (ours): two-layer MLPs (``hidden`` units, LeakyReLU); the
latent passes through tanh, because eq. 2.2's separation term is otherwise unbounded below
(scaling every latent up lowers L_clu without end). Bounded by tanh alone it still
collapses the latent (measured: with Lambda_1 = 1, 89-99 % of the coordinates
saturate at +-1 and the minority's latents, hence every synthetic example, fall onto one
point), so robx rewards the distance between class means only up to ``separation_margin``
(min(||zbar_a - zbar_b||, m)^2; 0 restores eq. 2.2's unbounded term) and weights L_clu by
Lambda_1 = ``clustering_weight`` = 0.01 (the chapter gives no value; the measured choice,
docs/results.md, beside 0.1 and 1). The discriminator's real examples are drawn
class-balanced (``discriminator_real = "balanced"``): eq. 2.4 over the imbalanced X pulls
the generated minority toward the majority (measured: 95 % of the synthetic examples then
lie nearest a majority example); ``"all"`` draws them as the mini-batch does. Features are min-max scaled to [0, 1]
on the training set and Q, G end in a sigmoid; the autoencoder trains full-batch (a
mini-batch of an imbalanced set often holds no minority example, and the class means need
one); one D, one C and one G step per mini-batch ("discriminator-, classifier-,
generator-epochs" = 1), ``gan_epochs`` passes over Z (0: the chapter's Auto-only
ablation); the other weights 1 (the chapter gives none);
Adam, lr 1e-3. Everything runs under its own seeded random stream, so a run and its resume
make the same examples.

As a robx plugin (``--plugins glgan``) it replaces the run's training set before training
(``training_set``), so it composes with any adversary: ``--plugins glgan,pgd``.
``robx oversample --method glgan`` runs the chapter's evaluation (registered through
``register_oversamplers``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from robx import OptionError, Plugin, Split, TrainState, check_ranges, hookimpl
from robx.plugins.oversampling import RegisterOversampler, centroid_spread, check_minority_neighbours


@dataclass
class GLGANOptions:
    latent_dim: int = 16
    hidden: int = 128
    ae_epochs: int = 300  # full-batch Adam steps of the autoencoder
    gan_epochs: int = 30  # passes over the balanced latent set Z
    batch_size: int = 64
    lr: float = 1e-3
    k_neighbors: int = 5  # SMOTE's k
    clustering_weight: float = 0.01  # Lambda_1, eq. 2.3 (a measured choice: docs/results.md)
    minority_scatter_weight: float = 1.0  # lambda_1, eq. 2.2
    separation_weight: float = 1.0  # lambda_2, eq. 2.2
    separation_margin: float = 1.0  # class means rewarded for distance up to this; 0: eq. 2.2 unbounded
    discriminator_real: str = "balanced"  # "balanced": class-balanced real batches for D; "all": as drawn
    weight_decay: float = 1e-5  # Lambda_2 R(theta), eq. 2.3
    fake_weight: float = 1.0  # lambda, eqs. 2.4 and 2.5
    adversarial_weight: float = 1.0  # lambda_1, eq. 2.6
    classifier_weight: float = 1.0  # lambda_2, eq. 2.6

    def __post_init__(self) -> None:
        # gan_epochs = 0: the chapter's Auto-only ablation (the decoder maps the SMOTE latents back)
        check_ranges(self, at_least_one=("latent_dim", "hidden", "ae_epochs", "batch_size", "k_neighbors"),
                     positive=("lr",),
                     non_negative=("gan_epochs", "separation_margin", "clustering_weight", "minority_scatter_weight", "separation_weight",
                                   "weight_decay", "fake_weight", "adversarial_weight", "classifier_weight"))
        if self.discriminator_real not in ("balanced", "all"):
            raise ValueError(f"discriminator_real must be balanced or all, got {self.discriminator_real!r}")


def clustering_loss(z: torch.Tensor, labels: torch.Tensor, majority: int, minority_weight: float,
                    separation_weight: float, margin: float = float("inf")) -> torch.Tensor:
    """Eq. 2.2: within-class scatter (weight 1 for ``majority``, ``minority_weight`` for the
    others) minus ``separation_weight`` x the mean over class pairs of min(||zbar_a - zbar_b||,
    ``margin``)^2 (``margin`` = inf: the squared distance, unbounded, as eq. 2.2 writes it)."""
    classes = labels.unique()
    means = torch.stack([z[labels == c].mean(dim=0) for c in classes])
    scatter = z.new_zeros(())
    for c, mean in zip(classes.tolist(), means):
        weight = 1.0 if c == majority else minority_weight
        scatter = scatter + weight * (z[labels == c] - mean).pow(2).sum(dim=1).mean()
    pairs = torch.triu_indices(len(classes), len(classes), offset=1)
    if len(classes) > 1:
        distance = (means[pairs[0]] - means[pairs[1]]).pow(2).sum(dim=1).sqrt()
        separation = distance.clamp(max=margin).pow(2).mean()
    else:
        separation = z.new_zeros(())
    return scatter - separation_weight * separation


def least_squares_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor,
                                     fake_weight: float) -> torch.Tensor:
    """Eq. 2.4: mean (D(x) - 1)^2 over real examples + lambda mean D(G(z))^2 over generated."""
    return (real_scores - 1).pow(2).mean() + fake_weight * fake_scores.pow(2).mean()


def brier(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||softmax(C(x)) - Gamma||^2 per example (the terms of eqs. 2.5 and 2.6)."""
    return (logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).float()).pow(2).sum(dim=1)


def latent_smote(z: np.ndarray, labels: np.ndarray, k_neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic latents and their labels: imbalanced-learn's SMOTE, every class up to the
    majority's count (the rows it appends after the originals)."""
    from imblearn.over_sampling import SMOTE

    resampled, resampled_labels = SMOTE(k_neighbors=k_neighbors, random_state=seed).fit_resample(z, labels)
    assert np.array_equal(resampled[:len(z)], z), "SMOTE reordered the original rows"
    return resampled[len(z):].astype(np.float32), resampled_labels[len(z):].astype(np.int64)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, outputs))


class GLGAN:
    """The oversampler, with imbalanced-learn's ``fit_resample(X, y)`` shape: returns the
    original rows followed by the synthetic ones."""

    def __init__(self, options: GLGANOptions | None = None, seed: int = 0) -> None:
        self.options = options or GLGANOptions()
        self.seed = seed
        self.details: dict[str, float] = {}

    def fit_resample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        check_minority_neighbours(y, self.options.k_neighbors, "glgan")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            synthetic, synthetic_labels = self._generate(np.asarray(x, dtype=np.float32), np.asarray(y))
        return np.concatenate([x, synthetic.astype(x.dtype)]), np.concatenate([y, synthetic_labels])

    def _generate(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        low, high = x.min(axis=0), x.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        real = torch.from_numpy((x - low) / span)
        classes, labels_np = np.unique(y, return_inverse=True)
        labels = torch.from_numpy(labels_np)
        majority = int(np.bincount(labels_np).argmax())
        encoder = nn.Sequential(_mlp(real.shape[1], o.hidden, o.latent_dim), nn.Tanh())
        decoder = nn.Sequential(_mlp(o.latent_dim, o.hidden, real.shape[1]), nn.Sigmoid())

        # 1. autoencoder, eq. 2.3 (full batch: every class mean needs its members)
        params = [*encoder.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        for _ in range(o.ae_epochs):
            z = encoder(real)
            loss = (decoder(z) - real).pow(2).sum(dim=1).mean() + o.clustering_weight * clustering_loss(
                z, labels, majority, o.minority_scatter_weight, o.separation_weight,
                o.separation_margin or float("inf"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        # 2. SMOTE among the minority latents
        with torch.no_grad():
            z_org = encoder(real)
        z_syn, z_syn_labels = latent_smote(z_org.numpy(), labels_np, o.k_neighbors, self.seed)
        z_all = torch.cat([z_org, torch.from_numpy(z_syn)])
        z_labels = torch.cat([labels, torch.from_numpy(z_syn_labels)])
        minority_latents = z_org[labels != majority].numpy()
        self.details = {"latent_saturated_share": float((z_org.abs() > 0.99).float().mean()),
                        "minority_latent_spread": centroid_spread(minority_latents),
                        "synthetic_latent_spread": centroid_spread(z_syn)}
        # class-balanced draws of real examples for D: each class equally likely
        real_weights = (1.0 / torch.bincount(labels).double())[labels]

        # 3. GAN, Algorithm 2.1; G from Q, D and C from E plus one layer
        generator = copy.deepcopy(decoder)
        discriminator = nn.Sequential(copy.deepcopy(encoder), nn.Linear(o.latent_dim, 1))
        classifier = nn.Sequential(copy.deepcopy(encoder), nn.Linear(o.latent_dim, len(classes)))
        opt_g = torch.optim.Adam(generator.parameters(), lr=o.lr)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=o.lr)
        opt_c = torch.optim.Adam(classifier.parameters(), lr=o.lr)
        n_real = len(real)
        for _ in range(o.gan_epochs):
            for batch in torch.randperm(len(z_all)).split(o.batch_size):
                z, z_y = z_all[batch], z_labels[batch]
                pick = torch.randint(n_real, (len(batch),))
                x_real, y_real = real[pick], labels[pick]
                x_for_d = x_real
                if o.discriminator_real == "balanced":
                    x_for_d = real[torch.multinomial(real_weights, len(batch), replacement=True)]

                fake = generator(z).detach()
                d_loss = least_squares_discriminator_loss(discriminator(x_for_d), discriminator(fake), o.fake_weight)
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()

                c_loss = brier(classifier(x_real), y_real).mean() + o.fake_weight * brier(classifier(fake), z_y).mean()
                opt_c.zero_grad()
                c_loss.backward()
                opt_c.step()

                fake = generator(z)
                g_loss = ((generator(z_org[pick]) - x_real).pow(2).sum(dim=1).mean()
                          + o.adversarial_weight * (discriminator(fake) - 1).pow(2).mean()
                          + o.classifier_weight * brier(classifier(fake), z_y).mean())
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()

        with torch.no_grad():
            synthetic = generator(z_all[n_real:]).numpy()
        return synthetic * span + low, classes[z_labels[n_real:].numpy()]


class GLGANPlugin(Plugin):
    """Replaces a classification run's training set with GL-GAN's balanced one."""

    name = "glgan"
    Options = GLGANOptions

    def __init__(self, options: GLGANOptions) -> None:
        self.options = options

    @hookimpl
    def training_set(self, state: TrainState, train: Split) -> Split:
        if train.labels.dim() != 1 or not torch.equal(train.y, train.labels):
            raise OptionError(f"glgan oversamples classification data (one class per example); task "
                              f"'{state.task.name}' has other targets")
        inputs = state.task.inputs(train.x)
        flat = inputs.reshape(len(inputs), -1).numpy()
        resampled, labels = GLGAN(self.options, state.config.seed).fit_resample(flat, train.labels.numpy())
        x = torch.from_numpy(resampled).reshape(-1, *inputs.shape[1:])
        low, high = state.task.input_bounds
        labels_t = torch.from_numpy(labels)
        return Split(x.clamp(low, high), labels_t, labels_t.clone())

    @staticmethod
    @hookimpl
    def register_oversamplers(register: RegisterOversampler) -> None:
        register("glgan", lambda options, seed: GLGAN(options, seed), options=GLGANOptions)

