"""Training copies: each image kept whole, with its aspect ratio, at a capped resolution, for the
random resized crops of training (`TrainingCopies.crop`).

torchvision's references draw RandomResizedCrop's boxes over the whole decoded photo and cut
them from its pixels. Here the boxes are drawn the same way, in the whole image's
coordinates (pipeline.augment), and cut from its copy, which keeps enough resolution for
them: its shorter side is at most COPY_SIDE times the model's input size (560 px for 224),
its longer side at most COPY_LONG times that (840 px), and it is never enlarged. A box of a
quarter of the picture or more is cut from at least the crop's own resolution, so it is
shrunk, not enlarged, into the crop. The copy is made from the decode with the resize's
margin (data.decode.DECODE_MARGIN) with antialiased bicubic filtering, whose sharper
kernel leaves less of its own blur in the crops than bilinear's.

A copy is stored as a JPEG of quality JPEG_QUALITY without chroma subsampling (libjpeg-turbo
through simplejpeg), or as raw pixels where that takes fewer bytes (tiny images, which
then stay exact). A JPEG file within the caps is kept as it is, its own bytes, turned
upright when decoded: its crops are the references' exactly, and nothing is encoded.
For a 3:2 photo and a 224 px model a copy is 840 x 560 pixels; its crops differ from
torchvision's resized_crop of the whole decoded photo by one to two steps of 8-bit value
on average. Chroma subsampling (4:2:0) would save a third of the bytes but more than
doubles that difference; a smaller copy at a higher quality costs as many bytes for larger
differences. bench/README.md ("Fidelity") has the figures and the bytes. FFCV keeps its
training images the same way, capped and JPEG-compressed.

Every epoch decodes the copies of its batches again: `batches.CropBatches` cuts the crops
on a thread per core, a batch ahead of the step.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.data.decode import RESAMPLING, Decoded, Sizing, upright

COPY_SIDE = 2.5  # the shorter side's cap, in model input sizes
COPY_LONG = 1.5  # the longer side's cap, in shorter-side caps
JPEG_QUALITY = 90

# The index's columns: where each copy's bytes lie in the blob, whether they are a JPEG,
# the EXIF orientation that turns its decode upright, the (upright) copy's size, and the
# whole image's size, in whose coordinates crop boxes are drawn.
INDEX_COLUMNS = ("offset", "length", "jpeg", "orientation", "width", "height", "whole_width", "whole_height")


@dataclass(frozen=True)
class Copy:
    """One image's training copy, as stored."""

    data: bytes  # a JPEG, or the raw (height, width, 3) uint8 pixels
    jpeg: bool
    size: tuple[int, int]  # (width, height) of the copy, upright
    whole: tuple[int, int]  # (width, height) of the whole upright image
    orientation: int = 1  # the EXIF orientation that turns the JPEG's decode upright


def copy_size(whole: tuple[int, int], crop: int) -> tuple[int, int]:
    """The (width, height) of the training copy of a `whole` (width, height) image for a
    model of `crop` pixels: shrunk, its aspect ratio kept, to within the caps; never enlarged."""
    short_cap = round(COPY_SIDE * crop)
    factor = min(short_cap / min(whole), round(COPY_LONG * short_cap) / max(whole), 1.0)
    return max(round(whole[0] * factor), 1), max(round(whole[1] * factor), 1)


def make_copy(decoded: Decoded, sizing: Sizing) -> Copy:
    """The training copy of a decoded image (from `decode(..., sizing.resize)`, which keeps
    at least DECODE_MARGIN times the resize size, so always more than the copy's caps)."""
    width, height = copy_size(decoded.size, sizing.crop)
    if (width, height) == decoded.size and decoded.contents is not None:
        return Copy(decoded.contents, True, decoded.size, decoded.size, decoded.orientation)
    pixels = decoded.pixels
    if (height, width) != pixels.shape[:2]:
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        tensor = F.interpolate(tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        pixels = tensor[0].permute(1, 2, 0)
    pixels = np.ascontiguousarray(pixels)
    encoded = simplejpeg.encode_jpeg(pixels, quality=JPEG_QUALITY, colorsubsampling="444")
    if len(encoded) < pixels.nbytes:
        return Copy(encoded, True, (width, height), decoded.size)
    return Copy(pixels.tobytes(), False, (width, height), decoded.size)


class CopyWriter:
    """Copies appended one at a time to a blob file with plain writes (the page cache holds
    them, not this process), and their index rows, by row number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.rows: dict[int, tuple[int, ...]] = {}

    def append(self, row: int, copy: Copy) -> None:
        offset = self.file.tell()
        self.file.write(copy.data)
        self.rows[row] = (offset, len(copy.data), int(copy.jpeg), copy.orientation, *copy.size, *copy.whole)

    def index(self, rows: list[int]) -> np.ndarray:
        """The index of `rows`, in that order: an int64 array with a column per INDEX_COLUMNS."""
        return np.array([self.rows[row] for row in rows], dtype=np.int64).reshape(len(rows), len(INDEX_COLUMNS))

    def close(self) -> None:
        self.file.close()


class TrainingCopies:
    """The training copies of a manifest's rows: a blob of their bytes, memory-mapped, and an
    index with a row per image (INDEX_COLUMNS)."""

    def __init__(self, blob: Path, index: Path) -> None:
        self.index = np.load(index)
        self.blob = np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def whole_sizes(self, rows: torch.Tensor) -> torch.Tensor:
        """int64 (len(rows), 2): the (width, height) of each row's whole image."""
        return torch.from_numpy(self.index[rows.numpy()][:, 6:8].copy())

    def pixels(self, row: int) -> np.ndarray:
        """The copy of `row`: (height, width, 3) uint8 RGB, upright."""
        offset, length, jpeg, orientation, width, height = self.index[row, :6].tolist()
        data = self.blob[offset : offset + length]
        if jpeg:
            return upright(simplejpeg.decode_jpeg(data, "RGB"), orientation)
        return data.reshape(height, width, 3)

    def crop(self, row: int, box: list[int], flip: bool, size: int, interpolation: str) -> np.ndarray:
        """The box (top, left, height, width, in the whole image's pixels) of `row`'s image,
        resized to `size` x `size` with `interpolation` (antialiased), mirrored if `flip`:
        (size, size, 3) uint8, as torchvision's resized_crop and hflip make it from the whole
        image.

        The box is cut from the copy at its own coordinates there, fractions of a pixel
        included: Pillow's resize takes a box in floats. Rounding it to whole pixels of the
        copy would shift the crop by up to half a pixel of the output, on detailed pictures
        several steps of 8-bit value. Pillow's filters would also reach past the box's edges
        into the picture around it, where torchvision's crop then resize stops at the crop's
        edge: so the copy is first cut to the whole pixels that hold the box.
        """
        top, left, height, width = box
        copy_width, copy_height, whole_width, whole_height = self.index[row, 4:8].tolist()
        scale_x, scale_y = copy_width / whole_width, copy_height / whole_height
        x0, y0 = left * scale_x, top * scale_y
        x1, y1 = (left + width) * scale_x, (top + height) * scale_y
        held = (math.floor(x0), math.floor(y0), min(math.ceil(x1), copy_width), min(math.ceil(y1), copy_height))
        image = Image.fromarray(self.pixels(row)).crop(held)
        region = (x0 - held[0], y0 - held[1], min(x1, copy_width) - held[0], min(y1, copy_height) - held[1])
        image = image.resize((size, size), RESAMPLING[interpolation], box=region)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(image)  # writable, as torch.from_numpy wants
