"""Every way a user can run a stage or tool out of order, or on results it cannot use, ends
in one line that says what to do, and exit code 2: through the command the user runs
(`python -m pipeline.<stage>`, as `dvc repro` does, or `python -m tools.<tool>`), with no
traceback and nothing written that the next stage would take for a result.

Each case starts from a project one step short of what the command needs, as a user who
skipped a step would have it, and the expected line (its start, where the rest quotes a
library's own message) is written out here."""

import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from testing.project import run, set_params, stage


def chosen_epoch(project: Path) -> int:
    """The epoch evaluate's table prefers on val_loss (the default select), by hand."""
    scores = pd.read_csv(project / "eval/scores.csv")
    return int(scores.loc[scores["val_loss"].idxmin(), "epoch"])


def remove_chosen_checkpoint(project: Path) -> str:
    epoch = chosen_epoch(project)
    (project / f"checkpoints/epoch_{epoch:03d}.pt").unlink()
    assert list((project / "checkpoints").glob("epoch_*.pt")), "another checkpoint must remain"
    return f"checkpoints/epoch_{epoch:03d}.pt not found, but eval/scores.csv chose it: run the evaluate stage again"


def every_val_loss_nan(project: Path) -> str:
    scores = pd.read_csv(project / "eval/scores.csv")
    scores["val_loss"] = [math.inf if row % 2 else math.nan for row in range(len(scores))]
    scores.to_csv(project / "eval/scores.csv", index=False)
    return "every checkpoint has val_loss = NaN or infinite; there is no best one to keep"


def remove_start_weights(project: Path) -> str:
    (project / "models/start.pt").unlink()
    return "models/start.pt not found: run the weights stage first (dvc repro weights)"


def damaged_start_weights(project: Path) -> str:
    """models/start.pt changed after the weights stage saved it (a bit flipped on disk), still
    a file torch loads: its checksum says so before training starts from it."""
    path = project / "models/start.pt"
    loaded = torch.load(path, weights_only=True)
    next(t for t in loaded["model_state_dict"].values() if t.is_floating_point()).add_(1)
    torch.save(loaded, path)
    return "models/start.pt is damaged: its contents do not match the checksum stored in it"


def checked_only(project: Path) -> str:
    stage("check_params", project)
    return "data/prepared/manifest.csv not found: run the prepare stage first (dvc repro prepare)"


def an_empty_folder(project: Path) -> str:
    (project / "empty").mkdir()
    return "no image files in empty"


def no_dvc(project: Path) -> str:
    shutil.rmtree(project / ".dvc")
    return f"{project} is not a DVC project: run this from the project's root"


def damaged_record(project: Path) -> str:
    record = project / "checks/params.json"
    record.write_text(record.read_text()[:-20])
    return (
        "params.yaml is not what check_params checked: checks/params.json cannot be read (JSONDecodeError); "
        "run `dvc repro` or `dvc exp run`, which check it first (by hand: `python -m pipeline.check_params`)"
    )


def record_without_a_key(project: Path) -> str:
    """A record from before train.drop_path existed: the new param was never checked."""
    record = project / "checks/params.json"
    values = json.loads(record.read_text())
    del values["train.drop_path"]
    record.write_text(json.dumps(values))
    return "params.yaml is not what check_params checked: train.drop_path; run `dvc repro`"


def changed_since_checked(project: Path) -> str:
    """params.yaml edited after check_params checked it, and prepare run by hand."""
    set_params(project, **{"prepare.seed": 3})
    return "params.yaml is not what check_params checked: prepare.seed = 3 (checked: 0); run `dvc repro`"


def latin_1_params(project: Path) -> str:
    """params.yaml saved by an editor in Latin-1, with an accent in a comment."""
    path = project / "params.yaml"
    text = path.read_text()
    path.write_bytes(("# réglages\n" + text).encode("latin-1"))
    return "params.yaml is not UTF-8 text: invalid continuation byte at byte 3"


def params_of_one_value(project: Path) -> str:
    """params.yaml overwritten with a single value (an editor's slip, a redirect gone wrong):
    YAML reads it as a number, not a mapping of params."""
    (project / "params.yaml").write_text("5\n")
    return "params.yaml does not hold a mapping of params, only the value '5'"


def class_folders_in_latin_1(project: Path) -> str:
    """A data folder unpacked from a zip made on Windows: class names `clé` and `thé` in Latin-1."""
    for name in (b"cl\xe9", b"th\xe9"):
        folder = os.fsencode(project / "latin") + b"/" + name
        os.makedirs(folder)
        open(folder + b"/0.png", "wb").close()  # never read: the folders are counted from a listing
    set_params(project, **{"prepare.data_dir": "latin"})
    return (
        "prepare.data_dir = 'latin': latin holds 0 class folder(s) with image files; a classifier needs at least 2 "
        "sub-folders, one per class; 2 image file(s) below it are left out, each with a path not valid UTF-8 "
        "(a zip made on Windows can write such names): rename the file or its folder in UTF-8"
    )


