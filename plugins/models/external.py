"""``--model torchvision:ARCH`` and ``--model timm:ARCH``: any architecture of those
libraries, adapted to robx's ``(features, outputs)`` contract by one wrapper.

The library builds the network without weights (nothing is downloaded: start from a local
file with ``--weights``); its classification layer is dropped, and the rest becomes the body
of :func:`robx.core.models.classifier`, so the model normalises its inputs with the task's
statistics (never trains on raw pixels), its features are the penultimate layer's, and its
head honours the selected loss (a cosine head for LDAM). torchvision's last ``nn.Linear``
is its classification layer (``fc`` of ResNets, ``classifier[-1]`` of VGG and EfficientNet,
``heads.head`` of ViT); timm builds with ``num_classes=0``, its documented way to return
pooled features. An input with one channel is repeated to the three these networks expect.
timm is optional: ``pip install timm``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from robx.core.errors import OptionError
from robx.core.hookspecs import hookimpl
from robx.core.models import RegisterModel, classifier
from robx.core.task import ModelInput


class RepeatChannels(nn.Module):
    """A one-channel image as the three channels an ImageNet architecture expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, *x.shape[2:])


def _image_channels(spec: ModelInput, name: str) -> list[nn.Module]:
    if len(spec.shape) != 3:
        raise OptionError(f"{name} needs image inputs (channels, height, width), got shape {spec.shape}")
    if spec.shape[0] == 1:
        return [RepeatChannels()]
    if spec.shape[0] != 3:
        raise OptionError(f"{name} takes 1- or 3-channel images, got {spec.shape[0]} channels")
    return []


def _last_linear(network: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(its parent, its attribute name, the layer) of the network's last ``nn.Linear``."""
    found = None
    for parent in network.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, child_name, child)
    if found is None:
        raise OptionError("the architecture has no nn.Linear classification layer to replace")
    return found


def torchvision_model(spec: ModelInput, arch: str) -> nn.Module:
    from torchvision import models

    name = f"torchvision:{arch}"
    if arch not in models.list_models():
        raise OptionError(f"unknown torchvision architecture '{arch}'; e.g. resnet18, resnet50, vgg11_bn, "
                          "efficientnet_b0, vit_b_16 (torchvision.models.list_models() lists them)")
    adapters = _image_channels(spec, name)
    network = models.get_model(arch, weights=None)
    parent, attribute, layer = _last_linear(network)
    setattr(parent, attribute, nn.Identity())
    return classifier(spec, nn.Sequential(*adapters, network), layer.in_features)


def timm_model(spec: ModelInput, arch: str) -> nn.Module:
    name = f"timm:{arch}"
    try:
        import timm
    except ImportError as error:
        raise OptionError(f"--model {name} needs timm: pip install timm") from error
    adapters = _image_channels(spec, name)
    try:
        network = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as error:  # timm's "Unknown model (...)"
        raise OptionError(f"timm cannot build '{arch}': {error}") from error
    return classifier(spec, nn.Sequential(*adapters, network), int(network.num_features))


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("torchvision", torchvision_model, takes_argument=True)
    register("timm", timm_model, takes_argument=True)
