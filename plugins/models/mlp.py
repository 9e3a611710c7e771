"""A multi-layer perceptron on flattened inputs (Linear-BN-ReLU blocks), for tabular and
small tasks (the regression task's default)."""

from __future__ import annotations

import math

import torch.nn as nn

from robx import ModelInput, RegisterModel, classifier, hookimpl


def mlp(spec: ModelInput, hidden: int = 64, depth: int = 2) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    return classifier(spec, nn.Sequential(*layers), hidden)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("mlp", mlp)
