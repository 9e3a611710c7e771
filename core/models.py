"""The shape every robx model has: ``normalize -> body -> features -> linear head``.

Models are registered through the ``register_models`` hook as builders
``build(spec: ModelInput) -> nn.Module`` (built-ins in ``robx.plugins.models``). Each takes
inputs in the task's input space (pixels in [0, 1] for images; normalisation is a layer
inside, so attacks and budgets live in input space) and returns ``(features, outputs)``;
features are the penultimate representation that feature-space losses read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx.core.errors import OptionError, first_line
from robx.core.task import ModelInput


class Normalize(nn.Module):
    """(x - mean) / std per channel (the first dimension of an example of rank ``rank``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rank: int = 3) -> None:
        super().__init__()
        shape = (1, -1) + (1,) * (rank - 1)  # (1, C, 1, 1) for images, as in older checkpoints
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormedLinear(nn.Module):
    """Cosine head: cos(feature, w_c) for each class c, no bias (the LDAM-DRW authors'
    ``NormedLinear``); outputs lie in [-1, 1], so the loss brings its own scale."""

    def __init__(self, feature_dim: int, num_outputs: int) -> None:
        super().__init__()
        # one unit-norm column per class, uniformly oriented (as the authors initialise)
        self.weight = nn.Parameter(F.normalize(torch.empty(feature_dim, num_outputs).uniform_(-1, 1), dim=0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)


HEADS = ("linear", "cosine")


class Classifier(nn.Module):
    """``normalize -> body -> features -> head``: a linear head, or a cosine head
    (:class:`NormedLinear`), with one output per class or per regressed value."""

    def __init__(self, normalize: nn.Module, body: nn.Module, feature_dim: int, num_outputs: int,
                 head: str = "linear"):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.feature_dim = feature_dim
        self.head = NormedLinear(feature_dim, num_outputs) if head == "cosine" else nn.Linear(feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.normalize(x))
        return features, self.head(features)


def normalises(model: nn.Module, spec: ModelInput) -> bool:
    """Whether ``model`` applies the task's input normalisation (a :class:`Normalize` module),
    or there is none to apply (mean 0 and std 1)."""
    trivial = all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std)
    return trivial or any(isinstance(module, Normalize) for module in model.modules())


def classifier(spec: ModelInput, body: nn.Module, feature_dim: int) -> Classifier:
    """The standard wrapper around a body, normalising with the task's statistics."""
    return Classifier(Normalize(spec.mean, spec.std, len(spec.shape)), body, feature_dim, spec.outputs, spec.head)


#: ``build(spec) -> model``: what ``register_models`` registers under a name
ModelBuilder = Callable[[ModelInput], nn.Module]
#: ``register(name, build)``, the argument of a ``register_models`` hook
RegisterModel = Callable[[str, ModelBuilder], None]


def load_initial_weights(model: nn.Module, path: Path, *, with_head: bool = False) -> str:
    """Start ``model`` from the tensors in ``path`` and say what was loaded.

    A ``.safetensors`` file is read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses every object but tensors and plain
    containers, so no code in the file runs (a robx checkpoint's ``model`` entry is taken).
    The keys are the model's own (a robx model saved before) or, for a model wrapped by
    :func:`classifier`, those of its body's bare architecture (a torchvision / timm state
    dict): the file's keys are placed under the one prefix that places most of them
    (``body.0.``), and the library's classification layer (``model.library_head``, e.g.
    ``fc``) onto robx's head when the shapes agree. Every tensor of the body must come from
    the file, and with ``with_head`` (an audit: the model is used as it is) the head's too;
    the normalisation stays the task's. Otherwise, or when a shape differs, an
    :class:`OptionError`: a file of another architecture is never half loaded."""
    state = _read_weights(path)
    own = model.state_dict()
    library_head = getattr(model, "library_head", None)
    named_in_file = {key: key for key in state}
    if library_head:
        named_in_file = {(f"head.{key[len(library_head) + 1:]}" if key.startswith(library_head + ".") else key): key
                         for key in state}
        state = {mapped: state[key] for mapped, key in named_in_file.items()}
    # the prefix under which the file's keys sit in the model: the one that places most
    prefixes: dict[str, int] = {}
    for name in own:
        for key in state:
            if name == key or name.endswith("." + key):
                prefixes[name[: len(name) - len(key)]] = prefixes.get(name[: len(name) - len(key)], 0) + 1
    prefix = max(prefixes, key=lambda candidate: (prefixes[candidate], -len(candidate)), default="")
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        target = key if key.startswith("head.") and key in own else prefix + key
        if target not in own:
            continue
        if own[target].shape != tensor.shape and target.startswith("head.") and not with_head:
            continue  # another label set: the head starts as built
        _check_fits(path, named_in_file[key], tensor, target, own[target])
        matched[target] = tensor
    needed = [name for name in own if not name.startswith("normalize.") and not name.endswith("num_batches_tracked")
              and (with_head or not name.startswith("head."))]
    missing = [name for name in needed if name not in matched]
    if missing:
        raise OptionError(f"--weights {path}: {len(missing)} of the model's {len(needed)} tensors are not in the "
                          f"file (e.g. '{missing[0]}'): it holds another architecture's weights"
                          + (" or no trained head" if with_head else ""))
    model.load_state_dict({**own, **matched})
    unused = len(state) - len(matched)
    return (f"loaded {len(matched)} of the model's {len(own)} tensors from {path}"
            + (f"; {unused} of the file's left out" if unused else ""))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a torch file read without unpickling
    code (a robx checkpoint's ``model`` entry); one :class:`OptionError` line otherwise."""
    from robx.core.rundir import RefusedFile, load_plain

    if path.is_dir():
        raise OptionError(f"--weights {path} is a directory; give a .safetensors file or a torch state dict")
    if not path.is_file():
        raise OptionError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = load_plain(path)
    except RefusedFile as error:
        raise OptionError(f"--weights {path}: holds objects other than tensors; refused to load it ({error})") \
            from None
    except Exception as error:  # torch's and safetensors' errors for empty, garbage or huge-header files
        raise OptionError(f"--weights {path}: not a state dict of tensors robx can read "
                          f"({type(error).__name__}: {first_line(error, 120)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OptionError(f"--weights {path}: expected a mapping of names to tensors")
    return state


def _check_fits(path: Path, name: str, tensor: torch.Tensor, target: str, own: torch.Tensor) -> None:
    """One line when the file's tensor ``name`` cannot be the model's ``target``: another
    shape, integers for weights, or values that are not finite."""
    if own.shape != tensor.shape:
        raise OptionError(f"--weights {path}: '{name}' has shape {tuple(tensor.shape)}, the model's "
                          f"'{target}' {tuple(own.shape)}")
    if own.is_floating_point() and not tensor.is_floating_point():
        raise OptionError(f"--weights {path}: '{name}' holds {str(tensor.dtype).removeprefix('torch.')}"
                          f" values where the model's '{target}' is {str(own.dtype).removeprefix('torch.')}"
                          ": not weights of this model")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise OptionError(f"--weights {path}: '{name}' holds NaN or infinite values")
