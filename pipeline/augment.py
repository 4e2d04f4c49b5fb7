"""Training augmentation, on batches already on the training device.

Random resized crops and horizontal flips are drawn per epoch, on the CPU, as one affine
matrix per image (`draw_augmentation`), and sampled on the device (`apply_augmentation`).
After them come the recipes: an AutoAugment-family policy (TrivialAugmentWide, RandAugment,
AutoAugment), RandomErasing, and MixUp / CutMix, all torchvision.transforms.v2, in the order
of the torchvision classification references: policy, normalisation, erasing, then mixing.
These draw from torch's global RNG, which `engine.train_one_epoch` seeds per (seed, epoch,
rank), so a resumed run repeats them exactly.

v2 draws one set of parameters per call, for everything the call gets (torchvision#8484):
given a batch, every image would get the same op. So policies and erasing run on one image
at a time, each with its own draw. MixUp and CutMix are per batch by design (one mixing
ratio per batch, as in the references and timm's default mode).
"""

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from pipeline.batches import normalization_tensors
from pipeline.config import AugmentParams, AugmentPolicy

# What each training batch goes through after its crops and flips (pipeline.augment):
# (normalised images, class indices) -> (images, targets).
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# RandomResizedCrop's tries at a crop that fits, before it takes the whole image (torchvision's).
CROP_ATTEMPTS = 10


def draw_augmentation(
    n: int, hflip: bool, min_scale: float, generator: torch.Generator, max_aspect: float = 1.0, centre: float = 1.0
) -> torch.Tensor | None:
    """Random resized crops and horizontal flips for n images, as (n, 2, 3) affine matrices
    over each whole stored image; `apply_augmentation` samples the crops.

    A crop follows torchvision's RandomResizedCrop: [min_scale, 1] of the image's area, an
    aspect ratio log-uniform in [1 / max_aspect, max_aspect], CROP_ATTEMPTS tries, and the
    whole image when none fits. With min_scale 1 it is the centre crop that evaluation
    sees (`centre`: its share of the side), flipped or not. Drawn on the CPU from
    `generator`, so a seed gives the same augmentation on every device; None when both
    are off.
    """
    if not hflip and min_scale >= 1:
        return None
    if min_scale < 1:
        tries = (n, CROP_ATTEMPTS)
        area = torch.empty(tries).uniform_(min_scale, 1.0, generator=generator)
        aspect = torch.empty(tries).uniform_(-math.log(max_aspect), math.log(max_aspect), generator=generator).exp()
        width, height = (area * aspect).sqrt(), (area / aspect).sqrt()
        fits = (width <= 1) & (height <= 1)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits

        def chosen(side: torch.Tensor) -> torch.Tensor:
            return torch.where(fits.any(dim=1), side.gather(1, first)[:, 0], 1.0)

        width, height = chosen(width), chosen(height)
        left = torch.rand(n, generator=generator) * (1 - width)
        top = torch.rand(n, generator=generator) * (1 - height)
    else:
        width = height = torch.full((n,), centre)
        left = top = (1 - width) / 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    # affine_grid's coordinates run from -1 to 1 across the image: a crop [left, left + width]
    # of [0, 1] is centred at 2 * left + width - 1 and spans width on each side of it.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, 2 * left + width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * top + height - 1
    return theta


def apply_augmentation(images: torch.Tensor, theta: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Resample a float batch through its affine matrices into `size` x `size` images (by
    default, the batch's own size), keeping the batch's memory layout (grid_sample returns
    the default one)."""
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    n, channels, height, width = images.shape
    shape = [n, channels, size or height, size or width]
    grid = F.affine_grid(theta.to(images.dtype), shape, align_corners=False)
    resampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return resampled.contiguous(memory_format=layout)


def augments(params: AugmentParams) -> bool:
    """Whether training draws any augmentation at all (else the frozen-feature cache may be
    used): whether any option is on, that is, not at the value that config.AugmentParams
    declares turns it off. Every param is checked, so a new option is never overlooked."""
    on = False
    for option in dataclasses.fields(params):
        if "off" in option.metadata:
            on |= getattr(params, option.name) != option.metadata["off"]
        elif "shapes" not in option.metadata:
            raise TypeError(
                f"train.augment.{option.name} declares neither the value that turns it off (config.off_at) "
                "nor the options it shapes (config.shapes), so it is unknown whether it augments"
            )
    return on


def batch_augmentation(
    params: AugmentParams, num_classes: int, mean: list[float], std: list[float], device: torch.device
) -> Augment | None:
    """What each training batch goes through after its crops and flips: (normalised images,
    class indices) -> (images, targets), the targets class probabilities when mixing; None
    when no recipe here is on."""
    policy = _policy(params)
    erasing = v2.RandomErasing(p=params.erasing, value=0) if params.erasing > 0 else None
    mixing = _mixing(params, num_classes)
    if policy is None and erasing is None and mixing is None:
        return None
    return partial(_augment, policy, erasing, mixing, normalization_tensors(mean, std, device))


def _policy(params: AugmentParams) -> v2.Transform | None:
    # Bilinear, as the torchvision references pass their --interpolation to the policies (v2's
    # default, nearest, would turn rotated and sheared images blocky).
    bilinear = v2.InterpolationMode.BILINEAR
    if params.policy is AugmentPolicy.trivialaugment:
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if params.policy is AugmentPolicy.randaugment:
        return v2.RandAugment(
            num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude, interpolation=bilinear
        )
    if params.policy is AugmentPolicy.autoaugment:
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    return None


def _mixing(params: AugmentParams, num_classes: int) -> v2.Transform | None:
    choices, weights = [], []
    if params.mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=params.mixup_alpha, num_classes=num_classes))
        weights.append(1 - params.mix_switch if params.cutmix_alpha > 0 else 1.0)
    if params.cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=params.cutmix_alpha, num_classes=num_classes))
        weights.append(params.mix_switch if params.mixup_alpha > 0 else 1.0)
    return v2.RandomChoice(choices, p=weights) if choices else None


def _augment(
    policy: v2.Transform | None,
    erasing: v2.Transform | None,
    mixing: v2.Transform | None,
    normalization: tuple[torch.Tensor, torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if policy is not None:
        # The policies' ops are defined on 8-bit pixels (posterize, solarize, equalize...).
        mean, std = normalization  # of 8-bit pixel values
        pixels = (images * std + mean).round().clamp(0, 255).to(torch.uint8)
        pixels = torch.stack([policy(image) for image in pixels])
        images = (pixels.float() - mean) / std
    if erasing is not None:
        images = torch.stack([erasing(image) for image in images])
    if mixing is not None:
        images, targets = mixing(images, targets)
    return images.contiguous(memory_format=layout), targets
