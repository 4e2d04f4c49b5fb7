"""Images in, arrays out: find and decode images, split them, and cache the decoded pixels.

Every image is read and decoded once, in the pass that also checks and hashes it
(`usable_images`), into a uint8 array on disk keyed by the manifest, the sizing and the
preprocessing version. Epochs read that array, so no epoch decodes a file; augmentation
then runs on tensors (engine.apply_augmentation).

libjpeg-turbo decodes JPEGs (through simplejpeg, at reduced scale in the DCT domain where the
size allows) and Pillow every other format; torchvision resizes, on the uint8 tensor, as
`weights.transforms()` does for tensors.
"""

import errno
import hashlib
import io
import json
import logging
import multiprocessing
import os
import signal
import stat
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import simplejpeg
import torch
import torchvision.transforms.v2.functional as TF
from PIL import ExifTags, Image, ImageOps

from pipeline.cli import UserError, progress
from pipeline.files import atomic_path, project_cache, read_csv
from pipeline.paths import CLASSES, MANIFEST

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "split", "sha1"]
# Bump when `load_image` changes what it returns, so cached pixel arrays are rebuilt.
PREPROCESSING_VERSION = 5
# `decode` shrinks a non-JPEG image before converting it, but to no less than this times the
# size asked for: that bounds memory, and the resize after it stays a fair one.
REDUCING_GAP = 3
# The size `inspect_file` decodes at to check a file and hash it (image_hash). It is fixed, so
# the hash, and with it the split, never depends on the model's sizing; it is the commonest
# resize size, so for most files the decode for the model is this same one.
HASH_DECODE_SIZE = 256
# image_hash first shrinks an image's shorter side to this (antialiased bilinear).
HASH_SOURCE_SIZE = 64
# The weights of R, G and B in brightness: ITU-R 601, as Pillow's convert("L").
LUMA = torch.tensor([0.299, 0.587, 0.114])
# An image_hash needs this many bits of each kind (brighter, not brighter) to identify a picture.
MIN_HASH_BITS = 8


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, str]], list[Skipped]]:
    """Scan an ImageFolder tree: (class names, [(file, class)], everything else and why).

    Every sub-folder of `root` (or link to one) is a class; files may sit in nested
    folders below it. Everything else that is not hidden is reported with a reason: a file
    in `root` itself, belonging to no class; a file without an image extension; a broken
    link, a link loop (`x -> x`), a link to a folder below a class folder (not followed),
    anything that is not a regular file. Hidden files and folders (.name) are ignored, not
    reported; extensions match in any case.
    """
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    classes: list[str] = []
    files: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if entry.is_dir():
            classes.append(entry.name)
            images, reasons = scan_folder(entry)
            files += [(path, entry.name) for path in images]
            skipped += reasons
        else:
            why = _not_a_file(entry) or "not inside a class folder: a file must lie in a folder named after its class"
            skipped.append(Skipped(entry.as_posix(), why))
    return classes, files, skipped


