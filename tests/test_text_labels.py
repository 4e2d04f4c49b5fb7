"""Class names that pandas would read as missing values or numbers stay text in every CSV read."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.split import read_manifest
from pipeline.files import read_csv, write_csv
from testing.project import set_checked_params, stage

# pandas' default missing-value strings that can name a folder (not "" nor those with a "/").
MISSING_LOOKING = ["#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"]
MISSING_LOOKING += ["NA", "NULL", "NaN", "None", "nan", "null"]
NUMBER_LOOKING = ["007", "08", "1e3", "0x1F", "-0", "1_000", "True", " 5 "]


def test_read_csv_keeps_every_cell_as_written(tmp_path: Path) -> None:
    names = ["", "N/A", "n/a", "#N/A", "#N/A N/A", *MISSING_LOOKING, *NUMBER_LOOKING]
    write_csv(pd.DataFrame({"path": [f"{n}/x.png" for n in names], "label": names}), tmp_path / "t.csv")

    table = read_csv(tmp_path / "t.csv")

    assert table["label"].tolist() == names
    assert table["path"].tolist() == [f"{n}/x.png" for n in names]


def test_read_csv_reads_number_columns_as_numbers(tmp_path: Path) -> None:
    write_csv(pd.DataFrame({"epoch": [1, 2], "val_loss": [0.5, np.nan], "label": ["NA", "007"]}), tmp_path / "s.csv")

    table = read_csv(tmp_path / "s.csv", text=["label"])

    assert table["epoch"].tolist() == [1, 2]
    assert table["val_loss"].iloc[0] == 0.5 and np.isnan(table["val_loss"].iloc[1])
    assert table["label"].tolist() == ["NA", "007"]


def tiny_images(root: Path, classes: list[str], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")


def test_prepare_keeps_class_names_that_look_missing_or_numeric(project: Path) -> None:
    classes = sorted(MISSING_LOOKING + NUMBER_LOOKING)
    tiny_images(project / "odd", classes, 3)
    set_checked_params(project, **{"prepare.data_dir": "odd"})

    stage("prepare", project)
    manifest, read_classes = read_manifest(project / "data" / "prepared")

    assert read_classes == classes
    assert sorted(set(manifest["label"])) == classes
    assert all(path.split("/")[1] == label for path, label in zip(manifest["path"], manifest["label"], strict=True))


def test_odd_class_names_survive_train_evaluate_and_select_best(prepared: Path) -> None:
    """Once `NA` crashed train (KeyError: nan) and `007` came out of best/confusion.csv as 7.0."""
    project = prepared  # its starting weights are made; the head is new for these classes
    classes = ["007", "1e3", "NA", "null"]
    tiny_images(project / "odd", classes, 4)
    set_checked_params(project, **{"prepare.data_dir": "odd", "train.epochs": 1})

    for name in ("prepare", "train", "evaluate", "select_best"):
        stage(name, project)

    assert json.loads((project / "data/prepared/classes.json").read_text()) == classes
    with open(project / "best" / "confusion.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    manifest, _ = read_manifest(project / "data" / "prepared")
    assert sorted(row["actual"] for row in rows) == sorted(manifest.loc[manifest["split"] == "test", "label"])
    assert {row["predicted"] for row in rows} <= set(classes)


@pytest.mark.parametrize("name", ["NA", "007"])
def test_read_manifest_keeps_labels(tmp_path: Path, name: str) -> None:
    rows = pd.DataFrame({"path": [f"d/{name}/a.png"], "label": [name], "split": ["train"], "sha1": ["0" * 40]})
    write_csv(rows, tmp_path / "manifest.csv")
    (tmp_path / "classes.json").write_text(json.dumps([name]))

    manifest, classes = read_manifest(tmp_path)

    assert manifest["label"].tolist() == classes == [name]
    assert manifest["sha1"].tolist() == ["0" * 40]


def test_prepare_leaves_out_names_that_are_not_utf8(project: Path) -> None:
    """A zip made on Windows unpacks `clé` in Latin-1 (byte E9 for é): each file in a folder so
    named, and a file so named, is listed in skipped.csv, its bytes written as escapes (a link's
    target too); the folder, left with no image, is listed as a class left out; the rest is prepared."""
    tiny_images(project / "odd", ["a", "b", "cle"], 4)
    odd = os.fsencode(project / "odd")
    os.rename(odd + b"/cle", odd + b"/cl\xe9")
    os.rename(odd + b"/b/3.png", odd + b"/b/bad\xffname.png")
    os.symlink(b"gone\xff.png", odd + b"/a/dangling.png")
    set_checked_params(project, **{"prepare.data_dir": "odd"})

    stage("prepare", project)
    manifest, classes = read_manifest(project / "data" / "prepared")
    skipped = read_csv(project / "data" / "prepared" / "skipped.csv")

    assert classes == ["a", "b"]
    assert sorted(manifest["path"]) == [f"odd/{c}/{i}.png" for c, n in [("a", 4), ("b", 3)] for i in range(n)]
    rename = "path not valid UTF-8 (a zip made on Windows can write such names): rename the file or its folder in UTF-8"
    no_image = "class folder with no usable image (empty, or each of its files is listed): left out as a class"
    assert skipped.values.tolist() == [
        ["odd/a/dangling.png", "a broken link: its target gone\\xff.png does not exist"],
        ["odd/b/bad\\xffname.png", rename],
        ["odd/cl\\xe9", no_image],
        *[[f"odd/cl\\xe9/{i}.png", rename] for i in range(4)],
    ]
