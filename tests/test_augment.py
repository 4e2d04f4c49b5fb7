"""Augmentation recipes (pipeline/augment.py): drawn per image from each image's own key,
and the normalisation around the 8-bit policies undone and redone exactly."""

import dataclasses
from collections.abc import Callable
from enum import Enum
from functools import partial
from operator import attrgetter

import pytest
import torch
from torchvision.transforms import v2

from pipeline.augment import _augment, augments, batch_augmentation
from pipeline.batches import normalization_tensors
from pipeline.config import AugmentParams, AugmentPolicy

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CPU = torch.device("cpu")


def params(**changes: object) -> AugmentParams:
    off = AugmentParams(
        hflip=False, min_scale=1.0, max_aspect=1.0, policy=AugmentPolicy.none, randaugment_ops=2,
        randaugment_magnitude=9, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_switch=0.5,
    )  # fmt: skip
    return dataclasses.replace(off, **changes)


def copies_of_one_image(n: int = 8, size: int = 32) -> torch.Tensor:
    """n copies of one normalised random image: any difference between them is the augmentation's."""
    pixels = torch.randint(0, 256, (1, 3, size, size), generator=torch.Generator().manual_seed(0)).float() / 255
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return ((pixels - mean) / std).repeat(n, 1, 1, 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"policy": AugmentPolicy.trivialaugment},
        {"policy": AugmentPolicy.randaugment},
        {"policy": AugmentPolicy.autoaugment},
        {"erasing": 1.0},
    ],
    ids=["trivialaugment", "randaugment", "autoaugment", "erasing"],
)
def test_each_image_of_a_batch_gets_its_own_draw_and_a_seed_repeats_them(changes: dict) -> None:
    augment = batch_augmentation(params(**changes), 5, MEAN, STD, CPU)
    images, targets = copies_of_one_image(), torch.zeros(8, dtype=torch.int64)
    keys = torch.arange(100, 108)
    first, kept = augment(images, targets, keys)
    distinct = {tuple(image.flatten().tolist()) for image in first}
    assert len(distinct) >= 4, "the images of one batch must not all get the same op"
    assert torch.equal(kept, targets)
    torch.manual_seed(1)  # the global RNG's state plays no part
    assert torch.equal(augment(images, targets, keys)[0], first)


@pytest.mark.parametrize(
    "changes", [{"policy": AugmentPolicy.trivialaugment, "erasing": 0.3}, {"policy": AugmentPolicy.randaugment}]
)
def test_an_images_draws_depend_on_its_key_alone_not_its_batch(changes: dict) -> None:
    """What several processes rely on: an image augmented in a batch of its own share of the
    global batch comes out as in the whole batch, since its draws come from its key."""
    augment = batch_augmentation(params(**changes), 5, MEAN, STD, CPU)
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets, keys = torch.zeros(8, dtype=torch.int64), torch.arange(8) * 7919
    whole, _ = augment(images, targets, keys)
    for part in (torch.tensor([1, 3, 5, 7]), torch.tensor([6, 0])):  # other batches, in other places
        alone, _ = augment(images[part], targets[part], keys[part])
        assert torch.equal(alone, whole[part])
    assert not torch.equal(augment(images, targets, keys + 1)[0], whole)  # and the key matters


def test_the_per_image_draws_leave_the_global_rng_as_it_was() -> None:
    """Dropout and mixing draw from torch's global RNG after the per-image recipes: those
    reseed it per image, and must give the stream back as they found it."""
    augment = batch_augmentation(params(policy=AugmentPolicy.trivialaugment, erasing=0.3), 5, MEAN, STD, CPU)
    torch.manual_seed(3)
    augment(copies_of_one_image(), torch.zeros(8, dtype=torch.int64), torch.arange(8))
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), after)


def test_the_policies_see_the_images_pixels_and_give_back_normalised_ones() -> None:
    """Round trip through 8-bit pixels with a policy that changes nothing: the input, to rounding."""
    images = copies_of_one_image(2)
    normalization = normalization_tensors(MEAN, STD, CPU)
    out, _ = _augment(
        v2.Identity(), None, None, normalization, images, torch.zeros(2, dtype=torch.int64), torch.arange(2)
    )
    # The copies were made from 8-bit pixels, so nothing is lost to rounding here.
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_gives_class_probabilities_that_sum_to_one(mixup: float, cutmix: float) -> None:
    augment = batch_augmentation(params(mixup_alpha=mixup, cutmix_alpha=cutmix), 5, MEAN, STD, CPU)
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(0)
    mixed, soft = augment(images, targets, torch.arange(6))
    assert soft.shape == (6, 5) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(6))
    # Each image is mixed with its neighbour in the batch (v2 rolls the batch by one).
    for i in range(6):
        assert set(soft[i].nonzero().flatten().tolist()) <= {targets[i].item(), targets[i - 1].item()}
    assert not torch.equal(mixed, images)


