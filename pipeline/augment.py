"""Augmentation recipes beyond crops and flips, on batches already on the training device:
an AutoAugment-family policy (TrivialAugmentWide, RandAugment, AutoAugment), RandomErasing,
and MixUp / CutMix, all torchvision.transforms.v2, in the order of the torchvision
classification references: policy, normalisation, erasing, then mixing.

The random crops and flips are drawn per epoch in `engine.draw_augmentation`; these draw
from torch's global RNG, which `engine.train_one_epoch` seeds per (seed, epoch, rank), so a
resumed run repeats them exactly.

v2 draws one set of parameters per call, for everything the call gets (torchvision#8484):
given a batch, every image would get the same op. So policies and erasing run on one image
at a time, each with its own draw. MixUp and CutMix are per batch by design (one mixing
ratio per batch, as in the references and timm's default mode).
"""

import dataclasses
from functools import partial

import torch
from torchvision.transforms import v2

from pipeline.config import AugmentParams, AugmentPolicy
from pipeline.engine import Augment, normalization_tensors


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
    if params.policy is AugmentPolicy.trivialaugment:
        return v2.TrivialAugmentWide()
    if params.policy is AugmentPolicy.randaugment:
        return v2.RandAugment(num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude)
    if params.policy is AugmentPolicy.autoaugment:
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
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