def scan_folder(folder: Path) -> tuple[list[Path], list[Skipped]]:
    """Every entry below `folder`, sorted as paths sort: (image files, everything else and why).

    Links to files count as their target; links to folders are not followed. Hidden files
    and folders are ignored; extensions match in any case.
    """
    images: list[Path] = []
    skipped: list[Skipped] = []

    def visit(directory: Path) -> None:
        try:
            names = sorted(name for name in os.listdir(directory) if not name.startswith("."))
        except OSError as error:
            skipped.append(Skipped(directory.as_posix(), f"folder cannot be read: {type(error).__name__}: {error}"))
            return
        for name in names:
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                visit(path)
            elif why := _not_a_file(path):
                skipped.append(Skipped(path.as_posix(), why))
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                skipped.append(Skipped(path.as_posix(), f"not an image file extension ({path.suffix or 'none'})"))

    visit(folder)
    return images, skipped


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file (a broken link, a link loop, a folder...), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if not path.is_symlink():
            return f"cannot be read: {type(error).__name__}: {error}"
        target = os.readlink(path)
        if error.errno == errno.ELOOP:
            # DVC, hashing a dependency folder, stops with this errno before any stage runs.
            return f"a link loop (-> {target}) that never reaches a file; under DVC it fails `dvc repro` (Errno 40)"
        return f"a broken link: its target {target} does not exist"
    if stat.S_ISDIR(mode):
        return f"a link to a folder (-> {os.readlink(path)}); links to folders inside a class folder are not followed"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    return None


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every file below `folder`, sorted: (image files, everything else: see scan_folder)."""
    images, skipped = scan_folder(folder)
    return images, [Path(s.path) for s in skipped]


# torchvision's interpolation names (InterpolationMode values) and Pillow's filters for them.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Sizing:
    """How a file becomes the model's input, as torchvision weights state it
    (`weights.transforms()`): the shorter side resized to `resize` with `interpolation`, then
    the centre `crop` x `crop` square.

    The decoded cache keeps each image at `resize` x `resize`, so training can crop real
    pixels at random; `crop_offset` places the centre crop inside that square.
    """

    resize: int
    crop: int
    interpolation: str = "bilinear"

    @property
    def crop_offset(self) -> int:
        return centre_offset(self.resize, self.crop)

    def to_dict(self) -> dict[str, object]:
        return {"resize_size": self.resize, "image_size": self.crop, "interpolation": self.interpolation}


def centre_offset(outer: int, inner: int) -> int:
    """Where a centred `inner` span starts in an `outer` one, rounded as torchvision's center_crop rounds."""
    return round((outer - inner) / 2)  # round half to even, as torchvision's int(round(x / 2.0))


def centre_crop(pixels: np.ndarray, sizing: Sizing) -> np.ndarray:
    """The model's input from `load_image`'s square: its centre `sizing.crop` pixels."""
    start, end = sizing.crop_offset, sizing.crop_offset + sizing.crop
    return pixels[..., start:end, start:end]


def load_image(path: Path | str | BinaryIO, sizing: Sizing) -> np.ndarray:
    """Decode one image to uint8 RGB, channels first, `sizing.resize` pixels square.

    Honours EXIF orientation, flattens alpha onto black, maps 16-bit and CMYK to 8-bit RGB
    (`decode`), then resizes and keeps a square: see `resize_square`.
    """
    return resize_square(decode(path, sizing.resize), sizing)


@dataclass(frozen=True)
class Decoded:
    """What `decode(..., asked)` gives: an upright RGB image, possibly shrunk by a whole
    factor, and the size of the whole one."""

    pixels: np.ndarray  # (height, width, 3) uint8 RGB
    size: tuple[int, int]  # (width, height) of the whole upright image
    jpeg: bool
    asked: int

    def same_for(self, size: int) -> bool:
        """Whether `decode` for `size` gives this same image."""
        return _shrink_steps(self.jpeg, self.size, size) == _shrink_steps(self.jpeg, self.size, self.asked)


