"""From an image folder to the manifest's rows: which images are usable, which are
duplicates of each other, and which split each one goes to."""

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import UserError
from pipeline.data.cache import cache_folder, scratch, store_decoded
from pipeline.data.decode import Sizing
from pipeline.data.inspection import inspect_all
from pipeline.data.scan import NOT_UTF8, Skipped, find_images
from pipeline.files import read_csv
from pipeline.paths import CLASSES, MANIFEST

# The package's name, not the module's: stage logs show `pipeline.data: ...` for all of it.
log = logging.getLogger("pipeline.data")

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "split", "sha1"]


def usable_images(
    root: Path, sizing: Sizing | None = None, cache_dir: Path | None = None
) -> tuple[list[str], pd.DataFrame, list[Skipped]]:
    """Scan, hash and decode every image under `root`: (classes, rows of path/label/sha1/dhash,
    left out).

    Each file is read once, on every core. Files that fail to decode are left out with the
    reason; so are identical files (the same sha1) under different classes, since no label
    is right for all of them, and class folders left with no usable image (the folder
    itself is listed). With `sizing`, the same pass also stores the rows' pixels and training
    copies in the decoded-image cache, where `decoded_images` and `training_copies` find them.
    Fewer than 2 class folders with image files stop it before any file is read (`scan_classes`).
    """
    classes, files, skipped = scan_classes(root)
    cache_dir = cache_dir or cache_folder()
    paths = [path.as_posix() for path, _ in files]
    rows = []
    with scratch(cache_dir, len(paths), sizing) as written:
        started = time.perf_counter()
        for index, result in enumerate(inspect_all(paths, sizing, f"checking images in {root}")):
            if result.problem:
                skipped.append(Skipped(paths[index], result.problem))
                continue
            rows.append((paths[index], files[index][1], result.sha1, result.dhash, index))
            if written is not None:
                written.write(index, result)
        seconds = time.perf_counter() - started
        done = "checked and decoded" if sizing else "checked"
        log.info("%s %d files in %.1fs (%.0f images/s)", done, len(paths), seconds, len(paths) / max(seconds, 1e-9))
        found = pd.DataFrame(rows, columns=["path", "label", "sha1", "dhash", "row"])
        found, conflicts = _drop_conflicting_copies(found)
        if written is not None:
            store_decoded(found, sizing, cache_dir, written)
    skipped += conflicts
    found = found.drop(columns="row")
    empty = [name for name in classes if name not in set(found["label"])]
    if empty:
        log.warning("class folder(s) with no usable images are left out: %s", ", ".join(empty))
        why = "class folder with no usable image (empty, or each of its files is listed): left out as a class"
        skipped += [Skipped((root / name).as_posix(), why) for name in empty]
    classes = [name for name in classes if name not in empty]
    if len(classes) < 2:
        raise UserError(
            f"{root} holds {len(classes)} class folder(s) with usable images; a classifier needs at least 2 "
            "sub-folders, one per class"
        )
    return classes, found, skipped


def scan_classes(root: Path) -> tuple[list[str], list[tuple[Path, str]], list[Skipped]]:
    """`find_images(root)`, and a UserError when fewer than 2 of its class folders hold an
    image file, which no decoding can mend (a data_dir that names one class folder, or a
    folder of loose images). A scan reads no file: this costs far less than the decoding it
    saves. (Classes too small for the splits are known only once decoded: a class whose few
    files are all damaged is left out, not an error.)"""
    classes, files, skipped = find_images(root)
    with_files = {label for _, label in files}
    if len(with_files) < 2:
        # Class folders unpacked from a Windows zip hold images that do not count: say why.
        misnamed = sum(s.reason == NOT_UTF8 for s in skipped)
        why = f"; {misnamed} image file(s) below it are left out, each with a {NOT_UTF8}" if misnamed else ""
        raise UserError(
            f"{root} holds {len(with_files)} class folder(s) with image files; a classifier needs at least 2 "
            f"sub-folders, one per class{why}"
        )
    return classes, files, skipped


