"""Summary metrics of per-class accuracies (docs/protocols.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Sequence


def majority_classes(class_counts: Sequence[int]) -> list[int]:
    """The more frequent half of the classes (ties broken by class index).

    For an odd number of classes the middle class counts as minority. On balanced
    data this is simply the first half of the classes.
    """
    order = sorted(range(len(class_counts)), key=lambda c: (-class_counts[c], c))
    return sorted(order[: len(class_counts) // 2])


def is_balanced(class_counts: Sequence[int]) -> bool:
    """Every class has the same training count: the majority/minority halves mean nothing."""
    return len(set(class_counts)) <= 1


def summary_keys(balanced: bool) -> tuple[str, ...]:
    """The summaries worth showing: overall (average) and worst, plus the halves when imbalanced."""
    return ("overall", "worst") if balanced else ("overall", "majority", "minority", "worst")


def summarize(per_class: Sequence[float | None], class_counts: Sequence[int], higher_is_better: bool = True
              ) -> dict[str, float]:
    """overall (mean over classes), majority mean, minority mean, worst class, disparity.

    A class without test examples (``None``) has no score and is left out of every summary;
    the halves stay those of the training counts. For a metric where lower is better (an
    error) the worst class is the largest value and disparity is minority - majority, so a
    positive disparity always means the minority fares worse."""
    if len(per_class) != len(class_counts):
        raise ValueError("per_class and class_counts differ in length")
    majority = set(majority_classes(class_counts))
    scored = [(c, a) for c, a in enumerate(per_class) if a is not None]
    major = [a for c, a in scored if c in majority]
    minor = [a for c, a in scored if c not in majority]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    values = [a for _, a in scored]
    sign = 1.0 if higher_is_better else -1.0
    return {
        "overall": mean(values),
        "majority": mean(major),
        "minority": mean(minor),
        "worst": (min(values) if higher_is_better else max(values)) if values else float("nan"),
        "disparity": sign * (mean(major) - mean(minor)),
    }
