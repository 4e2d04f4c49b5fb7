"""Training augmentation: what each visit of an epoch draws, and the recipes after it.

Random resized crops and horizontal flips are drawn per epoch, on the CPU, a row per visit
(`draw_augmentation`): a crop's box as torchvision's RandomResizedCrop draws it, over the
whole picture in its own pixels, and a flip. `batches.CropBatches` cuts the crops from the
training copies (data.copies); without crops, `batches.ImageBatches` flips the model's
inputs on the device.
After them come the recipes: an AutoAugment-family policy (TrivialAugmentWide, RandAugment,
AutoAugment), RandomErasing, and MixUp / CutMix, all torchvision.transforms.v2, in the order
of the torchvision classification references: policy, normalisation, erasing, then mixing.

v2 draws one set of parameters per call, for everything the call gets (torchvision#8484):
given a batch, every image would get the same op. So policies and erasing run on one image
at a time, each with its own draw, from torch's RNG seeded with that image's key: a number
the epoch's generator draws for each visit, as it draws the crops and flips
(`engine.epoch_order`). An image's policy and erasing therefore depend on the seed, the
epoch and its place in the epoch's order alone, not on which process of several runs it or
what else is in its batch. MixUp and CutMix are per batch by design (one mixing ratio per
batch, as in the references and timm's default mode): they draw from torch's RNG as
`engine.train_one_epoch` seeds it per (seed, epoch, rank), so with several processes each
mixes its own share of the batch.
"""

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import torch
from torchvision.transforms import v2

from pipeline.batches import Draws, normalization_tensors
from pipeline.config import AugmentParams, AugmentPolicy

# What each training batch goes through after its crops and flips (pipeline.augment):
# (normalised images, class indices, each image's key: int64 on the CPU) -> (images, targets).
Augment = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# RandomResizedCrop's tries at a crop that fits, before it falls back (torchvision's).
CROP_ATTEMPTS = 10


def draw_augmentation(
    n: int,
    hflip: bool,
    min_scale: float,
    generator: torch.Generator,
    max_aspect: float = 1.0,
    sizes: torch.Tensor | None = None,
) -> Draws | None:
    """Random resized crops (with min_scale < 1: `random_boxes` over each visit's whole image,
    of `sizes`, int64 (n, 2) width and height) and horizontal flips for n visits, drawn on
    the CPU from `generator`, so a seed gives the same augmentation on every device; None
    when both are off."""
    if not hflip and min_scale >= 1:
        return None
    boxes = None
    if min_scale < 1:
        if sizes is None:
            raise ValueError("random resized crops are drawn over whole images: their sizes are needed")
        boxes = random_boxes(sizes, min_scale, max_aspect, generator)
    return Draws(boxes, torch.rand(n, generator=generator) < 0.5 if hflip else None)


def random_boxes(sizes: torch.Tensor, min_scale: float, max_aspect: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for each image of `sizes` (int64 (n, 2):
    width, height), all at once: int64 (n, 4) boxes, top, left, height, width.

    A box covers [min_scale, 1] of the image's area, its aspect ratio log-uniform in
    [1 / max_aspect, max_aspect], its sides rounded to whole pixels, its place uniform among
    those where it fits; the first of CROP_ATTEMPTS tries that fits. When none fits, the
    centre of the image at the nearest aspect ratio in range (the whole image if its own is).
    """
    n = len(sizes)
    width, height = sizes[:, 0].double(), sizes[:, 1].double()
    tries = (n, CROP_ATTEMPTS)
    share = torch.empty(tries, dtype=torch.float64).uniform_(min_scale, 1.0, generator=generator)
    area = (width * height)[:, None] * share
    log_aspect = math.log(max_aspect)
    aspect = torch.empty(tries, dtype=torch.float64).uniform_(-log_aspect, log_aspect, generator=generator).exp()
    tried_width, tried_height = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (tried_width > 0) & (tried_width <= width[:, None]) & (tried_height > 0) & (tried_height <= height[:, None])
    first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    ratio = width / height
    box_width = torch.where(found, tried_width.gather(1, first)[:, 0], width)
    box_width = torch.where(~found & (ratio > max_aspect), (height * max_aspect).round(), box_width)
    box_height = torch.where(found, tried_height.gather(1, first)[:, 0], height)
    box_height = torch.where(~found & (ratio < 1 / max_aspect), (width * max_aspect).round(), box_height)
    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (height - box_height + 1)).floor()
    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (width - box_width + 1)).floor()
    top = torch.where(found, top, ((height - box_height) / 2).floor())
    left = torch.where(found, left, ((width - box_width) / 2).floor())
    return torch.stack([top, left, box_height, box_width], dim=1).long()


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
    class indices, keys) -> (images, targets), the targets class probabilities when mixing;
    None when no recipe here is on. Each image's policy and erasing draw from torch's RNG
    seeded with its key; mixing draws from torch's RNG as it stands."""
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
    keys: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    if policy is not None or erasing is not None:
        mean, std = normalization  # of 8-bit pixel values
        # The policies' ops are defined on 8-bit pixels (posterize, solarize, equalize...).
        pixels = (images * std + mean).round().clamp(0, 255).to(torch.uint8) if policy is not None else None
        # v2 draws on the CPU from torch's default generator: reseed it per image, and give the
        # stream it had back afterwards (dropout and mixing draw from it).
        with torch.random.fork_rng(devices=[]):
            augmented = []
            for index, key in enumerate(keys.tolist()):
                torch.default_generator.manual_seed(key)
                image = images[index] if pixels is None else (policy(pixels[index]).float() - mean[0]) / std[0]
                augmented.append(image if erasing is None else erasing(image))
        images = torch.stack(augmented)
    if mixing is not None:
        images, targets = mixing(images, targets)
    return images.contiguous(memory_format=layout), targets
