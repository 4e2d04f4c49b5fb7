"""pipeline/data/: finding and decoding images, stratified splits, the pixel cache; and the flips of augmentation."""

import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from pipeline.augment import draw_augmentation
from pipeline.batches import Draws, ImageBatches
from pipeline.cli import UserError
from pipeline.data import inspection
from pipeline.data.cache import decoded_images, training_copies
from pipeline.data.decode import Sizing, decode, load_image
from pipeline.data.inspection import image_hash, inspect_file
from pipeline.data.scan import find_images
from pipeline.data.split import MANIFEST_COLUMNS, SPLITS, duplicate_groups, stratified_split, usable_images
from testing.photos import photo
from tests.helpers import file_sha1

RED, GREEN, BLUE = (255, 0, 0), (0, 200, 0), (0, 0, 255)
EXIF_ORIENTATION = 0x0112


def save_solid(path: Path, color: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 8)) -> Path:
    """A one-colour RGB image at `path` (format from the extension, in any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def bands(width: int, height: int, colors: list[tuple[int, int, int]], vertical: bool = True) -> np.ndarray:
    """An (height, width, 3) uint8 array split into equal bands, left to right (or top to bottom)."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    step = (width if vertical else height) // len(colors)
    for i, color in enumerate(colors):
        if vertical:
            pixels[:, i * step : (i + 1) * step] = color
        else:
            pixels[i * step : (i + 1) * step, :] = color
    return pixels


def rgb_at(image: np.ndarray, row: int, col: int) -> tuple[int, ...]:
    """The (r, g, b) of a channels-first image at one pixel."""
    return tuple(int(v) for v in image[:, row, col])


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> None:
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance, (actual, expected)


# --- find_images -------------------------------------------------------------------------


def test_find_images_ignores_hidden_files_and_folders(tmp_path: Path) -> None:
    keep = save_solid(tmp_path / "cat" / "a.png")
    save_solid(tmp_path / "cat" / ".hidden.png")
    save_solid(tmp_path / "cat" / ".thumbnails" / "b.png")
    save_solid(tmp_path / "cat" / "sub" / ".c.png")
    save_solid(tmp_path / ".trash" / "d.png")  # a hidden folder at class level is not a class
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    classes, files, skipped = find_images(tmp_path)

    assert classes == ["cat"]
    assert files == [(keep, "cat")]
    assert skipped == []  # hidden files are ignored, not reported


def test_find_images_counts_nested_folders_for_their_class(tmp_path: Path) -> None:
    top = save_solid(tmp_path / "cat" / "top.png")
    deep = save_solid(tmp_path / "cat" / "2023" / "summer" / "deep.png")
    other = save_solid(tmp_path / "dog" / "x" / "d.png")

    classes, files, _ = find_images(tmp_path)

    assert classes == ["cat", "dog"]
    assert sorted(files) == sorted([(top, "cat"), (deep, "cat"), (other, "dog")])


def test_find_images_accepts_upper_and_mixed_case_extensions(tmp_path: Path) -> None:
    names = ["a.PNG", "b.JPG", "c.JpEg", "d.png"]
    paths = [save_solid(tmp_path / "cat" / name) for name in names]

    _, files, skipped = find_images(tmp_path)

    assert sorted(files) == sorted((p, "cat") for p in paths)
    assert skipped == []


def test_find_images_takes_every_format_pillow_reads_that_photos_come_in(tmp_path: Path) -> None:
    """BMP, GIF, JPEG, PNG, PPM, TIFF and WebP files, each written by Pillow in its own format:
    every one is an image of its class, and decodes to its colour."""
    formats = {"a.bmp": "BMP", "b.gif": "GIF", "c.jpeg": "JPEG", "d.jpg": "JPEG", "e.png": "PNG", "f.ppm": "PPM",
               "g.tif": "TIFF", "h.tiff": "TIFF", "i.webp": "WEBP"}  # fmt: skip
    paths = []
    for name, fmt in formats.items():
        paths.append(tmp_path / "cat" / name)
        paths[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (200, 40, 40)).save(
            paths[-1], format=fmt, **({"lossless": True} if fmt == "WEBP" else {})
        )
    _, files, skipped = find_images(tmp_path)
    assert sorted(files) == sorted((path, "cat") for path in paths) and skipped == []
    for path in paths:
        assert np.abs(load_image(path, Sizing(8, 8)).astype(int) - [[[200]], [[40]], [[40]]]).max() <= 3, path.name


def test_find_images_and_load_image_handle_non_ascii_names(tmp_path: Path) -> None:
    path = save_solid(tmp_path / "кошка" / "ünïcødé_图.png", GREEN)

    classes, files, _ = find_images(tmp_path)

    assert classes == ["кошка"]
    assert files == [(path, "кошка")]
    assert rgb_at(load_image(files[0][0], Sizing(4, 4)), 0, 0) == GREEN


def test_find_images_reports_non_image_files_as_skipped(tmp_path: Path) -> None:
    image = save_solid(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "README.txt").write_text("notes")
    (tmp_path / "cat" / "labels.csv").write_text("a,b\n")
    (tmp_path / "cat" / "LICENSE").write_text("no extension")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    _, files, skipped = find_images(tmp_path)

    assert files == [(image, "cat")]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"README.txt", "labels.csv", "LICENSE"}
    assert ".txt" in reasons["README.txt"]
    assert ".csv" in reasons["labels.csv"]
    assert all("extension" in reason for reason in reasons.values())


