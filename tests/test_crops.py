"""Training crops as torchvision's references make them: RandomResizedCrop's boxes drawn over the
whole picture, in its own pixels (augment.random_boxes), and cut from the image's training copy
(data.copies) so that they are torchvision's resized_crop of the whole decoded image.

References are torchvision's own: `RandomResizedCrop.get_params` for the boxes and
`v2.functional.resized_crop` on the whole decode, EXIF orientation applied, for the pixels.
"""

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torchvision.transforms import v2

from pipeline.augment import random_boxes
from pipeline.batches import CropBatches, Draws, crop_batches, iterate
from pipeline.data.cache import training_copies
from pipeline.data.decode import Sizing
from pipeline.engine import epoch_order
from pipeline.models import ModelSpec
from testing.photos import photo
from tests.helpers import crop_batches_of, file_sha1

CROP = 64  # the model's input: copies are kept at up to 160 x 240 pixels (data.copies)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 3:2 photo larger than its copy; a portrait one stored as landscape pixels with EXIF
    orientation 6 (turn a quarter clockwise to view); two within the copy's caps, one of
    them turned: those are kept as they are."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    paths = [folder / "wide.jpg", folder / "turned.jpg", folder / "small.jpg", folder / "small_turned.jpg"]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    # 882 x 588: its copy's scale (240 / 882) times 882 comes out past 240 in floats, and so down (about 7% of
    # photo sizes do): boxes reaching its right or bottom edge end past the copy's, at a fraction of a pixel.
    photo(rng, 882, 588, edges=60).save(paths[0], quality=90)
    photo(rng, 600, 450, edges=60).save(paths[1], quality=90, exif=exif)  # 450 x 600 upright
    photo(rng, 120, 90, edges=6).save(paths[2], quality=90)
    photo(rng, 200, 150, edges=6).save(paths[3], quality=90, exif=exif)  # 150 x 200 upright
    return paths


def whole_decode(path: Path) -> torch.Tensor:
    """The reference's input: the whole file decoded, turned upright, uint8 (3, H, W)."""
    return TF.pil_to_tensor(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def boxes_for(width: int, height: int) -> list[list[int]]:
    """Fixed boxes (top, left, height, width) of a quarter of the picture or more, at both
    ends of the aspect range, in corners and outside the centre square, and the whole image."""

    def box(scale: float, aspect: float, where: tuple[float, float]) -> list[int]:
        w = min(round(math.sqrt(scale * width * height * aspect)), width)
        h = min(round(math.sqrt(scale * width * height / aspect)), height)
        return [round(where[1] * (height - h)), round(where[0] * (width - w)), h, w]

    return [
        box(0.25, 1.0, (0.0, 0.0)),
        box(0.25, 4 / 3, (1.0, 1.0)),
        box(0.3, 3 / 4, (1.0, 0.3)),
        box(0.5, 1.0, (0.1, 0.8)),
        [0, 0, height, width],
    ]


# The goal in 8-bit steps for boxes of a quarter of the picture or more (bench/README.md), where
# the crop comes from a smaller JPEG copy; bicubic, sharper, shows more of the copy's loss
# (measured: up to 1.8 bilinear, 2.1 bicubic).
COPY_GOAL = {"bilinear": 2.0, "bicubic": 2.5}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])  # torchvision's usual filter and timm's
def test_training_crops_are_torchvisions_resized_crop_of_the_whole_image(
    photos: list[Path], tmp_path: Path, interpolation: str
) -> None:
    """Each crop with the weights' filter, against torchvision's resized_crop of the whole
    decode with it; from a file kept as it is (within the copy's caps), equal to the bit to
    resized_crop of the PIL image (Pillow's filter, as the references' training transforms run
    on PIL images), which the other filter is not."""
    mode = v2.InterpolationMode(interpolation)
    other_mode = v2.InterpolationMode.BICUBIC if interpolation == "bilinear" else v2.InterpolationMode.BILINEAR
    manifest = pd.DataFrame({"path": [p.as_posix() for p in photos], "sha1": [file_sha1(p) for p in photos]})
    copies = training_copies(manifest, Sizing(CROP, CROP), tmp_path / "cache")
    for row, path in enumerate(photos):
        whole = whole_decode(path)
        height, width = whole.shape[1:]
        assert copies.whole_sizes(torch.tensor([row])).tolist() == [[width, height]]  # upright
        offset, length = copies.index[row, :2].tolist()
        kept = copies.blob[offset : offset + length].tobytes() == path.read_bytes()
        assert kept == (path.name.startswith("small")), path.name  # the file itself, where within the caps
        boxes = boxes_for(width, height)
        flips = torch.tensor([False, True, False, True, False])
        data = CropBatches(copies, torch.full((len(boxes),), row), torch.zeros(len(boxes)), torch.device("cpu"),
                           [0.0] * 3, [1.0] * 3, CROP, interpolation)  # fmt: skip
        crops, _ = data.gather(torch.arange(len(boxes)), draws=Draws(torch.tensor(boxes), flips))
        for box, flip, crop in zip(boxes, flips, crops, strict=True):
            reference = TF.resized_crop(whole, *box, [CROP, CROP], mode, antialias=True)
            reference = TF.horizontal_flip(reference) if flip else reference
            per_pixel = (crop.permute(2, 0, 1).float() - reference.float()).abs()
            difference = per_pixel.mean()
            # From a file kept as it is, only Pillow's resize against torchvision's tensor one is left.
            assert difference <= (0.5 if kept else COPY_GOAL[interpolation]), (path.name, box, flip, float(difference))
            # Nor does an edge row or column stray (measured: up to 2.8): a box cut past the copy's edge would get a
            # black line beyond it, which darkens the crop's last row or column by 8 to 17 steps.
            edges = [
                per_pixel[:, 0].mean(),
                per_pixel[:, -1].mean(),
                per_pixel[:, :, 0].mean(),
                per_pixel[:, :, -1].mean(),
            ]
            assert max(edges) <= 2 * COPY_GOAL[interpolation], (path.name, box, flip, [float(e) for e in edges])
            if kept:
                upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
                for filter_, same in ((mode, True), (other_mode, False)):
                    cut = TF.pil_to_tensor(TF.resized_crop(upright, *box, [CROP, CROP], filter_))
                    cut = TF.horizontal_flip(cut) if flip else cut
                    if same:
                        assert torch.equal(crop.permute(2, 0, 1), cut), (path.name, box)
                    else:
                        assert (crop.permute(2, 0, 1).float() - cut.float()).abs().mean() > 0.5
            # The controls: the box a tenth of its size off, or mirrored, is far from the crop.
            wrong = [TF.horizontal_flip(reference)]
            if (moved := shifted(box, width, height)) is not None:
                wrong.append(TF.resized_crop(whole, *moved, [CROP, CROP], mode, antialias=True))
            for other in wrong:
                assert (crop.permute(2, 0, 1).float() - other.float()).abs().mean() > 4 * max(difference, 1)


