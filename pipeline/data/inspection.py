"""One read of each file, on every core: its sha1, its perceptual hash (`image_hash`), a
check that it decodes and, given a sizing, its pixels for the model and its training copy."""

import hashlib
import io
import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pipeline.cli import progress
from pipeline.data.copies import Copy, make_copy
from pipeline.data.decode import Sizing, decode, model_input

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
    copy: Copy | None = None  # the training copy (data.copies), when a sizing was asked for
    problem: str | None = None


def inspect_file(path: str, sizing: Sizing | None) -> Inspected:
    """Read `path` once and, from those bytes, hash it, check that it decodes and, with
    `sizing`, decode it for the model (`load_image`) and make its training copy: from the
    same decode when the sizing shrinks the file as HASH_DECODE_SIZE does, as it does for
    most photos and models."""
    pixels = copy = None
    try:
        content = Path(path).read_bytes()
        # Shrinking still decodes the whole file, so damage anywhere is caught here.
        decoded = decode(io.BytesIO(content), HASH_DECODE_SIZE)
        fingerprint = image_hash(decoded.pixels)
        if sizing is not None:
            if not decoded.same_for(sizing.resize):
                decoded = decode(io.BytesIO(content), sizing.resize)
            pixels, copy = model_input(decoded, sizing), make_copy(decoded, sizing)
    except Image.DecompressionBombError as error:
        return Inspected(problem=f"too large to decode safely (Image.MAX_IMAGE_PIXELS): {error}")
    except Exception as error:  # Pillow raises many types for damaged or unsupported files
        return Inspected(problem=f"cannot be decoded: {type(error).__name__}: {error}")
    return Inspected(hashlib.sha1(content).hexdigest(), fingerprint, pixels, copy)


def inspect_all(paths: list[str], sizing: Sizing | None, desc: str) -> Iterator[Inspected]:
    """`inspect_file` of each path, in order, spread over a process per CPU core."""
    workers = min(len(os.sched_getaffinity(0)), len(paths) // 200 + 1)  # a pool only pays off for many files
    inspect = partial(inspect_file, sizing=sizing)
    with multiprocessing.Pool(workers, _start_worker) if workers > 1 else nullcontext() as pool:
        inspected = pool.imap(inspect, paths, chunksize=16) if pool else map(inspect, paths)
        yield from progress(inspected, desc, total=len(paths), unit="image")


def _start_worker() -> None:
    """In a decode worker, SIGTERM and Ctrl-C do what they do by default (the stage's own
    handlers, inherited through fork, are for the stage): Pool's shutdown sends SIGTERM and
    waits for each worker, and a worker that outlived it would hang the stage. Each worker
    resizes on one thread: there is a worker per core."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage itself handles Ctrl-C
    torch.set_num_threads(1)
