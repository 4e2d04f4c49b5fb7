"""Helpers shared by several test modules (test modules do not import each other); what bench
shares with the tests lives in testing/."""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image, ImageDraw
from torchvision.transforms import v2

from pipeline.batches import CropBatches
from pipeline.data.cache import training_copies
from pipeline.data.decode import Sizing
from pipeline.gallery import GAP, TEXT, font
from pipeline.runs import RECORD_KEYS, RunFolder

# Put on PYTHONPATH, this runs in every Python process started, dvc's own included; it acts
# only in the train stage's process (with KILL_RANK, in that rank's only), and only when
# KILL_AT is set.
SITECUSTOMIZE = """\
import os
import sys

argv = sys.orig_argv
train = "-m" in argv and argv[argv.index("-m") + 1 :][:1] == ["pipeline.train"]
rank = os.environ.get("KILL_RANK") in (None, os.environ.get("RANK"))
if os.environ.get("KILL_AT") and train and rank:
    sys.path.insert(0, os.getcwd())  # the project root, where dvc runs the stage
    from tests.kill_wrapper import install

    point, call = os.environ["KILL_AT"].split(":")
    install(point, int(call))
"""


def kill_env(folder: Path, point: str, call: int, group: bool = False, rank: int | None = None) -> dict[str, str]:
    """An environment in which `python -m pipeline.train`, however it is started (by
    `dvc repro` too), is patched as tests/kill_wrapper.py's POINT CALL patches it: the
    call-th optimizer step (`step`) SIGKILLs it, for example. With `group`, the kill takes
    its whole process group: start dvc with start_new_session=True and dvc dies with it.
    With `rank`, only that training process of several is patched."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PATH": path, "PYTHONPATH": pythonpath, "KILL_AT": f"{point}:{call}"}
    if group:
        env["KILL_GROUP"] = "1"
    if rank is not None:
        env["KILL_RANK"] = str(rank)
    return env


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def epochs_trained(log: str) -> list[int]:
    """The epochs whose `epoch k/E: loss ...` line the train stage logged, in order."""
    return [int(k) for k in re.findall(r"pipeline\.train: epoch (\d+)/\d+: loss", log)]


def assert_resumed(log: str, after: int, epochs: int) -> None:
    """The train stage resumed after epoch `after` and trained only the epochs after it."""
    assert f"resuming after epoch {after} " in log, log
    assert epochs_trained(log) == list(range(after + 1, epochs + 1)), log


# On PYTHONPATH, in each `python -m pipeline.<stage>` process while RECORD_PARAMS is set:
# load_checked_params (what the stages load params with) returns the same params, as
# subclasses of their dataclasses that note every leaf value read (dataclasses.asdict reads
# them all), written out when the stage exits.
PARAM_RECORDER = """\
import atexit
import dataclasses
import json
import os
import sys

if os.environ.get("RECORD_PARAMS") and sys.orig_argv[1:2] == ["-m"] and sys.orig_argv[2].startswith("pipeline."):
    sys.path.insert(0, os.getcwd())
    import pipeline.checked

    read = set()

    def wrap(obj, prefix):
        if not dataclasses.is_dataclass(obj):
            return obj
        names = {f.name for f in dataclasses.fields(obj)}

        class Recording(type(obj)):
            def __getattribute__(self, name):
                value = object.__getattribute__(self, name)
                if name in names and not dataclasses.is_dataclass(value):
                    read.add(prefix + name)
                return value

        recording = object.__new__(Recording)
        for name in names:
            object.__setattr__(recording, name, wrap(getattr(obj, name), f"{prefix}{name}."))
        return recording

    original = pipeline.checked.load_checked_params
    pipeline.checked.load_checked_params = lambda *args, **kwargs: wrap(original(*args, **kwargs), "")
    out = os.path.join(os.environ["RECORD_PARAMS"], sys.orig_argv[2] + ".json")
    atexit.register(lambda: open(out, "w").write(json.dumps(sorted(read))))