@pytest.mark.parametrize(
    ("whole", "kept"),
    [
        ((900, 600), (240, 160)),  # 3:2: both caps bind alike
        ((1200, 300), (240, 60)),  # a panorama: the longer side's cap binds, 1.5 x 160
        ((300, 1200), (60, 240)),  # ...upright
        ((1000, 800), (200, 160)),  # 5:4: the shorter side's cap binds, the longer one's would allow 240
        ((1100, 900), (196, 160)),  # 11:9: the longer side 1100 * 160 / 900 = 195.6 px, to the nearest pixel
        ((150, 100), (150, 100)),  # within both caps: never enlarged
    ],
)
def test_a_copy_keeps_its_aspect_within_both_caps(
    whole: tuple[int, int], kept: tuple[int, int], tmp_path: Path
) -> None:
    """docs: a copy's shorter side is at most 2.5 model inputs (160 px for 64), its longer side
    at most 1.5 times that (240 px); the sizes here are by hand. The model's input, not the
    resize before its centre crop (73 px for 64, as 256 for 224)."""
    path = tmp_path / "photo.jpg"
    photo(np.random.default_rng(0), *whole).save(path, quality=90)
    manifest = pd.DataFrame({"path": [path.as_posix()], "sha1": [file_sha1(path)]})
    for sizing in (Sizing(CROP, CROP), Sizing(CROP * 256 // 224, CROP)):
        copies = training_copies(manifest, sizing, tmp_path / f"cache{sizing.resize}")
        assert tuple(copies.index[0, 4:6].tolist()) == kept, sizing  # the copy's width and height
        assert copies.whole_sizes(torch.tensor([0])).tolist() == [list(whole)]


def shifted(box: list[int], width: int, height: int) -> list[int] | None:
    """`box` moved by a tenth of its width (or else height) where the image has room; None if none."""
    top, left, h, w = box
    if w < width:
        return [top, left + w // 10 if left + w + w // 10 <= width else left - w // 10, h, w]
    if h < height:
        return [top + h // 10 if top + h + h // 10 <= height else top - h // 10, left, h, w]
    return None


def test_tiny_images_are_kept_exact_and_cropped_as_torchvision_crops_them(tmp_path: Path) -> None:
    """Raw pixels where a JPEG would not be smaller: the demo's 8x8 digits stay exact, and a
    crop of them is torchvision's, to a step of 8-bit value (Pillow's resize and torch's)."""
    data = crop_batches_of(tmp_path, [(8, 8), (12, 6)], crop=32)
    assert data.copies.index[:, 2].tolist() == [0, 0]  # not JPEGs
    for row in (0, 1):
        source = Image.open(tmp_path / f"{row}.png")
        np.testing.assert_array_equal(data.copies.pixels(row), np.asarray(source))
        box = [1, 2, 5, 6]
        draws = Draws(torch.tensor([box]), torch.tensor([row == 1]))
        crops, _ = data.gather(torch.tensor([row]), draws=draws)
        reference = TF.resized_crop(TF.pil_to_tensor(source), *box, [32, 32], antialias=True)
        reference = TF.horizontal_flip(reference) if row == 1 else reference
        assert (crops[0].permute(2, 0, 1).int() - reference.int()).abs().max() <= 1
        # What a training step gets: the crop, normalised with the model's mean and std.
        (images, _), *_ = iterate(data, [torch.tensor([row])], [draws])
        expected = TF.normalize(reference[None].float() / 255, data.mean, data.std)
        torch.testing.assert_close(images, expected, atol=1.01 / 255 / min(data.std), rtol=0)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (256, 256), (900, 100)])
def test_boxes_are_drawn_as_random_resized_crop_draws_them(size: tuple[int, int]) -> None:
    """The same distribution as torchvision's RandomResizedCrop.get_params, over the whole
    image: its area share, aspect ratio and place (across, down and both together), compared
    on 4,000 draws of each."""
    width, height = size
    n = 4000
    ours = random_boxes(torch.tensor([size] * n), SCALE[0], RATIO[1], torch.Generator().manual_seed(0)).double()
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    theirs = torch.tensor([v2.RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)) for _ in range(n)]).double()
    for boxes in (ours, theirs):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for name, statistic in {
        "area share": lambda b: b[:, 2] * b[:, 3] / (width * height),
        "log aspect": lambda b: (b[:, 3] / b[:, 2]).log(),
        "centre x": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
        "centre y": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        # the place across and down drawn apart: drawn together, this one's spread grows
        "centre x + y": lambda b: (b[:, 1] + b[:, 3] / 2) / width + (b[:, 0] + b[:, 2] / 2) / height,
    }.items():
        mine, reference = statistic(ours), statistic(theirs)
        assert abs(mine.mean() - reference.mean()) < 0.015, name
        assert abs(mine.std() - reference.std()) < 0.015, name
    # The whole picture is used: boxes reach every edge of it, not only a centre square.
    top, left, h, w = ours.unbind(1)
    assert top.min() == 0 and left.min() == 0 and (top + h).max() == height and (left + w).max() == width


