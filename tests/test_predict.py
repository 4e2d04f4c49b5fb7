"""predict: top-k classes of image files and folders, through the real entry point.

Its probabilities must be the ones the checkpoint's model gives on inputs made as the
checkpoint states (its resize size, filter, centre crop, mean and std), with torchvision's
own transforms as the reference; an unreadable image gets an error row, not a crash.
"""

import csv
import io
import json
import os
import re
import shutil
import socket
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.models import build_model
from testing.project import make_project, run, run_script
from tests.helpers import torchvision_logits

# Names of different lengths, so a table that does not pad them shows; four, one more than the
# default --top-k.
CLASSES = ["cat", "dingo", "ox", "emu"]
MODEL = "models/tiny.pt"
# In the order predict must list them: arguments in order, a folder's files sorted.
READABLE = ["shots/a.png", "shots/sub/b.JPG", "c.png"]
BROKEN = "shots/broken.png"
EXPECTED_PATHS = ["shots/a.png", BROKEN, "shots/sub/b.JPG", "c.png"]
# predict runs on `--device auto`. The CPU computes in float32 like the reference below, so
# the probabilities agree to rounding. CUDA runs the model in bf16 autocast: 8 significant
# bits, so each value it hands on is rounded by up to 2**-9 (about 2e-3) of itself, and a
# probability (at most 1) computed from such values moves by about that much. Measured on an
# H200: 6.2e-4 at most from the float32 reference.
PROBABILITY_TOLERANCE = 2e-3 if torch.cuda.is_available() else 1e-6


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with a tiny 4-class checkpoint and a few images, one of them corrupt."""
    root = make_project(tmp_path_factory.mktemp("predict") / "project")
    torch.manual_seed(0)
    built = build_model("resnet18", None, CLASSES, 16)
    # Preprocessing of the kind torchvision weights state: a margin to crop, and a filter.
    preprocessing = {"resize_size": 20, "interpolation": "bicubic"}
    checkpoint = {**built.spec.to_dict(), **preprocessing, "model_state_dict": built.model.state_dict()}
    save_checkpoint(checkpoint, root / MODEL)
    # A checkpoint whose weights do not fit the model it describes: its head's bias lost.
    misfit = {k: v for k, v in checkpoint["model_state_dict"].items() if k != "fc.bias"}
    save_checkpoint({**checkpoint, "model_state_dict": misfit}, root / "models/misfit.pt")
    rng = np.random.default_rng(0)
    for name, size in [("shots/a.png", (20, 24)), ("shots/sub/b.JPG", (40, 30)), ("c.png", (16, 16))]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name, format="JPEG" if name.endswith("JPG") else "PNG")
    (root / BROKEN).write_bytes((root / "c.png").read_bytes()[:40])  # a truncated PNG
    (root / "shots/.hidden.png").write_bytes((root / "c.png").read_bytes())  # hidden: never listed
    (root / "shots/notes.txt").write_text("not an image\n")  # not an image extension: not listed
    (root / "models/empty.pt").write_bytes(b"")  # a checkpoint whose write never began
    with zipfile.ZipFile(root / "models/photos.zip", "w") as archive:  # a zip, as torch.save's files are
        archive.write(root / "c.png", "c.png")
    return root


def predict(project: Path, *args: str, check: bool = True):
    return run([sys.executable, "-m", "tools.predict", *args], project, check=check)


def expected_top(project: Path, k: int) -> dict[str, list[tuple[str, float]]]:
    """What the checkpoint's weights in torchvision's own model give for each readable image,
    preprocessed by torchvision (tests.helpers.torchvision_logits)."""
    checkpoint = load_checkpoint(project / MODEL)
    probabilities = torchvision_logits(checkpoint, READABLE, project).softmax(dim=1)
    expected = {}
    for name, row in zip(READABLE, probabilities, strict=True):
        values, indices = row.topk(k)
        expected[name] = [(CLASSES[i], p) for i, p in zip(indices.tolist(), values.tolist(), strict=True)]
    return expected


# `python -m tools.predict ARGS > OUT`, as the README's example writes predictions.csv: the shell
# opens OUT as the process's stdout. The output is read back as bytes, because the text that
# `run` captures has \r\n already turned into \n.
PREDICT_INTO_FILE = """
import os, runpy, sys
os.dup2(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
sys.argv = ["tools.predict", *sys.argv[2:]]
runpy.run_module("tools.predict", run_name="__main__", alter_sys=True)
"""


def test_csv_matches_the_training_code_and_reports_the_broken_file(project: Path, tmp_path: Path) -> None:
    # --top-k above the number of classes (4) gives every class, and columns for those alone.
    out = tmp_path / "predictions.csv"
    args = [str(out), "shots", "c.png", "--model", MODEL, "--format", "csv", "--top-k", "5"]
    result = run_script(PREDICT_INTO_FILE, args, project)
    data = out.read_bytes()
    # A header and a row per path, each ending in \n alone (not csv's default \r\n).
    assert data.count(b"\n") == 1 + len(EXPECTED_PATHS) and b"\r" not in data, data
    rows = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    assert [row["path"] for row in rows] == EXPECTED_PATHS
    columns = [f"{key}_{k}" for k in (1, 2, 3, 4) for key in ("class", "probability")]
    assert list(rows[0]) == ["path", *columns, "error"]
    expected = expected_top(project, 4)
    for row in rows:
        if row["path"] == BROKEN:
            assert "cannot be decoded" in row["error"]
            assert row["class_1"] == row["probability_1"] == ""
            continue
        assert row["error"] == ""
        for k, (name, probability) in enumerate(expected[row["path"]], start=1):
            assert row[f"class_{k}"] == name
            assert float(row[f"probability_{k}"]) == pytest.approx(probability, abs=PROBABILITY_TOLERANCE)
    assert "1 of 4 path(s) could not be read as an image" in result.stderr


def test_json_lists_top_k_per_image(project: Path) -> None:
    # --top-k 2 of the 4 classes: the two most likely, no more.
    result = predict(project, "shots", "c.png", "--model", MODEL, "--format", "json", "--top-k", "2")
    objects = json.loads(result.stdout)
    assert [obj["path"] for obj in objects] == EXPECTED_PATHS
    expected = expected_top(project, 2)
    for obj in objects:
        if obj["path"] == BROKEN:
            assert obj["top"] == [] and "cannot be decoded" in obj["error"]
            continue
        assert obj["error"] is None
        assert [entry["class"] for entry in obj["top"]] == [name for name, _ in expected[obj["path"]]]
        probabilities = [entry["probability"] for entry in obj["top"]]
        assert probabilities == pytest.approx([p for _, p in expected[obj["path"]]], abs=PROBABILITY_TOLERANCE)


def test_a_batch_with_no_readable_image_leaves_the_next_batches_read(project: Path) -> None:
    """--batch-size 1: the broken file's batch decodes nothing; the images after it still get
    their classes, as torchvision's model gives them."""
    result = predict(project, BROKEN, "c.png", "--model", MODEL, "--format", "csv", "--batch-size", "1")
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    assert list(rows) == [BROKEN, "c.png"] and "cannot be decoded" in rows[BROKEN]["error"]
    assert rows["c.png"]["class_1"] == expected_top(project, 1)["c.png"][0][0] and rows["c.png"]["error"] == ""


def test_table_prints_a_line_per_image(project: Path) -> None:
    lines = predict(project, "shots", "c.png", "--model", MODEL).stdout.splitlines()
    assert lines[0].split() == ["path", "top", "1", "top", "2", "top", "3"]  # the default --top-k, 3 of 4
    assert [line.split()[0] for line in lines[1:]] == EXPECTED_PATHS
    expected = expected_top(project, 3)
    percent_ends = set()
    for line in lines[1:]:
        path, *cells = line.split()
        if path == BROKEN:
            assert cells[0] == "error:"
            continue
        # Each class, then its probability in percent to one decimal ("40.3%"), as torchvision's model gives it.
        assert cells[::2] == [name for name, _ in expected[path]]
        assert all(re.fullmatch(r"\d{1,3}\.\d%", cell) for cell in cells[1::2]), line
        percents = [float(cell.removesuffix("%")) for cell in cells[1::2]]
        assert percents == pytest.approx([100 * probability for _, probability in expected[path]], abs=0.051)
        # Aligned: each class starts where its column's "top k" header does.
        starts, at = [], 0
        for name in cells[::2]:
            at = line.index(f" {name} ", at) + 1
            starts.append(at)
        assert starts == [lines[0].index(f"top {k}") for k in (1, 2, 3)], line
        # Each probability ends at the same place in its column, whatever its class name's length.
        at = 0
        for percent, start in zip(cells[1::2], starts, strict=True):
            at = line.index(percent, at) + len(percent)
            percent_ends.add(at - start)
    assert len(percent_ends) == 1, percent_ends


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["c.png", "--model", "models/nope.pt"], "model file models/nope.pt does not exist"),
        (["nope.png", "--model", MODEL], "nope.png: no such file or folder"),
        ([BROKEN, "--model", MODEL], "none of the 1 path(s) could be read as an image"),
        # docs/design.md: a file given as a checkpoint that is none says what it is.
        (["c.png", "--model", "c.png"], "c.png is not a PyTorch file (a checkpoint or state_dict saved with"),
        (["c.png", "--model", "models/empty.pt"], "models/empty.pt is damaged: it is empty (0 bytes)"),
        (["c.png", "--model", "models/photos.zip"], "models/photos.zip is a zip archive, but not one that torch.save"),
        (
            ["c.png", "--model", "models/misfit.pt"],
            'models/misfit.pt does not fit the resnet18 model it describes: Missing key(s) in state_dict: "fc.bias".',
        ),
    ],
)
def test_user_errors_are_one_line(project: Path, args: list[str], message: str) -> None:
    result = predict(project, *args, check=False)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2
    assert len(errors) == 1 and errors[0].startswith(f"pipeline: error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (b"", "eval/scores.csv cannot be read (EmptyDataError: No columns to parse from file)"),
        (b"not a table of scores\n", "eval/scores.csv has no tta column"),
        (b"epoch,tta\n1,\xff\xfe\n", "eval/scores.csv cannot be read (UnicodeDecodeError: 'utf-8' codec can't"),
        (b"epoch,tta\n1,bogus\n", "eval/scores.csv gives tta = 'bogus', not one of none, hflip"),
    ],
)
def test_damaged_scores_of_evaluate_are_one_line(project: Path, scores: bytes, message: str) -> None:
    """The checkpoint records no tta (as an epoch's does not), so predict reads which
    test-time flips evaluate used from eval/scores.csv: a damaged table is named, not a
    traceback, and a tta it does not know is refused, not taken for none."""
    table = project / "eval/scores.csv"
    table.write_bytes(scores)
    try:
        result = predict(project, "c.png", "--model", MODEL, check=False)
    finally:
        table.unlink()
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"pipeline: error: {message}"), result.stderr
    assert errors[0].endswith(": run the evaluate stage again (dvc repro evaluate), or pass --tta"), errors[0]


