"""One image file to the model's input: decoded upright to RGB, resized as the weights
state (`Sizing`), and its centre crop taken, as torchvision's `weights.transforms()` does.

libjpeg-turbo decodes JPEGs (through simplejpeg, at reduced scale in the DCT domain where the
size allows it with a margin) and Pillow every other format; the resize runs on the uint8
tensor, with the kernel torchvision's Resize uses for tensors (`resize_crop`).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps

# `decode` shrinks an image while decoding it (a JPEG in the DCT domain, other formats by a
# whole factor), but to no less than this times the size asked for. The shrinking is a
# low-pass of its own, not the resize's: the margin keeps its trace in the model's input
# within a step or two of 8-bit value (bench/README.md, "Fidelity"). On detailed photos a
# JPEG decoded at 1/8 scale just above the resize size differed from `weights.transforms()`
# by up to 38 steps, at 1/2 scale with this margin by up to 7.
DECODE_MARGIN = 5

# torchvision's interpolation names (InterpolationMode values) and Pillow's filters for them.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
# The filters that `resize_crop` runs on the tensor, as torchvision does for tensors; Pillow's
# resize runs the others.
TENSOR_FILTERS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Sizing:
    """How a file becomes the model's input, as torchvision weights state it
    (`weights.transforms()`): the shorter side resized to `resize` with `interpolation`, then
    the centre `crop` x `crop` square."""

    resize: int
    crop: int
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, object]:
        return {"resize_size": self.resize, "image_size": self.crop, "interpolation": self.interpolation}


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) torchvision's Resize(size) gives a height x width image: the shorter
    side `size`, the longer int(size * long / short).

    In integer arithmetic, without a branch on which side is shorter, so that torch.export
    traces it for inputs of any size (pipeline.export); floor division is int() of the
    quotient here, since it is never within 1e-13 of the next integer.
    """
    return torch.sym_max(size, size * height // width), torch.sym_max(size, size * width // height)


def centre_offset(outer: int, inner: int) -> int:
    """Where a centred `inner` span starts in an `outer` one, rounded as torchvision's
    center_crop rounds, int(round((outer - inner) / 2)): half to even. In integers (x.5 rounds
    up where x is odd), so that torch.export traces it for inputs of any size."""
    margin = outer - inner
    return margin // 2 + margin % 4 // 3


def resize_crop(image: torch.Tensor, resized: tuple[int, int], sizing: Sizing) -> torch.Tensor:
    """(N, 3, H, W) uint8 images resized to `resized` (height, width) with `sizing`'s filter,
    then their centre `sizing.crop` square: what torchvision's Resize and CenterCrop give.

    Bilinear and bicubic only (TENSOR_FILTERS), antialiased, on the uint8 tensor: the kernel
    torchvision's Resize calls for uint8 tensors on the CPU, three times as fast as Pillow's
    resize and within one step of 8-bit value of it.
    """
    image = F.interpolate(image, size=resized, mode=sizing.interpolation, align_corners=False, antialias=True)
    top, left = centre_offset(resized[0], sizing.crop), centre_offset(resized[1], sizing.crop)
    if torch.compiler.is_exporting():
        # torch.export cannot tell a slice of a side that may be the crop's own size (a resize
        # size equal to the crop) from the whole side, and gives up: gather the crop there.
        # The same pixels; not always, as it takes 30 times as long as the slice.
        span = torch.arange(sizing.crop)
        return image.index_select(-2, span + top).index_select(-1, span + left)
    return image[..., top : top + sizing.crop, left : left + sizing.crop]


def load_image(path: Path | str | BinaryIO, sizing: Sizing) -> np.ndarray:
    """Decode one image to the model's input: uint8 RGB, channels first, `sizing.crop` square.

    Honours EXIF orientation, flattens alpha onto black, maps 16-bit and CMYK to 8-bit RGB
    (`decode`), then resizes and crops: see `model_input`.
    """
    return model_input(decode(path, sizing.resize), sizing)


@dataclass(frozen=True)
class Decoded:
    """What `decode(..., asked)` gives: an upright RGB image, possibly shrunk by a whole
    factor, and the size of the whole one."""

    pixels: np.ndarray  # (height, width, 3) uint8 RGB
    size: tuple[int, int]  # (width, height) of the whole upright image
    jpeg: bool
    asked: int
    # The file's bytes, where they are a JPEG (not an MPO) that libjpeg decoded whole into
    # `pixels`, turned upright by EXIF `orientation`; else None.
    contents: bytes | None = None
    orientation: int = 1

    def same_for(self, size: int) -> bool:
        """Whether `decode` for `size` gives this same image."""
        return _shrink_steps(self.jpeg, self.size, size) == _shrink_steps(self.jpeg, self.size, self.asked)


def model_input(decoded: Decoded, sizing: Sizing) -> np.ndarray:
    """The model's input from a decoded image: as torchvision's Resize(sizing.resize) and
    CenterCrop(sizing.crop) make it from the whole image (the shorter side to the resize size,
    the longer one truncated), uint8 RGB, channels first.

    The output size comes from the whole image's size, also when the decode shrank it.
    Bilinear and bicubic resize the tensor (`resize_crop`); other filters use Pillow's.
    """
    pixels = decoded.pixels
    resized = resized_size(decoded.size[1], decoded.size[0], sizing.resize)
    if sizing.interpolation not in TENSOR_FILTERS:
        if resized != pixels.shape[:2]:
            image = Image.fromarray(pixels).resize(resized[::-1], RESAMPLING[sizing.interpolation], reducing_gap=None)
            pixels = np.array(image)  # writable, as torch.from_numpy wants
        top, left = centre_offset(resized[0], sizing.crop), centre_offset(resized[1], sizing.crop)
        crop = pixels[top : top + sizing.crop, left : left + sizing.crop]
        return np.ascontiguousarray(crop.transpose(2, 0, 1))
    # Channels last in memory, as decoded: torchvision's uint8 resize runs fastest on that.
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    return resize_crop(tensor, resized, sizing)[0].contiguous().numpy()


def decode(source: Path | str | BinaryIO, size: int) -> Decoded:
    """The whole image as RGB, upright, its shorter side shrunk to no less than
    DECODE_MARGIN * `size`.

    A JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when that keeps the margin and
    the scale divides both sides: a 4032x3024 photo for a 256 px model decodes at 2016x1512,
    in two thirds of the time of the whole. Other formats shrink by a whole factor
    (Image.reduce) before any conversion, in the file's own mode, so a 13000 x 13000 16-bit
    PNG costs its 340 MB of pixels, not the 4.7 GB of converting them to floats at full size.
    Images over 2 * Image.MAX_IMAGE_PIXELS raise Pillow's DecompressionBombError; those
    between 1x and 2x decode, without its warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    with image:
        jpeg = image.format in ("JPEG", "MPO")  # MPO: a JPEG with more pictures after the first, as phones write
        scale, factor = _shrink_steps(jpeg, image.size, size)
        if jpeg and factor == 1 and image.mode in ("RGB", "L"):
            contents = _contents(source)
            pixels = _decode_jpeg(contents, image.width // scale, image.height // scale)
            if pixels is not None:
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                whole = image.size[::-1] if orientation in (5, 6, 7, 8) else image.size  # turned a quarter
                # A plain JPEG decoded whole: the same file, kept, decodes to these pixels again.
                kept = contents if scale == 1 and image.format == "JPEG" else None
                return Decoded(upright(pixels, orientation), whole, jpeg, size, kept, orientation)
        if scale > 1:
            image.draft(image.mode, (image.width // scale, image.height // scale))  # Pillow picks this scale
        ImageOps.exif_transpose(image, in_place=True)
        whole = (image.width * scale, image.height * scale)
        if factor == 1:
            return Decoded(np.array(_to_rgb(image)), whole, jpeg, size)
        if _has_alpha(image) or image.mode in ("P", "1"):
            image = _to_rgb(image)  # flatten first: averaging must not mix in transparent pixels' colours
        peak = _peak(image)
        if image.mode == "I;16B":  # Pillow's resize averages big-endian 16-bit pixels as little-endian ones
            image = image.convert("I")
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


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` turned as EXIF `orientation` says, as Pillow's ImageOps.exif_transpose turns them."""
    turn = _ORIENTATIONS.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _shrink_steps(jpeg: bool, whole: tuple[int, int], size: int) -> tuple[int, int]:
    """How `decode` shrinks an image of size `whole` for `size`: (its DCT scale, then its reduce factor).

    The DCT scale (JPEGs: 1/2, 1/4 or 1/8) is the smallest that keeps at least DECODE_MARGIN *
    `size` pixels on the shorter side and divides both sides, so the decode shows exactly the
    whole picture; the reduce factor keeps the same margin.
    """
    width, height = whole
    least = DECODE_MARGIN * size
    scales = [s for s in (8, 4, 2) if jpeg and min(whole) // s >= least and width % s == 0 == height % s]
    scale = scales[0] if scales else 1
    return scale, max(min(whole) // scale // least, 1)


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
