"""What epoch loggers write: a metrics.jsonl record flattened into named numbers.

One function, so that metrics.csv, TensorBoard, the one line per epoch printed without a
terminal and any logger an installed package registers (``register_loggers``) name the same
numbers the same way.
"""

from __future__ import annotations

import math
from typing import Any


def _mean(values: list[float | None]) -> float:
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else math.nan


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """``epoch``, ``loss``, ``lr``, ``seconds``, each loss term (``loss/<term>``), then for the
    training and validation statistics (``train``, ``val``) of the clean and robust scores
    their mean over classes, their worst class (the lowest, or the highest for an error) and
    each class's (``val/robust/class_3``), and the plugins' diagnostics (``diagnostics/<name>``)."""
    scalars: dict[str, float] = {"epoch": int(record["epoch"]), "loss": float(record["loss"]),
                                 "lr": float(record["lr"]), "seconds": float(record["seconds"])}
    scalars.update({f"loss/{name}": float(value) for name, value in record.get("loss_terms", {}).items()})
    for split in ("train", "val"):
        stats = record.get(split)
        if not stats:
            continue
        higher_is_better = bool(record.get("higher_is_better", True))
        for kind in ("clean", "robust"):
            values = stats.get(kind)
            if values is None:
                continue
            scored = [v for v, n in zip(values, stats["counts"]) if n]
            scalars[f"{split}/{kind}/mean"] = _mean(scored)
            scalars[f"{split}/{kind}/worst"] = (min(scored) if higher_is_better else max(scored)) if scored else math.nan
            scalars.update({f"{split}/{kind}/class_{c}": float(v) for c, v in enumerate(values) if v is not None})
    scalars.update({f"diagnostics/{name}": float(value) for name, value in record.get("diagnostics", {}).items()})
    return scalars