def test_find_images_reports_a_folder_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-folder without read permission: its images cannot be listed, so it gets a row in
    skipped.csv's reasons instead of vanishing. (The tests may run as root, whom permissions do
    not stop: listing it fails here as it would for a user.)"""
    image = save_solid(tmp_path / "cat" / "a.png")
    save_solid(tmp_path / "cat" / "locked" / "b.png")
    listdir = os.listdir

    def refusing(path: os.PathLike | str) -> list[str]:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refusing)
    _, files, skipped = find_images(tmp_path)

    assert files == [(image, "cat")]
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [
        ((tmp_path / "cat" / "locked").as_posix(), "folder cannot be read")
    ]
    assert "PermissionError" in skipped[0].reason


def test_find_images_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        find_images(tmp_path / "nope")


# --- load_image --------------------------------------------------------------------------


def _grey_l(path: Path) -> tuple[int, int, int]:
    Image.new("L", (8, 8), 77).save(path, format="PNG")
    return (77, 77, 77)


def _palette(path: Path) -> tuple[int, int, int]:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.save(path, format="PNG")
    return GREEN


def _cmyk(path: Path) -> tuple[int, int, int]:
    # Pure cyan ink, no black: no red light, full green and blue.
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path, format="JPEG", quality=95)
    return (0, 255, 255)


def _grey_la(path: Path) -> tuple[int, int, int]:
    Image.new("LA", (8, 8), (200, 0)).save(path, format="PNG")  # fully transparent light grey
    return (0, 0, 0)


@pytest.mark.parametrize(
    ("mode", "make", "tolerance"),
    [("L", _grey_l, 0), ("P", _palette, 0), ("CMYK", _cmyk, 6), ("LA", _grey_la, 0)],
    ids=["L", "P", "CMYK", "LA"],
)
def test_load_image_converts_modes_to_rgb(tmp_path: Path, mode: str, make, tolerance: int) -> None:
    path = tmp_path / "image"
    expected = make(path)
    assert Image.open(path).mode == mode  # the file really is in the mode under test

    image = load_image(path, Sizing(4, 4))

    assert image.dtype == np.uint8
    assert image.shape == (3, 4, 4)
    for row, col in [(0, 0), (3, 3), (1, 2)]:
        assert_close(rgb_at(image, row, col), expected, tolerance)


@pytest.mark.parametrize("mode", ["P", "1"])
def test_a_large_palette_or_one_bit_image_is_shrunk_averaging_its_colours(tmp_path: Path, mode: str) -> None:
    """A 200 x 160 checker of single pixels, red and blue in a palette (black and white in one
    bit), large enough to be shrunk before the resize: the model input is torchvision's Resize
    and CenterCrop of its RGB pixels, an even mix (purple, grey), not every n-th pixel's colour."""
    checker = (np.indices((160, 200)).sum(axis=0) % 2).astype(bool)
    pixels = np.where(checker[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8))
    image = Image.fromarray(pixels).quantize(2) if mode == "P" else Image.fromarray(checker).convert("1")
    image.save(tmp_path / "checker.png")
    loaded = load_image(tmp_path / "checker.png", Sizing(8, 8))
    rgb = Image.open(tmp_path / "checker.png").convert("RGB")
    reference = v2.CenterCrop(8)(v2.Resize(8)(v2.functional.pil_to_tensor(rgb))).numpy().astype(int)
    assert np.abs(loaded.astype(int) - reference).max() <= 2
    assert (abs(reference.max(axis=0) - 127) < 30).all()  # the mix of the two colours


def test_load_image_flattens_rgba_onto_black(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :4] = (255, 255, 255, 0)  # fully transparent white
    pixels[:, 4:6] = (200, 100, 50, 128)  # half transparent: blended with black, half as bright
    pixels[:, 6:] = (*RED, 255)  # opaque red
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")

    image = load_image(tmp_path / "a.png", Sizing(8, 8))

    assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
    assert rgb_at(image, 3, 0) == (0, 0, 0)
    assert_close(rgb_at(image, 3, 4), (100, 50, 25), 1)  # 200 x 128 / 255 = 100.4, and so on
    assert rgb_at(image, 3, 7) == RED


def test_load_image_flattens_palette_transparency_onto_black(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 255, 255, *GREEN] + [0] * 762)
    for row in range(8):
        image.putpixel((7, row), 1)
    image.save(tmp_path / "p.png", transparency=0)  # palette index 0 (white) is transparent
    assert "transparency" in Image.open(tmp_path / "p.png").info

    out = load_image(tmp_path / "p.png", Sizing(8, 8))

    assert out.dtype == np.uint8 and out.shape == (3, 8, 8)
    assert rgb_at(out, 4, 0) == (0, 0, 0)
    assert rgb_at(out, 4, 7) == GREEN


def test_load_image_scales_16_bit_grey_instead_of_clipping(tmp_path: Path) -> None:
    grey16 = 32768
    Image.fromarray(np.full((8, 8), grey16, dtype=np.uint16)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "I;16"

    image = load_image(tmp_path / "g.png", Sizing(4, 4))

    assert image.dtype == np.uint8 and image.shape == (3, 4, 4)
    # By hand: 32768 / 65535 x 255 = 127.502, the nearest 8-bit value 128. A flat picture stays
    # flat through any resize, so every pixel is that exactly; truncated, it would be 127.
    expected = round(grey16 / 65535 * 255)
    assert expected == 128
    np.testing.assert_array_equal(image, np.full((3, 4, 4), expected, dtype=np.uint8))
    assert image.max() < 255  # Pillow's plain convert("RGB") would clip to white


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)], ids=["6", "8"])
def test_load_image_follows_exif_orientation(tmp_path: Path, orientation: int, top, bottom) -> None:
    # Stored landscape, red left half and blue right half. Orientation 6 means "rotate 90°
    # clockwise to display": the left half ends up on top; 8 is the counter-clockwise turn.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(bands(32, 16, [RED, BLUE])).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)

    image = load_image(tmp_path / "photo.jpg", Sizing(16, 16))

    assert image.shape == (3, 16, 16)
    for col in (0, 8, 15):
        assert_close(rgb_at(image, 1, col), top, 16)
        assert_close(rgb_at(image, 14, col), bottom, 16)


