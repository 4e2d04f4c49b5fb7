"""The prepare stage through its entry point: messy folders, one-line errors, reproducible splits."""

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pipeline.data import inspection
from pipeline.data.cache import decoded_images
from pipeline.data.copies import TrainingCopies
from pipeline.data.decode import Sizing, load_image
from pipeline.data.split import SPLITS, usable_images
from pipeline.files import read_csv
from testing.project import run, run_script, set_checked_params, set_params, stage
from tests.helpers import file_sha1

PREPARED = Path("data/prepared")
OUTPUTS = ("manifest.csv", "classes.json", "skipped.csv", "duplicates.csv")


def noise_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0, **save) -> Path:
    """A small random image of `mode` at `path`; the format comes from the extension."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    image.save(path, format=fmt, **save)
    return path


def simple_folder(root: Path, counts: dict[str, int]) -> None:
    """An ImageFolder tree with counts[class] small PNGs per class."""
    for k, (label, n) in enumerate(counts.items()):
        for i in range(n):
            noise_image(root / label / f"{i:02d}.png", seed=100 * k + i)


def read_outputs(project: Path) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    prepared = project / PREPARED
    manifest = read_csv(prepared / "manifest.csv")
    skipped = read_csv(prepared / "skipped.csv")
    return manifest, json.loads((prepared / "classes.json").read_text()), skipped


def assert_every_class_in_every_split(manifest: pd.DataFrame) -> None:
    present = set(zip(manifest["label"], manifest["split"], strict=True))
    missing = {(label, split) for label in manifest["label"].unique() for split in SPLITS} - present
    assert not missing, f"(class, split) pairs with no image: {sorted(missing)}"


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit code 2 and a single `error: ...` line on stderr, with no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_prepare_handles_a_messy_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project / "messy"
    good: dict[str, str] = {}  # path as prepare writes it (relative to the project) -> class
    bad: dict[str, str] = {}  # path -> a word its reason must contain

    def add_good(path: Path, label: str) -> None:
        good[path.relative_to(project).as_posix()] = label

    def add_bad(path: Path, why: str) -> None:
        bad[path.relative_to(project).as_posix()] = why

    cat, dog = root / "cat", root / "dog"
    add_good(noise_image(cat / "rgb.png", seed=1), "cat")
    add_good(noise_image(cat / "grey.png", "L", seed=2), "cat")
    add_good(noise_image(cat / "alpha.png", "RGBA", seed=3), "cat")
    add_good(noise_image(cat / "palette.png", "P", seed=4), "cat")
    add_good(noise_image(cat / "palette_transparent.png", "P", seed=5, transparency=0), "cat")
    add_good(noise_image(cat / "cmyk.jpg", "CMYK", seed=6), "cat")
    add_good(noise_image(cat / "sixteen.png", "I;16", seed=7), "cat")
    add_good(noise_image(cat / "SHOUTING.PNG", seed=8), "cat")
    add_good(noise_image(cat / "ünïcødé_图.png", seed=9), "cat")
    add_good(noise_image(cat / "2024" / "june" / "nested.jpg", seed=10), "cat")
    add_good(noise_image(dog / "a.JPG", seed=11), "dog")
    add_good(noise_image(dog / "b.jpeg", seed=12), "dog")
    add_good(noise_image(dog / "c.png", "L", seed=13), "dog")
    add_good(noise_image(dog / "d.png", "RGBA", seed=14), "dog")

    (cat / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    add_bad(cat / "corrupt.jpg", "decoded")
    whole = noise_image(root / "whole.png", size=(32, 32)).read_bytes()
    (root / "whole.png").unlink()
    (dog / "truncated.png").write_bytes(whole[: len(whole) // 2])
    add_bad(dog / "truncated.png", "decoded")
    (dog / "empty.png").write_bytes(b"")
    add_bad(dog / "empty.png", "decoded")
    (cat / "README.txt").write_text("photos from the shelter")
    add_bad(cat / "README.txt", ".txt")
    (dog / "labels.csv").write_text("file,label\n")
    add_bad(dog / "labels.csv", ".csv")
    # Classes without a usable image, listed as folders: an empty one and one holding only a broken file.
    (root / "bird").mkdir()
    add_bad(root / "bird", "no usable image")
    (root / "fish").mkdir()
    (root / "fish" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    add_bad(root / "fish" / "broken.png", "decoded")
    add_bad(root / "fish", "no usable image")
    # Files in the data folder itself belong to no class.
    add_bad(noise_image(root / "stray.png"), "not inside a class folder")
    (root / "notes.txt").write_text("unsorted")
    add_bad(root / "notes.txt", "not inside a class folder")
    # Links: to a file (used), broken, looping (DVC stops on these; prepare must not), to a folder.
    (dog / "alias.jpg").symlink_to("a.JPG")
    add_good(dog / "alias.jpg", "dog")
    (cat / "gone.png").symlink_to("nowhere.png")
    add_bad(cat / "gone.png", "broken link")
    (dog / "self.png").symlink_to("self.png")
    add_bad(dog / "self.png", "loop")
    (root / "self").symlink_to("self")
    add_bad(root / "self", "loop")
    (cat / "more").symlink_to(dog)
    add_bad(cat / "more", "link to a folder")
    # ...while a link in the data folder itself to a folder elsewhere is a class, as a folder is.
    for i in range(3):
        add_good(root / "cow" / f"{i}.png", "cow")
        noise_image(project / "elsewhere" / f"{i}.png", seed=20 + i)
    (root / "cow").symlink_to(project / "elsewhere")
    # Special files, named for what they are; a FIFO is never opened (that would block).
    os.mkfifo(dog / "pipe.png")
    add_bad(dog / "pipe.png", "not a regular file: a named pipe (FIFO)")
    # Hidden files and folders are neither used nor reported.
    noise_image(cat / ".hidden.png")
    noise_image(dog / ".thumbs" / "t.png")
    (dog / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    noise_image(root / ".trash" / "x.png")

    set_checked_params(project, **{"prepare.data_dir": "messy"})
    result = stage("prepare", project)

    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    manifest, classes, skipped = read_outputs(project)
    assert list(manifest.columns) == ["path", "label", "split", "sha1"]  # docs/design.md's, in its order
    assert classes == ["cat", "cow", "dog"]
    assert dict(zip(manifest["path"], manifest["label"], strict=True)) == good
    assert len(manifest) == len(good)
    assert all(manifest["sha1"] == [file_sha1(project / p) for p in manifest["path"]])
    split_of = dict(zip(manifest["path"], manifest["split"], strict=True))
    assert split_of["messy/dog/alias.jpg"] == split_of["messy/dog/a.JPG"]  # one file, two names: one split
    assert_every_class_in_every_split(manifest)
    assert set(manifest["split"]) == set(SPLITS)

    assert sorted(skipped["path"]) == sorted(bad)
    # In path order, as the scan takes the folders: the reasons here differ in kind and come from
    # several passes (scan, decode, the empty classes), so an order by reason or by pass shows.
    assert list(skipped["path"]) == sorted(skipped["path"])
    for path, reason in zip(skipped["path"], skipped["reason"], strict=True):
        assert bad[path] in reason, (path, reason)

    log = result.stderr
    counts = manifest["split"].value_counts()
    assert (
        f"{len(good)} images in 3 classes: {counts['train']} train, {counts['val']} val, {counts['test']} test; "
        f"{len(bad)} files left out"
    ) in log
    warning = next(line for line in log.splitlines() if "left out:" in line)
    assert "bird" in warning and "fish" in warning

    # The decoded cache prepare wrote (files were left out, so its rows were copied one by
    # one) holds each manifest row's own image: the one file's decode (load_image, checked
    # against Pillow and torchvision in test_data), not a neighbour's.
    monkeypatch.chdir(project)
    sizing = Sizing(16, 16)  # weights pretrained here: inputs resized straight to image_size
    assert (project / ".cache/images").is_dir()
    # ...and no temporary file of the decoding pass (a full array of every image) left beside it
    assert not [path.name for path in (project / ".cache/images").iterdir() if path.name.startswith(".decoding.")]
    with monkeypatch.context() as patched:
        patched.setattr(inspection, "decode", lambda *args: pytest.fail("decoded again: the cache was not used"))
        images = decoded_images(manifest, sizing, Path(".cache/images"))
    for row, path in enumerate(manifest["path"]):
        np.testing.assert_array_equal(images[row], load_image(path, sizing), err_msg=path)


def test_the_decoding_pass_writes_its_scratch_files_in_the_cache_folder_not_the_system_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare's decoding pass writes its scratch arrays as temporary files of the cache folder
    (cache.Scratch), then renames them into place: that rename must not cross file systems (/tmp
    is often a tmpfs, and a full array there fills RAM). Python's temporary folder is pointed at
    one that does not exist, so a scratch file made there fails the pass."""
    simple_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no system temp"))
    cache = tmp_path / "cache"

    _, found, skipped = usable_images(tmp_path / "data", Sizing(16, 16), cache)

    assert len(found) == 4 and not skipped
    assert sorted(path.suffix for path in cache.iterdir()) == [".bin", ".npy", ".npy"]  # array, copies, index
    assert not (tmp_path / "no system temp").exists()