"""


def param_recorder_env(folder: Path) -> dict[str, str]:
    """The environment under which each stage process records the params it reads into
    `folder`/pipeline.<stage>.json (PARAM_RECORDER)."""
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "sitecustomize.py").write_text(PARAM_RECORDER)
    (folder / "read").mkdir()
    return {"PYTHONPATH": str(folder / "site"), "RECORD_PARAMS": str(folder / "read")}


CPU = torch.device("cpu")


def crop_batches_of(folder: Path, shapes: list[tuple[int, int]], crop: int, device: torch.device = CPU) -> CropBatches:
    """Random-pixel PNGs of `shapes` (width, height) in `folder`, as training batches of random
    resized crops (batches.CropBatches) for a `crop` px model on `device`, three classes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(shapes):
        paths.append(folder / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    manifest = pd.DataFrame({"path": [p.as_posix() for p in paths], "sha1": [file_sha1(p) for p in paths]})
    copies = training_copies(manifest, Sizing(crop, crop), folder / "cache")
    rows, targets = torch.arange(len(paths)), torch.arange(len(paths)) % 3
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    return CropBatches(copies, rows, targets, device, mean, std, crop, "bilinear")


def located(picture: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """Where `image` (H, W, 3) appears in `picture` pixel for pixel: the (row, column) of its
    top left corner; AssertionError if it is not there."""
    rows, columns = np.nonzero((picture == image[0, 0]).all(axis=-1))
    for row, column in zip(rows, columns, strict=True):
        window = picture[row : row + image.shape[0], column : column + image.shape[1]]
        if window.shape == image.shape and (window == image).all():
            return int(row), int(column)
    raise AssertionError(f"an image of {image.shape[1]} x {image.shape[0]} pixels is not in the picture")


def torchvision_logits(
    checkpoint: dict, paths: list[str], project: Path, weights: str = "model_state_dict", flip: bool = False
) -> torch.Tensor:
    """What evaluate should compute for `paths`, outside the project's code: the checkpoint's
    `weights` in torchvision's own model, the images decoded by Pillow and preprocessed by
    torchvision's transforms as the checkpoint records them; with `flip`, the mean of each
    image's logits and its mirror image's (evaluate.tta: hflip)."""
    preprocess = v2.Compose([v2.PILToTensor(), torchvision_preprocessing(checkpoint)])
    images = torch.stack([preprocess(Image.open(project / path).convert("RGB")) for path in paths])
    return torchvision_model_logits(checkpoint, images, weights, flip)


def torchvision_preprocessing(checkpoint: dict) -> v2.Compose:
    """torchvision's transforms of a (3, H, W) uint8 image into the model's input, as the
    checkpoint records them (resize, filter, crop, mean and std)."""
    return v2.Compose([
        v2.Resize(checkpoint["resize_size"], interpolation=v2.InterpolationMode(checkpoint["interpolation"]),
                  antialias=True),
        v2.CenterCrop(checkpoint["image_size"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(checkpoint["mean"], checkpoint["std"]),
    ])  # fmt: skip


def load_export(path: Path) -> tuple[torch.nn.Module, dict]:
    """A `.pt2` file's program as a module, and its metadata, as docs/export.md says to read them."""
    extra = {"metadata.json": ""}
    module = torch.export.load(path, extra_files=extra).module()
    return module, json.loads(extra["metadata.json"])


def torchvision_model_logits(
    checkpoint: dict, inputs: torch.Tensor, weights: str = "model_state_dict", flip: bool = False
) -> torch.Tensor:
    """The checkpoint's `weights` in torchvision's own model, in eval mode, on `inputs`; with
    `flip`, the mean of the logits of the inputs and their mirror images."""
    model = torchvision.models.get_model(checkpoint["arch"], num_classes=len(checkpoint["classes"]))
    model.load_state_dict(checkpoint[weights])
    with torch.no_grad():
        logits = model.eval()(inputs)
        return (logits + model(inputs.flip(-1))) / 2 if flip else logits


def assert_title_line(picture: np.ndarray, index: int, text: str) -> None:
    """best/mistakes.png's title line `index` begins with `text`, drawn as the gallery draws text."""
    face, line = font(), TEXT + 4
    strip = Image.new("RGB", (picture.shape[1] - GAP, line), (255, 255, 255))
    ImageDraw.Draw(strip).text((0, 0), text, fill=(0, 0, 0), font=face)
    drawn, top = int(face.getlength(text)), GAP + index * line
    assert (picture[top : top + line, GAP : GAP + drawn] == np.asarray(strip)[:, :drawn]).all(), text


def restore_targets() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A model, optimizer and schedule for RunFolder.restore to load a run's epoch into."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)


def commit_numbered_epochs(folder: RunFolder, epochs: int) -> None:
    """Epochs 1 to `epochs` committed to `folder` (of lineage "lineage"), each epoch's weights
    filled with its number, to tell which one a restore takes."""
    model, optimizer, scheduler = restore_targets()
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        record = dict.fromkeys(RECORD_KEYS, 0.0) | {"epoch": epoch}
        folder.commit_epoch({**record, "lineage": "lineage", "model_state_dict": model.state_dict(),
                             "optimizer_state_dict": optimizer.state_dict(),
                             "scheduler_state_dict": scheduler.state_dict()})  # fmt: skip


def processes_in(folder: Path) -> list[str]:
    """The command lines of the processes working in `folder` (their current directory)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:  # gone, or a zombie
            continue
        if int(pid) != os.getpid() and (cwd == str(folder) or cwd.startswith(f"{folder}/")):
            found.append(command)
    return found
