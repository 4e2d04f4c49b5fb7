"""Fidelity of the model's inputs to the references' on photo-sized JPEGs, and the cost of the
training copies, in one run.

    python -m bench.fidelity                            # every part
    python -m bench.fidelity --json fidelity.json       # and the figures as JSON
    python -m bench.fidelity --only eval,crops          # some parts
    python -m bench.fidelity --smoke                    # tiny sizes: checks the script, not the figures

It writes its own photos (testing.photos.photo: a colour field with soft-edged triangles and
lines, grain and colour blotches over all of it; JPEG quality 90) at 3000x2000, 2000x3000,
3000x2000 stored turned a quarter (EXIF orientation 6), 4032x3024, 1000x750 and 640x480, and
deletes them at the end. Differences are in steps of 8-bit value. Parts:

  eval    the model's inputs (data.decode.load_image, what evaluate, the feature pass and
          tools.predict feed the model) against `weights.transforms()` on the whole decode
          (Pillow, EXIF applied), for ResNet-50 V2 (232/224) and ViT-B/16 (256/224): mean and
          max per photo; also with the decode rule before (a JPEG decoded at the smallest DCT
          scale that still covers the resize size: DECODE_MARGIN 1). Goal: mean <= 1, max <= 8.
  crops   training crops: the copy the prepare pass makes (data.inspection.inspect_file) cut
          by TrainingCopies.crop, against torchvision's resized_crop of the whole decode, for
          --boxes boxes drawn as RandomResizedCrop draws them (scale 0.08-1, aspect 3/4-4/3)
          and 15 fixed ones (a quarter of the area at aspects 3/4, 1, 4/3 in each corner and
          the centre). Per photo: the mean over the boxes of each box's mean difference, and
          the worst box, for scale >= 0.25 and for 0.08-0.25; the copy's size and bytes.
          Goal: every box of scale >= 0.25 within 2 on average. Also crops/s on one core.
          --copy-side and --copy-quality try other copies (data.copies' constants).
  export  models/best_image.pt2's program (pipeline.export) against tools.predict
          (predict_files) for a resnet18 with ResNet-50 V2's preprocessing: the largest
          difference of any probability, given the pixels tools.predict decoded, and given
          the whole decode. Goal: within 1e-4 for the same pixels.
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torchvision.models import get_weight
from torchvision.transforms import v2

from bench.report import finish, markdown_table
from pipeline.backbones import torchvision as torchvision_backbones
from pipeline.data import copies
from pipeline.data import decode as decoding
from pipeline.data.copies import TrainingCopies
from pipeline.data.inspection import inspect_file
from testing.photos import photo

PARTS = ("eval", "crops", "export")
WEIGHTS = {"ResNet50_Weights.IMAGENET1K_V2": "resnet50", "ViT_B_16_Weights.IMAGENET1K_V1": "vit_b_16"}
# (name, stored width, stored height, EXIF orientation)
PHOTOS = [
    ("3000x2000", 3000, 2000, 1),
    ("2000x3000", 2000, 3000, 1),
    ("3000x2000 turned", 3000, 2000, 6),
    ("4032x3024", 4032, 3024, 1),
    ("1000x750", 1000, 750, 1),
    ("640x480", 640, 480, 1),
]
SMOKE_PHOTOS = [("300x200", 300, 200, 1), ("200x300 turned", 300, 200, 6), ("64x48", 64, 48, 1)]
GOALS = {"eval_mean": 1.0, "eval_max": 8.0, "crop_worst_at_quarter_or_more": 2.0, "export_probability": 1e-4}
EDGES_PER_MEGAPIXEL = 60


def write_photos(folder: Path, photos: list[tuple[str, int, int, int]]) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {}
    for name, width, height, orientation in photos:
        exif = Image.Exif()
        exif[0x0112] = orientation
        edges = max(4, round(width * height / 1e6 * EDGES_PER_MEGAPIXEL))
        paths[name] = folder / f"{name.replace(' ', '_')}.jpg"
        photo(rng, width, height, edges=edges).save(paths[name], "JPEG", quality=90, exif=exif)
    return paths


def whole_decode(path: Path) -> Image.Image:
    """The references' input: the whole file decoded by Pillow, turned upright."""
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def eval_part(paths: dict[str, Path]) -> dict[str, object]:
    results: dict[str, object] = {}
    for weights_name, arch in WEIGHTS.items():
        weights = get_weight(weights_name)
        transforms = weights.transforms()
        sizing = torchvision_backbones.preprocessing(arch, weights, transforms.crop_size[0])[0]
        mean, std = torch.tensor(transforms.mean).view(3, 1, 1), torch.tensor(transforms.std).view(3, 1, 1)
        for name, path in paths.items():
            reference = (transforms(whole_decode(path)) * std + mean) * 255
            figures = {}
            for rule, margin in (("now", decoding.DECODE_MARGIN), ("before", 1)):
                kept, decoding.DECODE_MARGIN = decoding.DECODE_MARGIN, margin
                try:
                    difference = (torch.from_numpy(decoding.load_image(path, sizing)).float() - reference).abs()
                    decoded = decoding.decode(path, sizing.resize).pixels.shape[:2]
                finally:
                    decoding.DECODE_MARGIN = kept
                figures[rule] = {
                    "mean": float(difference.mean()),
                    "max": float(difference.max()),
                    "decoded": f"{decoded[1]}x{decoded[0]}",
                }
            results[f"{weights_name.split('_')[0]} {name}"] = figures
            print(f"eval {weights_name} {name}: {json.dumps(figures)}", flush=True)
    return results