def test_a_single_class_is_refused_by_check_params_and_by_prepare_before_decoding(project: Path) -> None:
    simple_folder(project / "one", {"only": 6})
    (project / "one" / "empty").mkdir()  # a second class folder, without a file: no class
    (project / "one" / "notes").mkdir()
    (project / "one" / "notes" / "todo.txt").write_text("not an image")  # nor one without an image
    set_params(project, **{"prepare.data_dir": "one"})
    assert_one_line_error(stage("check_params", project, check=False), "1 class folder", "at least 2")

    # The data changed after check_params checked the params (DVC re-runs prepare alone then):
    # prepare refuses it before decoding any image.
    simple_folder(project / "two", {"only": 6, "other": 6})
    set_checked_params(project, **{"prepare.data_dir": "two"})
    shutil.rmtree(project / "two" / "other")
    result = stage("prepare", project, check=False)
    assert_one_line_error(result, "1 class folder", "at least 2")
    assert "decoded" not in result.stderr and not (project / ".cache" / "images").exists(), result.stderr


def test_two_class_folders_with_one_usable_class_are_refused(project: Path) -> None:
    """The scan sees two class folders, but every file of one fails to decode: one class is
    left, and a classifier needs two."""
    simple_folder(project / "half", {"good": 6, "bad": 3})
    for path in (project / "half" / "bad").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    set_checked_params(project, **{"prepare.data_dir": "half"})
    assert_one_line_error(stage("prepare", project, check=False), "holds 1 class folder(s) with usable images")
    assert not (project / PREPARED / "manifest.csv").exists()