def test_nothing_on_means_no_batch_augmentation_and_no_augmenting() -> None:
    assert batch_augmentation(params(), 5, MEAN, STD, CPU) is None
    assert not augments(params())
    # Each option the docs name as augmenting, alone (not read from config.AugmentParams' own
    # declarations): any one on means the frozen-feature cache cannot be used.
    each_on = [
        {"hflip": True}, {"min_scale": 0.5}, {"policy": AugmentPolicy.autoaugment}, {"erasing": 0.25},
        {"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0},
    ]  # fmt: skip
    for changes in each_on:
        assert augments(params(**changes)), changes


def switched_on(off: object) -> object:
    """A value other than an option's `off` value."""
    if isinstance(off, bool):
        return not off
    if isinstance(off, Enum):
        return next(member for member in type(off) if member is not off)
    return 0.5  # every number option here is off at 0 or 1


@pytest.mark.parametrize("option", dataclasses.fields(AugmentParams), ids=attrgetter("name"))
def test_each_option_alone_turns_augmenting_on_and_a_param_that_shapes_one_does_not(
    option: dataclasses.Field,
) -> None:
    if "off" in option.metadata:
        assert augments(params(**{option.name: switched_on(option.metadata["off"])}))
    else:
        assert option.metadata["shapes"], option.name
        assert not augments(params(**{option.name: 0.5}))


def test_a_param_that_declares_neither_its_off_value_nor_what_it_shapes_stops_augments() -> None:
    @dataclasses.dataclass
    class WithNewOption(AugmentParams):
        new_option: float = 0.0

    with pytest.raises(TypeError, match=r"train\.augment\.new_option declares neither"):
        augments(WithNewOption(**dataclasses.asdict(params())))


@pytest.mark.parametrize(
    ("settings", "reference"),
    [
        ({"policy": AugmentPolicy.trivialaugment}, v2.TrivialAugmentWide),
        ({"policy": AugmentPolicy.randaugment}, partial(v2.RandAugment, num_ops=2, magnitude=9)),
        # Other than the defaults, and ops not magnitude: a swapped or ignored pair shows.
        (
            {"policy": AugmentPolicy.randaugment, "randaugment_ops": 3, "randaugment_magnitude": 15},
            partial(v2.RandAugment, num_ops=3, magnitude=15),
        ),
        ({"policy": AugmentPolicy.autoaugment}, partial(v2.AutoAugment, v2.AutoAugmentPolicy.IMAGENET)),
    ],
    ids=["trivialaugment", "randaugment", "randaugment-3-15", "autoaugment"],
)
def test_the_policies_interpolate_bilinearly_as_the_references_pass_them(
    settings: dict, reference: Callable[..., v2.Transform]
) -> None:
    """Each image as torchvision's own policy with interpolation=BILINEAR gives it from the same
    draw; with v2's default, nearest, the rotated, sheared and translated ones differ."""
    images = copies_of_one_image(16)
    augment = batch_augmentation(params(**settings), 5, MEAN, STD, CPU)
    keys = torch.arange(16) * 7 + 3  # each image's draw is seeded by its key
    ours, _ = augment(images, torch.zeros(16, dtype=torch.int64), keys)

    mean, std = torch.tensor(MEAN).view(-1, 1, 1) * 255, torch.tensor(STD).view(-1, 1, 1) * 255
    pixels = (images[0] * std + mean).round().to(torch.uint8)  # the image the copies were made from

    def expected(interpolation: v2.InterpolationMode) -> torch.Tensor:
        transform = reference(interpolation=interpolation)
        drawn = []
        for key in keys.tolist():
            torch.manual_seed(key)
            drawn.append((transform(pixels).float() - mean) / std)
        return torch.stack(drawn)

    torch.testing.assert_close(ours, expected(v2.InterpolationMode.BILINEAR), atol=1e-5, rtol=0)
    assert not torch.allclose(ours, expected(v2.InterpolationMode.NEAREST), atol=1e-5, rtol=0)


def distinct_flat_images(n: int = 8, size: int = 16) -> torch.Tensor:
    """n images, each one value everywhere, all values apart: which image a pixel came from, or
    in which shares, shows in its value."""
    return torch.arange(1.0, n + 1).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0)])
