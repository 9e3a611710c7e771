"""Models. Each takes inputs in [0, 1] (normalisation is a layer inside, so attacks and
budgets live in pixel space) and returns ``(features, logits)``; features are the
penultimate representation that feature-space losses read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx.core.errors import OptionError


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``normalize -> body -> features -> linear head``."""

    def __init__(self, normalize: nn.Module, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.normalize(x))
        return features, self.head(features)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn_body(in_channels: int, width: int) -> tuple[nn.Module, int]:
    """Four conv-BN-ReLU blocks with two max-pools and global average pooling."""
    w = width
    body = nn.Sequential(
        _conv_bn(in_channels, w), _conv_bn(w, 2 * w), nn.MaxPool2d(2),
        _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), _conv_bn(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, 4 * w


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


def _stages(block: Callable[..., nn.Module], cin: int, widths: Sequence[int], blocks: Sequence[int],
            strides: Sequence[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width, count, stride in zip(widths, blocks, strides):
        for i in range(count):
            layers.append(block(cin, width, stride if i == 0 else 1))
            cin = width
    return nn.Sequential(*layers), cin


def resnet18_body(in_channels: int) -> tuple[nn.Module, int]:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool; He et al. 2016)."""
    stages, dim = _stages(BasicBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    return nn.Sequential(stem, stages, nn.AdaptiveAvgPool2d(1), nn.Flatten()), dim


def preact_resnet18_body(in_channels: int) -> tuple[nn.Module, int]:
    """Pre-activation ResNet-18 (He et al. 2016b), as used by FAIR-TAT."""
    stages, dim = _stages(PreActBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    body = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), stages,
        nn.BatchNorm2d(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, dim


def wide_resnet_body(in_channels: int, depth: int, widen: int) -> tuple[nn.Module, int]:
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016), pre-activation blocks."""
    if (depth - 4) % 6:
        raise OptionError("WideResNet depth must be 6n + 4")
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    stages, dim = _stages(PreActBlock, 16, widths, (n, n, n), (1, 2, 2))
    body = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), stages,
        nn.BatchNorm2d(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return body, dim


MODELS: dict[str, Callable[[int], tuple[nn.Module, int]]] = {
    "smallcnn": lambda c: small_cnn_body(c, 32),
    "smallcnn16": lambda c: small_cnn_body(c, 16),
    "resnet18": resnet18_body,
    "preactresnet18": preact_resnet18_body,
    "wrn28-10": lambda c: wide_resnet_body(c, 28, 10),
    "wrn34-10": lambda c: wide_resnet_body(c, 34, 10),
}


def build_model(
    name: str, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    if name not in MODELS:
        raise OptionError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    body, dim = MODELS[name](in_channels)
    return Classifier(Normalize(mean, std), body, dim, num_classes)