def test_prepare_rejects_a_class_too_small_for_every_split(project: Path) -> None:
    simple_folder(project / "few", {"many": 6, "rare": 2})
    set_checked_params(project, **{"prepare.data_dir": "few"})

    # docs/design.md: one image for each of train, val and test, so 3 at least.
    assert_one_line_error(
        stage("prepare", project, check=False),
        "class 'rare' has 2 usable image(s); each class needs at least 3 (one for train and one for each of val, test)",
    )


def test_a_missing_data_dir_is_refused_by_check_params_and_by_prepare(project: Path) -> None:
    set_params(project, **{"prepare.data_dir": "no/such/folder"})
    assert_one_line_error(stage("check_params", project, check=False), "no/such/folder", "no such folder")

    simple_folder(project / "gone", {"a": 3, "b": 3})
    set_checked_params(project, **{"prepare.data_dir": "gone"})
    shutil.rmtree(project / "gone")
    assert_one_line_error(stage("prepare", project, check=False), "gone", "does not exist")


def test_prepare_is_reproducible_and_seeded(project: Path) -> None:
    simple_folder(project / "pics", {"a": 9, "b": 7, "c": 6})
    (project / "pics" / "a" / "notes.txt").write_text("so skipped.csv has a row")
    # Fractions of unequal size: a stage that swapped them, or rounded a share down, splits otherwise.
    fractions = {"prepare.val_fraction": 0.2, "prepare.test_fraction": 0.3}
    set_checked_params(project, **{"prepare.data_dir": "pics", "prepare.seed": 0, **fractions})
    outputs = [project / PREPARED / name for name in OUTPUTS]

    stage("prepare", project)
    first = [path.read_bytes() for path in outputs]
    stage("prepare", project)
    assert [path.read_bytes() for path in outputs] == first

    manifest0, classes0, skipped0 = read_outputs(project)
    set_checked_params(project, **{"prepare.seed": 1})
    result = stage("prepare", project)
    manifest1, classes1, skipped1 = read_outputs(project)

    assert classes1 == classes0
    assert skipped1.equals(skipped0)
    # The same images, labels and hashes, split differently, each class still in every split.
    assert manifest1.drop(columns="split").equals(manifest0.drop(columns="split"))
    assert not manifest1["split"].equals(manifest0["split"])
    assert_every_class_in_every_split(manifest1)
    # Split sizes per class depend on the fractions, not on the seed. By hand, each share of a
    # class rounded to the nearest image, train the rest: a (9) 1.8 -> 2 val, 2.7 -> 3 test;
    # b (7) 1.4 -> 1, 2.1 -> 2; c (6) 1.2 -> 1, 1.8 -> 2.
    sizes0 = manifest0.groupby(["label", "split"]).size()
    assert manifest1.groupby(["label", "split"]).size().equals(sizes0)
    expected = {"a": (4, 2, 3), "b": (4, 1, 2), "c": (3, 1, 2)}  # train, val, test
    assert {label: tuple(sizes0[label][split] for split in SPLITS) for label in expected} == expected
    assert re.search(rf"{len(manifest1)} images in 3 classes", result.stderr)


