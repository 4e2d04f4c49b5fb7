"""Backbone families: the libraries that `model.arch` names models of.

A family is a module of the functions that `Family` lists: pipeline.backbones.torchvision
(`resnet18`, `vit_b_16`...) and pipeline.backbones.timm (`timm/convnext_atto`...). The
rest of the pipeline asks `family_of(model.arch)` and calls these functions, and never
asks which family it has.

Adding a family (a Hugging Face `transformers` vision model, an `open_clip` image
tower...) is one module that implements `Family` (its archs under a prefix of its own,
as `timm/`) and one entry in FAMILIES, before torchvision.
"""

from typing import Any, Protocol

from torch import nn

from pipeline.backbones import timm, torchvision  # the family modules, not the libraries
from pipeline.backbones.preprocessing import Preprocessing

# A family's own handle on named pretrained weights, from its `named_weights`:
# torchvision's weights enum member, timm's model name with its pretrained tag.
Weights = Any


class Family(Protocol):
    """What the pipeline asks of a family: a module whose functions are these methods,
    without `self` (a module matches a Protocol as an object would). `weights` is None for
    random weights."""

    def owns(self, arch: str) -> bool:
        """Whether `arch` (model.arch) names one of this family's models."""

    def check_arch(self, arch: str) -> None:
        """A UserError, with a hint, unless `arch` names a model the family can build."""

    def named_weights(self, arch: str, name: str) -> Weights:
        """The pretrained weights that `name` (model.weights: DEFAULT, a tag...) names; a
        UserError listing the valid names if none."""

    def size_kwargs(self, arch: str, weights: Weights | None, image_size: int) -> dict[str, Any]:
        """The constructor's arguments for inputs of `image_size` pixels: {} for a model that
        takes any size. They are saved in the checkpoint, to rebuild the model."""

    def build(self, arch: str, weights: Weights | None, model_kwargs: dict[str, Any]) -> nn.Module:
        """The model with its original head, and the pretrained `weights` or random ones.
        Pretrained weights that cannot be had are a UserError naming the file and the
        folder to put it in."""

    def preprocessing(self, arch: str, weights: Weights | None, image_size: int) -> Preprocessing:
        """How inputs of `image_size` pixels are made for these weights: resize and centre
        crop sizes, interpolation, mean and std."""

    def find_head(self, model: nn.Module) -> str:
        """The module name of the classifier layer, the one that `replace_head` replaces."""

    def replace_head(self, model: nn.Module, head: str, num_classes: int) -> None:
        """A new, randomly initialised classifier for `num_classes` at `head`, on the model's device."""

    def stages(self, model: nn.Module, head: str) -> list[str]:
        """The model's stages, in order and without the head, as the family groups its models
        (`freeze: first:N` counts them, and layer-wise lr decay where `layer_ids` has none); []
        when it has no grouping of its own, or the model is not the family's. Each stage names
        its modules and parameters, joined by `+`."""

    def layer_ids(self, model: nn.Module) -> dict[str, int]:
        """Each parameter's layer for layer-wise lr decay, from the input up, the head's last, as
        the family numbers them; {} where it has no numbering of its own (then `stages` count)."""

    def no_weight_decay(self, model: nn.Module) -> list[str]:
        """Names (fnmatch patterns) of the parameters of more than one dimension that get no
        weight decay (ViT's class token and position embedding); [] for another family's model."""

    def drop_path_kwargs(self, arch: str, rate: float) -> dict[str, Any]:
        """The constructor's arguments for a stochastic depth (drop path) rate of `rate`."""


# Asked in this order: torchvision, which takes any name, last.
FAMILIES: tuple[Family, ...] = (timm, torchvision)


def family_of(arch: str) -> Family:
    """The family whose models `arch` names."""
    return next(family for family in FAMILIES if family.owns(arch))


# Asked of every family, since freezing and the optimizer see only the model, not model.arch.


def grouped_stages(model: nn.Module, head: str) -> list[str]:
    """The stages that the family of `model` groups it into; [] if it has no grouping."""
    return next((stages for family in FAMILIES if (stages := family.stages(model, head))), [])


def layer_ids(model: nn.Module) -> dict[str, int]:
    """The layer of each parameter of `model` for layer-wise lr decay, as its family numbers
    them; {} if it has no numbering."""
    return next((ids for family in FAMILIES if (ids := family.layer_ids(model))), {})


def no_weight_decay(model: nn.Module) -> list[str]:
    """What the family of `model` keeps undecayed besides one-dimensional parameters."""
    return [pattern for family in FAMILIES for pattern in family.no_weight_decay(model)]
