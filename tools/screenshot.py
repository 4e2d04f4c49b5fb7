"""Screenshot: the page that `dvc plots show` writes, as a PNG, drawn by headless Chromium.

    python -m tools.screenshot [--out plots.png] [--width 1200] [--scale 1.0] [--colours N] [--chromium PATH]

Run from the project's root, after `dvc repro`. It runs `dvc plots show` into a temporary
folder, opens the page in headless Chromium with every network request refused (the page
needs none: Vega is inlined, and the picture of the mistakes is a file beside the page),
and keeps the screenshot down to the page's last drawn row. For a picture in a README,
`--scale` shrinks it (with Lanczos) and `--colours` keeps that many (Pillow's octree
quantizer): the README's picture of the demo's page, about 40 kB, is

    python -m tools.screenshot --out docs/plots.png --scale 0.6 --colours 256

Needs Chromium (Debian's `chromium`; `--chromium` for another one). Not a DVC stage: it
writes the PNG and nothing else.
"""

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import UserError, run_stage

log = logging.getLogger("tools.screenshot")

TALLEST = 16_000  # the window's height, in pixels: the screenshot is cut to the page's content
# Headless, and offline: every host name resolves to nothing and every request goes to a dead proxy.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
    "--virtual-time-budget=10000",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.screenshot", description="Screenshot the page `dvc plots show` writes."
    )
    parser.add_argument("--out", type=Path, default=Path("plots.png"), help="the PNG to write (default: plots.png)")
    parser.add_argument("--width", type=int, default=1200, help="the browser window's width in pixels (default: 1200)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the picture by this factor (default: 1)")
    parser.add_argument("--colours", type=int, default=0, help="keep this many colours, 2-256 (default: all)")
    parser.add_argument("--chromium", help="the Chromium (or Chrome) program (default: chromium on the PATH)")
    return parser.parse_args()


def chromium_program(named: str | None) -> str:
    found = shutil.which(named or "chromium") or (None if named else shutil.which("chromium-browser"))
    if found is None:
        raise UserError(
            f"{named or 'chromium'} not found: install Chromium (Debian: apt-get install chromium), or pass --chromium"
        )
    return found


def render(page: Path, chromium: str, width: int, profile: Path) -> Image.Image:
    """The page as Chromium draws it in a window `width` wide, cut below its last drawn row."""
    shot = profile / "shot.png"
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{TALLEST}",
        f"--screenshot={shot}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not shot.is_file():
        raise UserError(f"{chromium} could not take the screenshot (exit {done.returncode}): {done.stderr.strip()}")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    drawn = np.nonzero((pixels != pixels[-1, -1]).any(axis=(1, 2)))[0]  # rows unlike the blank bottom corner
    last = drawn[-1] if len(drawn) else 0
    return Image.fromarray(pixels[: last + 16])  # and a margin


def main() -> None:
    args = parse_args()
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale {args.scale} is not in (0, 1]: it only shrinks")
    if args.colours and not 2 <= args.colours <= 256:
        raise UserError(f"--colours {args.colours} is not in 2-256 (a PNG palette's size), nor 0 for all")
    chromium = chromium_program(args.chromium)
    with tempfile.TemporaryDirectory(prefix="screenshot.") as folder:
        shown = subprocess.run(
            [sys.executable, "-m", "dvc", "plots", "show", "-o", str(Path(folder) / "page")],
            capture_output=True,
            text=True,
        )
        if shown.returncode != 0:
            raise UserError(f"`dvc plots show` failed: {shown.stderr.strip() or shown.stdout.strip()}")
        picture = render(Path(folder) / "page" / "index.html", chromium, args.width, Path(folder))
    if args.scale < 1:
        size = (round(picture.width * args.scale), round(picture.height * args.scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    if args.colours:
        picture = picture.quantize(colors=args.colours, method=Image.Quantize.FASTOCTREE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, format="PNG", optimize=True)
    log.info("wrote %s (%d x %d)", args.out, picture.width, picture.height)


if __name__ == "__main__":
    run_stage(main)
