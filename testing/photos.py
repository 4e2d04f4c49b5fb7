"""Photo-like pictures with real detail, for the tests and bench/: grain, colour blotches and
sharp edges, not flat colour, so that a crop a pixel off or a blurrier resize shows."""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(rng: np.random.Generator, width: int, height: int, edges: int = 0) -> Image.Image:
    """A smooth random colour field with `edges` random triangles and short lines in solid
    colours on it, then grain (blurred noise) and coarser colour blotches over all of it.
    The edges are softened by a blur of 0.7 px, as a lens and a sensor soften them, not
    drawn aliased, a pixel wide. At JPEG quality 90, 4000x3000 makes about 3.5 MB without
    edges."""
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    if edges:
        _draw_edges(image, rng, edges)
    pixels = np.asarray(image, dtype=np.int16)
    grain = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    grain = np.asarray(grain.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16) - 128
    blotches = Image.fromarray(rng.integers(0, 256, (max(height // 4, 1), max(width // 4, 1), 3), dtype=np.uint8))
    blotches = blotches.filter(ImageFilter.GaussianBlur(1.5)).resize((width, height), Image.Resampling.BILINEAR)
    pixels = pixels + (grain[..., None] * 1.7).astype(np.int16) + (np.asarray(blotches, dtype=np.int16) - 128) // 2
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_edges(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    """`count` triangles and lines, each within a tenth of the picture's size of a random point."""
    width, height = image.size
    reach = max(width, height) // 10
    layer = Image.new("RGBA", image.size)
    draw = ImageDraw.Draw(layer)
    for index in range(count):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        offsets = rng.integers(-reach, reach + 1, (3, 2))
        points = [(x + int(dx), y + int(dy)) for dx, dy in offsets]
        colour = (*(int(c) for c in rng.integers(0, 256, 3)), 255)
        if index % 4 == 0:
            draw.polygon(points, fill=colour)
        else:
            draw.line(points[:2], fill=colour, width=max(1, round(min(width, height) * rng.uniform(0.0005, 0.003))))
    layer = layer.filter(ImageFilter.GaussianBlur(0.7))
    image.paste(layer, (0, 0), layer)
