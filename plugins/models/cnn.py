"""Small CNNs for the CPU protocols, four conv-BN-ReLU blocks and global average pooling.

``smallcnn`` (width 32, about 0.29 M parameters on CIFAR) and ``smallcnn16`` (width 16,
about 0.07 M; the digits default) pool twice; ``cnn4`` (widths 32-32-64-128, about 0.1 M;
the cifar10-lt-cpu v2 model) pools after each of its first three blocks, so its wider late
layers run on 8x8 and 4x4 maps and a step costs about what ``smallcnn16``'s does."""

from __future__ import annotations

import torch.nn as nn

from robx import ModelInput, OptionError, RegisterModel, classifier, hookimpl


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(spec: ModelInput, width: int) -> nn.Module:
    if len(spec.shape) != 3:
        raise OptionError(f"smallcnn needs image inputs (channels, height, width), got shape {spec.shape}")
    w = width
    body = nn.Sequential(
        _conv_bn(spec.shape[0], w), _conv_bn(w, 2 * w), nn.MaxPool2d(2),
        _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), _conv_bn(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return classifier(spec, body, 4 * w)


def cnn4(spec: ModelInput) -> nn.Module:
    if len(spec.shape) != 3:
        raise OptionError(f"cnn4 needs image inputs (channels, height, width), got shape {spec.shape}")
    body = nn.Sequential(
        _conv_bn(spec.shape[0], 32), nn.MaxPool2d(2), _conv_bn(32, 32), nn.MaxPool2d(2),
        _conv_bn(32, 64), nn.MaxPool2d(2), _conv_bn(64, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return classifier(spec, body, 128)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("smallcnn", lambda spec: small_cnn(spec, 32))
    register("smallcnn16", lambda spec: small_cnn(spec, 16))
    register("cnn4", cnn4)
