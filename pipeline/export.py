"""The chosen model as torch.export programs, which select_best writes: models/best.pt2
takes a batch of normalised inputs (N, 3, S, S) and gives logits (`tensor_program`), and
models/best_image.pt2 takes a decoded image and makes its own input from it (`image_program`).

    model = torch.export.load("models/best_image.pt2").module()   # already in eval mode
    probabilities = model(image)

`image` is one decoded picture: a uint8 tensor (H, W, 3), RGB, upright (EXIF orientation
applied), of any size from 2 x 2 up; channels last, as Pillow (`np.asarray(image)`),
simplejpeg and OpenCV (after BGR -> RGB) give it. The program does what evaluate and
tools.predict do after decoding: the shorter side resized to the resize size with the
weights' filter (antialiased, on the uint8 tensor: data.decode.resize_crop), the centre
crop, the normalisation, the model, with evaluate.tta: hflip the mean of the logits of the
image and its mirror image, and the softmax: float32 (number of classes,), in the order of
`classes` in its metadata (`extra_files={"metadata.json": ""}`, as for best.pt2).

For the same decoded pixels its probabilities are tools.predict's. tools.predict decodes
large JPEGs at reduced scale in the DCT domain (data.decode.DECODE_MARGIN), so for those a
whole decode here gives inputs within a step or two of 8-bit value of its, not the same.

Bilinear and bicubic are the filters the program can carry (torchvision's weights and
timm's data configs use them); for a model that states another, the file holds a line
saying so, as it does for a model torch.export cannot capture.

Exporting is nearly half of select_best's time (seconds for each program), so each
program is kept in the project's cache (.cache/exports) under a hash of the checkpoint's
checksum, torch's version and the pipeline's code: a rerun that keeps the same checkpoint
(another select.metric, `dvc repro -f`) copies it instead of exporting again.
"""

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.batches import normalization_tensors
from pipeline.cli import error_line
from pipeline.data.decode import TENSOR_FILTERS, resize_crop, resized_size
from pipeline.engine import batch_logits
from pipeline.files import atomic_path, atomic_write, project_cache
from pipeline.models import ModelSpec, model_from_checkpoint
from pipeline.paths import BEST_EXPORT, BEST_IMAGE_EXPORT
from pipeline.runs import fingerprint

log = logging.getLogger("pipeline.export")

METADATA_KEYS = ("arch", "classes", "image_size", "resize_size", "interpolation", "mean", "std")
EXPORTS_DIR = project_cache("exports")  # programs of earlier runs, shared by all experiments
KEEP_EXPORTS = 6  # files: the two programs of the last three checkpoints


class ImageInput(nn.Module):
    """`model` behind the preprocessing of `spec`: a decoded uint8 (H, W, 3) image in, the
    class probabilities out, as tools.predict computes them (with `flip`, evaluate.tta: hflip)."""

    def __init__(self, model: nn.Module, spec: ModelSpec, flip: bool) -> None:
        super().__init__()
        self.model, self.sizing, self.flip = model, spec.sizing, flip
        mean, std = normalization_tensors(spec.mean, spec.std, torch.device("cpu"))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(2, 0, 1)[None]  # channels last in memory, as evaluate resizes them
        inputs = resize_crop(pixels, resized_size(*pixels.shape[-2:], self.sizing.resize), self.sizing)
        inputs = (inputs.float() - self.mean) / self.std  # batches.normalize
        return batch_logits(self.model, inputs, self.flip).softmax(dim=1)[0]


def image_program(checkpoint: dict[str, Any]) -> torch.export.ExportedProgram:
    """The checkpoint's model behind its preprocessing, exported for images of any height
    and width. The program is run on an image of another size and shape than the example and
    compared with the module itself, so a written file computes what the checkpoint does."""
    spec = ModelSpec.from_checkpoint(checkpoint)
    if spec.interpolation not in TENSOR_FILTERS:
        raise ValueError(f"the program resizes with {', '.join(TENSOR_FILTERS)}, not {spec.interpolation}")
    module = ImageInput(model_from_checkpoint(checkpoint), spec, checkpoint.get("tta") == "hflip").eval()
    # Not square, and no side 0 or 1: export would take the example's sizes for constants.
    example = torch.zeros(spec.sizing.resize + 3, spec.sizing.resize + 7, 3, dtype=torch.uint8)
    sides = {0: torch.export.Dim("height", min=2), 1: torch.export.Dim("width", min=2)}
    program = torch.export.export(module, (example,), dynamic_shapes=(sides,))
    probe = torch.randint(0, 256, (2 * spec.sizing.resize + 5, spec.sizing.resize, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(probe), module(probe))
    return program


def tensor_program(checkpoint: dict[str, Any]) -> torch.export.ExportedProgram:
    """The checkpoint's model as a torch.export program, in eval mode, for any batch size
    (models/best.pt2). The program is run on a batch of another size than the example and
    compared with the model itself, so a written file computes what the checkpoint does."""
    model = model_from_checkpoint(checkpoint).eval()
    size = ModelSpec.from_checkpoint(checkpoint).image_size
    # The example's batch is 2, not 1: export specialises sizes 0 and 1 to constants.
    example = torch.zeros(2, 3, size, size)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(probe), model(probe))
    return program


