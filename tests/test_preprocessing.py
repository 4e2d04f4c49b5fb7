"""Preprocessing comes from the weights: the tensors evaluation feeds a model are the ones
torchvision's own `weights.transforms()` makes from the same file.

The pipeline decodes each file once into a cache of the model's inputs (prepare's pass,
`data.cache.decoded_images`), and each batch normalises them (`batches.ImageBatches`). Here
that whole path runs on photo-like JPEGs and is compared with the weights' transforms on the
same files.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.models import get_model_weights, get_weight
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from pipeline.backbones import torchvision as torchvision_backbones
from pipeline.batches import ImageBatches
from pipeline.data.cache import decoded_images
from pipeline.data.decode import DECODE_MARGIN, Sizing, decode, load_image
from pipeline.data.inspection import inspect_file
from testing.photos import photo as detailed_photo
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
    """A JPEG (or the format `path`'s extension names) with a photo's mix of smooth regions and fine detail."""
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
    data = ImageBatches(images, torch.arange(len(paths)), torch.zeros(len(paths)), torch.device("cpu"), mean, std)
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
    ("resize", "scale"),
    # 1600 x 1200 decoded at 800 x 600, 400 x 300, 200 x 150; and whole for a 128 px resize,
    # though its 112 px crop alone would allow 1/2 scale (1200 / 2 >= 5 x 112): the margin is the resize's
    [(100, 2), (60, 4), (30, 8), (128, 1)],
)
def test_a_large_jpeg_decoded_at_reduced_scale_stays_within_a_level_or_two(
    photos_with_edges: Path, resize: int, scale: int
) -> None:
    """A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain only where that keeps
    DECODE_MARGIN times the resize size: its model inputs then differ from those of the
    whole decode by a fraction of a step of 8-bit value on average, a few at most. Just above
    the resize size, as the pipeline decoded before, they differed by up to 38 steps on
    photo-sized JPEGs (bench/README.md, "Fidelity"). Decoded whole, load_image's input is
    torchvision's within a step (measured: mean 0.0003; from the 1/2-scale decode that the
    crop's margin would allow, 2 steps here and there, mean 0.2)."""
    sizing = Sizing(resize, resize * 7 // 8)
    decoded = decode(photos_with_edges, resize)
    assert decoded.pixels.shape[:2] == (1200 // scale, 1600 // scale)  # the scale the test is about
    assert min(decoded.pixels.shape[:2]) >= DECODE_MARGIN * resize
    reference = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(sizing.crop)])
    expected = np.asarray(reference(Image.open(photos_with_edges).convert("RGB"))).transpose(2, 0, 1)
    difference = np.abs(load_image(photos_with_edges, sizing).astype(int) - expected)
    assert difference.mean() <= 0.5 and difference.max() <= 8, (difference.mean(), difference.max())
    if scale == 1:
        assert difference.max() <= 1 and difference.mean() < 0.05, (difference.max(), difference.mean())
    # The control: the decode just above the resize size (Pillow's draft), with no margin, as
    # the pipeline decoded before, is further off where it is another one.
    bare = Image.open(photos_with_edges)
    bare.draft("RGB", (resize, resize))
    if bare.size != decoded.pixels.shape[1::-1]:
        near = np.abs(np.asarray(reference(bare.convert("RGB"))).transpose(2, 0, 1).astype(int) - expected)
        assert near.max() > difference.max() and near.mean() > difference.mean()
        if min(bare.size) < 2 * resize:  # barely above it: beyond the 8 steps the bench allows
            assert near.max() > 8


@pytest.mark.parametrize(
    ("name", "sizing"),
    [("large.jpg", Sizing(500, 448)), ("large.jpg", Sizing(300, 256)), ("large.tif", Sizing(500, 448))],
    ids=["500-448", "300-256", "tiff-500-448"],
)
def test_prepare_decodes_anew_where_its_hash_decode_is_too_small_for_the_model(
    tmp_path: Path, name: str, sizing: Sizing
) -> None:
    """prepare decodes each file once at a fixed size for its hash (HASH_DECODE_SIZE 256, with
    DECODE_MARGIN: a 3000 x 2700 JPEG at 1/2 scale) and reuses that decode for the model only
    where the model's would be the same. At resize 500 the model's needs the whole file
    (5 x 500 > 1350): its input is then torchvision's Resize and CenterCrop of the whole decode
    within a step of 8-bit value (measured: mean 0.002); from the hash's 1/2-scale decode it
    would be 4 steps off here and there (mean 0.47). At resize 300 for a 256 crop the margin is
    the resize's (5 x 300 > 1350), not the crop's (5 x 256 < 1350): the whole file too. Other
    formats shrink by a whole factor for the hash (an uncompressed TIFF, cheap to write and
    read: halved): from that decode the input would be 2 steps off, mean 0.35."""
    path = photo(tmp_path / name, 3000, 2700, seed=1)
    inspected = inspect_file(str(path), sizing)
    reference = v2.Compose([v2.Resize(sizing.resize, antialias=True), v2.CenterCrop(sizing.crop)])
    expected = np.asarray(reference(Image.open(path).convert("RGB"))).transpose(2, 0, 1)
    difference = np.abs(inspected.pixels.astype(int) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.05, (difference.max(), difference.mean())


@pytest.fixture(scope="module")
def photos_with_edges(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    detailed_photo(np.random.default_rng(11), 1600, 1200, edges=150).save(path, quality=90)
    return path


def test_load_image_is_torchvisions_centre_crop(photos: list[Path]) -> None:
    sizing = Sizing(342, 299)  # an odd margin: torchvision rounds the crop's start half to even
    pixels = load_image(photos[2], sizing)
    assert pixels.shape == (3, 299, 299)
    transforms = get_weight(WEIGHTS[-1]).transforms()
    expected = transforms(Image.open(photos[2]).convert("RGB")) * torch.tensor(transforms.std)[:, None, None]
    expected = (expected + torch.tensor(transforms.mean)[:, None, None]) * 255
    torch.testing.assert_close(torch.from_numpy(pixels).float(), expected, atol=1.001, rtol=0)  # one 8-bit step
