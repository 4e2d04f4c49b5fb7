"""select-best's models/best.pt2 and best_image.pt2: torch.export programs that plain torch
loads and runs, with the checkpoint's outputs for any batch size, or from a decoded image
tools.predict's probabilities, and that never cost the stage its results."""

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter, ImageOps

from pipeline import export, select_best
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.metrics import REPORTED
from pipeline.models import build_model, model_from_checkpoint
from testing.project import run, run_script, stage
from tests.helpers import load_export, torchvision_model_logits, torchvision_preprocessing

CLASSES = ["a", "b", "c"]


@pytest.fixture
def project(project: Path) -> Path:
    """A fresh project (conftest.py) whose params check_params has checked: select-best runs on no others."""
    stage("check_params", project)
    return project


def tiny_checkpoint(arch: str, size: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    built = build_model(arch, None, CLASSES, size)
    return {**built.spec.to_dict(), "model_state_dict": built.model.state_dict()}


def assert_same_outputs(path: Path, checkpoint: dict) -> None:
    """The file's program and the checkpoint's model agree on batches unlike the example (2)."""
    exported = torch.export.load(path).module()
    model = model_from_checkpoint(checkpoint).eval()
    size = checkpoint["image_size"]
    for batch in (1, 5):
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            torch.testing.assert_close(exported(images), model(images), rtol=1e-6, atol=1e-6)


# resnet18 is the default; SqueezeNet's head is a 1x1 convolution followed by pooling.
# The other 78 torchvision models were checked once by hand, at 224 px (README).
@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_1"])
def test_exported_program_computes_what_the_checkpoint_does(arch: str, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(arch, 32)
    export.write_exports(checkpoint, tmp_path / "best.pt2", tmp_path / "best_image.pt2")
    assert_same_outputs(tmp_path / "best.pt2", checkpoint)


def fake_checkpoint(project: Path, checkpoint: dict) -> None:
    """`checkpoint` as the train stage's only epoch."""
    save_checkpoint(
        {**checkpoint, "epoch": 1, "optimizer_state_dict": {}, "trainable_params": 1, "total_params": 1},
        project / "checkpoints/epoch_001.pt",
    )


def fake_evaluation(project: Path, checkpoint: dict, tta: str = "none") -> None:
    """What select-best reads from the train and evaluate stages, for one epoch scored with
    evaluate.tta `tta`."""
    fake_checkpoint(project, checkpoint)
    (project / "eval/predictions").mkdir(parents=True)
    scores = {name: [0.5] for name in REPORTED}
    row = {"epoch": [1], "weights": ["raw"], "tta": [tta], **scores}
    pd.DataFrame(row).to_csv(project / "eval/scores.csv", index=False)
    image = project / "images" / "a" / "0.png"  # one test image, of class a, taken for b
    image.parent.mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 30, 30)).save(image)
    predictions = {"path": ["images/a/0.png"], "actual": ["a"], "predicted": ["b"], "confidence": [0.7]}
    pd.DataFrame(predictions).to_csv(project / "eval/predictions/epoch_001.csv", index=False)


def tracked_by_dvc(project: Path, path: Path, data: bytes) -> Path:
    """`path` holding `data` as `dvc repro` leaves a stage's output with the project's
    cache.type hardlink: one file with its cache object, named by the md5 of its bytes and
    made read-only. The object, which a write into `path` in place would change too."""
    digest = hashlib.md5(data).hexdigest()
    cached = project / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    cached.chmod(0o444)
    path.unlink(missing_ok=True)
    path.hardlink_to(cached)
    return cached


def assert_dvc_object_whole(cached: Path) -> None:
    """DVC's cache object still holds the bytes its name is the md5 of (what DVC, which does
    not re-hash its cache, would check out again for that version)."""
    assert hashlib.md5(cached.read_bytes()).hexdigest() == cached.parent.name + cached.name, cached


LOAD_WITH_PLAIN_TORCH = """
import json, sys
import torch
from PIL import Image
extra = {"metadata.json": ""}
model = torch.export.load(sys.argv[1], extra_files=extra).module()
images = torch.load("images.pt", weights_only=True)
with torch.no_grad():
    torch.save(model(images), "logits.pt")
    image_extra = {"metadata.json": ""}
    image_model = torch.export.load(sys.argv[2], extra_files=image_extra).module()
    torch.save(image_model(torch.load("picture.pt", weights_only=True)), "probabilities.pt")
print(json.loads(extra["metadata.json"])["classes"])
print(json.loads(image_extra["metadata.json"])["tta"])
assert not any(name == "pipeline" or name.startswith("pipeline.") for name in sys.modules)
"""