def a_null_key(project: Path) -> str:
    """A key YAML reads as null (`null:`, `~:`), a slip omegaconf takes no key for."""
    path = project / "params.yaml"
    text = path.read_text()
    path.write_text(text + "null: 3\n")
    line = len(text.splitlines()) + 1
    return f"params.yaml: unknown key 'null' (line {line}): YAML reads it as null, which names no param"


def a_tagged_date(project: Path) -> str:
    """A value tagged !!timestamp (or !!set): YAML reads it, omegaconf takes no such type."""
    path = project / "params.yaml"
    path.write_text(re.sub(r"(?m)^wait_minutes: .*$", "wait_minutes: !!timestamp 2024-01-01", path.read_text()))
    return "params.yaml: wait_minutes: Value 'date' is not a supported primitive type; no param takes one"


def a_folder_named_as_a_number(project: Path) -> str:
    """A data folder `007`, unquoted: DVC reads a number there, and would fail on dvc.yaml's
    `${prepare.data_dir}` at every command with a line that names no param."""
    shutil.copytree(project / "data/digits/target", project / "007")
    path = project / "params.yaml"
    path.write_text(re.sub(r"(?m)^  data_dir: .*target.*$", "  data_dir: 007", path.read_text()))
    return "params.yaml: prepare.data_dir = 007 is read as 7 by DVC (YAML 1.2), not as a folder name for dvc.yaml's "


def damaged_after_prepare(project: Path) -> re.Pattern:
    """An image damaged after prepare decoded it, and the decoded cache gone (another machine,
    a cleaned cache): train must decode it again and cannot."""
    shutil.rmtree(project / ".cache/images")
    path = pd.read_csv(project / "data/prepared/manifest.csv")["path"].iloc[0]
    (project / path).write_bytes(b"\x89PNG\r\n\x1a\n not any more")
    return re.compile(f"{re.escape(path)} .+; it decoded when prepare ran: rerun prepare")


def unchanged(message: str) -> Callable[[Path], str]:
    return lambda project: message


def written(name: str, content: bytes, message: str) -> Callable[[Path], str]:
    """The project's file `name` holding `content` (a merge's conflict markers, damage)."""

    def write(project: Path) -> str:
        (project / name).write_bytes(content)
        return message

    return write


RESTORE = "restore it (git checkout, or finish the merge) and run this again"
NOT_DVC_LAYOUT = f"is not laid out as DVC writes it (outs, each with a path); {RESTORE}"
MERGED_LOCK = b'schema: "2.0"\nstages:\n<<<<<<< HEAD\n  prepare:\n=======\n  weights:\n>>>>>>> other\n'


# (what the user did, the project they did it in, what breaks it, their command)
CASES = [
    (
        "evaluate before train",
        "prepared",
        unchanged("no checkpoints in checkpoints/: run the train stage first"),
        ["-m", "pipeline.evaluate"],
    ),
    ("evaluate before prepare", "project", checked_only, ["-m", "pipeline.evaluate"]),
    ("train without start weights", "prepared", remove_start_weights, ["-m", "pipeline.train"]),
    ("train on damaged start weights", "prepared", damaged_start_weights, ["-m", "pipeline.train"]),
    (
        "select-best before evaluate",
        "prepared",
        unchanged("eval/scores.csv not found: run the evaluate stage first (dvc repro evaluate)"),
        ["-m", "pipeline.select_best"],
    ),
    ("select-best after its checkpoint went", "reproduced", remove_chosen_checkpoint, ["-m", "pipeline.select_best"]),
    ("select-best with no usable score", "reproduced", every_val_loss_nan, ["-m", "pipeline.select_best"]),
    ("predict on an empty folder", "reproduced", an_empty_folder, ["-m", "tools.predict", "empty"]),
    ("verify outside a DVC project", "project", no_dvc, ["-m", "tools.verify"]),
    ("evaluate after the checked params record was damaged", "reproduced", damaged_record, ["-m", "pipeline.evaluate"]),
    ("train on params the record lacks", "prepared", record_without_a_key, ["-m", "pipeline.train"]),
    ("prepare on params edited since checked", "prepared", changed_since_checked, ["-m", "pipeline.prepare"]),
    ("check params saved in Latin-1", "project", latin_1_params, ["-m", "pipeline.check_params"]),
    ("check params of one value", "project", params_of_one_value, ["-m", "pipeline.check_params"]),
    (
        "check params on class folders named in Latin-1",
        "project",
        class_folders_in_latin_1,
        ["-m", "pipeline.check_params"],
    ),
    ("check params with a null key", "project", a_null_key, ["-m", "pipeline.check_params"]),
    ("check params with a value tagged !!timestamp", "project", a_tagged_date, ["-m", "pipeline.check_params"]),
    (
        "check params of a folder YAML reads as 7",
        "project",
        a_folder_named_as_a_number,
        ["-m", "pipeline.check_params"],
    ),
    ("train on an image damaged since prepare", "prepared", damaged_after_prepare, ["-m", "pipeline.train"]),
    (
        "predict with the weights stage's backbone",
        "prepared",
        unchanged(
            "models/start.pt holds a backbone without a head (the weights stage's starting weights), not a trained "
            "classifier: give a checkpoint of train (checkpoints/epoch_NNN.pt) or models/best.pt"
        ),
        ["-m", "tools.predict", "--model", "models/start.pt", "data/digits/target"],
    ),
    (
        "verify a dvc.lock left mid-merge",
        "project",
        written(
            "dvc.lock",
            MERGED_LOCK,
            f"dvc.lock is not valid YAML: could not find expected ':' (line 4, column 10); {RESTORE}",
        ),
        ["-m", "tools.verify"],
    ),
    (
        "verify a dvc.lock of a list",
        "project",
        written("dvc.lock", b"- stages\n", f"dvc.lock {NOT_DVC_LAYOUT}"),
        ["-m", "tools.verify"],
    ),
    (
        "verify a .dvc file of bare names",
        "project",
        written("data.dvc", b"outs: [data]\n", f"data.dvc {NOT_DVC_LAYOUT}"),
        ["-m", "tools.verify"],
    ),
    (
        "verify a .dvc file not in UTF-8",
        "project",
        written(
            "data.dvc",
            b"outs:\n- path: \xff\n",
            f"data.dvc is not UTF-8 text: invalid start byte at byte 14; {RESTORE}",
        ),
        ["-m", "tools.verify"],
    ),
    (
        "verify with a bad line in DVC's config",
        "project",
        written(
            ".dvc/config",
            b"[core]\nthis is bad\n",
            ".dvc/config cannot be read: Invalid line ('this is bad') (matched as neither section nor keyword) at "
            "line 2; fix it and run this again",
        ),
        ["-m", "tools.verify"],
    ),
]


