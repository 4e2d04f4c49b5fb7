"""What a family's `preprocessing` gives, and the rule for a crop size other than the stated one.

A module of its own because the families and pipeline.models (for a pipeline checkpoint's
preprocessing) all use it, and pipeline.backbones itself imports the families.
"""

from pipeline.data.decode import Sizing

# How a model's inputs are made: (sizing, the per-channel mean, the per-channel std) of [0, 1] RGB.
Preprocessing = tuple[Sizing, list[float], list[float]]


def at_size(stated: Sizing, image_size: int) -> Sizing:
    """`stated` (torchvision weights' or a checkpoint's resize, crop and interpolation) for
    a centre crop of `image_size` pixels: the resize keeps the stated resize/crop ratio."""
    return Sizing(round(image_size * stated.resize / stated.crop), image_size, stated.interpolation)
