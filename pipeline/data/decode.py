"""One image file to the model's input: decoded upright to RGB, resized as the weights
state (`Sizing`), kept as a square around torchvision's centre crop.

libjpeg-turbo decodes JPEGs (through simplejpeg, at reduced scale in the DCT domain where the
size allows) and Pillow every other format; torchvision resizes, on the uint8 tensor, as
`weights.transforms()` does for tensors.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import simplejpeg
import torch
import torchvision.transforms.v2.functional as TF
from PIL import ExifTags, Image, ImageOps

# `decode` shrinks a non-JPEG image before converting it, but to no less than this times the
# size asked for: that bounds memory, and the resize after it stays a fair one.
REDUCING_GAP = 3

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
