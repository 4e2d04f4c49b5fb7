"""Stage prepare: an ImageFolder tree -> a stratified train/val/test manifest.

Reads:  params prepare.*, the images under prepare.data_dir
Writes: data/prepared/manifest.csv  (path, label, split, sha1; one row per usable image)
        data/prepared/classes.json  (the ordered class names; model output i is class i)
        data/prepared/skipped.csv   (files left out, and why)
"""

import logging
from pathlib import Path

import pandas as pd

from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import MANIFEST_COLUMNS, stratified_split, usable_images
from pipeline.files import write_csv, write_json

log = logging.getLogger("pipeline.prepare")

OUT_DIR = Path("data/prepared")


def main() -> None:
    params = load_params().prepare
    classes, manifest, skipped = usable_images(Path(params.data_dir))

    fractions = {"val": params.val_fraction, "test": params.test_fraction}
    manifest["split"] = stratified_split(manifest["label"].tolist(), fractions, params.seed)
    write_csv(manifest[MANIFEST_COLUMNS], OUT_DIR / "manifest.csv")
    write_json(classes, OUT_DIR / "classes.json")
    report = pd.DataFrame(
        [(s.path, s.reason) for s in sorted(skipped, key=lambda s: s.path)], columns=["path", "reason"]
    )
    write_csv(report, OUT_DIR / "skipped.csv")

    per_split = manifest["split"].value_counts()
    log.info(
        "%d images in %d classes: %d train, %d val, %d test; %d files left out (listed in %s)",
        len(manifest), len(classes), per_split.get("train", 0), per_split.get("val", 0), per_split.get("test", 0),
        len(report), OUT_DIR / "skipped.csv",
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
