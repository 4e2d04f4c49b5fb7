"""What the chosen checkpoint gets wrong on the test split, and where it looked: select-best's
per-class table and picture of its mistakes.

Writes: best/classes.csv   one row per class: f1, precision, recall, support (test images),
                           and the class its images are most often mistaken for (confused_with,
                           confused: how many); weakest first (f1, then recall, then name)
        best/mistakes.csv  every misclassified test image, most confident first: path, actual,
                           predicted, probability (of the predicted class, as evaluate scored it)
        best/mistakes.png  the first GALLERY of them as pictures (pipeline.gallery), each beside
                           its Grad-CAM heat map for the predicted class (pipeline.heatmaps)

Everything comes from evaluate's test predictions of the chosen checkpoint but the heat maps:
their images are decoded again (as evaluate's preprocessing does, `data.decode.load_image`),
a few dozen at most, and run through the model once, forward and back, on the CPU. With
evaluate.tta: hflip the probabilities are those of the averaged logits; the heat maps are
those of the image itself.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.batches import normalize
from pipeline.cli import UserError, error_line
from pipeline.data.decode import load_image
from pipeline.engine import confusion_matrix
from pipeline.files import atomic_write, write_csv
from pipeline.gallery import Tile, draw_gallery, save_png
from pipeline.heatmaps import feature_layer, grad_cam
from pipeline.models import ModelSpec, model_from_checkpoint
from pipeline.paths import BEST_CLASSES, BEST_GALLERY, BEST_MISTAKES

log = logging.getLogger("pipeline.interpretation")

GALLERY = 16  # mistakes shown in best/mistakes.png
HEAT_BATCH = 8  # images per forward and backward pass for the heat maps


def per_class_scores(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """best/classes.csv's table from test predictions (columns actual, predicted), weakest class first.

    F1 is engine.score's per class (its macro-F1 is their mean); a class never predicted has
    precision 0, as in scikit-learn's zero_division=0.
    """
    index = {name: i for i, name in enumerate(classes)}
    targets = torch.tensor([index[name] for name in predictions["actual"]], dtype=torch.int64)
    predicted = torch.tensor([index[name] for name in predictions["predicted"]], dtype=torch.int64)
    counts = confusion_matrix(targets, predicted, len(classes))
    hits, support, called = counts.diag().double(), counts.sum(dim=1).double(), counts.sum(dim=0).double()
    wrong = counts.clone().fill_diagonal_(0)
    confused, most = wrong.max(dim=1)  # the first such class on a tie
    confused_with = [classes[j] if n else "" for j, n in zip(most.tolist(), confused.tolist(), strict=True)]
    table = pd.DataFrame(
        {
            "class": classes,
            "f1": (2 * hits / (support + called).clamp(min=1)).numpy(),
            "precision": (hits / called.clamp(min=1)).numpy(),
            "recall": (hits / support.clamp(min=1)).numpy(),
            "support": support.long().numpy(),
            "confused_with": confused_with,
            "confused": confused.numpy(),
        }
    )
    return table.sort_values(["f1", "recall", "class"], kind="stable").round(4)


def mistakes(predictions: pd.DataFrame) -> pd.DataFrame:
    """The misclassified rows, most confident first (ties by path): path, actual, predicted, probability."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    table = wrong[["path", "actual", "predicted"]].assign(probability=wrong["confidence"].astype(float))
    return table.sort_values(["probability", "path"], ascending=[False, True], kind="stable")


def model_inputs(paths: list[str], spec: ModelSpec) -> np.ndarray:
    """uint8 (N, 3, S, S): each image as the model takes it, before normalisation."""
    pixels = []
    for path in paths:
        try:
            pixels.append(load_image(path, spec.sizing))
        except Exception as error:  # Pillow and simplejpeg raise many types for a file that changed
            raise UserError(
                f"{path} could not be read for {BEST_GALLERY} ({error_line(error)}); it was read when "
                "prepare ran: rerun prepare (dvc repro)"
            ) from None
    return np.stack(pixels) if pixels else np.zeros((0, 3, spec.image_size, spec.image_size), np.uint8)


def heat_maps(checkpoint: dict[str, Any], pixels: np.ndarray, predicted: list[str]) -> tuple[np.ndarray | None, str]:
    """Grad-CAM of each image for its predicted class, (N, S, S) in [0, 1], and a line that
    says where it was taken; None and why not for a model without a layer it can use."""
    spec = ModelSpec.from_checkpoint(checkpoint)
    model = model_from_checkpoint(checkpoint).eval()
    layer = feature_layer(model, spec.image_size)
    if layer is None:
        why = f"No heat maps: {spec.arch} has no square feature map or patch tokens for Grad-CAM."
        log.info("%s %s", BEST_GALLERY, why)
        return None, why
    images = normalize(torch.from_numpy(pixels), list(spec.mean), list(spec.std))
    classes = torch.tensor([spec.classes.index(name) for name in predicted], dtype=torch.int64)
    maps = [
        grad_cam(model, images[start : start + HEAT_BATCH], classes[start : start + HEAT_BATCH], layer)
        for start in range(0, len(images), HEAT_BATCH)
    ]
    return torch.cat(maps).numpy(), f"Right: Grad-CAM for the predicted class, at {layer.name}."


def write_interpretation(checkpoint: dict[str, Any], predictions: pd.DataFrame) -> None:
    """BEST_CLASSES, BEST_MISTAKES and BEST_GALLERY for `checkpoint`, from its test `predictions`
    (evaluate's: path, actual, predicted, confidence)."""
    spec = ModelSpec.from_checkpoint(checkpoint)
    write_csv(per_class_scores(predictions, spec.classes), BEST_CLASSES)
    wrong = mistakes(predictions)
    write_csv(wrong, BEST_MISTAKES)
    shown = wrong.head(GALLERY)
    title = [f"No mistakes on the test split ({len(predictions)} images)."]
    tiles = []
    if len(shown):
        pixels = model_inputs(shown["path"].tolist(), spec)
        heat, where = heat_maps(checkpoint, pixels, shown["predicted"].tolist())
        which = f"All {len(wrong)}" if len(shown) == len(wrong) else f"The {len(shown)} most confident of {len(wrong)}"
        title = [
            f"{which} mistakes on the {len(predictions)} test images, the most confident first "
            f"({spec.arch}, epoch {checkpoint['epoch']}, {checkpoint.get('weights', 'raw')} weights).",
            f"Left: the model's input before normalisation. {where}",
        ]
        tiles = [
            Tile(pixels[i], None if heat is None else heat[i], row.actual, row.predicted, row.probability)
            for i, row in enumerate(shown.itertuples(index=False))
        ]
    with atomic_write(BEST_GALLERY) as file:
        save_png(draw_gallery(tiles, title), file)
    log.info("%d of %d test images misclassified -> %s, %s", len(wrong), len(predictions), BEST_MISTAKES, BEST_GALLERY)
