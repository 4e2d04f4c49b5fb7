"""Stage prepare: an ImageFolder tree -> a stratified train/val/test manifest, and every
image decoded for the model.

Reads:  params prepare.*, model.arch, model.weights, model.image_size (how the weights want
        their inputs sized; a weights file under models/weights/ may say too); the images
        under prepare.data_dir
Writes: data/prepared/manifest.csv    (path, label, split, sha1; one row per usable image)
        data/prepared/classes.json    (the ordered class names; model output i is class i)
        data/prepared/skipped.csv     (path, reason: everything under the data folder that is
                                       not in the manifest, and why)
        data/prepared/duplicates.csv  (group, path, label, split, match, sha1, dhash: the
                                       manifest's images that have a copy or near-copy)

skipped.csv lists every file, link and folder not hidden (.name) that does not end up in
the manifest: files directly in the data folder (no class), non-image extensions, files
that fail to decode or exceed Pillow's size limit, broken links and link loops, links to
folders below a class folder (not followed), class folders with no usable image, exact
duplicates whose labels conflict, and files whose path is not valid UTF-8 (listed with
their bytes as escapes, `cl\\xe9/1.png`). A link loop is handled here, but DVC itself stops with
Errno 40 on one in a dependency folder before this stage runs: remove it to use `dvc repro`.

One pass reads each file once, on every core: its sha1, a check that it decodes, its
perceptual hash, and its pixels at the model's sizing (data.decode.load_image), kept in
the project's decoded-image cache (.cache/images, shared by every experiment of the
project, queued and --temp ones too), where train and evaluate find them.

Duplicates never straddle splits. Files with the same bytes (sha1) under one class, and
images with the same perceptual hash (data.inspection.image_hash: the same picture
re-encoded or resized), form a group that goes to one split together. Files with the same bytes under
different classes are left out (listed in skipped.csv): no label is right for all of them.
Near-duplicates with different labels are kept, in one split, and listed in
duplicates.csv (match "near") to be checked by hand. Without duplicates the split is
what it always was for a seed.
"""

import logging
from pathlib import Path

import pandas as pd

from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.cli import run_stage
from pipeline.config import PRETRAIN_WEIGHTS
from pipeline.data.scan import readable
from pipeline.data.split import MANIFEST_COLUMNS, duplicate_groups, stratified_split, usable_images
from pipeline.files import write_csv, write_json
from pipeline.models import model_sizing
from pipeline.paths import CLASSES, DUPLICATES, MANIFEST, SKIPPED

log = logging.getLogger("pipeline.prepare")

DUPLICATE_COLUMNS = ["group", "path", "label", "split", "match", "sha1", "dhash"]


def duplicates_report(manifest: pd.DataFrame, groups: list[int]) -> pd.DataFrame:
    """The rows of `manifest` (with a dhash column) that share a group with another row.

    Groups are numbered from 1 in manifest order; match is "exact" for a file whose bytes
    another file of its group shares, else "near".
    """
    rows = manifest.assign(group=groups)
    rows = rows[rows.groupby("group")["path"].transform("size") > 1]
    number = {group: n for n, group in enumerate(dict.fromkeys(rows["group"]), start=1)}
    exact = rows.groupby(["group", "sha1"])["path"].transform("size") > 1
    return rows.assign(group=rows["group"].map(number), match=exact.map({True: "exact", False: "near"}))[
        DUPLICATE_COLUMNS
    ].reset_index(drop=True)


def main() -> None:
    all_params = load_checked_params()
    params, model = all_params.prepare, all_params.model
    # The pass that checks every file also decodes it for the model, into the shared cache.
    weights = None if model.weights == PRETRAIN_WEIGHTS else model.weights
    sizing = model_sizing(model.arch, weights, model.image_size)
    classes, manifest, skipped = usable_images(Path(params.data_dir), sizing)

    fractions = {"val": params.val_fraction, "test": params.test_fraction}
    groups = duplicate_groups(manifest)  # also listed in duplicates.csv below
    manifest["split"] = stratified_split(manifest["label"].tolist(), fractions, params.seed, groups)
    write_csv(manifest[MANIFEST_COLUMNS], MANIFEST)
    write_json(classes, CLASSES)
    report = pd.DataFrame(
        [(readable(s.path), readable(s.reason)) for s in sorted(skipped, key=lambda s: s.path)],
        columns=["path", "reason"],
    )
    write_csv(report, SKIPPED)
    duplicates = duplicates_report(manifest, groups)
    write_csv(duplicates, DUPLICATES)

    per_split = manifest["split"].value_counts()
    log.info(
        "%d images in %d classes: %d train, %d val, %d test; %d files left out (listed in %s)",
        len(manifest),
        len(classes),
        per_split.get("train", 0),
        per_split.get("val", 0),
        per_split.get("test", 0),
        len(report),
        SKIPPED,
    )
    if len(duplicates):
        mixed = duplicates.groupby("group")["label"].nunique().gt(1).sum()
        log.info(
            "%d images in %d groups of copies or near-copies, each group in one split; %d group(s) with "
            "different labels (listed in %s)",
            len(duplicates),
            duplicates["group"].nunique(),
            mixed,
            DUPLICATES,
        )
    confirm_unchanged()


if __name__ == "__main__":
    run_stage(main)