def resize_square(decoded: Decoded, sizing: Sizing) -> np.ndarray:
    """The image resized as torchvision's Resize resizes the whole one (shorter side to
    `sizing.resize`, the longer one truncated), as a uint8 RGB array, channels first,
    `sizing.resize` square: the square whose centre `sizing.crop` crop is exactly
    torchvision's CenterCrop of the whole resized image.

    Bilinear and bicubic resize the uint8 tensor with torchvision's antialiased kernel: three
    times as fast as Pillow's resize, and within one step of 8-bit value of it and of
    `weights.transforms()` on a tensor. Other filters use Pillow's.
    """
    size, pixels = sizing.resize, decoded.pixels
    short, long = sorted(decoded.size)
    resized = (size, int(size * long / short))
    width, height = resized if decoded.size[0] <= decoded.size[1] else resized[::-1]
    on_tensor = sizing.interpolation in ("bilinear", "bicubic")
    if not on_tensor and (width, height) != (pixels.shape[1], pixels.shape[0]):
        image = Image.fromarray(pixels).resize((width, height), RESAMPLING[sizing.interpolation], reducing_gap=None)
        pixels = np.array(image)  # writable, as torch.from_numpy wants
    # Channels last in memory, as decoded: torchvision's uint8 resize runs fastest on that.
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    if (width, height) != (pixels.shape[1], pixels.shape[0]):  # a bilinear or bicubic resize is left
        mode = TF.InterpolationMode(sizing.interpolation)
        tensor = TF.resize(tensor, [height, width], interpolation=mode, antialias=True)

    def start(length: int) -> int:
        # The crop's start in the whole image (torchvision's), less its start in our square.
        return min(max(centre_offset(length, sizing.crop) - sizing.crop_offset, 0), length - size)

    left, top = start(width), start(height)
    return tensor[:, top : top + size, left : left + size].contiguous().numpy()


