"""Helpers shared by several test modules (test modules do not import each other); what bench
shares with the tests lives in testing/."""

import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.augment import apply_augmentation, draw_augmentation

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


def augment(
    images: torch.Tensor,
    hflip: bool,
    min_scale: float,
    generator: torch.Generator,
    max_aspect: float = 1.0,
    size: int | None = None,
) -> torch.Tensor:
    """One float batch through the train stage's augmentation, as an epoch applies it: draw,
    then apply, into `size` pixels square (by default, the images' own size)."""
    centre = (size or images.shape[-1]) / images.shape[-1]
    theta = draw_augmentation(images.shape[0], hflip, min_scale, generator, max_aspect, centre)
    return images if theta is None else apply_augmentation(images, theta.to(images.device), size)


# On PYTHONPATH, in each `python -m pipeline.<stage>` process while RECORD_PARAMS is set:
# load_params returns the same params, as subclasses of their dataclasses that note every
# leaf value read (dataclasses.asdict reads them all), written out when the stage exits.
PARAM_RECORDER = """\
import atexit
import dataclasses
import json
import os
import sys

if os.environ.get("RECORD_PARAMS") and sys.orig_argv[1:2] == ["-m"] and sys.orig_argv[2].startswith("pipeline."):
    sys.path.insert(0, os.getcwd())
    import pipeline.config

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

    original = pipeline.config.load_params
    pipeline.config.load_params = lambda *args, **kwargs: wrap(original(*args, **kwargs), "")
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


def located(picture: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """Where `image` (H, W, 3) appears in `picture` pixel for pixel: the (row, column) of its
    top left corner; AssertionError if it is not there."""
    rows, columns = np.nonzero((picture == image[0, 0]).all(axis=-1))
    for row, column in zip(rows, columns, strict=True):
        if (picture[row : row + image.shape[0], column : column + image.shape[1]] == image).all():
            return int(row), int(column)
    raise AssertionError(f"an image of {image.shape[1]} x {image.shape[0]} pixels is not in the picture")