@pytest.mark.parametrize(("situation", "fixture", "breaks", "command"), CASES, ids=[case[0] for case in CASES])
def test_a_step_out_of_order_is_one_line_saying_what_to_do(
    request: pytest.FixtureRequest,
    situation: str,
    fixture: str,
    breaks: Callable[[Path], str | re.Pattern],
    command: list[str],
) -> None:
    made = request.getfixturevalue(fixture)
    project = getattr(made, "path", made)
    message = breaks(project)
    outputs = ("data/prepared/manifest.csv", "eval/scores.csv", "best/metrics.json", "models/best.pt")
    before = {name: (project / name).read_bytes() for name in outputs if (project / name).exists()}

    result = run([sys.executable, *command], project, check=False)

    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    pattern = message if isinstance(message, re.Pattern) else re.compile(f"{re.escape(message)}.*")
    assert len(errors) == 1 and re.fullmatch(f"pipeline: error: {pattern.pattern}", errors[0]), result.stderr
    assert result.returncode == 2 and "Traceback" not in result.stderr
    after = {name: (project / name).read_bytes() for name in outputs if (project / name).exists()}
    assert after == before, "a failed command must leave the results as they were"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--top-k", "0", "0 is not a positive integer"),
        ("--batch-size", "0", "0 is not a positive integer"),
        ("--format", "xml", "invalid choice: 'xml' (choose from 'table', 'csv', 'json')"),
        ("--tta", "vflip", "invalid choice: 'vflip' (choose from 'none', 'hflip')"),
    ],
)
def test_predict_refuses_a_value_outside_an_option_s_range(
    project: Path, option: str, value: str, message: str
) -> None:
    """argparse's usage line and exit 2, before any file is read: zero classes per image
    would print rows with no answer, and batches of zero never end; an unknown --tta would
    predict without flips, and an unknown --format fail after the work was done."""
    result = run([sys.executable, "-m", "tools.predict", "missing.png", option, value], project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"python -m tools.predict: error: argument {option}: {message}"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        # Each at the first value outside its range, so a bound moved by one shows.
        ("--scale", "0", "--scale 0.0 is not in (0, 1]: it only shrinks"),
        ("--scale", "1.01", "--scale 1.01 is not in (0, 1]: it only shrinks"),  # and the upper bound
        ("--colours", "257", "--colours 257 is not in 2-256 (a PNG palette's size), nor 0 for all"),
    ],
)
def test_screenshot_refuses_a_size_outside_its_range(project: Path, option: str, value: str, message: str) -> None:
    """One line and exit 2, before Chromium runs (a Chromium that is not there would say so)."""
    command = ["-m", "tools.screenshot", option, value, "--chromium", str(project / "no-chromium")]
    result = run([sys.executable, *command], project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"pipeline: error: {message}"
    assert not (project / "plots.png").exists()


def test_the_model_listing_of_a_misspelt_model_is_one_line(project: Path) -> None:
    """`python -m pipeline.models ARCH ...` (docs/fine-tuning.md) lists each model's stages;
    a misspelt name ends it as a stage ends, one line naming the close ones and exit 2, after
    the models named before it."""
    result = run([sys.executable, "-m", "pipeline.models", "resnet18", "resnett18"], project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "pipeline: error: model.arch = 'resnett18' is not a torchvision classification model; "
        "did you mean resnet18, resnet152, resnet101? (timm's models: timm/NAME)"
    )
    # resnet18, named first, was listed (what the listing holds: test_models' models-command test).
    assert result.stdout.startswith("resnet18: head fc; ")
