"""The torchvision family of backbones: `model.arch` is any classification model of
torchvision.models (resnet18, vit_b_16...), with torchvision's weights (model.weights
DEFAULT, IMAGENET1K_V1...) from `$TORCH_HOME/hub/checkpoints`, where torch.hub downloads
them to if it can.

It implements pipeline.backbones.Family. torchvision's model API is all it needs:
`get_model` builds, the weights enum (`get_model_weights`) names the weights and states
their preprocessing (`weights.transforms()`).
"""

import difflib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from pipeline.backbones.preprocessing import Preprocessing, at_size
from pipeline.cli import UserError
from pipeline.data.decode import Sizing

log = logging.getLogger(__name__)

# Normalisation for models without torchvision weights: the ImageNet statistics that
# torchvision's own weights use, so a later switch to pretrained weights changes nothing.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def owns(arch: str) -> bool:
    # Every name that no other family claims, so an unknown one gets torchvision's hint
    # (pipeline.backbones.FAMILIES asks this family last).
    return True


def check_arch(arch: str) -> None:
    known = list_models(module=torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; choose one of {', '.join(known)}"
        raise UserError(
            f"model.arch = {arch!r} is not a torchvision classification model{hint} (timm's models: timm/NAME)"
        )


def named_weights(arch: str, name: str) -> WeightsEnum:
    """'DEFAULT', 'IMAGENET1K_V1' or 'ResNet50_Weights.IMAGENET1K_V1' -> the weights enum member."""
    enum = get_model_weights(arch)
    member = name.split(".", 1)[1] if name.startswith(f"{enum.__name__}.") else name
    try:
        return enum[member]
    except KeyError:
        valid = ["DEFAULT", *(w.name for w in enum)]
        raise UserError(
            f"model.weights = {name!r} is not a weights name of {arch}; valid names: {', '.join(valid)}, "
            "a path to a .pt/.pth/.safetensors file, or null"
        ) from None


def size_kwargs(arch: str, weights: WeightsEnum | None, image_size: int) -> dict[str, Any]:
    # ViT and MaxViT fix their input size at construction; the others adapt to any size.
    # With weights, it is the size they were trained at.
    size = weights.meta["min_size"][0] if weights else image_size
    if arch.startswith("vit_"):
        return {"image_size": size}
    if arch.startswith("maxvit_"):
        return {"input_size": [size, size]}
    return {}


def build(arch: str, weights: WeightsEnum | None, model_kwargs: dict[str, Any]) -> nn.Module:
    """`arch` with its original head, and the pretrained `weights` or random ones (None).
    Weights set the constructor's arguments themselves, so `model_kwargs` is for random ones."""
    if weights is None:
        return get_model(arch, weights=None, **model_kwargs)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        model = get_model(arch, weights=weights)
    except Exception as error:  # urllib raises URLError, socket errors, HTTPError...
        if cached.exists():
            raise
        raise UserError(
            f"torchvision weights {weights} are not in the cache and could not be downloaded "
            f"({type(error).__name__}: {error}). Put the file {cached.name} (from {weights.url}) "
            f"into {cached.parent}, or set model.weights: null to train from scratch"
        ) from None
    log.info("loaded torchvision weights %s from %s", weights, cached)
    return model


def preprocessing(arch: str, weights: WeightsEnum | None, image_size: int) -> Preprocessing:
    """As the weights state it (`weights.transforms()`: resize_size, crop_size, interpolation,
    mean, std), for a crop of `image_size` (see `at_size`); without weights, no margin,
    bilinear resizing and ImageNet's mean and std."""
    if weights is None:
        return Sizing(image_size, image_size), list(IMAGENET_MEAN), list(IMAGENET_STD)
    transforms = weights.transforms()
    stated = Sizing(transforms.resize_size[0], transforms.crop_size[0], transforms.interpolation.value)
    return at_size(stated, image_size), list(transforms.mean), list(transforms.std)


def find_head(model: nn.Module) -> str:
    """The last Linear or Conv2d registered: fc, classifier.1, heads.head..."""
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1]


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    old = model.get_submodule(head)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    else:
        new = nn.Linear(old.in_features, num_classes)
    parent, _, child = head.rpartition(".")
    setattr(model.get_submodule(parent), child, new.to(next(old.parameters()).device))


def stages(model: nn.Module, head: str) -> list[str]:
    """ViT's stages as timm groups its own ViT (its `group_matcher`): the patch embedding with
    the class token and position embedding, then each encoder block, the final norm with the
    last one. [] for any other model: torchvision states no grouping of its own, so freezing
    reads the stages off the module tree."""
    if not isinstance(model, torchvision.models.VisionTransformer):
        return []
    blocks = [f"encoder.layers.{name}" for name, _ in model.encoder.layers.named_children()]
    blocks[-1] += "+encoder.ln"
    return ["conv_proj+class_token+encoder.pos_embedding", *blocks]


def layer_ids(model: nn.Module) -> dict[str, int]:
    return {}  # layer-wise lr decay counts the stages


# Parameters of more than one dimension that the torchvision references' --transformer-embedding-decay
# names (matched to a parameter's own name, as their set_weight_decay does), and ViT's position
# embedding, which they name position_embedding but torchvision's ViT calls pos_embedding.
TOKEN_NAMES = ("class_token", "position_embedding", "pos_embedding", "relative_position_bias_table")


def no_weight_decay(model: nn.Module) -> list[str]:
    """The transformers' tokens and position tables (ViT's class_token and encoder.pos_embedding,
    Swin's and MaxViT's relative_position_bias_table), as timm's models name theirs; [] for a
    model that is not torchvision's."""
    if not type(model).__module__.startswith("torchvision."):
        return []
    return [name for name, _ in model.named_parameters() if name.rpartition(".")[2] in TOKEN_NAMES]


def drop_path_kwargs(arch: str, rate: float) -> dict[str, Any]:
    return {"stochastic_depth_prob": rate}  # EfficientNet's and ConvNeXt's builders take it