@pytest.mark.parametrize("name", ["photo.png", "cmyk.jpg"])
def test_exif_orientation_is_followed_in_pngs_and_cmyk_jpegs_too(tmp_path: Path, name: str) -> None:
    """Orientation 6 stored in a PNG (and in a CMYK JPEG, which Pillow decodes): upright as
    Pillow's exif_transpose turns it, then resized and cropped by its upright sides, as
    torchvision's Resize and CenterCrop do: a stored 48 x 24 picture stands 24 x 48."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    image = Image.fromarray(bands(48, 24, [RED, BLUE]))
    if name.endswith(".jpg"):
        image.convert("CMYK").save(tmp_path / name, exif=exif.tobytes(), quality=95)
    else:
        image.save(tmp_path / name, exif=exif.tobytes())
    loaded = load_image(tmp_path / name, Sizing(16, 8))
    for col in (0, 4, 7):
        assert_close(rgb_at(loaded, 1, col), RED, 16)
        assert_close(rgb_at(loaded, 6, col), BLUE, 16)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / name)).convert("RGB")
    reference = v2.functional.pil_to_tensor(v2.CenterCrop(8)(v2.Resize(16)(upright))).numpy()
    assert np.abs(loaded.astype(int) - reference).max() <= 16
    # Training crops are drawn over the upright picture's sides too.
    manifest = pd.DataFrame({"path": [(tmp_path / name).as_posix()], "sha1": [file_sha1(tmp_path / name)]})
    copies = training_copies(manifest, Sizing(16, 8), tmp_path / "cache")
    assert copies.whole_sizes(torch.tensor([0])).tolist() == [[24, 48]]


def pillows_decode(path: Path, scale: int = 1) -> np.ndarray:
    """What Pillow alone makes of `path`: decoded at 1/`scale` (Image.draft), upright, RGB."""
    with Image.open(path) as image:
        image.draft(image.mode, (image.width // scale, image.height // scale))
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with detail at every scale, so that any difference in decoding shows."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_decodes_to_pillows_pixels_for_every_orientation(tmp_path: Path, orientation: int, mode: str) -> None:
    # libjpeg-turbo (simplejpeg) decodes JPEGs, Pillow everything else: a JPEG must come out
    # exactly as Pillow would give it, turned as Pillow's exif_transpose turns it.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / "photo.jpg"
    textured(96, 64).convert(mode).save(path, exif=exif.tobytes(), quality=90)

    whole = decode(path, 64)  # no smaller scale keeps 64 px: the whole image
    eighth = decode(path, 1)  # 1/8 scale, 12 x 8: at least DECODE_MARGIN (5) times 1 px

    assert np.array_equal(whole.pixels, pillows_decode(path))
    assert np.array_equal(eighth.pixels, pillows_decode(path, 8))
    upright = (64, 96) if orientation >= 5 else (96, 64)
    assert whole.size == eighth.size == upright
    assert eighth.pixels.shape == (upright[1] // 8, upright[0] // 8, 3)


def test_jpegs_that_libjpeg_decodes_past_damage_or_that_are_cmyk_decode_as_pillow_decodes_them(
    tmp_path: Path,
) -> None:
    # Damage libjpeg only warns about (here: stray bytes before the end marker), a phone's MPO
    # (a JPEG with a second picture after its first) and a CMYK JPEG.
    good = tmp_path / "good.jpg"
    textured(64, 48).save(good, quality=90)
    content = good.read_bytes()
    stray = tmp_path / "stray.jpg"
    stray.write_bytes(content[:-2] + b"\x00" * 40 + content[-2:])
    mpo = tmp_path / "phone.jpg"
    textured(64, 48, seed=1).save(mpo, "MPO", save_all=True, append_images=[textured(64, 48, seed=2)])
    cmyk = tmp_path / "print.jpg"
    textured(64, 48).convert("CMYK").save(cmyk, quality=90)
    assert Image.open(mpo).format == "MPO" and Image.open(cmyk).mode == "CMYK"

    for path in (stray, mpo, cmyk):
        assert np.array_equal(decode(path, 48).pixels, pillows_decode(path)), path.name
    assert np.array_equal(decode(mpo, 1).pixels, pillows_decode(mpo, 8))  # an MPO decodes at 1/8 too
    assert decode(mpo, 1).pixels.shape == (6, 8, 3)
    assert inspect_file(str(stray), Sizing(16, 16)).problem is None


# (stored width x height, how it is saved, the size asked for; then by hand, docs/design.md's rule:
# the DCT scale, the smallest of 1/8, 1/4, 1/2 that divides both sides and keeps five times the size
# on the shorter side; then the whole factor other formats are reduced by, which keeps that margin).
SHRINK_CASES = {
    # 1/8 would keep 7 >= 5 rows but does not divide 60 (its last row would be part of a block):
    # a quarter, 24 x 15, then reduced by 15 // 5 = 3.
    "jpeg-a-side-an-eighth-does-not-divide": ((96, 60), "RGB.jpg", 1, 4, 3),
    # A panorama: at 1/8 its longer side keeps 80 px (5 x 16), its shorter side only 20.
    "jpeg-panorama": ((640, 160), "RGB.jpg", 16, 2, 1),
    # Pillow decodes CMYK JPEGs (libjpeg-turbo's path takes YCbCr and grey alone), at the DCT scale too.
    "cmyk-jpeg": ((96, 64), "CMYK.jpg", 1, 8, 1),
    # A PNG reduced by a whole factor, by its shorter side: 160 // (5 x 16) = 2, not 640 // 80 = 8.
    "png-panorama": ((640, 160), "RGB.png", 16, 1, 2),
}


@pytest.mark.parametrize(("size", "stored", "asked", "scale", "factor"), SHRINK_CASES.values(), ids=SHRINK_CASES)
def test_a_large_image_is_shrunk_as_documented_and_keeps_its_whole_size(
    tmp_path: Path, size: tuple[int, int], stored: str, asked: int, scale: int, factor: int
) -> None:
    """decode's pixels are Pillow's own decode at the scale and factor worked out by hand above
    (Image.draft picks the DCT scale, Image.reduce the factor); the size it reports is the
    stored picture's, which model inputs are resized by and crop boxes are drawn over."""
    mode, suffix = stored.split(".")
    path = tmp_path / f"large.{suffix}"
    textured(*size).convert(mode).save(path, quality=90)
    with Image.open(path) as image:
        image.draft(image.mode, (image.width // scale, image.height // scale))
        expected = np.asarray(image.convert("RGB").reduce(factor))

    decoded = decode(path, asked)

    assert decoded.size == size
    assert expected.shape == (size[1] // scale // factor, size[0] // scale // factor, 3)
    assert min(expected.shape[:2]) >= 5 * asked
    np.testing.assert_array_equal(decoded.pixels, expected)


@pytest.mark.parametrize("vertical", [True, False], ids=["landscape", "portrait"])
def test_load_image_resizes_shorter_side_then_crops_centre(tmp_path: Path, vertical: bool) -> None:
    # Three equal bands along the long side; a centre crop keeps only the middle one,
    # whereas squashing the whole image into a square would keep all three.
    width, height = (48, 16) if vertical else (16, 48)
    Image.fromarray(bands(width, height, [RED, GREEN, BLUE], vertical)).save(tmp_path / "wide.png")

    image = load_image(tmp_path / "wide.png", Sizing(8, 8))

    assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
    # Bilinear downscaling may blend the band edges; the inside is pure green.
    inside = image[:, 1:7, 1:7].reshape(3, -1)
    assert np.abs(inside.astype(int) - np.array(GREEN)[:, None]).max() <= 2


@pytest.mark.parametrize("interpolation", ["lanczos", "nearest", "box", "hamming"])
# The third is 6 times the resize size: where Pillow's resize would first reduce by a whole
# factor if given a reducing_gap (torchvision's Resize gives none).
@pytest.mark.parametrize("shape", [(30, 18), (18, 30), (72, 120)], ids=["landscape", "portrait", "six-times"])
def test_pillow_filters_resize_and_crop_the_centre_as_torchvision_does(
    tmp_path: Path, interpolation: str, shape: tuple[int, int]
) -> None:
    """Filters only Pillow has (timm's data configs may name them): torchvision's Resize with
    that filter on the PIL image, then CenterCrop, to the pixel."""
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    mode = getattr(v2.InterpolationMode, interpolation.upper())
    with Image.open(path) as image:
        expected = np.asarray(v2.functional.center_crop(v2.functional.resize(image, [12], mode), [10]))
    np.testing.assert_array_equal(load_image(path, Sizing(12, 10, interpolation)), expected.transpose(2, 0, 1))


@pytest.mark.parametrize("interpolation", ["bilinear", "lanczos"])  # torchvision's tensor resize, and Pillow's
@pytest.mark.parametrize("size", [(2001, 1000), (1000, 2001)], ids=["landscape", "portrait"])
def test_a_large_png_shrunk_by_a_factor_that_does_not_divide_it_stays_near_torchvision(
    tmp_path: Path, interpolation: str, size: tuple[int, int]
) -> None:
    """docs/design.md: other formats than JPEG shrink by a whole factor first (here 3, for a
    64 px resize: 1000 // (5 x 64)), which leaves a partial last row or column (2001 / 3); the
    input is still resized to the whole image's proportions and cropped at its centre. Against
    torchvision's Resize and CenterCrop of the whole image, on testing.photos' photo (grain
    and blotches): 0.7 to 1 step of 8-bit value apart on average, 7 at most, when measured;
    resized from the shrunk image's own shape (a pixel off), 4.1 to 5.7 and 35."""
    path = tmp_path / "large.png"
    photo(np.random.default_rng(0), *size).save(path)
    mode = getattr(v2.InterpolationMode, interpolation.upper())
    with Image.open(path) as image:
        whole = image.convert("RGB")
        source = whole if interpolation == "lanczos" else v2.functional.pil_to_tensor(whole)
        expected = v2.functional.center_crop(v2.functional.resize(source, [64], mode, antialias=True), [56])
    expected = np.asarray(expected) if interpolation == "lanczos" else expected.numpy().transpose(1, 2, 0)
    difference = np.abs(load_image(path, Sizing(64, 56, interpolation)).transpose(1, 2, 0).astype(int) - expected)
    assert difference.mean() < 2 and difference.max() <= 12, (difference.mean(), difference.max())


def test_load_image_upscales_small_images(tmp_path: Path) -> None:
    Image.fromarray(bands(6, 2, [RED, GREEN, BLUE])).save(tmp_path / "tiny.png")

    image = load_image(tmp_path / "tiny.png", Sizing(8, 8))

    assert image.shape == (3, 8, 8)
    assert_close(rgb_at(image, 4, 4), GREEN, 2)  # the middle band fills the centre


# --- stratified_split --------------------------------------------------------------------

FRACTIONS = {"val": 0.2, "test": 0.1}


def test_stratified_split_is_deterministic_for_a_seed() -> None:
    labels = ["a"] * 30 + ["b"] * 12 + ["c"] * 5

    first = stratified_split(labels, FRACTIONS, seed=7)

    assert stratified_split(labels, FRACTIONS, seed=7) == first
    assert stratified_split(labels, FRACTIONS, seed=8) != first
    assert set(first) == {"train", "val", "test"}
    assert len(first) == len(labels)


def test_stratified_split_gives_every_class_every_split() -> None:
    # From the smallest possible class (one per split) up to a big one.
    sizes = {"tiny": 3, "small": 4, "mid": 7, "big": 200}
    labels = [label for label, n in sizes.items() for _ in range(n)]

    splits = stratified_split(labels, FRACTIONS, seed=0)

    counts = Counter(zip(labels, splits, strict=True))
    for label in sizes:
        for split in ("train", "val", "test"):
            assert counts[label, split] >= 1, (label, split, counts)


def test_stratified_split_sizes_follow_fractions_for_a_big_class() -> None:
    n = 500
    fractions = {"val": 0.15, "test": 0.25}
    labels = ["big"] * n + ["other"] * 10

    splits = stratified_split(labels, fractions, seed=3)

    counts = Counter(split for label, split in zip(labels, splits, strict=True) if label == "big")
    for name, fraction in fractions.items():
        assert abs(counts[name] - fraction * n) <= 1
    assert abs(counts["train"] - (1 - sum(fractions.values())) * n) <= 2


def test_stratified_split_rounds_each_share_to_the_nearest_item() -> None:
    # By hand: 0.2 * 23 = 4.6 -> 5 in val and 0.3 * 23 = 6.9 -> 7 in test, the other 11 in
    # train. Fractions of unequal size, whose products are far from a whole number: a share
    # rounded down (4, 6) or the fractions swapped (7, 5) gives other counts.
    splits = stratified_split(["a"] * 23 + ["b"] * 5, {"val": 0.2, "test": 0.3}, seed=1)
    counts = Counter(split for label, split in zip(["a"] * 23 + ["b"] * 5, splits, strict=True) if label == "a")
    assert counts == {"val": 5, "test": 7, "train": 11}


def test_a_mixed_group_counts_for_the_class_most_of_it_has_and_on_a_tie_the_first_by_name() -> None:
    # Rows 5-7 are one group, two b and one a: it is b's, the class that sorts last, so that
    # neither its first row's class nor the first class by name would do. So a keeps its two
    # rows alone, too few for three splits, while a group counted for a would leave each class three.
    with pytest.raises(UserError, match="'a' has 2 usable image"):
        stratified_split(["a"] * 2 + ["b"] * 3 + ["a", "b", "b"], FRACTIONS, 0, [0, 1, 2, 3, 4, 5, 5, 5])
    # Rows 4-5, one b then one a, a tie: the group is a's ("a" sorts first), not its first row's,
    # which would leave a the two rows too few instead.
    with pytest.raises(UserError, match="'b' has 2 usable image"):
        stratified_split(["a"] * 2 + ["b"] * 2 + ["b", "a"], FRACTIONS, 0, [0, 1, 2, 3, 4, 4])


def test_stratified_split_shuffles_within_a_class() -> None:
    labels = ["a"] * 100
    splits = stratified_split(labels, FRACTIONS, seed=0)
    # Not simply the first items to val and the next to test.
    assert splits[:20] != ["val"] * 20
    assert "train" in splits[:30]


def test_stratified_split_shuffles_each_class_on_its_own() -> None:
    """Two classes of the same size, their images listed in the same order (as a camera's file
    names would list them): each takes its own positions for val and test, not the other's
    (by chance they would, 1 time in C(20, 4) x C(16, 2) = 581,400)."""
    labels = ["a"] * 20 + ["b"] * 20
    splits = stratified_split(labels, FRACTIONS, seed=0)
    assert splits[:20].count("val") == splits[20:].count("val") == 4
    assert splits[:20] != splits[20:]


def test_stratified_split_rejects_a_class_too_small_for_every_split() -> None:
    with pytest.raises(UserError, match="'b' has 2 usable image"):
        stratified_split(["a"] * 10 + ["b"] * 2, FRACTIONS, seed=0)


def test_with_val_alone_a_class_needs_two_images_not_three() -> None:
    """Pretraining splits train and val alone (fractions without test): a class of 2 images
    fills both, one each by hand, for every seed; a class of 1 is refused as needing 2."""
    labels = ["a"] * 2 + ["b"] * 5
    for seed in range(5):
        splits = stratified_split(labels, {"val": 0.2}, seed)
        assert sorted(splits[:2]) == ["train", "val"], (seed, splits)
        assert Counter(splits[2:]) == {"val": 1, "train": 4}, (seed, splits)  # 0.2 x 5 = 1 image
    with pytest.raises(UserError, match=r"'a' has 1 usable image.*needs at least 2"):
        stratified_split(["a"] + ["b"] * 5, {"val": 0.2}, seed=0)


# --- decoded_images ----------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """Three tiny, different images and their manifest rows (absolute paths)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, shape in enumerate([(10, 10), (12, 20), (20, 12)]):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        rows.append((path.as_posix(), "x", "train", file_sha1(path)))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def cache_files(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """Each cache file's name -> (inode, mtime in ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache_dir.iterdir()}


def test_decoded_images_match_load_image(tmp_path: Path, manifest: pd.DataFrame) -> None:
    images = decoded_images(manifest, Sizing(8, 8), tmp_path / "cache")

    assert images.dtype == np.uint8
    assert tuple(images.shape) == (len(manifest), 3, 8, 8)
    for i, path in enumerate(manifest["path"]):
        np.testing.assert_array_equal(images[i], load_image(path, Sizing(8, 8)))


def test_decoded_images_reuse_the_cache(tmp_path: Path, manifest: pd.DataFrame, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = decoded_images(manifest, Sizing(8, 8), cache).copy()
    before = cache_files(cache)
    assert len(before) == 3  # the array, and the training copies' bytes and index

    def no_decoding(*args: object) -> None:
        raise AssertionError(f"{args} decoded again despite the cache")

    monkeypatch.setattr(inspection, "decode", no_decoding)
    again = decoded_images(manifest, Sizing(8, 8), cache)

    np.testing.assert_array_equal(again, first)
    assert cache_files(cache) == before


def test_a_cache_left_without_its_copies_index_is_made_again(tmp_path: Path, manifest: pd.DataFrame) -> None:
    """A run killed after the decoded array was written but before the training copies' index
    (written last): the array is not taken as finished, and the copies are there after it, each
    image's own (its whole size, as the manifest's files have it)."""
    cache = tmp_path / "cache"
    decoded_images(manifest, Sizing(8, 8), cache)
    (index,) = cache.glob("*.train.npy")
    index.unlink()
    copies = training_copies(manifest, Sizing(8, 8), cache)
    assert index.is_file()
    assert copies.whole_sizes(torch.arange(3)).tolist() == [[10, 10], [20, 12], [12, 20]]


def test_decoded_images_of_another_filter_or_resize_are_decoded_again(tmp_path: Path, manifest: pd.DataFrame) -> None:
    """Bicubic and bilinear inputs of the same sizes are different arrays: the cache keeps
    each under its own name, and a bicubic model never reads a bilinear one's. So are inputs
    of one crop resized to another size first (weights with a margin, as 256 for 224), and
    of one resize cropped to another size."""
    cache = tmp_path / "cache"
    decoded_images(manifest, Sizing(8, 8, "bilinear"), cache)
    bicubic = decoded_images(manifest, Sizing(8, 8, "bicubic"), cache)
    for i, path in enumerate(manifest["path"]):
        np.testing.assert_array_equal(bicubic[i], load_image(path, Sizing(8, 8, "bicubic")))
    assert not np.array_equal(bicubic[1], load_image(manifest.loc[1, "path"], Sizing(8, 8, "bilinear")))
    with_margin = decoded_images(manifest, Sizing(10, 8, "bicubic"), cache)
    for i, path in enumerate(manifest["path"]):
        np.testing.assert_array_equal(with_margin[i], load_image(path, Sizing(10, 8, "bicubic")))
    assert not np.array_equal(with_margin[1], bicubic[1])
    # ...and a smaller crop of that same resize: its own array, at its own size.
    smaller = decoded_images(manifest, Sizing(10, 6, "bicubic"), cache)
    for i, path in enumerate(manifest["path"]):
        np.testing.assert_array_equal(smaller[i], load_image(path, Sizing(10, 6, "bicubic")))


def test_decoded_images_rebuild_for_a_new_size_or_changed_files(tmp_path: Path, manifest: pd.DataFrame) -> None:
    cache = tmp_path / "cache"
    decoded_images(manifest, Sizing(8, 8), cache)
    first = cache_files(cache)

    at_4 = decoded_images(manifest, Sizing(4, 4), cache)
    assert tuple(at_4.shape) == (len(manifest), 3, 4, 4)
    after_size = cache_files(cache)
    assert len(after_size) == 6
    assert {name: after_size[name] for name in first} == first  # the old array is left as it was

    # An image replaced in place: the same path with new contents, hence a new sha1.
    path = Path(manifest.loc[1, "path"])
    Image.new("RGB", (12, 20), BLUE).save(path)
    changed = manifest.copy()
    changed.loc[1, "sha1"] = file_sha1(path)
    images = decoded_images(changed, Sizing(8, 8), cache)

    assert len(cache_files(cache)) == 9
    assert rgb_at(images[1], 4, 4) == BLUE


# --- augment -----------------------------------------------------------------------------


def test_no_augmentation_draws_nothing_and_a_seed_repeats_the_draws() -> None:
    assert draw_augmentation(16, False, 1.0, torch.Generator().manual_seed(0)) is None
    sizes = torch.tensor([(30, 20)] * 16)

    def draws(seed: int) -> Draws:
        return draw_augmentation(16, True, 0.5, torch.Generator().manual_seed(seed), 4 / 3, sizes)

    first, second, other = draws(5), draws(5), draws(6)
    assert torch.equal(first.boxes, second.boxes) and torch.equal(first.flips, second.flips)
    assert not torch.equal(first.boxes, other.boxes)
    assert 0 < int(first.flips.sum()) < 16  # some mirrored, some not


def test_a_flip_without_crops_gives_the_models_input_or_its_exact_mirror() -> None:
    """Without random crops, training sees evaluation's inputs, mirrored or not."""
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ImageBatches(images, torch.arange(16), torch.zeros(16), torch.device("cpu"), [0.0] * 3, [1 / 255] * 3)
    draws = draw_augmentation(16, True, 1.0, torch.Generator().manual_seed(0))
    assert draws.boxes is None
    out, _ = data.load(torch.arange(16), draws)
    for original, result, flip in zip(images.float(), out, draws.flips, strict=True):
        torch.testing.assert_close(result, original.flip(-1) if flip else original)
    assert 0 < int(draws.flips.sum()) < 16
    with pytest.raises(ValueError, match="training copies"):
        data.load(torch.arange(16), Draws(torch.zeros(16, 4, dtype=torch.int64), None))


def test_stratified_split_keeps_each_group_in_one_split() -> None:
    labels = ["a"] * 20 + ["b"] * 12
    # Groups of duplicates: rows 0-4, 5-6 and 20-22; every other row alone.
    groups = [0] * 5 + [5] * 2 + list(range(7, 20)) + list(range(20, 32))
    groups[21] = groups[22] = 20

    for seed in range(20):
        splits = stratified_split(labels, FRACTIONS, seed, groups)

        assert stratified_split(labels, FRACTIONS, seed, groups) == splits
        for members in ([0, 1, 2, 3, 4], [5, 6], [20, 21, 22]):
            assert len({splits[i] for i in members}) == 1, (seed, members, splits)
        counts = Counter(zip(labels, splits, strict=True))
        assert all(counts[label, split] >= 1 for label in "ab" for split in SPLITS), (seed, counts)


def test_stratified_split_with_groups_misses_each_share_by_less_than_a_group() -> None:
    """A group of copies counts its images towards its split's share (docs: sizes "may miss
    the fractions by up to a group's size"): 60 images in 12 groups of 5, val 0.2 and test
    0.1 by hand are 12 and 6 images, so val ends within one group (5) of 12, never 12 groups."""
    labels = ["a"] * 60 + ["b"] * 6
    groups = [i // 5 for i in range(60)] + list(range(100, 106))
    for seed in range(10):
        splits = stratified_split(labels, FRACTIONS, seed, groups)
        counts = Counter(split for label, split in zip(labels, splits, strict=True) if label == "a")
        assert abs(counts["val"] - 12) < 5 and abs(counts["test"] - 6) < 5, (seed, counts)


def test_a_small_class_keeps_a_unit_for_each_split_and_its_shares_by_hand() -> None:
    """A class of 8 images in 3 units (a group of 6 copies and 2 single images) still gets an
    image in every split; and 5 single images at 0.3 / 0.3 split 2 val, 2 test, 1 train by
    hand (each share rounded to the nearest image, the rest in train)."""
    fractions = {"val": 0.2, "test": 0.2}
    labels = ["a"] * 8 + ["b"] * 9
    groups = [0] * 6 + [6, 7] + list(range(8, 17))
    for seed in range(10):
        splits = stratified_split(labels, fractions, seed, groups)
        assert {splits[i] for i in range(8)} == {"train", "val", "test"}, (seed, splits[:8])
    for seed in range(10):
        splits = stratified_split(["c"] * 5 + ["d"] * 10, {"val": 0.3, "test": 0.3}, seed)
        assert Counter(splits[:5]) == {"val": 2, "test": 2, "train": 1}, seed


def test_scan_order_is_the_paths_order_not_the_folders_listing(tmp_path: Path, monkeypatch) -> None:
    """The manifest's rows, and so the split for a seed, must not depend on the order in
    which the file system lists a folder: listed backwards, the scan is the same."""
    for label in ("a", "b"):
        for i in range(4):
            path = tmp_path / label / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
    forwards = find_images(tmp_path)
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda folder: sorted(listdir(folder), reverse=True))
    assert find_images(tmp_path) == forwards
    assert [path.name for path, _ in forwards[1]][:4] == ["0.png", "1.png", "2.png", "3.png"]


def test_stratified_split_without_duplicates_is_unchanged_by_groups() -> None:
    labels = ["a"] * 30 + ["b"] * 12 + ["c"] * 5
    assert stratified_split(labels, FRACTIONS, 4, list(range(len(labels)))) == stratified_split(labels, FRACTIONS, 4)


def test_stratified_split_counts_a_group_as_one_for_the_smallest_class_check() -> None:
    with pytest.raises(UserError, match=r"'b' has 4 usable image.* in 2 group"):
        stratified_split(["a"] * 6 + ["b"] * 4, FRACTIONS, 0, [0, 1, 2, 3, 4, 5, 6, 6, 6, 9])


def test_duplicate_groups_join_exact_and_near_copies_transitively() -> None:
    found = pd.DataFrame({
        "sha1": ["s1", "s2", "s1", "s3", "s4", "s5"],
        "dhash": ["h1", "h2", "h9", "h9", "", ""],  # row 2 links row 0 (bytes) to row 3 (picture)
    })  # fmt: skip

    assert duplicate_groups(found) == [0, 1, 0, 0, 4, 5]  # an empty hash joins nothing
    # Row 2 shares its bytes with row 0's group and its picture with row 1's: the two groups join.
    bridge = pd.DataFrame({"sha1": ["s1", "s2", "s1"], "dhash": ["hA", "hB", "hB"]})
    assert duplicate_groups(bridge) == [0, 0, 0]
    # Row 2 is joined to row 1's group (through row 3) before row 4 meets it by its hash: row 4
    # must join row 2's whole group, not row 2 alone, or rows 1 and 3 split off as a second group.
    chain = pd.DataFrame({"sha1": ["sa", "sb", "sc", "sb", "sa"], "dhash": ["hX", "hY", "hZ", "hZ", "hZ"]})
    assert duplicate_groups(chain) == [0, 0, 0, 0, 0]  # by hand: 0-4 bytes, 4-2-3 picture, 3-1 bytes


def test_image_hash_matches_a_resized_copy_but_not_a_flat_image() -> None:
    coarse = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    picture = Image.fromarray(coarse).resize((120, 100), Image.Resampling.BICUBIC)

    smaller = picture.resize((60, 50), Image.Resampling.LANCZOS)

    assert image_hash(np.array(picture)) == image_hash(np.array(smaller))
    assert len(image_hash(np.array(picture))) == 32
    flat = np.array(Image.new("RGB", (40, 40), RED))
    assert image_hash(flat) == ""  # no detail: never a near-duplicate


def dhash_bits_by_hand(pixels: np.ndarray) -> np.ndarray:
    """The 128 bits of docs/design.md's dHash of a picture no larger than 64 px a side (so not
    shrunk first), as image_hash's docstring gives them: ITU-R 601 luma (Pillow's convert("L")
    weights), rounded 9x8 and 8x9 (width x height) thumbnails, each pixel against its left
    neighbour in the first and against the one above in the second."""
    red, green, blue = (pixels[..., channel].astype(np.float64) for channel in range(3))
    grey = torch.from_numpy(0.299 * red + 0.587 * green + 0.114 * blue).float()[None]
    wide = v2.functional.resize(grey, [8, 9], antialias=True)[0].round().numpy()  # 8 rows of 9
    tall = v2.functional.resize(grey, [9, 8], antialias=True)[0].round().numpy()  # 9 rows of 8
    return np.concatenate([(wide[:, 1:] > wide[:, :-1]).ravel(), (tall[1:] > tall[:-1]).ravel()])


def dhash_by_hand(pixels: np.ndarray) -> str:
    """`dhash_bits_by_hand` as 32 hex digits; "" with fewer than 8 bits of either kind (too flat)."""
    bits = dhash_bits_by_hand(pixels)
    return "" if min(bits.sum(), (~bits).sum()) < 8 else np.packbits(bits).tobytes().hex()


def test_image_hash_is_the_documented_dhash_of_the_luma_and_leaves_nearly_flat_pictures_out() -> None:
    # Saturated random colours: red and blue weigh differently in the luma, so swapped weights
    # give other thumbnails. Not square, so that a thumbnail of the other shape differs too.
    for seed, (height, width) in enumerate([(40, 52), (60, 33)]):
        coarse = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)
        picture = np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
        assert image_hash(picture) == dhash_by_hand(picture) != "", seed
    # A smooth ramp darkening to the bottom right, with a faint square: 5 'brighter' bits (not
    # a symmetric point: 4 to 7 of them would pass a lower threshold), too little to match on.
    ramp = 200 - 2.0 * np.add.outer(np.arange(36), np.arange(40))
    ramp[10:17, 12:19] += 30
    smooth = np.repeat(ramp.round().astype(np.uint8)[..., None], 3, axis=2)
    assert dhash_bits_by_hand(smooth).sum() == 5
    assert image_hash(smooth) == "" == dhash_by_hand(smooth)


def test_image_hash_of_a_larger_picture_first_shrinks_it_antialiased_to_64_px() -> None:
    """image_hash's docstring: a picture whose shorter side is over 64 px first has it shrunk
    to 64, antialiased bilinear (torchvision's resize here), then gets the dHash above. Strong
    grain on these pictures: a shrink without antialiasing samples it and gives the thumbnails
    other bits (2 or 3 of 128, measured), where the antialiased shrink averages it out."""
    for seed, (height, width) in enumerate([(300, 400), (520, 380)]):
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
        picture = np.clip(smooth.astype(int) + rng.integers(-120, 121, smooth.shape), 0, 255).astype(np.uint8)
        shrunk = v2.functional.resize(torch.from_numpy(picture).permute(2, 0, 1), [64], antialias=True)
        assert min(shrunk.shape[1:]) == 64
        assert image_hash(picture) == dhash_by_hand(shrunk.permute(1, 2, 0).numpy()) != "", seed


# --- bad inputs: links, huge images -------------------------------------------------------


def test_find_images_reports_links_that_lead_nowhere_and_files_outside_classes(tmp_path: Path) -> None:
    keep = save_solid(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "broken.png").symlink_to("missing.png")
    (tmp_path / "cat" / "loop.png").symlink_to("loop.png")
    (tmp_path / "cat" / "folder").symlink_to(tmp_path / "cat")  # a cycle, were it followed
    save_solid(tmp_path / "stray.jpg")
    (tmp_path / "dog").mkdir()

    classes, files, skipped = find_images(tmp_path)

    assert classes == ["cat", "dog"]
    assert files == [(keep, "cat")]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"broken.png", "loop.png", "folder", "stray.jpg"}
    assert "broken link" in reasons["broken.png"]
    assert "loop" in reasons["loop.png"] and "Errno 40" in reasons["loop.png"]
    assert "link to a folder" in reasons["folder"]
    assert "not inside a class folder" in reasons["stray.jpg"]


# The peak resident memory (KiB) of the process that prints it. Not ru_maxrss: a child started
# by a large parent (pytest with torch) inherits the parent's peak in that across exec.
PEAK_RSS = """
import re, sys
from pathlib import Path
from pipeline.data.decode import Sizing, load_image
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
before = peak()
image = load_image(sys.argv[1], Sizing(16, 16))
print(peak() - before, image.mean())
"""


def test_load_image_memory_stays_near_the_file_pixels_for_a_huge_16_bit_png(tmp_path: Path) -> None:
    """The 16-bit path once converted the full image to floats: 4.7 GB for a 350 KB PNG."""
    if not Path("/proc/self/status").exists():
        pytest.skip("measures memory through Linux's /proc")
    side = 6000
    ramp = np.linspace(0, 65535, side).astype(np.uint16)
    Image.fromarray(np.broadcast_to(ramp, (side, side)).copy()).save(tmp_path / "huge.png", compress_level=1)
    pixel_kib = side * side * 2 // 1024

    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(tmp_path / "huge.png")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    grown_kib, mean = result.stdout.split()

    assert int(grown_kib) < 2 * pixel_kib, f"decoding grew the process by {int(grown_kib) // 1024} MiB"
    assert abs(float(mean) - 127.5) < 3  # still the ramp from black to white, scaled from 16 bits


def test_each_copy_under_two_classes_lists_three_others_then_counts_the_rest(tmp_path: Path) -> None:
    """One file's bytes under cat (twice) and dog (three times): each of the five is left out,
    its reason naming three of the other four, in path order, and then 'and 1 more'; with one
    copy fewer in dog, the three others are all named."""
    for k, label in enumerate(("cat", "dog")):
        for i in range(3):
            save_solid(tmp_path / label / f"{i}.png", (40 * i, 100 * k, 0))
    save_solid(tmp_path / "cat" / "x1.png", (9, 9, 9))
    for name in ("cat/x2.png", "dog/x1.png", "dog/x2.png", "dog/x3.png"):
        (tmp_path / name).write_bytes((tmp_path / "cat" / "x1.png").read_bytes())
    cat_1, cat_2, dog_1, dog_2, dog_3 = (f"{tmp_path.as_posix()}/{name}/x{i}.png" for name, i in
                                         [("cat", 1), ("cat", 2), ("dog", 1), ("dog", 2), ("dog", 3)])  # fmt: skip
    classes = "(classes 'cat', 'dog')"

    reasons = {s.path: s.reason for s in usable_images(tmp_path)[2]}
    assert sorted(reasons) == [cat_1, cat_2, dog_1, dog_2, dog_3]
    assert reasons[cat_1].endswith(f": the same bytes as {cat_2}, {dog_1}, {dog_2} and 1 more {classes}")
    assert reasons[dog_3].endswith(f": the same bytes as {cat_1}, {cat_2}, {dog_1} and 1 more {classes}")

    Path(dog_3).unlink()
    reasons = {s.path: s.reason for s in usable_images(tmp_path)[2]}
    assert sorted(reasons) == [cat_1, cat_2, dog_1, dog_2]
    assert reasons[cat_1] == f"duplicate with conflicting labels: the same bytes as {cat_2}, {dog_1}, {dog_2} {classes}"


def test_usable_images_skip_a_decompression_bomb_with_a_clear_reason(tmp_path: Path, monkeypatch) -> None:
    for k, label in enumerate(("cat", "dog")):
        for i in range(3):
            save_solid(tmp_path / label / f"{i}.png", (40 * i, 100 * k, 0))
    save_solid(tmp_path / "cat" / "bomb.png", size=(64, 64))
    save_solid(tmp_path / "cat" / "large.png", size=(10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70)  # bomb: 4096 pixels > 2 x 70; large: 100, under 2 x 70

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed in the middle of the progress bar
        _, found, skipped = usable_images(tmp_path)

    assert [s.path for s in skipped] == [(tmp_path / "cat" / "bomb.png").as_posix()]
    assert "too large" in skipped[0].reason and "MAX_IMAGE_PIXELS" in skipped[0].reason
    assert (tmp_path / "cat" / "large.png").as_posix() in set(found["path"])  # decoded, memory bounded


def grey_ramp(width: int, height: int, top: int) -> np.ndarray:
    """A diagonal ramp from 0 to `top`, smooth enough that resizing orders barely matter."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    return np.round((0.7 * x + 0.3 * y) * top)


def stripes(width: int, height: int, period: int) -> np.ndarray:
    """Upright stripes, black and 16-bit white, `period` pixels wide: detail along the long side."""
    return np.tile(np.where(np.arange(width) % period < period // 2, 0.0, 65535.0), (height, 1))


def sparse_bright_dots(width: int, height: int) -> np.ndarray:
    """Grey 100 with a dot of 3000 every 8 pixels: 16-bit range (white is 65535) though a 5 x 5
    average of it never passes 255."""
    pixels = np.full((height, width), 100.0)
    pixels[::8, ::8] = 3000
    return pixels


@pytest.mark.parametrize(
    ("name", "pixels", "mode", "peak", "steps"),
    [
        ("wide.png", grey_ramp(800, 200, 65535), "I;16", 65535, 2),  # shrunk 5 times before the resize
        # ...a panorama's 50-px stripes kept through it: grey (each output pixel spans a period),
        # where a shrink to the wrong sides would blur them into columns 64 steps apart
        ("panorama.png", stripes(2000, 200, 50), "I;16", 65535, 3),
        ("big_endian.tif", grey_ramp(160, 120, 65535), "I;16B", 65535, 2),
        ("eight_bit_in_32.tif", grey_ramp(160, 120, 255), "I", 255, 2),  # 32-bit, white at 255
        # ...and one value above 255 makes it 16-bit (docs/design.md): the ramp to 256 is near black
        ("just_past_eight_bits_in_32.tif", grey_ramp(160, 120, 256), "I", 65535, 2),
        # 32-bit, its white (65535) from every pixel, not from the shrunk ones
        ("dots_in_32.tif", sparse_bright_dots(800, 200), "I", 65535, 2),
        # 32-bit, a seventh of it beyond white and a tenth below black: saturated to white and black
        # (small enough to be decoded whole: shrunk first, the pipeline averages before it saturates)
        ("beyond_white_in_32.tif", grey_ramp(64, 48, 120000) - 25000, "I", 65535, 2),
    ],
)
def test_16_and_32_bit_grey_images_are_scaled_by_their_white(
    tmp_path: Path, name: str, pixels: np.ndarray, mode: str, peak: int, steps: int
) -> None:
    """Greyscale of more than 8 bits, scaled to 8 bits by its white level (65535, or 255 for a
    32-bit image whose pixels stay within 8 bits) and then resized: by hand, the pixels over
    the white times 255, beyond white or black saturated as 8-bit values saturate, then
    torchvision's Resize and CenterCrop. Within 2 steps of 8-bit value (3 where black and
    white stripes average to grey, each way rounding its own)."""
    path = tmp_path / name
    array = pixels.astype({"I;16": "<u2", "I;16B": ">u2", "I": np.int32}[mode])
    image = Image.fromarray(array) if mode != "I;16B" else Image.frombytes("I;16B", array.shape[::-1], array.tobytes())
    image.save(path)
    assert Image.open(path).mode == mode
    sizing = Sizing(8, 8)
    grey = torch.from_numpy(np.clip(np.round(pixels / peak * 255), 0, 255).astype(np.uint8))[None].expand(3, -1, -1)
    expected = v2.Compose([v2.Resize(8, antialias=True), v2.CenterCrop(8)])(grey).numpy().astype(int)
    difference = np.abs(load_image(path, sizing).astype(int) - expected)
    assert difference.max() <= steps, (difference.max(), expected.mean())