def test_mixed_labels_weigh_each_class_as_the_pixels_mix(mixup: float, cutmix: float) -> None:
    """Image i is mixed with image i-1 (v2 rolls the batch by one); the weight of i's class in
    its label is the share of i in its pixels: MixUp's ratio read off a pixel's value, CutMix's
    the share of the area left of image i."""
    augment = batch_augmentation(params(mixup_alpha=mixup, cutmix_alpha=cutmix), 8, MEAN, STD, CPU)
    images, targets = distinct_flat_images(), torch.arange(8)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, soft = augment(images, targets, torch.zeros(8, dtype=torch.int64))  # keys: no per-image draws
        for i in range(8):
            mine, other = float(i + 1), float(i if i else 8)  # image i's value, and image i-1's
            if mixup:
                share = (mixed[i, 0, 0, 0] - other) / (mine - other)
                assert torch.allclose(mixed[i], mine * share + other * (1 - share))
            else:
                assert set(mixed[i].unique().tolist()) <= {mine, other}
                share = (mixed[i] == mine).float().mean()
            assert soft[i, i].item() == pytest.approx(share.item(), abs=1e-5)
            assert soft[i, (i - 1) % 8].item() == pytest.approx(1 - share.item(), abs=1e-5)


@pytest.mark.parametrize("switch", [0.2, 0.8])
def test_mix_switch_is_the_share_of_batches_that_get_cutmix(switch: float) -> None:
    augment = batch_augmentation(params(mixup_alpha=0.2, cutmix_alpha=1.0, mix_switch=switch), 8, MEAN, STD, CPU)
    images, targets = distinct_flat_images(), torch.arange(8)
    torch.manual_seed(0)
    cut = 0
    for _ in range(400):
        mixed, _ = augment(images, targets, torch.zeros(8, dtype=torch.int64))
        # CutMix only moves pixels; MixUp blends every pixel into a value no image has.
        cut += set(mixed.unique().tolist()) <= set(range(1, 9))
    # 400 batches: the standard deviation of the count is 8, and the two settings are 240 apart.
    assert abs(cut - 400 * switch) < 32


def test_erasing_is_torchvisions_random_erasing_drawn_from_each_images_key() -> None:
    """train.augment.erasing 0.3: each normalised image as torchvision's RandomErasing(p=0.3,
    value=0) leaves it from the same draw (torch's RNG seeded with the image's key). The
    probability is far from 0.5 and from 1, and both kinds occur among the 32 images: some
    erased, some left whole."""
    images = copies_of_one_image(32)
    keys = torch.arange(32) * 7 + 3
    augment = batch_augmentation(params(erasing=0.3), 5, MEAN, STD, CPU)
    ours, _ = augment(images, torch.zeros(32, dtype=torch.int64), keys)
    reference = v2.RandomErasing(p=0.3, value=0)
    expected = []
    for image, key in zip(images, keys.tolist(), strict=True):
        torch.manual_seed(key)
        expected.append(reference(image))
    torch.testing.assert_close(ours, torch.stack(expected), atol=0, rtol=0)
    erased = sum(not torch.equal(mine, image) for mine, image in zip(ours, images, strict=True))
    assert 3 <= erased <= 16, erased


def test_with_a_policy_and_erasing_each_image_is_erased_after_its_policy() -> None:
    """TrivialAugment and erasing 0.5 together (docs/fine-tuning.md: the policy, normalisation,
    then erasing, as the references chain them): each image as torchvision's
    TrivialAugmentWide(BILINEAR) on its 8-bit pixels, normalised, then RandomErasing(p=0.5,
    value=0), one after the other from the same draw (torch's RNG seeded with the image's key).
    Among the 32 images, some are erased and some changed by the policy alone."""
    images = copies_of_one_image(32)
    keys = torch.arange(32) * 7 + 3
    augment = batch_augmentation(params(policy=AugmentPolicy.trivialaugment, erasing=0.5), 5, MEAN, STD, CPU)
    ours, _ = augment(images, torch.zeros(32, dtype=torch.int64), keys)

    mean, std = torch.tensor(MEAN).view(-1, 1, 1) * 255, torch.tensor(STD).view(-1, 1, 1) * 255
    pixels = (images[0] * std + mean).round().to(torch.uint8)  # the image the copies were made from
    policy = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)
    erasing = v2.RandomErasing(p=0.5, value=0)
    expected, policy_alone = [], []
    for key in keys.tolist():
        torch.manual_seed(key)
        policy_alone.append((policy(pixels).float() - mean) / std)
        expected.append(erasing(policy_alone[-1]))
    torch.testing.assert_close(ours, torch.stack(expected), atol=1e-5, rtol=0)
    erased = sum(not torch.equal(mine, alone) for mine, alone in zip(expected, policy_alone, strict=True))
    changed = sum(not torch.allclose(alone, images[0], atol=1e-5) for alone in policy_alone)
    assert 4 <= erased <= 28 and changed >= 8, (erased, changed)