def _drop_conflicting_copies(found: pd.DataFrame) -> tuple[pd.DataFrame, list[Skipped]]:
    """`found` without the files whose exact bytes also lie in another class, and those files."""
    labels_of = found.groupby("sha1")["label"].agg(lambda labels: sorted(set(labels)))
    conflicting = found["sha1"].map(lambda sha1: len(labels_of[sha1]) > 1).astype(bool)
    skipped = []
    for row in found[conflicting].itertuples():
        others = found[(found["sha1"] == row.sha1) & (found["path"] != row.path)]["path"].tolist()
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        classes = ", ".join(f"'{label}'" for label in labels_of[row.sha1])
        skipped.append(
            Skipped(row.path, f"duplicate with conflicting labels: the same bytes as {listed} (classes {classes})")
        )
    return found[~conflicting].reset_index(drop=True), skipped


def duplicate_groups(found: pd.DataFrame) -> list[int]:
    """For each row of `found` (sha1, dhash columns), the first row of its group of duplicates.

    Rows are in one group when they share the sha1 (exact copies) or a non-empty dhash (the
    same picture re-encoded or resized), directly or through other rows. A row without
    duplicates is its own group.
    """
    parent = list(range(len(found)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (sha1, dhash) in enumerate(zip(found["sha1"], found["dhash"], strict=True)):
        for key in [("sha1", sha1)] + ([("dhash", dhash)] if dhash else []):
            j = root(first.setdefault(key, i))
            a, b = sorted((root(i), j))
            parent[b] = a
    return [root(i) for i in range(len(found))]


def stratified_split(
    labels: list[str], fractions: dict[str, float], seed: int, groups: list[int] | None = None
) -> list[str]:
    """Assign each item to "train" or one of `fractions`' splits, per class, reproducibly.

    Every class gets at least one item in every split; a class too small for that is a
    UserError rather than a silently empty split. Items with the same `groups` value
    (duplicates: see duplicate_groups) share a split; a group counts for the class most of
    its items have (on a tie, the first in sort order), and split sizes may then miss the
    fractions by up to a group's size. Without groups, or with every group of one item,
    the result is the same as ever.
    """
    groups = list(range(len(labels))) if groups is None else groups
    members_of: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members_of.setdefault(group, []).append(i)
    owner = {
        group: min(Counter(labels[i] for i in members).items(), key=lambda item: (-item[1], item[0]))[0]
        for group, members in members_of.items()
    }
    rng = np.random.default_rng(seed)
    splits = [""] * len(labels)
    names = [*fractions, "train"]
    for label in sorted(set(labels)):
        units = [members_of[group] for group in members_of if owner[group] == label]  # in order of first item
        items = sum(len(unit) for unit in units)
        if len(units) < len(names):
            in_groups = f" in {len(units)} group(s) of duplicates" if items > len(units) else ""
            raise UserError(
                f"class '{label}' has {items} usable image(s){in_groups}; each class needs at least {len(names)} "
                f"(one for train and one for each of {', '.join(fractions)}). Add images or remove the class folder"
            )
        # Fill the splits in turn, val first and train last, in a random order of the units;
        # move on when a split has its share, or when each later split needs one of the units left.
        room = [max(1, round(fraction * items)) for fraction in fractions.values()] + [items]
        filled = [0] * len(names)
        current = 0
        for rank, index in enumerate(rng.permutation(len(units))):
            left = len(units) - rank
            while filled[current] and current < len(names) - 1 and (room[current] <= 0 or left < len(names) - current):
                current += 1
            for i in units[index]:
                splits[i] = names[current]
            filled[current] += 1
            room[current] -= len(units[index])
    return splits


def read_manifest(prepared_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The manifest (path, label, split, sha1) and the ordered class list written by prepare."""
    manifest_path, classes_path = prepared_dir / MANIFEST.name, prepared_dir / CLASSES.name
    for path in (manifest_path, classes_path):
        if not path.is_file():
            raise UserError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    manifest = read_csv(manifest_path)
    classes = json.loads(classes_path.read_text())
    return manifest, classes
