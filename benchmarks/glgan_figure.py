"""The picture of GL-GAN's case study (dissertation 2.5, Figure 2.6) on the bundled digits:
real minority digits of the imbalanced training set, SMOTE's synthetic ones (pixel space)
and GL-GAN's (SMOTE in the learned latent space, then the generator), and the Auto-only
ablation's (the decoder, no GAN). Writes docs/glgan-digits.png.

    python benchmarks/glgan_figure.py [--seed 0] [--count 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from robx.plugins.oversampling.evaluation import OversampleJob, run_oversample  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args()
    rows = []
    for title, method, options in (("SMOTE", "smote", {}), ("GL-GAN, Auto-only", "glgan", {"gan_epochs": 0}),
                                   ("GL-GAN", "glgan", {})):
        report, arrays = run_oversample(OversampleJob("digits-binary", method, args.seed, method_options=options,
                                                      classifiers=()))
        if not rows:
            real = arrays["x"][~arrays["generated"] & (arrays["y"] == 1)]
            majority = arrays["x"][~arrays["generated"] & (arrays["y"] == 0)]
            rows.append((f"real minority '{report['classes'][1]}' (all {len(real)})", real))
            rows.append((f"real majority '{report['classes'][0]}'", majority[:args.count]))
        generated = arrays["x"][arrays["generated"]]
        pick = np.random.default_rng(args.seed).choice(len(generated), args.count, replace=False)
        rows.append((f"{title}: synthetic minority", generated[pick]))
    fig, axes = plt.subplots(len(rows), args.count, figsize=(args.count * 0.8, len(rows) * 1.0))
    for r, (title, images) in enumerate(rows):
        for c in range(args.count):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[r, 0].set_title(title, loc="left", fontsize=9)
    fig.suptitle(f"digits-binary, seed {args.seed}: real vs synthetic minority digits", fontsize=10)
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "glgan-digits.png", dpi=110)
    print(DOCS / "glgan-digits.png")


if __name__ == "__main__":
    main()