def write_exports(
    checkpoint: dict[str, Any],
    tensors: Path = BEST_EXPORT,
    images: Path = BEST_IMAGE_EXPORT,
    checksum: str | None = None,
) -> None:
    """Both exports of the checkpoint: `tensor_program` at `tensors`, `image_program` at
    `images`; for a model that one cannot be made for, a line of text saying why in its place
    (DVC fails a stage whose declared output is missing). A failed write fails the stage.

    With the checkpoint's `checksum` (save_checkpoint's), each program is taken from, or
    kept in, the export cache; without it, both are always exported."""
    spec = ModelSpec.from_checkpoint(checkpoint)
    metadata = {key: spec.to_dict()[key] for key in METADATA_KEYS}
    size = spec.image_size
    if write_export(tensor_program, checkpoint, tensors, "with torch.export", metadata, checksum):
        log.info("exported %s for any batch of (N, 3, %d, %d) inputs -> %s", spec.arch, size, size, tensors)
    with_tta = metadata | {"tta": checkpoint.get("tta", "none")}
    if write_export(image_program, checkpoint, images, "with its preprocessing", with_tta, checksum):
        log.info("exported %s for decoded uint8 (H, W, 3) images of any size -> %s", spec.arch, images)


def write_export(
    make: Callable[[dict[str, Any]], torch.export.ExportedProgram],
    checkpoint: dict[str, Any],
    path: Path,
    how: str,
    metadata: dict[str, Any],
    checksum: str | None = None,
) -> bool:
    """`path`: the program `make` builds from the checkpoint, with `metadata`; or the line
    saying why it cannot be built. Whether it exported the program now (not when it copied
    it from the export cache, see `write_exports`)."""
    key = None
    if checksum is not None:
        # What the program's bytes depend on: the checkpoint (its checksum covers the weights,
        # the spec and tta, so the metadata too), which program, torch, and the code that builds it.
        key = fingerprint({"checkpoint": checksum, "program": make.__name__, "torch": torch.__version__}, [])
        if copy_cached_export(key, path):
            return False
    arch = checkpoint["arch"]
    try:
        program = make(checkpoint)
    except (OSError, MemoryError):  # the machine's trouble, not the model's: fail the stage
        raise
    except Exception as error:  # torch.export raises many types for a model it cannot capture
        reason = error_line(error, with_type=True)
        log.warning("could not export %s %s (%s); %s holds this message instead", arch, how, reason, path)
        with atomic_write(path, "w") as file:
            file.write(f"not a model: exporting {arch} {how} failed: {reason}\n")
        return False  # the line is not cached: only programs are
    # A file object, not the temporary path: torch.export.save warns about a name not ending in .pt2.
    with atomic_write(path) as file:
        torch.export.save(program, file, extra_files={"metadata.json": json.dumps(metadata)})
    if key is not None:
        cache_export(key, path)
    return True


def copy_cached_export(key: str, path: Path) -> bool:
    """Copy the cached program of `key` to `path`, if there is one and it is undamaged (its
    name ends with a hash of its bytes); whether it did. A damaged one is removed."""
    for cached in EXPORTS_DIR.glob(f"{key}.*.pt2"):
        try:
            if cached.name != f"{key}.{file_digest(cached)}.pt2":
                log.warning("the cached export %s is damaged: removed, exporting again", cached)
                cached.unlink(missing_ok=True)
                continue
            with atomic_path(path) as tmp:
                shutil.copyfile(cached, tmp)
            os.utime(cached)  # the newest now, for cache_export's pruning
        except FileNotFoundError:  # pruned meanwhile by another experiment's select_best
            continue
        log.info("the same checkpoint as an earlier run: copied its export %s -> %s", cached, path)
        return True
    return False


def cache_export(key: str, path: Path) -> None:
    """Keep a copy of the program at `path` in the export cache under `key`; only the newest
    KEEP_EXPORTS files stay."""
    with atomic_path(EXPORTS_DIR / f"{key}.{file_digest(path)}.pt2") as tmp:
        shutil.copyfile(path, tmp)
    dated = []
    for cached in EXPORTS_DIR.glob("*.pt2"):
        try:
            dated.append((cached.stat().st_mtime, cached))
        except FileNotFoundError:  # removed meanwhile by another experiment's select_best
            continue
    for _, old in sorted(dated, reverse=True)[KEEP_EXPORTS:]:
        old.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()[:16]