def test_the_split_is_the_same_in_every_new_process(project: Path) -> None:
    """prepare.seed alone draws the split: not the order in which a process's string hashing
    (random in each new one, PYTHONHASHSEED) walks a set of the class names. Hash seeds 1 and
    2 walk these three names in other orders (the control below); classes of other sizes draw
    other numbers of the seed's draws, so an order that mattered would show."""
    simple_folder(project / "pics", {"a": 9, "b": 7, "c": 6})
    set_checked_params(project, **{"prepare.data_dir": "pics"})
    manifests, orders = [], []
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed}
        run([sys.executable, "-m", "pipeline.prepare"], project, env=env)
        manifests.append((project / PREPARED / "manifest.csv").read_bytes())
        orders.append(run([sys.executable, "-c", "print(list({'a', 'b', 'c'}))"], project, env=env).stdout)
    assert orders[0] != orders[1]
    assert manifests[0] == manifests[1]


def photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A photo-like random picture: coarse shapes, upscaled, plus fine grain; PNG."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def test_prepare_keeps_duplicates_in_one_split_and_drops_conflicting_copies(project: Path) -> None:
    root = project / "dups"
    for k, label in enumerate(["a", "b", "c"]):
        for i in range(7):
            photo(root / label / f"{i}.png", seed=10 * k + i)
    # A pair, the smallest group: a report that kept only groups of three or more would miss it.
    copies = [root / "a" / "0.png", root / "a" / "sub" / "copy.png"]
    for path in copies[1:]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(copies[0].read_bytes())
    # One picture, then bigger, smaller and as a JPEG: different bytes, one perceptual hash. (Not
    # every picture keeps its hash through all three, about half of these synthetic ones do: best effort.)
    near = [photo(root / "b" / "original.png", seed=6, size=(160, 120))]
    with Image.open(near[0]) as original:
        for name, copy in [
            ("big.png", original.resize((320, 240), Image.Resampling.BICUBIC)),
            ("small.png", original.resize((80, 60), Image.Resampling.LANCZOS)),
            ("original.jpg", original),
        ]:
            copy.save(root / "b" / name, quality=90)
            near.append(root / "b" / name)
        # A near copy under another class: kept with its own label, in the group's split.
        original.save(root / "c" / "original_in_c.jpg", quality=80)
        near.append(root / "c" / "original_in_c.jpg")
    # ...and a byte copy of the original in its group: those two are exact, the rest near.
    (root / "b" / "original_again.png").write_bytes(near[0].read_bytes())
    near.append(root / "b" / "original_again.png")
    # One file under two classes: no label is right for both.
    conflicting = [root / "c" / "2.png", root / "b" / "from_c.png"]
    conflicting[1].write_bytes(conflicting[0].read_bytes())
    rel = [[p.relative_to(project).as_posix() for p in group] for group in (copies, near, conflicting)]

    set_params(project, **{"prepare.data_dir": "dups", "prepare.val_fraction": 0.3, "prepare.test_fraction": 0.3})
    for seed in range(4):
        set_checked_params(project, **{"prepare.seed": seed})
        log = stage("prepare", project).stderr
        manifest, _, skipped = read_outputs(project)
        split_of = dict(zip(manifest["path"], manifest["split"], strict=True))
        assert len({split_of[p] for p in rel[0]}) == 1, seed
        assert len({split_of[p] for p in rel[1]}) == 1, seed
        assert_every_class_in_every_split(manifest)

    assert not set(rel[2]) & set(manifest["path"])
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    for path, other in [rel[2], rel[2][::-1]]:
        assert "conflicting labels" in reasons[path] and other in reasons[path], reasons[path]

    # Two groups, 8 images; one group (the near copies) holds two labels, b and c.
    counted = "8 images in 2 groups of copies or near-copies, each group in one split; 1 group(s) with different labels"
    assert counted in log and len(rel[0]) + len(rel[1]) == 8
    duplicates = read_csv(project / PREPARED / "duplicates.csv")
    assert list(duplicates.columns) == ["group", "path", "label", "split", "match", "sha1", "dhash"]  # docs/design.md
    by_group = {group: rows for group, rows in duplicates.groupby("group")}
    assert sorted(by_group) == ["1", "2"]  # numbered from 1, in the manifest's order (read as text)
    row_of = {path: row for row, path in enumerate(manifest["path"])}
    in_order = sorted(rel[:2], key=lambda group: min(row_of[path] for path in group))
    assert [sorted(by_group[group]["path"]) for group in ("1", "2")] == [sorted(group) for group in in_order]
    # Each file's own sha1, and each near copy matched by the perceptual hash of another in its group.
    for path, sha1 in zip(duplicates["path"], duplicates["sha1"], strict=True):
        assert sha1 == hashlib.sha1((project / path).read_bytes()).hexdigest(), path
    for rows in by_group.values():
        near_rows = rows[rows["match"] == "near"]
        for path, dhash in zip(near_rows["path"], near_rows["dhash"], strict=True):
            assert dhash in set(rows.loc[rows["path"] != path, "dhash"]), (path, rows)
    assert set(duplicates.loc[duplicates["path"].isin(rel[0]), "match"]) == {"exact"}
    match = dict(zip(duplicates["path"], duplicates["match"], strict=True))
    assert [match[p] for p in rel[1]] == ["exact", "near", "near", "near", "near", "exact"]
    labels = dict(zip(manifest["path"], manifest["label"], strict=True))
    assert {labels[p] for p in rel[1]} == {"b", "c"} and labels[rel[1][-2]] == "c"
    assert dict(zip(duplicates["path"], duplicates["split"], strict=True)) == {p: split_of[p] for p in rel[0] + rel[1]}

    # The training copies that prepare kept, with the conflicting file left out before a later
    # row (b/from_c.png sorts before b/original.jpg): each row's random resized crop is cut
    # from its own picture. The whole box, against torchvision's resized_crop of the file.
    (index,) = (project / ".cache" / "images").glob("*.train.npy")
    copies = TrainingCopies(index.with_suffix(".bin"), index)
    assert len(copies) == len(manifest)
    for row, path in enumerate(manifest["path"]):
        whole = TF.pil_to_tensor(Image.open(project / path).convert("RGB"))
        height, width = whole.shape[1:]
        assert copies.whole_sizes(torch.tensor([row])).tolist() == [[width, height]], path
        crop = copies.crop(row, [0, 0, height, width], False, 16, "bilinear")
        reference = TF.resized_crop(whole, 0, 0, height, width, [16, 16], antialias=True)
        difference = np.abs(crop.transpose(2, 0, 1).astype(int) - reference.numpy().astype(int))
        assert difference.mean() < 2, (path, difference.mean())