def fixed_boxes(width: int, height: int) -> list[tuple[float, list[int]]]:
    """A quarter of the area at aspects 3/4, 1 and 4/3, in each corner and the centre."""
    boxes = []
    for aspect in (3 / 4, 1.0, 4 / 3):
        w = min(round(math.sqrt(0.25 * width * height * aspect)), width)
        h = min(round(math.sqrt(0.25 * width * height / aspect)), height)
        for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)):
            boxes.append((w * h / (width * height), [round(y * (height - h)), round(x * (width - w)), h, w]))
    return boxes


def drawn_boxes(width: int, height: int, count: int, generator: torch.Generator) -> list[tuple[float, list[int]]]:
    """`count` boxes from torchvision's RandomResizedCrop.get_params, with their area shares."""
    image = torch.empty(1, height, width)
    boxes = []
    for _ in range(count):
        box = list(random_resized_crop_box(image, generator))
        boxes.append((box[2] * box[3] / (width * height), box))
    return boxes


def random_resized_crop_box(image: torch.Tensor, generator: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params (which draws from torch's global RNG) drawing from `generator`."""
    state = torch.random.get_rng_state()
    torch.random.set_rng_state(generator.get_state())
    try:
        return v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
    finally:
        generator.set_state(torch.random.get_rng_state())
        torch.random.set_rng_state(state)


class OneCopy(TrainingCopies):
    """The training copy of one file, as prepare's pass makes it, without a cache folder."""

    def __init__(self, path: Path, sizing: decoding.Sizing) -> None:
        copy = inspect_file(str(path), sizing).copy
        self.bytes = len(copy.data)
        row = [0, len(copy.data), int(copy.jpeg), copy.orientation, *copy.size, *copy.whole]
        self.index = np.array([row], dtype=np.int64)
        self.original = copy.data == path.read_bytes()
        self.blob = np.frombuffer(copy.data, dtype=np.uint8)


def crops_part(paths: dict[str, Path], boxes: int) -> dict[str, object]:
    weights = get_weight(next(iter(WEIGHTS)))
    sizing = torchvision_backbones.preprocessing("resnet50", weights, 224)[0]
    generator = torch.Generator().manual_seed(0)
    results: dict[str, object] = {}
    for name, path in paths.items():
        whole = TF.pil_to_tensor(whole_decode(path))
        height, width = whole.shape[1:]
        copy = OneCopy(path, sizing)
        differences: dict[bool, list[float]] = {True: [], False: []}
        for share, box in fixed_boxes(width, height) + drawn_boxes(width, height, boxes, generator):
            reference = TF.resized_crop(whole, *box, [sizing.crop, sizing.crop], antialias=True).float()
            ours = torch.from_numpy(copy.crop(0, box, False, sizing.crop, sizing.interpolation)).permute(2, 0, 1)
            differences[share >= 0.25].append(float((ours.float() - reference).abs().mean()))
        started, cut = time.perf_counter(), 0
        while time.perf_counter() - started < 1.0:
            copy.crop(0, fixed_boxes(width, height)[cut % 15][1], cut % 2 == 1, sizing.crop, sizing.interpolation)
            cut += 1
        figures = {
            "copy": "x".join(map(str, copy.index[0, 4:6].tolist())) + (" (the file itself)" if copy.original else ""),
            "copy_bytes": copy.bytes,
            "quarter_or_more_mean": statistics.mean(differences[True]),
            "quarter_or_more_worst": max(differences[True]),
            "boxes_quarter_or_more": len(differences[True]),
            "below_quarter_mean": statistics.mean(differences[False]) if differences[False] else None,
            "below_quarter_worst": max(differences[False], default=None),
            "boxes_below_quarter": len(differences[False]),
            "crops_per_s_one_core": cut / (time.perf_counter() - started),
        }
        results[name] = figures
        print(f"crops {name}: {json.dumps(figures)}", flush=True)
    return results


def export_part(paths: dict[str, Path]) -> dict[str, object]:
    from pipeline.export import image_program
    from pipeline.models import build_model
    from tools.predict import predict_files

    weights = get_weight(next(iter(WEIGHTS)))
    sizing, mean, std = torchvision_backbones.preprocessing("resnet50", weights, 224)
    torch.manual_seed(0)
    built = build_model("resnet18", None, ["a", "b", "c"], 224)
    spec = dataclasses.replace(built.spec, resize_size=sizing.resize, mean=mean, std=std)
    checkpoint = {**spec.to_dict(), "model_state_dict": built.model.state_dict()}
    started = time.perf_counter()
    program = image_program(checkpoint).module()
    export_seconds = time.perf_counter() - started
    model = built.model.eval()
    files = list(paths.values())
    predicted = predict_files(model, spec, files, 3, 8, torch.device("cpu"))
    same, whole = 0.0, 0.0
    for path, prediction in zip(files, predicted, strict=True):
        theirs = torch.tensor([p for _, p in prediction.top])
        indices = [spec.classes.index(name) for name, _ in prediction.top]
        with torch.no_grad():
            decoded = torch.from_numpy(decoding.decode(path, sizing.resize).pixels.copy())
            same = max(same, float((program(decoded)[indices] - theirs).abs().max()))
            full = torch.from_numpy(np.asarray(whole_decode(path)).copy())
            whole = max(whole, float((program(full)[indices] - theirs).abs().max()))
    figures = {"same_pixels_max": same, "whole_decode_max": whole, "export_s": export_seconds, "images": len(files)}
    print(f"export: {json.dumps(figures)}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--boxes", type=int, default=200, help="random boxes per photo (default 200)")
    parser.add_argument("--smoke", action="store_true", help="tiny photos and few boxes: checks the script")
    side, quality = copies.COPY_SIDE, copies.JPEG_QUALITY
    parser.add_argument("--copy-side", type=float, help=f"crops: the copies' shorter side cap (default {side})")
    parser.add_argument("--copy-quality", type=int, help=f"crops: the copies' JPEG quality (default {quality})")
    args = parser.parse_args(argv)
    copies.COPY_SIDE = args.copy_side or copies.COPY_SIDE  # make_copy reads them when called
    copies.JPEG_QUALITY = args.copy_quality or copies.JPEG_QUALITY
    torch.set_num_threads(1)
    chosen = args.only.split(",")
    started = time.perf_counter()
    report: dict[str, object] = {"goals": GOALS, "load_average_before": os.getloadavg()[0]}
    report["copies"] = {"side": copies.COPY_SIDE, "long": copies.COPY_LONG, "quality": copies.JPEG_QUALITY}
    work = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    try:
        paths = write_photos(work, SMOKE_PHOTOS if args.smoke else PHOTOS)
        for part, run in (("eval", eval_part), ("crops", crops_part), ("export", export_part)):
            if part in chosen:
                report[part] = run(paths, 10 if args.smoke else args.boxes) if part == "crops" else run(paths)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(report, started, render, args.json)


def render(report: dict) -> str:
    """The headline figures with their goals, as a Markdown table."""
    rows = [("figure", "measured", "goal")]
    for name, figures in report.get("eval", {}).items():
        now, before = figures["now"], figures["before"]
        rows.append(
            (
                f"eval {name}: mean, max (decoded at); before",
                f"{now['mean']:.2f}, {now['max']:.0f} ({now['decoded']}); {before['mean']:.2f}, {before['max']:.0f} "
                f"({before['decoded']})",
                "mean <= 1, max <= 8",
            )
        )
    for name, figures in report.get("crops", {}).items():
        below = figures["below_quarter_worst"]
        rows.append(
            (
                f"crops {name} (copy {figures['copy']}, {figures['copy_bytes'] / 1000:.0f} kB): scale >= 0.25 mean, "
                "worst; 0.08-0.25 mean, worst",
                f"{figures['quarter_or_more_mean']:.2f}, {figures['quarter_or_more_worst']:.2f}; "
                + (f"{figures['below_quarter_mean']:.2f}, {below:.2f}" if below is not None else "-"),
                "worst <= 2 at >= 0.25",
            )
        )
    if "export" in report:
        export = report["export"]
        rows.append(
            (
                "export: largest probability difference, same pixels; whole decode",
                f"{export['same_pixels_max']:.1e}; {export['whole_decode_max']:.1e}",
                "<= 1e-4 (same pixels)",
            )
        )
    return markdown_table(rows)


if __name__ == "__main__":
    main()