def test_with_erasing_and_mixup_the_batch_is_mixed_after_each_image_is_erased() -> None:
    """Erasing 1.0 and MixUp at alpha 0.2 (docs/fine-tuning.md: erasing, then mixing, as the
    references chain them): each image as torchvision's RandomErasing(p=1.0, value=0) leaves it
    from its key's draw, then the batch as MixUp(alpha=0.2) mixes it from the global RNG's
    state (MixUp alone is still a choice of one, as the references join the mixings). Mixed
    first, an erased patch would be 0 in a mixed image, not a blend of zeros."""
    images, targets = distinct_flat_images(), torch.arange(8)
    keys = torch.arange(8) * 7 + 3
    augment = batch_augmentation(params(erasing=1.0, mixup_alpha=0.2), 8, MEAN, STD, CPU)
    erasing, mixup = v2.RandomErasing(p=1.0, value=0), v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=8)])
    erased = []
    for image, key in zip(images, keys.tolist(), strict=True):
        torch.manual_seed(key)
        erased.append(erasing(image))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = augment(images, targets, keys)
        torch.manual_seed(seed)
        theirs = mixup(torch.stack(erased), targets)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_with_both_mixings_on_each_batch_is_torchvisions_random_choice_of_them() -> None:
    """MixUp at alpha 0.2 and CutMix at 0.5 with mix_switch 0.3: each batch is what torchvision's
    RandomChoice([MixUp(alpha=0.2), CutMix(alpha=0.5)], p=[0.7, 0.3]) (the references' way of
    joining them) makes of it from the same global RNG state, images and labels. Over 12 seeds
    both are chosen, and the two alphas differ from each other and from torchvision's default
    (1.0), so one used for the other, or an alpha not passed on, shows."""
    augment = batch_augmentation(params(mixup_alpha=0.2, cutmix_alpha=0.5, mix_switch=0.3), 8, MEAN, STD, CPU)
    reference = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=8), v2.CutMix(alpha=0.5, num_classes=8)], p=[0.7, 0.3])
    images, targets = distinct_flat_images(), torch.arange(8)
    cut = 0
    for seed in range(12):
        torch.manual_seed(seed)
        ours = augment(images, targets, torch.zeros(8, dtype=torch.int64))
        torch.manual_seed(seed)
        theirs = reference(images, targets)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
        cut += set(ours[0].unique().tolist()) <= set(range(1, 9))  # CutMix only moves pixels
    assert 0 < cut < 12, cut


def test_the_recipes_keep_the_batchs_memory_layout() -> None:
    """A channels-last batch (the layout on GPUs) stays channels-last through a policy, erasing
    and mixing, so the model's convolutions get the layout they were set up for."""
    images = copies_of_one_image(4).contiguous(memory_format=torch.channels_last)
    changes = {"policy": AugmentPolicy.trivialaugment, "erasing": 0.5, "mixup_alpha": 0.2}
    augment = batch_augmentation(params(**changes), 5, MEAN, STD, CPU)
    out, _ = augment(images, torch.zeros(4, dtype=torch.int64), torch.arange(4))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("changes", "mixing"),
    [
        ({"mixup_alpha": 0.2, "mix_switch": 1.0}, v2.MixUp(alpha=0.2, num_classes=8)),
        ({"mixup_alpha": 0.2, "mix_switch": 0.0}, v2.MixUp(alpha=0.2, num_classes=8)),
        ({"cutmix_alpha": 0.5, "mix_switch": 0.0}, v2.CutMix(alpha=0.5, num_classes=8)),
        ({"cutmix_alpha": 0.5, "mix_switch": 1.0}, v2.CutMix(alpha=0.5, num_classes=8)),
    ],
    ids=["mixup-switch-1", "mixup-switch-0", "cutmix-switch-0", "cutmix-switch-1"],
)
def test_with_one_mixing_on_mix_switch_plays_no_part(changes: dict, mixing: v2.Transform) -> None:
    """docs/params.md: mix_switch acts only with both mixings on. With one alone, each batch
    is what torchvision's MixUp or CutMix makes of it from the same global RNG state (a choice
    of one, as the references join the mixings), at the ends of mix_switch's range too (1:
    CutMix always, were it on; 0: MixUp always), where a share of batches given to the mixing
    that is off would leave the one on no chance. Neither alpha is torchvision's default (1.0),
    so an alpha not passed on shows."""
    augment = batch_augmentation(params(**changes), 8, MEAN, STD, CPU)
    images, targets = distinct_flat_images(), torch.arange(8)
    for seed in range(3):
        torch.manual_seed(seed)
        ours = augment(images, targets, torch.zeros(8, dtype=torch.int64))
        torch.manual_seed(seed)
        torch.testing.assert_close(ours, v2.RandomChoice([mixing])(images, targets), atol=0, rtol=0)
