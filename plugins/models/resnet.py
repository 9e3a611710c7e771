"""Residual networks of the papers: ResNet-18 (CIFAR variant; SRAT, Imb-Mix, DAFA),
pre-activation ResNet-18 (FAIR-TAT) and WideResNet-28-10 / 34-10 (TRADES, MART)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx import ModelInput, OptionError, RegisterModel, classifier, hookimpl


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


def _channels(spec: ModelInput, name: str) -> int:
    if len(spec.shape) != 3:
        raise OptionError(f"{name} needs image inputs (channels, height, width), got shape {spec.shape}")
    return spec.shape[0]


def resnet18(spec: ModelInput) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool; He et al. 2016)."""
    stages, dim = _stages(BasicBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    stem = nn.Sequential(nn.Conv2d(_channels(spec, "resnet18"), 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True))
    return classifier(spec, nn.Sequential(stem, stages, nn.AdaptiveAvgPool2d(1), nn.Flatten()), dim)


def preact_resnet18(spec: ModelInput) -> nn.Module:
    """Pre-activation ResNet-18 (He et al. 2016b), as used by FAIR-TAT."""
    stages, dim = _stages(PreActBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    body = nn.Sequential(
        nn.Conv2d(_channels(spec, "preactresnet18"), 64, 3, 1, 1, bias=False), stages,
        nn.BatchNorm2d(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return classifier(spec, body, dim)


def wide_resnet(spec: ModelInput, depth: int, widen: int) -> nn.Module:
    """WideResNet-depth-widen (Zagoruyko & Komodakis 2016), pre-activation blocks."""
    if (depth - 4) % 6:
        raise OptionError("WideResNet depth must be 6n + 4")
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    stages, dim = _stages(PreActBlock, 16, widths, (n, n, n), (1, 2, 2))
    body = nn.Sequential(
        nn.Conv2d(_channels(spec, f"wrn{depth}-{widen}"), 16, 3, 1, 1, bias=False), stages,
        nn.BatchNorm2d(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return classifier(spec, body, dim)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("resnet18", resnet18)
    register("preactresnet18", preact_resnet18)
    register("wrn28-10", lambda spec: wide_resnet(spec, 28, 10))
    register("wrn34-10", lambda spec: wide_resnet(spec, 34, 10))