@pytest.mark.parametrize("size", [(4, 4), (5, 3)])
def test_on_pictures_of_a_few_pixels_each_box_size_is_drawn_as_often_as_torchvision_draws_it(
    size: tuple[int, int],
) -> None:
    """Where rounding to whole pixels decides (tiny pictures, as the digits'), the share of each
    box size (height, width) among 4,000 draws is RandomResizedCrop.get_params' within 0.04
    (measured: 0.012 and 0.016; a box's side taken as fitting only below the picture's, 0.14
    and 0.31). A quarter of the 4 x 4 picture's boxes span its whole width."""
    width, height = size
    n = 4000
    ours = random_boxes(torch.tensor([size] * n), SCALE[0], RATIO[1], torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    theirs = torch.tensor([v2.RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)) for _ in range(n)])

    def shares(boxes: torch.Tensor) -> dict[tuple[int, int], float]:
        return {box: count / n for box, count in Counter(map(tuple, boxes[:, 2:].tolist())).items()}

    mine, reference = shares(ours), shares(theirs)
    assert max(abs(mine.get(box, 0) - reference.get(box, 0)) for box in mine.keys() | reference.keys()) < 0.04


# 1000 x 82: the centre's offset is 445.5 away from a whole pixel, where torchvision takes 445 (int)
@pytest.mark.parametrize("size", [(1000, 80), (80, 1000), (1000, 82), (82, 1000), (500, 500)])
def test_when_no_box_fits_the_fallback_is_torchvisions(size: tuple[int, int]) -> None:
    """Boxes of at least 99% of the area cannot fit a 12.5:1 image at an aspect within 4:3:
    torchvision then takes the centre at the nearest aspect in range; a square takes all."""
    width, height = size
    image = torch.empty(1, height, width)
    expected = list(v2.RandomResizedCrop.get_params(image, [0.99, 1.0], list(RATIO)))
    ours = random_boxes(torch.tensor([size] * 50), 0.99, RATIO[1], torch.Generator().manual_seed(1))
    if width == height:  # any draw fits; the box is close to the whole image, and inside it
        assert (ours[:, 2] * ours[:, 3] >= 0.99 * width * height - width - height).all()
        top, left, box_height, box_width = ours.unbind(1)
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + box_height <= height).all() and (left + box_width <= width).all()
    else:
        assert ours.tolist() == [expected] * 50