def test_select_best_writes_a_file_that_plain_torch_runs_and_a_rerun_reuses_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tiny_checkpoint("resnet18", 16)
    # Scored with evaluate.tta hflip: the image program must average with the mirror image too.
    fake_evaluation(project, checkpoint, tta="hflip")
    stage("select_best", project)
    assert load_checkpoint(project / "models/best.pt")["classes"] == CLASSES
    programs = [project / "models/best.pt2", project / "models/best_image.pt2"]
    exported = [path.read_bytes() for path in programs]

    # A rerun with the same best checkpoint (dvc repro -f, another select.metric) takes both
    # programs from the export cache: with torch.export broken, it still writes them.
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exported again")

    # In their place, other programs (another experiment's, checked out with `dvc exp apply`),
    # linked into DVC's cache: the copies must replace the links, not write through them, or
    # that experiment's cached programs become this one's. Not this run's bytes, which a write
    # through the link would leave as they were.
    earlier = [tracked_by_dvc(project, path, f"another experiment's {path.name}\n".encode()) for path in programs]
    monkeypatch.chdir(project)
    monkeypatch.setattr(torch.export, "export", fail)
    with caplog.at_level(logging.INFO):
        select_best.main()
    assert caplog.text.count("the same checkpoint as an earlier run: copied its export") == 2
    # The copies are the first run's files, and what plain torch makes of them is checked
    # below against the model run directly and against torchvision's preprocessing.
    assert [path.read_bytes() for path in programs] == exported
    for cached in earlier:
        assert_dvc_object_whole(cached)

    # Load it where no pipeline package can be imported: not in cwd, not on PYTHONPATH.
    images = torch.randn(4, 3, 16, 16)
    torch.save(images, tmp_path / "images.pt")
    picture = torch.randint(0, 256, (30, 21, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.save(picture, tmp_path / "picture.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    script = [sys.executable, "-c", LOAD_WITH_PLAIN_TORCH, *map(str, programs)]
    result = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [str(CLASSES), "hflip"]
    # Against torchvision's own model holding the checkpoint's weights, not the project's rebuild.
    expected = torchvision_model_logits(checkpoint, images)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt", weights_only=True), expected, rtol=1e-6, atol=1e-6)
    # The image program, with random weights' preprocessing (resize to 16, no margin): the
    # picture resized by torchvision to 16 px (its shorter side), its centre, normalised; the
    # mean of the logits of it and its mirror image, as evaluate scored the chosen row
    # (docs/export.md), not of the picture alone.
    inputs = TF.center_crop(TF.resize(picture.permute(2, 0, 1), [16]), [16])
    inputs = TF.normalize(inputs[None].float() / 255, checkpoint["mean"], checkpoint["std"])
    expected, plain = (torchvision_model_logits(checkpoint, inputs, flip=f).softmax(dim=1)[0] for f in (True, False))
    assert (expected - plain).abs().max() > 1e-3  # the mirror image shows
    torch.testing.assert_close(torch.load(tmp_path / "probabilities.pt", weights_only=True), expected)


def test_a_damaged_cached_export_another_checkpoint_or_torch_is_exported_again(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export, calls = torch.export.export, []

    def counted(*args: object, **kwargs: object) -> torch.export.ExportedProgram:
        calls.append(1)
        return real_export(*args, **kwargs)

    # A filter the image program cannot carry: it is refused before any export, so each run
    # below exports best.pt2 alone (half the time) and `calls` counts that program's exports.
    checkpoint = {**tiny_checkpoint("resnet18", 16), "interpolation": "lanczos"}
    fake_evaluation(project, checkpoint)
    monkeypatch.chdir(project)
    monkeypatch.setattr(torch.export, "export", counted)
    select_best.main()
    select_best.main()  # the same checkpoint: copied
    assert len(calls) == 1
    (cached,) = (project / ".cache/exports").iterdir()

    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    select_best.main()
    assert len(calls) == 2
    assert_same_outputs(project / "models/best.pt2", checkpoint)
    # The damaged copy is replaced by the new export (the same name: export is deterministic).
    assert cached.read_bytes() == (project / "models/best.pt2").read_bytes()
    select_best.main()
    assert len(calls) == 2

    with monkeypatch.context() as patched:
        patched.setattr(torch, "__version__", "9.9.9")
        select_best.main()
    assert len(calls) == 3

    other = {**tiny_checkpoint("resnet18", 16, seed=1), "interpolation": "lanczos"}  # other weights, same arch
    fake_checkpoint(project, other)
    select_best.main()
    assert len(calls) == 4
    assert_same_outputs(project / "models/best.pt2", other)


def test_a_failed_export_keeps_the_results_and_says_why(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this model cannot be captured")

    fake_evaluation(project, tiny_checkpoint("resnet18", 16))
    # An earlier run's program, as `dvc repro` left it linked into DVC's cache: the line that
    # replaces it must not be written through the link into that cache object.
    earlier = tracked_by_dvc(project, project / "models/best.pt2", b"an earlier run's program\n")
    monkeypatch.chdir(project)
    monkeypatch.setattr(torch.export, "export", fail)
    with caplog.at_level(logging.INFO):
        select_best.main()
    assert_dvc_object_whole(earlier)
    assert "could not export resnet18 with torch.export (RuntimeError: this model cannot be captured)" in caplog.text
    assert "exported resnet18 for" not in caplog.text  # the stub is no export: not logged as one
    assert load_checkpoint(project / "models/best.pt")["classes"] == CLASSES
    assert json.loads((project / "best/metrics.json").read_text())["epoch"] == 1
    marker = (project / "models/best.pt2").read_text()
    assert marker.startswith("not a model: exporting resnet18 with torch.export failed: RuntimeError")


@pytest.mark.parametrize(("step", "code"), [("save", "ENOSPC"), ("export", "EDQUOT")])
def test_a_full_disk_while_writing_the_export_fails_the_stage(project: Path, step: str, code: str) -> None:
    """docs/design.md: a full disk while writing any file is one line and exit code 1, through
    the stage's own entry point, whether it strikes while the program is written or while
    torch.export builds it, and whether the disk is full or the user's quota (EDQUOT). Only a
    model that torch.export cannot capture gets the text stub; an I/O error is no such thing,
    so no best.pt2 is left behind."""
    fake_evaluation(project, tiny_checkpoint("resnet18", 16))
    full_disk = (
        "import errno, runpy, torch\n"
        "def disk_full(*args, **kwargs):\n"
        f"    raise OSError(errno.{code}, 'No space left on device')\n"
        f"torch.export.{step} = disk_full\n"
        "runpy.run_module('pipeline.select_best', run_name='__main__')\n"
    )
    result = run_script(full_disk, [], project, check=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "no space left on the disk" in errors[0], result.stderr
    # ...and says which error it was (an error without a file name: the error itself)
    assert f"([Errno {getattr(errno, code)}] No space left on device)" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert not (project / "models/best.pt2").exists()


def test_select_best_names_every_damaged_checkpoint_not_only_the_chosen_one(project: Path) -> None:
    checkpoint = tiny_checkpoint("resnet18", 16)
    fake_evaluation(project, checkpoint)
    for epoch in (2, 3):
        path = project / f"checkpoints/epoch_00{epoch}.pt"
        save_checkpoint({**checkpoint, "epoch": epoch, "trainable_params": 1, "total_params": 1}, path)
        path.write_bytes(path.read_bytes()[:1000])
    result = stage("select_best", project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "2 of 3 checkpoints cannot be used" in result.stderr
    assert "epoch_002.pt" in result.stderr and "epoch_003.pt" in result.stderr


# --- models/best_image.pt2: the preprocessing inside -------------------------------------------


def image_checkpoint(interpolation: str, tta: str) -> dict:
    """A tiny resnet18 checkpoint whose inputs are resized to 20 px with `interpolation`, then
    cropped to 16, as best.pt says to tools.predict (with its evaluate.tta)."""
    return {**tiny_checkpoint("resnet18", 16), "resize_size": 20, "interpolation": interpolation, "tta": tta}


def pictures(folder: Path) -> list[Path]:
    """Landscape, portrait, square, one smaller than the input, the smallest height and the
    smallest width the program takes (docs/export.md: from 2 x 2), each with the other side
    above it, so that either side's limit shows, and a JPEG stored turned a quarter (EXIF
    orientation 6); each small enough for tools.predict to decode it whole."""
    rng = np.random.default_rng(1)
    paths = []
    for name, (width, height) in [("wide.png", (41, 30)), ("tall.png", (30, 57)), ("square.png", (20, 20)),
                                  ("small.png", (9, 7)), ("least.png", (3, 2)), ("narrowest.png", (2, 3)),
                                  ("turned.jpg", (64, 48))]:  # fmt: skip
        paths.append(folder / name)
        exif = Image.Exif()
        exif[0x0112] = 6
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(ImageFilter.SMOOTH)
        image.save(paths[-1], **({"quality": 90, "exif": exif} if name.endswith(".jpg") else {}))
    return paths


@pytest.mark.parametrize(("interpolation", "tta"), [("bilinear", "none"), ("bicubic", "hflip")])
def test_the_image_export_gives_tools_predicts_probabilities(project: Path, interpolation: str, tta: str) -> None:
    checkpoint = image_checkpoint(interpolation, tta)
    save_checkpoint(checkpoint, project / "models/tiny.pt")
    export.write_exports(checkpoint, project / "models/tiny.pt2", project / "models/tiny_image.pt2")
    paths = pictures(project)
    command = ["-m", "tools.predict", *(path.name for path in paths), "--model", "models/tiny.pt", "--format", "json"]
    result = run([sys.executable, *command], project)
    program, metadata = load_export(project / "models/tiny_image.pt2")
    # What a user of the file reads (docs/export.md's keys), by hand from the checkpoint; tta
    # says whether it averages with the mirror image.
    assert metadata == {
        "arch": "resnet18", "classes": CLASSES, "image_size": 16, "resize_size": 20, "interpolation": interpolation,
        "mean": checkpoint["mean"], "std": checkpoint["std"], "tta": tta,
    }  # fmt: skip
    for path, predicted in zip(paths, json.loads(result.stdout), strict=True):
        # The decoded picture, upright, as a user with Pillow has it: (H, W, 3) uint8.
        pixels = torch.from_numpy(np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).copy())
        with torch.no_grad():
            probabilities = program(pixels)
        assert probabilities.shape == (len(CLASSES),)
        # What torchvision's transforms and model make of the picture, averaged with its
        # mirror image under tta hflip, independent of the project's code.
        inputs = torchvision_preprocessing(checkpoint)(pixels.permute(2, 0, 1))[None]
        reference = torchvision_model_logits(checkpoint, inputs, flip=tta == "hflip").softmax(dim=1)[0]
        torch.testing.assert_close(probabilities, reference, rtol=0, atol=1e-5, msg=path.name)
        values, indices = probabilities.topk(3)
        assert [entry["class"] for entry in predicted["top"]] == [CLASSES[i] for i in indices.tolist()], path.name
        assert [entry["probability"] for entry in predicted["top"]] == pytest.approx(values.tolist(), abs=1e-4)
    if tta == "none":  # best.pt2 holds neither the filter nor the flips: one of the two runs is enough
        # best.pt2 of the same checkpoint takes what docs/export.md makes of a picture: the
        # centre crop, image_size (16) square, not the resize size (20) it is cut from, and gives
        # torchvision's model's logits. The other tests' checkpoints have no margin to tell them.
        tensors, tensor_metadata = load_export(project / "models/tiny.pt2")
        assert tensor_metadata["image_size"] == 16
        inputs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = tensors(inputs)
        torch.testing.assert_close(logits, torchvision_model_logits(checkpoint, inputs), rtol=1e-6, atol=1e-6)
    # The control: the model on the picture resized straight to 16 px (no 20 px resize and
    # crop, as for random weights) gives other probabilities: the comparison can tell.
    pixels = TF.resize(TF.pil_to_tensor(Image.open(paths[0]).convert("RGB"))[None], [16, 16])
    inputs = TF.normalize(pixels.float() / 255, checkpoint["mean"], checkpoint["std"])
    with torch.no_grad():
        unlike = model_from_checkpoint(checkpoint).eval()(inputs).softmax(dim=1)[0]
    first = json.loads(result.stdout)[0]["top"][0]
    assert abs(unlike[CLASSES.index(first["class"])] - first["probability"]) > 1e-3


def test_a_filter_the_program_cannot_carry_leaves_a_line_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        export.write_exports(image_checkpoint("lanczos", "none"), tmp_path / "best.pt2", tmp_path / "best_image.pt2")
    marker = (tmp_path / "best_image.pt2").read_text()
    assert marker.startswith("not a model: exporting resnet18 with its preprocessing failed: ValueError")
    assert "bilinear, bicubic, not lanczos" in marker and "could not export resnet18" in caplog.text


def test_the_export_cache_keeps_the_newest_six_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/design.md: the cache keeps the programs of the last three checkpoints (six files),
    newest by modification time; older ones are removed as new ones come in."""
    monkeypatch.setattr(export, "EXPORTS_DIR", tmp_path / "exports")
    for i in range(8):
        program = tmp_path / f"program{i}.pt2"
        program.write_bytes(f"program {i}".encode())
        export.cache_export(f"key{i}", program)
        for age, cached in enumerate(sorted((tmp_path / "exports").iterdir())):  # key0 oldest, and so on
            os.utime(cached, (1_000_000 + age, 1_000_000 + age))
    kept = sorted(path.name.split(".")[0] for path in (tmp_path / "exports").iterdir())
    assert kept == [f"key{i}" for i in range(2, 8)]
    # A program taken from the cache (a rerun on the same checkpoint) is the newest again: the
    # next new one prunes key3, the oldest left, not the one just used.
    assert export.copy_cached_export("key2", tmp_path / "reused.pt2")
    assert (tmp_path / "reused.pt2").read_bytes() == b"program 2"
    (tmp_path / "program8.pt2").write_bytes(b"program 8")
    export.cache_export("key8", tmp_path / "program8.pt2")
    kept = sorted(path.name.split(".")[0] for path in (tmp_path / "exports").iterdir())
    assert kept == ["key2", *(f"key{i}" for i in range(4, 9))]
