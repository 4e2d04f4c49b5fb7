"""Preprocessing comes from the weights: the tensors evaluation feeds a model are the ones
torchvision's own `weights.transforms()` makes from the same file.

The pipeline decodes each file once into a cache at the weights' resize size (prepare's
pass, `data.cache.decoded_images`), and each batch takes the centre crop from it
(`batches.ImageBatches`). Here that whole path runs on photo-like JPEGs and is compared with
the weights' transforms on the same files.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.models import get_model_weights, get_weight
from torchvision.transforms.functional import pil_to_tensor

from pipeline.backbones import torchvision as torchvision_backbones
from pipeline.batches import ImageBatches
from pipeline.data.cache import decoded_images
from pipeline.data.decode import Sizing, decode, load_image
from tests.helpers import file_sha1

WEIGHTS = [
    "ResNet50_Weights.IMAGENET1K_V1",  # resize 256, crop 224, bilinear
    "ResNet50_Weights.IMAGENET1K_V2",  # resize 232
    "EfficientNet_B0_Weights.IMAGENET1K_V1",  # bicubic
    "ViT_B_16_Weights.IMAGENET1K_V1",
    "Inception_V3_Weights.IMAGENET1K_V1",  # resize 342, crop 299: an odd margin to centre
]
# Landscape, portrait, an odd width; each under 3x the resize size, so decoded at full size.
SHAPES = [(500, 375), (375, 500), (641, 427)]


def photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A JPEG with a photo's mix of smooth regions and fine detail."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(1)
    )
    Image.blend(smooth, detail, 0.25).save(path, quality=90)
    return path


def pipeline_inputs(paths: list[Path], weights_name: str, cache: Path) -> torch.Tensor:
    """What evaluate feeds the model for these files, with these weights' preprocessing."""
    weights = get_weight(weights_name)
    arch = weights_name.partition("_Weights")[0].lower()  # ResNet50_Weights.IMAGENET1K_V1: resnet50
    assert isinstance(weights, get_model_weights(arch))
    crop = weights.transforms().crop_size[0]
    sizing, mean, std = torchvision_backbones.preprocessing(arch, weights, crop)
    manifest = pd.DataFrame({"path": [p.as_posix() for p in paths], "sha1": [file_sha1(p) for p in paths]})
    images = torch.from_numpy(decoded_images(manifest, sizing, cache))
    data = ImageBatches(images, torch.arange(len(paths)), torch.zeros(len(paths)), torch.device("cpu"), mean, std, crop)
    return data.load(torch.arange(len(paths)))[0]


def reference_inputs(paths: list[Path], weights_name: str, on_tensors: bool = True) -> torch.Tensor:
    """The weights' own transforms on each whole decoded file: on its uint8 tensor (as
    `decode_image` gives it), or on the Pillow image."""
    transforms = get_weight(weights_name).transforms()
    images = [Image.open(path).convert("RGB") for path in paths]
    return torch.stack([transforms(pil_to_tensor(image) if on_tensors else image) for image in images])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    return [photo(folder / f"{w}x{h}.jpg", w, h, seed) for seed, (w, h) in enumerate(SHAPES)]


@pytest.mark.parametrize("weights_name", WEIGHTS)
def test_evaluation_inputs_are_the_weights_own_transforms(
    photos: list[Path], weights_name: str, tmp_path: Path
) -> None:
    ours = pipeline_inputs(photos, weights_name, tmp_path / "cache")
    reference = reference_inputs(photos, weights_name)
    assert ours.shape == reference.shape
    # The pipeline resizes uint8 tensors with torchvision's fast uint8 kernel; the transforms
    # resize in floats on tensors, and with Pillow on images. Each is one step of 8-bit value
    # from the others at most, here and there.
    step = 1 / 255 / min(get_weight(weights_name).transforms().std)
    for on_tensors in (True, False):
        difference = (ours - reference_inputs(photos, weights_name, on_tensors)).abs()
        assert difference.max() <= step * 1.001, on_tensors
        assert difference.mean() < step * 0.25, on_tensors


@pytest.mark.parametrize(
    ("shape", "scaled"),
    [
        ((3200, 2400), [(400, 300), (800, 600)]),  # 1/8 scale for resize 256, 1/4 for 342
        ((3000, 2250), [(1500, 1125), (1500, 1125)]),  # 1/2: 8 and 4 do not divide 2250
    ],
)
def test_a_large_jpeg_decoded_at_reduced_scale_stays_close(
    tmp_path: Path, shape: tuple[int, int], scaled: list[tuple[int, int]]
) -> None:
    """A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Image.draft) when that
    keeps at least the resize size: not bit-equal to resizing the whole image, but close."""
    path = photo(tmp_path / "big.jpg", *shape, seed=7)
    for weights_name, size in zip((WEIGHTS[0], WEIGHTS[-1]), scaled, strict=True):  # resize 256; 342
        transforms = get_weight(weights_name).transforms()
        decoded = decode(path, transforms.resize_size[0])
        height, width = decoded.pixels.shape[:2]
        assert ((width, height), decoded.size) == (size, shape)  # the scale the test is about
        difference = (
            pipeline_inputs([path], weights_name, tmp_path / "cache")
            - reference_inputs([path], weights_name, on_tensors=False)
        ).abs()
        # In steps of 8-bit value. The DCT's 1/8 scale averages 8x8 blocks, another low-pass
        # than the bilinear filter's over the whole image: on this detail-heavy photo it
        # measured a mean of 2.1 steps and a maximum of 13 (1/4: 1.0 and 6; 1/2: 0.3 and 3).
        # A picture off by one pixel in size or place measured 16 on average.
        step = 1 / 255 / min(transforms.std)
        assert difference.mean() < 3 * step, weights_name
        assert difference.max() < 20 * step, weights_name


def test_load_image_keeps_the_resize_square_around_torchvisions_centre_crop(photos: list[Path]) -> None:
    sizing = Sizing(342, 299)  # an odd margin: torchvision rounds the crop's start half to even
    pixels = load_image(photos[2], sizing)
    assert pixels.shape == (3, 342, 342)
    transforms = get_weight(WEIGHTS[-1]).transforms()
    expected = transforms(Image.open(photos[2]).convert("RGB")) * torch.tensor(transforms.std)[:, None, None]
    expected = (expected + torch.tensor(transforms.mean)[:, None, None]) * 255
    start = sizing.crop_offset
    crop = torch.from_numpy(pixels[:, start : start + 299, start : start + 299]).float()
    torch.testing.assert_close(crop, expected, atol=1.001, rtol=0)  # one step of 8-bit value: see above
