"""Predict: the most likely classes of new images, with the model the pipeline chose.

    python -m tools.predict PATH... [--model models/best.pt] [--top-k 3]
                                       [--format table|csv|json] [--batch-size 64] [--device auto]
                                       [--tta none|hflip]

PATHs are image files or folders; folders are searched recursively for image files
(extensions in any case, hidden files and folders skipped). Each image is preprocessed
as the model file states (resize size, filter, centre crop, mean and std), by the same
code evaluate uses (data.decode.load_image, then batches.normalize), so the
probabilities match evaluate's; models/best.pt also says whether evaluate averaged each
image's logits with its mirror image's (evaluate.tta), for an epoch's checkpoint
eval/scores.csv says, and --tta overrides both.

Writes to stdout, one line (table), row (csv) or object (json) per image: its path and
its top-k classes with their probabilities. An image that cannot be decoded gets an
`error` instead, and so does every path named or found that is no file to read (a FIFO,
socket or device, a broken link or link loop: never opened), saying what it is; files in
a folder without an image extension are counted in the log. The exit code stays 0 as
long as one image could be read. A missing model or path, or no readable image at all,
is a one-line error with exit code 2. Logs
go to stderr. Not a DVC stage: it reads any checkpoint of this pipeline (models/best.pt,
checkpoints/epoch_NNN.pt) and writes no file.
"""

import argparse
import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from pipeline.batches import normalize
from pipeline.checkpoints import load_checkpoint
from pipeline.cli import UserError, error_line, progress, run_stage
from pipeline.config import TestTimeAugmentation
from pipeline.data.decode import load_image
from pipeline.data.scan import is_image_name, not_a_file, scan_folder
from pipeline.devices import memory_format, place_model, resolve_device
from pipeline.engine import batch_logits
from pipeline.files import read_csv
from pipeline.models import ModelSpec, model_from_checkpoint
from pipeline.paths import BEST_MODEL, SCORES_FILE

log = logging.getLogger("tools.predict")


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), most likely first
    error: str = ""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.predict", description="Classify images with a checkpoint of this pipeline."
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--model", type=Path, default=BEST_MODEL, help=f"default: {BEST_MODEL}")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes per image (default: 3)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    tta = [t.value for t in TestTimeAugmentation]
    parser.add_argument(
        "--tta",
        choices=tta,
        help="test-time augmentation (default: evaluate's, as best.pt or, for an epoch's, eval/scores.csv says)",
    )
    return parser.parse_args()


def collect_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """Every path named, and every entry in the folders named, each once, in order: (path,
    why it is not read as an image, or "" for one that is). A path named is tried whatever
    its extension; in a folder, files without an image extension are left out with a count.
    FIFOs, sockets, devices and broken links, named or found, are never opened (a FIFO
    would block): each gets its reason. A path that does not exist is a UserError."""
    entries: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            entries += _folder_entries(path)
        elif path.is_file():
            entries.append((path, ""))
        elif os.path.lexists(path):  # a FIFO, socket or device; a broken link or link loop
            entries.append((path, not_a_file(path) or "not a file"))
        else:
            raise UserError(f"{path}: no such file or folder")
    return list(dict.fromkeys(entries))


def _folder_entries(folder: Path) -> list[tuple[Path, str]]:
    images, skipped = scan_folder(folder)
    others = {Path(s.path) for s in skipped if Path(s.path).is_file() and not is_image_name(Path(s.path))}
    if others:
        log.info("%s: %d file(s) without an image extension left out", folder, len(others))
    if not images:
        log.warning("no image files in %s", folder)
    unreadable = [(Path(s.path), s.reason) for s in skipped if Path(s.path) not in others]
    return sorted([(path, "") for path in images] + unreadable)


@torch.inference_mode()
def predict_files(
    model: torch.nn.Module,
    spec: ModelSpec,
    files: list[Path],
    top_k: int,
    batch_size: int,
    device: torch.device,
    flip: bool = False,
) -> list[Prediction]:
    """Top-k (class, probability) for each file; a file that cannot be decoded gets an error."""
    model.eval()
    predictions = []
    # Decode one batch at a time, so memory stays flat however many images there are.
    for start in progress(range(0, len(files), batch_size), "predicting", total=math.ceil(len(files) / batch_size)):
        pixels, decoded = [], []
        for path in files[start : start + batch_size]:
            prediction = Prediction(path.as_posix())
            predictions.append(prediction)
            try:
                pixels.append(load_image(path, spec.sizing))
                decoded.append(prediction)
            except Exception as error:  # Pillow raises many types for damaged or unsupported files
                prediction.error = f"cannot be decoded: {error_line(error, with_type=True)}"
        if not pixels:
            continue
        images = normalize(torch.from_numpy(np.stack(pixels)).to(device), spec.mean, spec.std)
        images = images.contiguous(memory_format=memory_format(device))
        logits = batch_logits(model, images, flip)
        probabilities, indices = logits.float().softmax(dim=1).topk(top_k, dim=1)
        for prediction, probs, index in zip(decoded, probabilities.tolist(), indices.tolist(), strict=True):
            prediction.top = [(spec.classes[i], p) for i, p in zip(index, probs, strict=True)]
    return predictions


