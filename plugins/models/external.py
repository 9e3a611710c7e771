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

import inspect
import typing
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from robx import ModelInput, OptionError, RegisterModel, classifier, hookimpl


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


def _last_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    """(its dotted name, the layer) of the network's last ``nn.Linear``: the classification layer."""
    found = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise OptionError("the architecture has no nn.Linear classification layer to replace")
    return found[-1]


def one_tensor(output: Any, name: str) -> torch.Tensor:
    """A network's output as the one tensor robx reads: itself, or the ``logits`` of a named
    tuple, dict or Hugging Face-style output, or the first of a tuple whose first entry is the
    main output (GoogLeNet's and Inception's training outputs with auxiliary heads). Anything
    else (a detection model's boxes, a segmentation model's dict of maps) is one line."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) and output[0].dim() == 2:
        return output[0]
    what = (f"a dict with keys {', '.join(map(str, list(output)[:4]))}" if isinstance(output, Mapping)
            else f"a {type(output).__name__}")
    raise OptionError(f"{name} returns {what}, not one tensor of class scores; robx trains and audits classifiers")


class OneTensor(nn.Module):
    """Placed after the network: its output reduced to one tensor (:func:`one_tensor`). It
    holds no parameters, so the state dict's names stay the network's own."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, output: Any) -> torch.Tensor:
        return one_tensor(output, self.name)


def _wrapped(spec: ModelInput, adapters: list[nn.Module], network: nn.Module, features: int,
             library_head: str, name: str) -> nn.Module:
    """robx's classifier around the network; ``library_head`` names the dropped layer in the
    library's own state dicts, so ``--weights`` maps a file's trained head onto robx's."""
    model = classifier(spec, nn.Sequential(*adapters, network, OneTensor(name)), features)
    model.library_head = library_head
    return model


def torchvision_model(spec: ModelInput, arch: str) -> nn.Module:
    from torchvision import models

    name = f"torchvision:{arch}"
    if arch not in models.list_models(module=models):
        kinds = (("detection", models.detection), ("segmentation", models.segmentation), ("video", models.video),
                 ("optical-flow", models.optical_flow), ("quantized", models.quantization))
        kind = next((kind for kind, module in kinds if arch in models.list_models(module=module)), None)
        if kind is not None:
            raise OptionError(f"{name} is a {kind} model; robx trains and audits image classifiers "
                              "(torchvision.models.list_models(module=torchvision.models) lists them)")
        raise OptionError(f"unknown torchvision architecture '{arch}'; e.g. resnet18, resnet50, vgg11_bn, "
                          "efficientnet_b0, vit_b_16 (torchvision.models.list_models() lists them)")
    adapters = _image_channels(spec, name)
    network = models.get_model(arch, **no_downloads(models.get_model_builder(arch)))
    wrapped_name = name
    name, layer = _last_linear(network)
    parent_name, _, attribute = name.rpartition(".")
    setattr(network.get_submodule(parent_name) if parent_name else network, attribute, nn.Identity())
    return _wrapped(spec, adapters, network, layer.in_features, name, wrapped_name)


def no_downloads(builder: Any) -> dict[str, Any]:
    """A torchvision builder's keyword arguments that keep it offline and single-output: no
    weights, no backbone weights (detection and segmentation builders default to ImageNet
    ones), and no auxiliary classifiers (GoogLeNet and Inception build them when given no
    weights, and return a tuple in training)."""
    arguments: dict[str, Any] = {"weights": None}
    parameters = inspect.signature(builder).parameters
    if "weights_backbone" in parameters:
        arguments["weights_backbone"] = None
    built = typing.get_type_hints(builder).get("return")
    accepted = inspect.signature(built.__init__).parameters if isinstance(built, type) else {}
    if "aux_logits" in accepted:
        arguments["aux_logits"] = False
    if "init_weights" in accepted:  # their present default, said so that torchvision does not warn of a change
        arguments["init_weights"] = True
    return arguments


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
    head = str(getattr(network, "pretrained_cfg", {}).get("classifier", "head"))
    return _wrapped(spec, adapters, network, int(network.num_features), head, name)


@hookimpl
def register_models(register: RegisterModel) -> None:
    register("torchvision", torchvision_model, takes_argument=True)
    register("timm", timm_model, takes_argument=True)