def test_each_visit_gets_a_box_of_its_own_items_picture() -> None:
    """The epoch's order shuffles the items; each visit's box is drawn over the image visited."""
    sizes = torch.tensor([(1000, 10), (10, 1000)] * 8)
    plan = epoch_order(len(sizes), torch.Generator().manual_seed(4), False, 0.08, RATIO[1], sizes)
    visited = sizes[plan.order]
    top, left, h, w = plan.draws.boxes.unbind(1)
    assert (left + w <= visited[:, 0]).all() and (top + h <= visited[:, 1]).all()
    assert not torch.equal(plan.order, torch.arange(len(sizes)))  # the order does shuffle


def test_each_crop_comes_with_its_own_pictures_label_in_any_order(tmp_path: Path) -> None:
    """A shuffled epoch visits rows in any order: each crop is cut from the row visited, and
    the label that comes with it is that row's. (An index in order would hide labels taken
    by position instead of by row.)"""
    shapes = [(8, 8), (12, 6), (6, 12), (10, 10), (9, 7)]
    data = crop_batches_of(tmp_path, shapes, crop=16)
    labels = [2, 0, 1, 1, 0]  # not the rows' order, nor their positions in the visit
    data = dataclasses.replace(data, targets=torch.tensor(labels))
    visit = [3, 0, 4, 1]
    boxes = [[0, 0, shapes[row][1], shapes[row][0]] for row in visit]  # each picture whole
    crops, targets = data.gather(torch.tensor(visit), draws=Draws(torch.tensor(boxes), None))
    assert targets.tolist() == [labels[row] for row in visit]
    for row, box, crop in zip(visit, boxes, crops, strict=True):
        source = TF.pil_to_tensor(Image.open(tmp_path / f"{row}.png"))
        reference = TF.resized_crop(source, *box, [16, 16], antialias=True)
        assert (crop.permute(2, 0, 1).int() - reference.int()).abs().max() <= 1, row


def test_the_train_splits_crops_are_its_own_pictures_at_the_models_input_size(tmp_path: Path) -> None:
    """crop_batches, as the train stage calls it, on a manifest whose train rows sit between
    val and test ones, for bicubic weights that resize to 18 px before their 16 px centre
    crop: each crop is cut from its own row's picture, comes with that row's label, and is the
    model's 16 px input (the resize size is evaluation's, before its centre crop), resized
    with the weights' filter; the boxes are drawn over the split's own pictures' sizes."""
    shapes = [(8, 8), (12, 6), (6, 12), (10, 10), (9, 7), (7, 9)]
    rng = np.random.default_rng(1)
    paths = []
    for index, (width, height) in enumerate(shapes):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    manifest = pd.DataFrame({
        "path": [p.as_posix() for p in paths], "sha1": [file_sha1(p) for p in paths],
        "label": ["a", "c", "b", "b", "a", "a"], "split": ["val", "train", "test", "train", "val", "train"],
    })  # fmt: skip
    spec = ModelSpec(
        "resnet18", "fc", ["a", "b", "c"], 16, [0.0] * 3, [1.0] * 3, resize_size=18, interpolation="bicubic"
    )
    copies = training_copies(manifest, spec.sizing, tmp_path / "cache")
    data = crop_batches(copies, manifest, "train", spec, torch.device("cpu"))
    assert data.whole_sizes.tolist() == [list(shapes[row]) for row in (1, 3, 5)]  # (width, height) of rows 1, 3, 5
    visit = [2, 0, 1]  # positions in the train split: its rows 5, 1 and 3
    rows = [[1, 3, 5][position] for position in visit]
    boxes = [[0, 0, shapes[row][1], shapes[row][0]] for row in rows]  # each picture whole
    crops, targets = data.gather(torch.tensor(visit), draws=Draws(torch.tensor(boxes), None))
    assert targets.tolist() == [spec.classes.index(manifest["label"][row]) for row in rows]
    assert crops.shape == (3, 16, 16, 3)
    for row, box, crop in zip(rows, boxes, crops, strict=True):
        picture = TF.pil_to_tensor(Image.open(paths[row]))
        reference = TF.resized_crop(picture, *box, [16, 16], TF.InterpolationMode.BICUBIC, antialias=True)
        assert (crop.permute(2, 0, 1).int() - reference.int()).abs().max() <= 1, row
