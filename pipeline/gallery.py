"""A grid of labelled images as one PNG: the picture of the mistakes (pipeline.interpretation).

Each tile is an image as the model saw it (its centre crop, before normalisation), beside it
the same image under its heat map, and under both the true class, the predicted class and
its probability. Small images are enlarged with nearest-neighbour, so each of the model's
pixels stays a visible square; large ones are shrunk.

Drawn with Pillow, which the pipeline already decodes with: a grid, a colour map and two
lines of text per tile need no plotting library.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 128  # each image's side in the picture, in pixels
COLUMNS = 4  # tiles per row
GAP = 8
TEXT = 14  # font size
BACKGROUND = (255, 255, 255)
# The "jet" colour map, as pytorch-grad-cam and most Grad-CAM figures show heat: dark blue
# (none) through cyan and yellow to dark red (the most).
JET = ((0.0, 0.125, 0.375, 0.625, 0.875, 1.0), ((0, 0, 0, 1, 1, 0.5), (0, 0, 1, 1, 0, 0), (0.5, 1, 1, 0, 0, 0)))


@dataclass(frozen=True)
class Tile:
    pixels: np.ndarray  # uint8 (3, S, S): the model's input before normalisation
    heat: np.ndarray | None  # float (S, S) in [0, 1], or None: the image alone
    actual: str
    predicted: str
    probability: float


def font(size: int = TEXT) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where the system has it (it covers accented and most non-Latin class
    names), else Pillow's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """float (H, W) in [0, 1] -> uint8 (H, W, 3) in the jet colour map."""
    anchors, channels = JET
    colours = np.stack([np.interp(heat, anchors, channel) for channel in channels], axis=-1)
    return (colours * 255).round().astype(np.uint8)


def panel(pixels: np.ndarray) -> Image.Image:
    """uint8 (3, S, S) -> a PANEL x PANEL picture of it."""
    image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    enlarge = image.width <= PANEL
    return image.resize((PANEL, PANEL), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """`image` under `heat`, half and half, as Grad-CAM figures show it."""
    smooth = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize(image.size, Image.Resampling.BILINEAR))
    return Image.blend(image, Image.fromarray(heat_colours(np.clip(smooth, 0, 1))), 0.5)


def label(before: str, name: str, after: str, width: float, face: ImageFont.ImageFont) -> str:
    """before + name + after, the class `name` cut with an ellipsis to fit `width` pixels; a
    character that is not printable written as its escape (a folder name can hold a line break,
    on which Pillow's text layout fails)."""
    name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    if face.getlength(before + name + after) <= width:
        return before + name + after
    while name and face.getlength(before + name + "…" + after) > width:
        name = name[:-1]
    return before + name + "…" + after


def draw_gallery(tiles: list[Tile], title: list[str]) -> Image.Image:
    """The tiles in rows of COLUMNS under the `title` lines."""
    face, line = font(), TEXT + 4
    with_heat = any(tile.heat is not None for tile in tiles)
    tile_width = PANEL * (2 if with_heat else 1) + (GAP if with_heat else 0)
    tile_height = PANEL + 2 * line + GAP
    columns = min(COLUMNS, max(len(tiles), 1))
    width = max(columns * (tile_width + GAP) + GAP, 2 * GAP + max(face.getlength(text) for text in title))
    top = GAP + len(title) * line + GAP
    rows = -(-len(tiles) // columns)
    picture = Image.new("RGB", (int(width), top + rows * tile_height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for index, text in enumerate(title):
        draw.text((GAP, GAP + index * line), text, fill=(0, 0, 0), font=face)
    for index, tile in enumerate(tiles):
        x = GAP + (index % columns) * (tile_width + GAP)
        y = top + (index // columns) * tile_height
        image = panel(tile.pixels)
        picture.paste(image, (x, y))
        if tile.heat is not None:
            picture.paste(overlay(image, tile.heat), (x + PANEL + GAP, y))
        true_line = label("true: ", tile.actual, "", tile_width, face)
        predicted_line = label("predicted: ", tile.predicted, f"  p = {tile.probability:.2f}", tile_width, face)
        draw.text((x, y + PANEL + 2), true_line, fill=(0, 110, 0), font=face)
        draw.text((x, y + PANEL + 2 + line), predicted_line, fill=(190, 0, 0), font=face)
    return picture


def save_png(picture: Image.Image, file: Path | object) -> None:
    picture.save(file, format="PNG", optimize=True)