def test_every_path_named_or_found_gets_a_row_that_says_what_it_is(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIFOs, sockets, devices, broken links and link loops are never opened (a FIFO would
    block); each one named or found in a folder gets a row saying what it is. Files without an
    image extension in a folder are counted in the log."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(project / "c.png", folder / "good.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe")  # no image extension: still a row, as no file is left out unsaid
    (folder / "gone.png").symlink_to("nowhere.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "notes.txt").write_text("not an image\n")
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(folder)  # a socket's path holds at most 107 bytes, and tmp_path may be deeper
    sock.bind("sock.png")
    os.mkfifo(tmp_path / "named.fifo")
    (tmp_path / "named_link.png").symlink_to("nowhere.png")
    try:
        args = [str(folder), str(tmp_path / "named.fifo"), str(tmp_path / "named_link.png"), "/dev/null"]
        args += ["--model", MODEL, "--format", "csv"]
        result = run([sys.executable, "-m", "tools.predict", *args], project, timeout=120)
    finally:
        sock.close()
    rows = {row["path"]: row["error"] for row in csv.DictReader(io.StringIO(result.stdout))}
    expected = {
        f"{folder}/gone.png": "a broken link: its target nowhere.png does not exist",
        f"{folder}/good.png": "",
        f"{folder}/loop.png": "a link loop",
        f"{folder}/pipe": "not a regular file: a named pipe (FIFO)",
        f"{folder}/pipe.png": "not a regular file: a named pipe (FIFO)",
        f"{folder}/sock.png": "not a regular file: a socket",
        f"{tmp_path}/named.fifo": "not a regular file: a named pipe (FIFO)",
        f"{tmp_path}/named_link.png": "a broken link: its target nowhere.png does not exist",
        "/dev/null": "not a regular file: a character device",
    }
    assert list(rows) == list(expected), result.stdout
    for path, error in expected.items():
        assert rows[path].startswith(error), (path, rows[path])
    assert f"{folder}: 1 file(s) without an image extension left out" in result.stderr
    assert "8 of 9 path(s) could not be read as an image" in result.stderr
    # One image to classify, on the device --device auto picks here.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"{MODEL} (resnet18, 4 classes, 16px) on 1 image(s), on {device}" in result.stderr


def test_each_path_gets_one_row_whatever_its_name_and_one_readable_image_is_enough(
    project: Path, tmp_path: Path
) -> None:
    """A file named twice, or named and also found in a folder named, is one row, where it
    first comes; a file named on the command line is read whatever its extension. Exit 0 as
    long as one image could be read, here beside a FIFO that cannot be."""
    shutil.copy(project / "c.png", tmp_path / "picture")  # a PNG without an extension
    os.mkfifo(tmp_path / "named.fifo")
    picture, fifo = str(tmp_path / "picture"), str(tmp_path / "named.fifo")
    args = ["c.png", "c.png", "shots", "shots/a.png", picture, "--model", MODEL, "--format", "csv", "--top-k", "1"]
    rows = list(csv.DictReader(io.StringIO(predict(project, *args).stdout)))
    assert [row["path"] for row in rows] == ["c.png", *EXPECTED_PATHS[:3], picture]
    expected = expected_top(project, 1)
    assert rows[-1]["error"] == "" and rows[-1]["class_1"] == expected["c.png"][0][0]
    assert float(rows[-1]["probability_1"]) == pytest.approx(expected["c.png"][0][1], abs=PROBABILITY_TOLERANCE)

    # A PNG whose header claims 20000 x 20000 pixels: Pillow refuses it as a decompression bomb
    # (not an OSError), which must be its row's error too, not the end of the run.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    args = ["c.png", fifo, str(tmp_path / "bomb.png"), "--model", MODEL, "--format", "csv"]
    result = predict(project, *args, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "2 of 3 path(s) could not be read as an image" in result.stderr
    rows = {row["path"]: row["error"] for row in csv.DictReader(io.StringIO(result.stdout))}
    assert rows["c.png"] == "" and "DecompressionBombError" in rows[str(tmp_path / "bomb.png")], rows