def write_table(predictions: list[Prediction], top_k: int, out: TextIO) -> None:
    """Aligned columns for a terminal; an unreadable image's error spans the class columns."""
    name_width = max((len(name) for p in predictions for name, _ in p.top), default=0)
    cell_width = max(len(f"top {top_k}"), name_width + 7)  # "name  99.9%"
    path_width = max(len("path"), *(len(p.path) for p in predictions))

    def line(path: str, cells: list[str]) -> str:
        return "  ".join([path.ljust(path_width), *(cell.ljust(cell_width) for cell in cells)]).rstrip() + "\n"

    out.write(line("path", [f"top {k}" for k in range(1, top_k + 1)]))
    for p in predictions:
        out.write(line(p.path, [f"error: {p.error}"] if p.error else [f"{n:<{name_width}} {q:6.1%}" for n, q in p.top]))


def write_csv_rows(predictions: list[Prediction], top_k: int, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", *(f"{key}_{k}" for k in range(1, top_k + 1) for key in ("class", "probability")), "error"])
    for p in predictions:
        cells = [value for name, prob in p.top for value in (name, round(prob, 6))]
        writer.writerow([p.path, *cells, *[""] * (2 * top_k - len(cells)), p.error])


def write_json_list(predictions: list[Prediction], top_k: int, out: TextIO) -> None:
    objects = [
        {
            "path": p.path,
            "top": [{"class": name, "probability": round(prob, 6)} for name, prob in p.top],
            "error": p.error or None,
        }
        for p in predictions
    ]
    json.dump(objects, out, indent=2)
    out.write("\n")


WRITERS = {"table": write_table, "csv": write_csv_rows, "json": write_json_list}


def evaluated_tta(checkpoint: dict, path: Path) -> str:
    """The test-time augmentation evaluate used for this model: models/best.pt records it; an
    epoch's checkpoint does not (train writes it before evaluate runs), so for one the
    project's table of evaluate's scores (eval/scores.csv, in the working directory) says.
    Without either: none."""
    if "tta" in checkpoint:
        return checkpoint["tta"]
    used = scores_tta() if SCORES_FILE.is_file() else set()
    if len(used) == 1:
        tta = used.pop()
        log.info("%s does not record evaluate.tta; evaluate used %s (%s): so does this", path, tta, SCORES_FILE)
        return tta
    log.info("%s does not record evaluate.tta, and %s does not say: no test-time augmentation", path, SCORES_FILE)
    return TestTimeAugmentation.none.value


def scores_tta() -> set[str]:
    """The evaluate.tta values in evaluate's table of scores; a UserError naming the table when
    it is damaged, rather than predicting with test-time flips evaluate may not have used."""
    allowed = [t.value for t in TestTimeAugmentation]
    redo = "run the evaluate stage again (dvc repro evaluate), or pass --tta"
    try:
        scores = read_csv(SCORES_FILE, text=("weights", "tta"))
    except ValueError as error:  # pandas' EmptyDataError and ParserError, and UnicodeDecodeError, are ValueErrors
        raise UserError(f"{SCORES_FILE} cannot be read ({error_line(error, with_type=True)}): {redo}") from None
    if "tta" not in scores.columns:
        raise UserError(f"{SCORES_FILE} has no tta column: {redo}")
    used = set(scores["tta"])
    wrong = sorted(used - set(allowed))
    if wrong:
        raise UserError(f"{SCORES_FILE} gives tta = {wrong[0]!r}, not one of {', '.join(allowed)}: {redo}")
    return used


def main() -> None:
    args = parse_args()
    entries = collect_files(args.paths)
    if not entries:
        raise UserError(f"no image files in {', '.join(map(str, args.paths))}")
    if not args.model.is_file():
        raise UserError(f"model file {args.model} does not exist: run `dvc repro` to make it, or pass --model")
    checkpoint = load_checkpoint(args.model)  # verifies the checksum; refuses pickled code
    device = resolve_device(args.device)
    model = place_model(model_from_checkpoint(checkpoint, args.model), device)
    spec = ModelSpec.from_checkpoint(checkpoint)
    top_k = min(args.top_k, len(spec.classes))
    files = [path for path, why in entries if not why]
    log.info(
        "%s (%s, %d classes, %dpx) on %d image(s), on %s",
        args.model, spec.arch, len(spec.classes), spec.image_size, len(files), device,
    )  # fmt: skip

    tta = args.tta or evaluated_tta(checkpoint, args.model)
    decoded = iter(predict_files(model, spec, files, top_k, args.batch_size, device, flip=tta == "hflip"))
    # In the order found, a row for every path: decoded, or why not.
    predictions = [Prediction(path.as_posix(), error=why) if why else next(decoded) for path, why in entries]
    WRITERS[args.format](predictions, top_k, sys.stdout)

    failed = sum(1 for p in predictions if p.error)
    if failed == len(predictions):
        raise UserError(f"none of the {failed} path(s) could be read as an image")
    if failed:
        log.warning("%d of %d path(s) could not be read as an image; their rows hold why", failed, len(predictions))


if __name__ == "__main__":
    run_stage(main)
