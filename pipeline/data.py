"""Images in, arrays out: find and decode images, split them, and cache the decoded pixels.

Every image is decoded and resized once, into a uint8 array on disk keyed by the
manifest, the image size and the preprocessing. Epochs read that array, so no epoch
decodes a file; augmentation then runs on tensors (engine.augment). No torch here, so
the prepare stage starts in a fraction of a second.
"""

import hashlib
import json
import logging
import multiprocessing
import os
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.cli import UserError, progress
from pipeline.files import atomic_path, read_csv

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "split", "sha1"]
# Bump when `load_image` changes what it returns, so cached pixel arrays are rebuilt.
PREPROCESSING_VERSION = 1
CACHE_DIR = Path(".cache/images")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, str]], list[Skipped]]:
    """Scan an ImageFolder tree: (class names, [(file, class)], files left out and why).

    Files may sit in nested folders below their class folder. Hidden files and
    folders are ignored, extensions match in any case.
    """
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    for class_dir in class_dirs:
        images, others = image_files(class_dir)
        files += [(path, class_dir.name) for path in images]
        skipped += [Skipped(p.as_posix(), f"not an image file extension ({p.suffix or 'none'})") for p in others]
    return [d.name for d in class_dirs], files, skipped


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every file below `folder`, sorted: (image files, other files).

    Hidden files and folders are ignored; extensions match in any case.
    """
    images: list[Path] = []
    others: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def load_image(path: Path | str, size: int) -> np.ndarray:
    """Decode one image to uint8 RGB, size x size, channels first.

    Honours EXIF orientation, flattens alpha onto black, maps 16-bit and CMYK to 8-bit RGB,
    scales the shorter side to `size` and crops the centre (torchvision's Resize + CenterCrop).
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- and 32-bit greyscale: Pillow's convert("RGB") clips instead of scaling.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels / peak * 255.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA")).convert(
            "RGB"
        )
    return image.convert("RGB")


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def usable_images(root: Path) -> tuple[list[str], pd.DataFrame, list[Skipped]]:
    """Scan and decode every image under `root`: (classes, rows of path/label/sha1, left out).

    Files that fail to decode are left out with the reason; so are classes left empty.
    """
    classes, files, skipped = find_images(root)
    rows = []
    for path, label in progress(files, f"checking images in {root}"):
        try:
            # A tiny size still decodes the whole file, so damage anywhere is caught here.
            load_image(path, 8)
        except Exception as error:  # Pillow raises many types for damaged or unsupported files
            skipped.append(Skipped(path.as_posix(), f"cannot be decoded: {type(error).__name__}: {error}"))
            continue
        rows.append((path.as_posix(), label, file_sha1(path)))
    found = pd.DataFrame(rows, columns=["path", "label", "sha1"])
    empty = [name for name in classes if name not in set(found["label"])]
    if empty:
        log.warning("class folder(s) with no usable images are left out: %s", ", ".join(empty))
    classes = [name for name in classes if name not in empty]
    if len(classes) < 2:
        raise UserError(
            f"{root} holds {len(classes)} class folder(s) with usable images; a classifier needs at least 2 "
            "sub-folders, one per class"
        )
    return classes, found, skipped


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> list[str]:
    """Assign each item to "train" or one of `fractions`' splits, per class, reproducibly.

    Every class gets at least one item in every split; a class too small for that is a
    UserError rather than a silently empty split.
    """
    rng = np.random.default_rng(seed)
    splits = [""] * len(labels)
    for label in sorted(set(labels)):
        members = [i for i, item_label in enumerate(labels) if item_label == label]
        needed = len(fractions) + 1
        if len(members) < needed:
            raise UserError(
                f"class '{label}' has {len(members)} usable image(s); each class needs at least {needed} "
                f"(one for train and one for each of {', '.join(fractions)}). Add images or remove the class folder"
            )
        names: list[str] = []
        for position, (name, fraction) in enumerate(fractions.items()):
            # Leave one item for each later split and one for train.
            room = len(members) - len(names) - (len(fractions) - position - 1) - 1
            names += [name] * min(max(1, round(fraction * len(members))), room)
        names += ["train"] * (len(members) - len(names))
        for rank, index in enumerate(rng.permutation(len(members))):
            splits[members[index]] = names[rank]
    return splits


def read_manifest(prepared_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest (path, label, split, sha1) and the ordered class list written by prepare."""
    manifest_path, classes_path = prepared_dir / "manifest.csv", prepared_dir / "classes.json"
    for path in (manifest_path, classes_path):
        if not path.is_file():
            raise UserError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    manifest = read_csv(manifest_path)
    classes = json.loads(classes_path.read_text())
    return manifest, classes


def decoded_images(manifest: pd.DataFrame, size: int, cache_dir: Path = CACHE_DIR) -> np.ndarray:
    """All images of `manifest` as one uint8 array (N, 3, size, size), decoded at most once.

    The array is memory-mapped from `cache_dir`; its file name hashes the files' contents
    (sha1 column), the size and PREPROCESSING_VERSION, so it is rebuilt when, and only when,
    one of those changes. Decoding runs in a process per CPU core.
    """
    key = hashlib.sha256(
        json.dumps([PREPROCESSING_VERSION, size, manifest["path"].tolist(), manifest["sha1"].tolist()]).encode()
    ).hexdigest()[:20]
    path = cache_dir / f"{key}.npy"
    if not path.exists():
        paths = manifest["path"].tolist()
        with atomic_path(path) as tmp:
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
            workers = min(os.cpu_count() or 1, len(paths) // 500 + 1)  # a pool only pays off for many files
            decode = partial(load_image, size=size)
            with multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool:
                decoded = pool.imap(decode, paths, chunksize=64) if pool else map(decode, paths)
                for index, image in enumerate(progress(decoded, f"decoding images at {size}px", total=len(paths))):
                    pixels[index] = image
            pixels.flush()
            del pixels
        log.info("decoded %d images at %dpx into %s", len(paths), size, path)
    # Copy-on-write mapping: writable for torch.from_numpy (no warning), never written back.
    return np.load(path, mmap_mode="c")