def test_the_hashes_and_the_split_do_not_depend_on_the_models_sizing(project: Path) -> None:
    """docs/design.md: the perceptual hash comes from a fixed decode, so the split never depends
    on the model. Photos of 640x480, each with a near copy at half size, prepared for 16 px
    crops (decoded again, much smaller, for the model) and for 224 px ones: the same groups of
    near copies, with the same hashes, and the same split."""
    for k, label in enumerate(["a", "b"]):
        for i in range(5):
            original = photo(project / "big" / label / f"{i}.png", seed=10 * k + i, size=(640, 480))
            with Image.open(original) as image:
                image.resize((320, 240), Image.Resampling.LANCZOS).save(original.with_suffix(".jpg"), quality=90)
    # Bands across the picture, a smooth random profile down it: detail in one direction alone,
    # which the hash's thumbnail of pixels against the pixel above holds; and columns, the
    # same turned, which only its thumbnail of pixels against their left neighbours holds.
    # Each halved and doubled.
    profile = np.random.default_rng(0).integers(0, 256, (6, 1), dtype=np.uint8)
    bands = Image.fromarray(profile).resize((1, 240), Image.Resampling.BICUBIC).resize((320, 240)).convert("RGB")
    columns = bands.transpose(Image.Transpose.TRANSPOSE)  # 240 x 320
    banded = {kind: [project / "big/a" / f"{kind}_{scale}.png" for scale in (1, 2, 4)] for kind in ("bands", "columns")}
    for kind, picture in (("bands", bands), ("columns", columns)):
        for path, scale in zip(banded[kind], (1, 2, 4), strict=True):
            picture.resize((picture.width * scale // 2, picture.height * scale // 2), Image.Resampling.LANCZOS).save(
                path
            )
    outputs = []
    for size in (16, 224):
        set_checked_params(project, **{"prepare.data_dir": "big", "model.image_size": size})
        stage("prepare", project)
        outputs.append((read_outputs(project)[0], read_csv(project / PREPARED / "duplicates.csv")))
    (manifest16, duplicates16), (manifest224, duplicates224) = outputs
    assert (duplicates224["match"] == "near").sum() >= 4  # most of the pairs found
    for kind, paths in banded.items():
        group = duplicates224.loc[duplicates224["path"].str.startswith(f"big/a/{kind}_"), "group"]
        assert len(group) == len(paths) and group.nunique() == 1, (kind, duplicates224)
    assert duplicates16.equals(duplicates224)
    assert manifest16.equals(manifest224)


def test_smooth_pictures_are_never_matched_as_near_copies(project: Path) -> None:
    """docs/design.md: flat images are never matched. Smooth gradients, each of its own colours,
    brightening towards one corner (every thumbnail pixel brighter than its left and upper
    neighbours: a hash of ones alone, which tells none of them apart): no group of copies."""
    ramp = np.add.outer(np.arange(40), np.arange(48))[..., None] / 86  # 0 at the top left, 1 at the bottom right
    for k, label in enumerate(["a", "b"]):
        for i in range(5):
            dark, bright = np.array([10 * i, 20 * k, 5]), np.array([200, 150 + 10 * i, 240 - 30 * k])
            folder = project / "smooth" / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((dark + ramp * (bright - dark)).round().astype(np.uint8)).save(folder / f"{i}.png")
    set_checked_params(project, **{"prepare.data_dir": "smooth"})
    stage("prepare", project)
    manifest, _, _ = read_outputs(project)
    assert len(manifest) == 10
    assert read_csv(project / PREPARED / "duplicates.csv").empty


PILLOW_OF_ANOTHER_VERSION = """
import runpy, sys
import PIL
PIL.__version__ = "0.0.1"  # another Pillow resamples otherwise: the cache must not be read
sys.argv = ["pipeline.prepare"]
runpy.run_module("pipeline.prepare", run_name="__main__", alter_sys=True)
"""


def test_other_decoding_code_or_pillow_never_reads_an_old_cache(project: Path) -> None:
    """The decoded cache's file names hold the code that decodes (pipeline/data) and Pillow's
    version: after an edit there, or under another Pillow, prepare keeps its pixels under new
    names and leaves the old files alone, so train and evaluate never read pixels that other
    code made (a version number bumped by hand would, whenever someone forgot). The same
    code and Pillow keep the same names."""
    simple_folder(project / "pics", {"a": 6, "b": 6})
    set_checked_params(project, **{"prepare.data_dir": "pics"})
    cache = project / ".cache" / "images"

    def cache_files() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in cache.iterdir()}

    stage("prepare", project)
    first = cache_files()
    assert len(first) == 3  # the model's inputs, the training copies and their index
    stage("prepare", project)
    assert cache_files() == first

    # The module that decodes, then the one that makes the training copies: each a new cache.
    for edits, module in enumerate(["decode.py", "copies.py"], start=2):
        code = project / "pipeline" / "data" / module
        code.write_text(code.read_text() + "# a change that gives other pixels, for all the cache knows\n")
        stage("prepare", project)
        edited = cache_files()
        assert len(edited) == edits * len(first) and {name: edited[name] for name in first} == first, module

    run_script(PILLOW_OF_ANOTHER_VERSION, [], project)
    assert len(cache_files()) == 4 * len(first)