def decode(source: Path | str | BinaryIO, size: int) -> Decoded:
    """The whole image as RGB, upright, its shorter side shrunk to no less than `size`
    (JPEGs) or REDUCING_GAP * `size` (other formats).

    A JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when that keeps at least
    `size` and the scale divides both sides: a 4000x3000 photo for a 256 px model decodes
    at 500x375, in about half the time of the whole. Other formats shrink by a
    whole factor (Image.reduce) before any conversion, in the file's own mode, so a 13000 x
    13000 16-bit PNG costs its 340 MB of pixels, not the 4.7 GB of converting them to
    floats at full size. Images over 2 * Image.MAX_IMAGE_PIXELS raise Pillow's
    DecompressionBombError; those between 1x and 2x decode, without its warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    with image:
        jpeg = image.format in ("JPEG", "MPO")  # MPO: a JPEG with more pictures after the first, as phones write
        scale, factor = _shrink_steps(jpeg, image.size, size)
        if jpeg and factor == 1 and image.mode in ("RGB", "L"):
            pixels = _decode_jpeg(_contents(source), image.width // scale, image.height // scale)
            if pixels is not None:
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                whole = image.size[::-1] if orientation in (5, 6, 7, 8) else image.size  # turned a quarter
                return Decoded(_upright(pixels, orientation), whole, jpeg, size)
        if scale > 1:
            image.draft(image.mode, (image.width // scale, image.height // scale))  # Pillow picks this scale
        ImageOps.exif_transpose(image, in_place=True)
        whole = (image.width * scale, image.height * scale)
        if factor == 1:
            return Decoded(np.array(_to_rgb(image)), whole, jpeg, size)
        if _has_alpha(image) or image.mode in ("P", "1"):
            image = _to_rgb(image)  # flatten first: averaging must not mix in transparent pixels' colours
        peak = _peak(image)
        try:
            image = image.reduce(factor)
        except ValueError:  # modes that reduce() lacks (I;16): a box filter is the same average
            image = image.resize((-(-image.width // factor), -(-image.height // factor)), Image.Resampling.BOX)
        return Decoded(np.array(_to_rgb(image, peak)), whole, jpeg, size)


def _contents(source: Path | str | BinaryIO) -> bytes:
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    source.seek(0)
    return source.read()


def _decode_jpeg(contents: bytes, width: int, height: int) -> np.ndarray | None:
    """A YCbCr or greyscale JPEG decoded to RGB at `width` x `height` (its whole size, or 1/2,
    1/4 or 1/8 of it) by libjpeg-turbo through simplejpeg: the pixels of Pillow's decode,
    straight into an array, where Pillow's image would then be copied into one. None where
    libjpeg reports damage, even damage it can decode past: Pillow then decides whether the
    file is usable, as for every other format.
    """
    try:
        pixels = simplejpeg.decode_jpeg(contents, "RGB", min_height=height, min_width=width)
    except Exception:  # ValueError for damage; whatever else it raises, Pillow has the last word
        return None
    return pixels if pixels.shape[:2] == (height, width) else None


# EXIF orientation -> the numpy view of Pillow's ImageOps.exif_transpose for it.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],  # Image.Transpose.FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a),  # ROTATE_90
}


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` turned as EXIF `orientation` says, as Pillow's ImageOps.exif_transpose turns them."""
    turn = _ORIENTATIONS.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _shrink_steps(jpeg: bool, whole: tuple[int, int], size: int) -> tuple[int, int]:
    """How `decode` shrinks an image of size `whole` for `size`: (its DCT scale, then its reduce factor).

    The DCT scale (JPEGs: 1/2, 1/4 or 1/8) is the smallest that keeps at least `size` pixels
    on the shorter side and divides both sides, so the decode shows exactly the whole picture.
    """
    width, height = whole
    scales = [s for s in (8, 4, 2) if jpeg and min(whole) // size >= s and width % s == 0 == height % s]
    scale = scales[0] if scales else 1
    return scale, max(min(whole) // scale // (REDUCING_GAP * size), 1)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _peak(image: Image.Image) -> float:
    """The white level of 16- and 32-bit greyscale (65535 or 255), from all of its pixels."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if image.mode == "I":
        return 65535.0 if image.getextrema()[1] > 255 else 255.0
    return 255.0


def _to_rgb(image: Image.Image, peak: float | None = None) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- and 32-bit greyscale: Pillow's convert("RGB") clips instead of scaling.
        peak = peak or _peak(image)
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(pixels / peak * 255.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if _has_alpha(image):
        return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA")).convert(
            "RGB"
        )
    return image.convert("RGB")


def image_hash(pixels: np.ndarray) -> str:
    """A perceptual hash of (height, width, 3) uint8 RGB `pixels`: the same picture
    re-encoded or resized almost always gets the same one.

    128 bits as 32 hex digits: whether each pixel of a 9x8 greyscale thumbnail is brighter than
    its left neighbour, and of an 8x9 one than the pixel above (dHash, both ways). "" for an
    image with too little detail to tell it from others (flat, or nearly so).
    """
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    if min(image.shape[1:]) > HASH_SOURCE_SIZE:
        image = TF.resize(image, [HASH_SOURCE_SIZE], antialias=True)  # both thumbnails from this one pass
    grey = (image.float() * LUMA.view(3, 1, 1)).sum(dim=0, keepdim=True)
    # Rounded as 8-bit values: a flat picture must not get bits from float rounding.
    wide = TF.resize(grey, [8, 9], antialias=True)[0].round()
    tall = TF.resize(grey, [9, 8], antialias=True)[0].round()
    bits = torch.cat([(wide[:, 1:] > wide[:, :-1]).ravel(), (tall[1:] > tall[:-1]).ravel()]).numpy()
    if min(bits.sum(), (~bits).sum()) < MIN_HASH_BITS:
        return ""
    return np.packbits(bits).tobytes().hex()


@dataclass(frozen=True)
class Inspected:
    """What one read of a file gives: its hashes and pixels, or why it cannot be used."""

    sha1: str = ""
    dhash: str = ""  # image_hash
    pixels: np.ndarray | None = None  # load_image's array, when a sizing was asked for
    problem: str | None = None


def inspect_file(path: str, sizing: Sizing | None) -> Inspected:
    """Read `path` once and, from those bytes, hash it, check that it decodes and, with
    `sizing`, decode it for the model (`load_image`): from the same decode when the sizing
    shrinks the file as HASH_DECODE_SIZE does, as it does for most photos."""
    try:
        content = Path(path).read_bytes()
        # Shrinking still decodes the whole file, so damage anywhere is caught here.
        decoded = decode(io.BytesIO(content), HASH_DECODE_SIZE)
        fingerprint = image_hash(decoded.pixels)
        if sizing is None:
            pixels = None
        elif decoded.same_for(sizing.resize):
            pixels = resize_square(decoded, sizing)
        else:
            pixels = load_image(io.BytesIO(content), sizing)
    except Image.DecompressionBombError as error:
        return Inspected(problem=f"too large to decode safely (Image.MAX_IMAGE_PIXELS): {error}")
    except Exception as error:  # Pillow raises many types for damaged or unsupported files
        return Inspected(problem=f"cannot be decoded: {type(error).__name__}: {error}")
    return Inspected(hashlib.sha1(content).hexdigest(), fingerprint, pixels)


def inspect_all(paths: list[str], sizing: Sizing | None, desc: str) -> Iterator[Inspected]:
    """`inspect_file` of each path, in order, spread over a process per CPU core."""
    workers = min(len(os.sched_getaffinity(0)), len(paths) // 200 + 1)  # a pool only pays off for many files
    inspect = partial(inspect_file, sizing=sizing)
    with multiprocessing.Pool(workers, _start_worker) if workers > 1 else nullcontext() as pool:
        inspected = pool.imap(inspect, paths, chunksize=16) if pool else map(inspect, paths)
        yield from progress(inspected, desc, total=len(paths), unit="image")


def usable_images(
    root: Path, sizing: Sizing | None = None, cache_dir: Path | None = None
) -> tuple[list[str], pd.DataFrame, list[Skipped]]:
    """Scan, hash and decode every image under `root`: (classes, rows of path/label/sha1/dhash,
    left out).

    Each file is read once, on every core. Files that fail to decode are left out with the
    reason; so are identical files (the same sha1) under different classes, since no label
    is right for all of them, and class folders left with no usable image (the folder
    itself is listed). With `sizing`, the same pass also stores the rows' pixels in the
    decoded-image cache, where `decoded_images` finds them.
    """
    classes, files, skipped = find_images(root)
    cache_dir = cache_dir or cache_folder()
    paths = [path.as_posix() for path, _ in files]
    rows = []
    with _scratch_array(cache_dir, len(paths), sizing) as pixels:
        started = time.perf_counter()
        for index, result in enumerate(inspect_all(paths, sizing, f"checking images in {root}")):
            if result.problem:
                skipped.append(Skipped(paths[index], result.problem))
                continue
            rows.append((paths[index], files[index][1], result.sha1, result.dhash, index))
            if pixels is not None:
                pixels[index] = result.pixels
        seconds = time.perf_counter() - started
        done = "checked and decoded" if sizing else "checked"
        log.info("%s %d files in %.1fs (%.0f images/s)", done, len(paths), seconds, len(paths) / max(seconds, 1e-9))
        found = pd.DataFrame(rows, columns=["path", "label", "sha1", "dhash", "row"])
        found, conflicts = _drop_conflicting_copies(found)
        if pixels is not None:
            _store_decoded(found, sizing, cache_dir, pixels)
    skipped += conflicts
    found = found.drop(columns="row")
    empty = [name for name in classes if name not in set(found["label"])]
    if empty:
        log.warning("class folder(s) with no usable images are left out: %s", ", ".join(empty))
        why = "class folder with no usable image (empty, or each of its files is listed): left out as a class"
        skipped += [Skipped((root / name).as_posix(), why) for name in empty]
    classes = [name for name in classes if name not in empty]
    if len(classes) < 2:
        raise UserError(
            f"{root} holds {len(classes)} class folder(s) with usable images; a classifier needs at least 2 "
            "sub-folders, one per class"
        )
    return classes, found, skipped


def _drop_conflicting_copies(found: pd.DataFrame) -> tuple[pd.DataFrame, list[Skipped]]:
    """`found` without the files whose exact bytes also lie in another class, and those files."""
    labels_of = found.groupby("sha1")["label"].agg(lambda labels: sorted(set(labels)))
    conflicting = found["sha1"].map(lambda sha1: len(labels_of[sha1]) > 1).astype(bool)
    skipped = []
    for row in found[conflicting].itertuples():
        others = found[(found["sha1"] == row.sha1) & (found["path"] != row.path)]["path"].tolist()
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        classes = ", ".join(f"'{label}'" for label in labels_of[row.sha1])
        skipped.append(
            Skipped(row.path, f"duplicate with conflicting labels: the same bytes as {listed} (classes {classes})")
        )
    return found[~conflicting].reset_index(drop=True), skipped


def duplicate_groups(found: pd.DataFrame) -> list[int]:
    """For each row of `found` (sha1, dhash columns), the first row of its group of duplicates.

    Rows are in one group when they share the sha1 (exact copies) or a non-empty dhash (the
    same picture re-encoded or resized), directly or through other rows. A row without
    duplicates is its own group.
    """
    parent = list(range(len(found)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (sha1, dhash) in enumerate(zip(found["sha1"], found["dhash"], strict=True)):
        for key in [("sha1", sha1)] + ([("dhash", dhash)] if dhash else []):
            j = root(first.setdefault(key, i))
            a, b = sorted((root(i), j))
            parent[b] = a
    return [root(i) for i in range(len(found))]


def stratified_split(
    labels: list[str], fractions: dict[str, float], seed: int, groups: list[int] | None = None
) -> list[str]:
    """Assign each item to "train" or one of `fractions`' splits, per class, reproducibly.

    Every class gets at least one item in every split; a class too small for that is a
    UserError rather than a silently empty split. Items with the same `groups` value
    (duplicates: see duplicate_groups) share a split; a group counts for the class most of
    its items have (on a tie, the first in sort order), and split sizes may then miss the
    fractions by up to a group's size. Without groups, or with every group of one item,
    the result is the same as ever.
    """
    groups = list(range(len(labels))) if groups is None else groups
    members_of: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members_of.setdefault(group, []).append(i)
    owner = {
        group: min(Counter(labels[i] for i in members).items(), key=lambda item: (-item[1], item[0]))[0]
        for group, members in members_of.items()
    }
    rng = np.random.default_rng(seed)
    splits = [""] * len(labels)
    names = [*fractions, "train"]
    for label in sorted(set(labels)):
        units = [members_of[group] for group in members_of if owner[group] == label]  # in order of first item
        items = sum(len(unit) for unit in units)
        if len(units) < len(names):
            in_groups = f" in {len(units)} group(s) of duplicates" if items > len(units) else ""
            raise UserError(
                f"class '{label}' has {items} usable image(s){in_groups}; each class needs at least {len(names)} "
                f"(one for train and one for each of {', '.join(fractions)}). Add images or remove the class folder"
            )
        # Fill the splits in turn, val first and train last, in a random order of the units;
        # move on when a split has its share, or when each later split needs one of the units left.
        room = [max(1, round(fraction * items)) for fraction in fractions.values()] + [items]
        filled = [0] * len(names)
        current = 0
        for rank, index in enumerate(rng.permutation(len(units))):
            left = len(units) - rank
            while filled[current] and current < len(names) - 1 and (room[current] <= 0 or left < len(names) - current):
                current += 1
            for i in units[index]:
                splits[i] = names[current]
            filled[current] += 1
            room[current] -= len(units[index])
    return splits


def read_manifest(prepared_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest (path, label, split, sha1) and the ordered class list written by prepare."""
    manifest_path, classes_path = prepared_dir / MANIFEST.name, prepared_dir / CLASSES.name
    for path in (manifest_path, classes_path):
        if not path.is_file():
            raise UserError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    manifest = read_csv(manifest_path)
    classes = json.loads(classes_path.read_text())
    return manifest, classes


def _start_worker() -> None:
    """In a decode worker, SIGTERM and Ctrl-C do what they do by default (the stage's own
    handlers, inherited through fork, are for the stage): Pool's shutdown sends SIGTERM and
    waits for each worker, and a worker that outlived it would hang the stage. Each worker
    resizes on one thread: there is a worker per core."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage itself handles Ctrl-C
    torch.set_num_threads(1)


def cache_folder() -> Path:
    """Where decoded images are kept: the project's, shared by all its experiments (files.project_cache)."""
    return project_cache("images")


def _cache_path(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path) -> Path:
    """The decoded array of `manifest`'s rows at `sizing`: named by the files' contents (sha1),
    the sizing and PREPROCESSING_VERSION, so it is rebuilt when, and only when, one changes."""
    key = [PREPROCESSING_VERSION, sizing.to_dict(), manifest["path"].tolist(), manifest["sha1"].tolist()]
    return cache_dir / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.npy"


class ArrayFile:
    """A uint8 .npy file of `shape`, written an image at a time with plain writes.

    Written pages go to the page cache, not to this process: through a writable memory map
    each of them would count in its resident memory, the whole array by the end.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # the header only
        self.path, self.shape, self.offset = path, shape, created.offset
        del created
        self.row_bytes = int(np.prod(shape[1:]))
        self.descriptor = os.open(path, os.O_WRONLY)

    def __setitem__(self, index: int, pixels: np.ndarray) -> None:
        os.pwrite(
            self.descriptor, np.ascontiguousarray(pixels, dtype=np.uint8).data, self.offset + index * self.row_bytes
        )

    def close(self) -> None:
        os.close(self.descriptor)


@contextmanager
def _scratch_array(cache_dir: Path, rows: int, sizing: Sizing | None) -> Iterator[ArrayFile | None]:
    """An ArrayFile (rows, 3, R, R) in a temporary file in `cache_dir`, deleted on exit
    unless `_store_decoded` has moved it into place; None without a sizing."""
    if sizing is None:
        yield None
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".decoding.", suffix=".npy")
    os.close(fd)
    array = None
    try:
        array = ArrayFile(Path(name), (rows, 3, sizing.resize, sizing.resize))
        yield array
    finally:
        if array is not None:
            array.close()
        Path(name).unlink(missing_ok=True)


def _store_decoded(found: pd.DataFrame, sizing: Sizing, cache_dir: Path, pixels: ArrayFile) -> Path:
    """Keep `found`'s rows (its `row` column indexes `pixels`) as its decoded array."""
    path = _cache_path(found, sizing, cache_dir)
    if not path.exists():
        with atomic_path(path) as tmp:
            if found["row"].tolist() == list(range(pixels.shape[0])):
                os.replace(pixels.path, tmp)  # every file was kept: no copy
            else:
                written = np.load(pixels.path, mmap_mode="r")
                kept = ArrayFile(tmp, (len(found), *pixels.shape[1:]))
                for index, row in enumerate(found["row"]):
                    kept[index] = written[row]
                kept.close()
    return path


def decoded_images(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path | None = None) -> np.ndarray:
    """All images of `manifest` as one uint8 array (N, 3, R, R), R = sizing.resize, decoded at most once.

    The array is memory-mapped from the cache (see `_cache_path`): prepare's pass over the
    files normally left it there; otherwise it is decoded now, on every core.
    """
    cache_dir = cache_dir or cache_folder()
    path = _cache_path(manifest, sizing, cache_dir)
    if not path.exists():
        paths = manifest["path"].tolist()
        with _scratch_array(cache_dir, len(paths), sizing) as pixels:
            for index, result in enumerate(inspect_all(paths, sizing, f"decoding images at {sizing.resize}px")):
                if result.problem:
                    raise UserError(f"{paths[index]} {result.problem}; it decoded when prepare ran: rerun prepare")
                pixels[index] = result.pixels
            _store_decoded(manifest.assign(row=range(len(paths))), sizing, cache_dir, pixels)
        log.info("decoded %d images at %dpx into %s", len(paths), sizing.resize, path)
    # Copy-on-write mapping: writable for torch.from_numpy (no warning), never written back.
    return np.load(path, mmap_mode="c")
