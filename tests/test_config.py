"""params.yaml validation: each mistake stops the stage before any work, with one `error:` line and exit code 2.

Each mistake runs the real entry point (`python -m pipeline.train`, `... prepare`, or, for
the model-level checks of arch and weights, `... check_params`) in its own copy of the project;
the runs go side by side, as they are almost all import time. The freeze specs are checked
by check_params (tests/test_check_params.py). `load_params` itself is unit-tested
in-process at the end, including the `dvc exp run -S` overrides.
"""

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from omegaconf import OmegaConf
from torchvision.models import ResNet18_Weights

from pipeline.checked import load_checked_params, record_checked
from pipeline.cli import UserError
from pipeline.config import (
    DVC_INTERPOLATED,
    AugmentParams,
    Mode,
    Optimizer,
    ParamError,
    Params,
    TrainParams,
    load_params,
    validate,
)
from pipeline.paths import PREPARED_DIR
from testing.project import REPO, copy_project, set_checked_params, set_params, stage

# --- helpers --------------------------------------------------------------------------


def rename_key(project: Path, key: str, new_name: str | None) -> None:
    """Rename the dotted `key` in params.yaml (set_params refuses new keys); None deletes it."""
    path = project / "params.yaml"
    params = OmegaConf.load(path)
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(params, parent_key) if parent_key else params
    value = parent.pop(name)
    if new_name is not None:
        parent[new_name] = value
    OmegaConf.save(params, path)


def assert_one_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, and exactly one `error:` line holding every fragment."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    return errors[0]


def assert_train_did_nothing(project: Path) -> None:
    """No checkpoints, no run folder, no decoded-image cache, no curves."""
    assert not (project / "checkpoints").exists()
    assert not (project / ".cache").exists(), sorted(p.name for p in (project / ".cache").rglob("*"))
    assert not (project / "dvclive" / "train").exists()


# --- params.yaml mistakes, through the stages' entry points ------------------------------


@dataclass(frozen=True)
class Case:
    """One mistake: how to make it in a project, and what the single error line must say."""

    id: str
    edit: Callable[[Path], None]
    fragments: tuple[str, ...]
    stage: str = "train"


def params(**overrides: object) -> Callable[[Path], None]:
    return lambda project: set_params(project, **overrides)


def model_params(**overrides: object) -> Callable[[Path], None]:
    # model.weights: null unless the case sets it, so the weights stage does not pretrain.
    return params(**{"model.weights": None, **overrides})


def renamed(key: str, new_name: str | None) -> Callable[[Path], None]:
    return lambda project: rename_key(project, key, new_name)


CASES = [
    # Read by load_params, before anything else.
    Case(
        "unknown-top-level-key",
        renamed("freeze", "frezee"),
        ("params.yaml: unknown key 'frezee'", "allowed here: freeze,", "did you mean 'freeze'?"),
    ),
    Case("wrong-type", params(**{"train.epochs": "abc"}), ("params.yaml: train.epochs", "'abc'", "Integer")),
    Case("missing-key", renamed("train.seed", None), ("params.yaml: train.seed is missing",)),
    Case(
        "no-training-data",
        params(**{"prepare.val_fraction": 0.5, "prepare.test_fraction": 0.5}),
        ("params.yaml: prepare.val_fraction + prepare.test_fraction = 1.0", "less than 1"),
        stage="prepare",
    ),
    # Checked by pipeline/models.py in check_params, before any stage builds a model (the other
    # model checks, in-process: tests/test_check_params.py).
    Case(
        "unknown-arch",
        model_params(**{"model.arch": "resnet19"}),
        ("model.arch = 'resnet19'", "not a torchvision classification model", "did you mean resnet18"),
        stage="check_params",
    ),
    # Legal alone, refused beside the others by check_params, so that `dvc exp run -S ...`
    # stops before prepare (docs/distributed.md, docs/params.md).
    Case(
        "batch-not-split-evenly",
        params(**{"train.processes": 3}),
        ("train.batch_size = 128", "a multiple of train.processes x train.accumulate_steps (3)"),
        stage="check_params",
    ),
    Case(
        "mode-against-the-metric",
        params(**{"select.metric": "val_accuracy"}),  # select.mode stays min
        ("select.mode = 'min'", "max with select.metric val_accuracy"),
        stage="check_params",
    ),
    Case(
        "drop-path-on-a-model-without-it",
        model_params(**{"train.drop_path": 0.2}),  # resnet18 has no stochastic depth
        ("train.drop_path = 0.2", "resnet18 takes no stochastic depth rate"),
        stage="check_params",
    ),
    Case(
        "a-size-the-weights-refuse",
        model_params(**{"model.arch": "vit_b_16", "model.weights": "DEFAULT", "model.image_size": 64}),
        ("model.image_size = 64 does not fit vit_b_16", "Expected 224 but got 64"),  # the weights' size
        stage="check_params",
    ),
    Case(
        "sync-batchnorm-on-the-cpu",
        params(**{"device": "cpu", "train.processes": 2, "train.sync_batchnorm": True}),
        ("train.sync_batchnorm needs CUDA, and device is cpu",),
        stage="check_params",
    ),
    # A valid change that check_params has not checked: every other stage refuses it.
    Case(
        "unchecked-change",
        params(**{"train.lr": 0.02}),
        ("params.yaml is not what check_params checked", "does not exist"),
    ),
]


def run_cases(base: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Run each case's stage in its own copy of `base`, several at once.

    A refused run is almost all imports (seconds of one core each), so running them side by
    side, not one after another, is what keeps this module fast.
    """
    projects = {}
    for case in CASES:
        copy = base.parent / case.id
        copy_project(base, copy)
        case.edit(copy)
        projects[case.id] = copy
    with ThreadPoolExecutor(max_workers=min(len(CASES), os.cpu_count() or 2)) as pool:
        results = pool.map(lambda case: stage(case.stage, projects[case.id], check=False), CASES)
        return {case.id: (projects[case.id], result) for case, result in zip(CASES, results, strict=True)}


def test_param_mistakes_stop_the_stage_before_any_work(project: Path, subtests: pytest.Subtests) -> None:
    results = run_cases(project)
    for case in CASES:
        with subtests.test(case.id):
            copy, result = results[case.id]
            assert_one_error(result, *case.fragments)
            if case.stage == "train":
                assert_train_did_nothing(copy)
            elif case.stage == "check_params":
                assert not (copy / "checks/params.ok").exists() and not (copy / "checks/params.json").exists()
            else:
                assert not (copy / PREPARED_DIR).exists()


def test_the_weights_stage_explains_uncached_torchvision_weights_without_network(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # No network, whatever the machine has: every download goes to a closed local port.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    set_checked_params(project, **{"model.weights": "DEFAULT"})  # check_params resolves the name only

    file_name = Path(urlparse(ResNet18_Weights.DEFAULT.url).path).name  # resnet18-f37072fd.pth
    assert_one_error(
        stage("weights", project, check=False),
        "not in the cache and could not be downloaded",
        f"Put the file {file_name} ",
        f"into {torch_home / 'hub' / 'checkpoints'}",
        "model.weights: null",
    )
    assert not list((torch_home / "hub" / "checkpoints").glob("*.pth"))
    assert not (project / "models" / "start.pt").exists()


# --- load_params, in-process ----------------------------------------------------------


def replace_line(path: Path, group: str, key: str, new_line: str) -> int:
    """Replace the `  key: ...` line of top-level `group` in a params file by hand; return its line number."""
    lines = path.read_text().splitlines()
    start = lines.index(f"{group}:")
    index = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"  {key}:"))
    lines[index] = new_line
    path.write_text("\n".join(lines) + "\n")
    return index + 1


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy2(REPO / "params.yaml", path)
    return path


def assert_typed_like_schema(obj: object, raw: Any, where: str) -> None:
    """Every field of the dataclass `obj` has its declared type and the value written in `raw` (the YAML)."""
    for f in dataclasses.fields(obj):
        value, written, key = getattr(obj, f.name), raw[f.name], f"{where}{f.name}"
        if dataclasses.is_dataclass(f.type):
            assert type(value) is f.type, key
            assert_typed_like_schema(value, written, f"{key}.")
        elif isinstance(f.type, type) and issubclass(f.type, Enum):
            assert type(value) is f.type and value.value == written, key
        else:
            assert isinstance(value, f.type) and value == written, key  # f.type may be `str | None`
            assert type(value) is not bool or f.type is bool, key  # no True sneaking into an int


def test_repo_params_load_into_typed_dataclasses(params_file: Path) -> None:
    params = load_params(params_file)
    assert type(params) is Params
    assert_typed_like_schema(params, OmegaConf.to_container(OmegaConf.load(params_file)), "")
    # Spot checks of the conversions that matter most.
    assert isinstance(params.train, TrainParams)
    assert isinstance(params.train.augment, AugmentParams)
    assert isinstance(params.train.optimizer, Optimizer)
    assert isinstance(params.select.mode, Mode)
    assert type(params.train.lr) is float


def test_exponent_notation_typed_by_hand_is_a_float(params_file: Path) -> None:
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; the loader must still give a float.
    replace_line(params_file, "train", "lr", "  lr: 1e-3")
    params = load_params(params_file)
    assert type(params.train.lr) is float
    assert params.train.lr == 0.001


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.lr=1e-3", "train.lr", 0.001),
        ("train.epochs=3", "train.epochs", 3),
        ("prepare.val_fraction=0.3", "prepare.val_fraction", 0.3),
        ("train.optimizer=adamw", "train.optimizer", Optimizer.adamw),
        (("select.metric=val_accuracy", "select.mode=max"), "select.mode", Mode.max),
        (("select.metric=val_f1", "select.mode=max"), "select.metric", "val_f1"),
        ("train.augment.hflip=true", "train.augment.hflip", True),
        ("model.weights=null", "model.weights", None),
        ("model.weights=IMAGENET1K_V1", "model.weights", "IMAGENET1K_V1"),
        ("model.weights=models/other.pt", "model.weights", "models/other.pt"),
        ("freeze=first:2", "freeze", "first:2"),
        ("freeze=modules:conv1+bn1", "freeze", "modules:conv1+bn1"),
        ("device=cuda:1", "device", "cuda:1"),
    ],
)
def test_dvc_set_param_overrides_load_with_their_types(
    params_file: Path, override: str | tuple[str, ...], key: str, expected: object
) -> None:
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` edits params.yaml with

    apply_overrides(params_file, [override] if isinstance(override, str) else list(override))
    value = attrgetter(key)(load_params(params_file))
    assert value == expected
    assert type(value) is type(expected)


# Every choice docs/params.md offers for a param of choices, spelt as the docs spell it: not
# read from config's enums, which a misspelt member would agree with.
DOCUMENTED_CHOICES = {
    "train.optimizer": ["sgd", "adamw"],
    "pretrain.optimizer": ["sgd", "adamw"],
    "train.schedule": ["constant", "step", "cosine"],
    "train.class_weights": ["none", "balanced"],
    "train.augment.policy": ["none", "trivialaugment", "randaugment", "autoaugment"],
    "evaluate.tta": ["none", "hflip"],
}


def test_every_documented_choice_set_by_dvc_exp_run_loads_as_itself(params_file: Path) -> None:
    """`dvc exp run -S` of each documented choice: a few loads in all, each one setting every
    param to its next choice (each load is a tenth of a second)."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` edits params.yaml with

    original = params_file.read_text()
    for n in range(max(len(choices) for choices in DOCUMENTED_CHOICES.values())):
        params_file.write_text(original)
        picked = {key: choices[n % len(choices)] for key, choices in DOCUMENTED_CHOICES.items()}
        apply_overrides(params_file, [f"{key}={text}" for key, text in picked.items()])
        params = load_params(params_file)
        assert {key: attrgetter(key)(params).value for key in picked} == picked


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("train.lr", -0.5, ["train.lr = -0.5", "a number > 0"]),
        ("train.lr", 0, ["train.lr = 0.0", "a number > 0"]),
        ("train.epochs", 0, ["train.epochs = 0", "an integer >= 1"]),
        ("train.batch_size", 0, ["train.batch_size = 0", "an integer >= 1"]),
        ("train.epochs", "abc", ["train.epochs", "'abc'", "Integer"]),
        ("pretrain.epochs", 0, ["pretrain.epochs = 0", "an integer >= 1"]),
        ("train.momentum", -1, ["train.momentum = -1.0", "a number >= 0"]),
        ("prepare.test_fraction", 1.0, ["prepare.test_fraction = 1.0", "between 0 and 1"]),
        ("train.augment.min_scale", 0, ["train.augment.min_scale = 0.0", "(0, 1]"]),
        ("train.layer_decay", 1.5, ["train.layer_decay = 1.5", "(0, 1]; 1 = off"]),
        ("train.clip_grad_norm", -1, ["train.clip_grad_norm = -1.0", "a number >= 0; 0 = off"]),
        ("train.decay_norms_and_biases", "no way", ["train.decay_norms_and_biases", "'no way'", "bool"]),
        ("train.drop_path", 1.0, ["train.drop_path = 1.0", "a number in [0, 1), or null"]),
        ("train.drop_path", -0.1, ["train.drop_path = -0.1", "a number in [0, 1), or null"]),
        ("train.ema_warmup", "soon", ["train.ema_warmup", "'soon'", "bool"]),
        ("select.metric", "accuracy", ["select.metric = 'accuracy'", "val_loss, val_accuracy, val_f1"]),
        ("train.optimizer", "adam", ["train.optimizer", "'adam'", "sgd, adamw"]),
        ("train.augment.hflip", "maybe", ["train.augment.hflip", "'maybe'", "bool"]),
        ("model", "resnet50", ["model = 'resnet50'", "a group of keys: arch, weights, image_size"]),
        ("train.augment", None, ["train.augment = None", "a group of keys: hflip, min_scale"]),
    ],
)
def test_load_params_names_key_value_and_what_is_allowed(
    params_file: Path, key: str, value: object, fragments: list[str]
) -> None:
    edited = OmegaConf.load(params_file)
    OmegaConf.update(edited, key, value, merge=False)
    OmegaConf.save(edited, params_file)
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("key", "new_name", "fragments"),
    [
        ("freeze", "frezee", ["unknown key 'frezee'", "allowed here: freeze,", "did you mean 'freeze'?"]),
        ("train.lr", "lrr", ["unknown key 'train.lrr'", "allowed here: epochs,", "did you mean 'lr'?"]),
        ("train.seed", None, ["train.seed is missing"]),
    ],
)
def test_load_params_names_unknown_and_missing_keys(
    params_file: Path, key: str, new_name: str | None, fragments: list[str]
) -> None:
    rename_key(params_file.parent, key, new_name)
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_load_params_reports_broken_yaml_with_its_line(params_file: Path) -> None:
    number = replace_line(params_file, "train", "lr", "  lr: 0.01: 0.02")
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    # The second colon, the 11th character of "  lr: 0.01: 0.02", counted from 1 as editors count.
    where = rf"\(line {number}, column 11\)"
    pattern = rf"{re.escape(str(params_file))} is not valid YAML: mapping values are not allowed here {where}"
    assert re.match(pattern, str(caught.value)), str(caught.value)


def test_load_params_names_the_problem_of_a_yaml_error_not_its_context(params_file: Path) -> None:
    """A key indented one space too few: YAML's problem, where it found it, not the mapping it
    was parsing when it did (its context, line 1)."""
    number = replace_line(params_file, "train", "lr", " lr: 0.01")
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    problem = f"expected <block end>, but found '<block mapping start>' (line {number}, column 2)"
    assert str(caught.value) == f"{params_file} is not valid YAML: {problem}"


def test_load_params_reports_an_unprintable_character_on_one_line(params_file: Path) -> None:
    replace_line(params_file, "train", "lr", "  lr: 0.01\x07")  # a bell pasted in
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    message = str(caught.value)
    assert "\n" not in message and "unacceptable character #x0007: special characters are not allowed" in message


def test_a_misspelt_group_is_named_with_the_one_meant(params_file: Path) -> None:
    params_file.write_text(params_file.read_text().replace("\nselect:", "\nselct:"))
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    assert "unknown key 'selct'" in str(caught.value) and "(did you mean 'select'?)" in str(caught.value)


# Every param docs/params.md gives as a count (epochs, images, steps, processes, seeds, pixels).
WHOLE_NUMBERS = [
    "prepare.seed", "pretrain.epochs", "pretrain.batch_size", "pretrain.seed", "model.image_size",
    "train.epochs", "train.batch_size", "train.seed", "train.warmup_epochs", "train.step_every",
    "train.unfreeze_after", "train.early_stopping.patience", "train.augment.randaugment_ops",
    "train.augment.randaugment_magnitude", "train.processes", "train.accumulate_steps", "train.threads",
    "evaluate.batch_size", "evaluate.cuda_batch_size", "evaluate.processes",
]  # fmt: skip


def test_a_count_given_as_a_fraction_is_refused(params_file: Path) -> None:
    """1.5 warm-up epochs or a step every 2.5 epochs has no meaning the schedule could follow:
    refused, as each count is, by its name."""
    original = params_file.read_text()
    taken = []
    for key in WHOLE_NUMBERS:
        params_file.write_text(original)
        write_value(params_file, key, "2.5")
        try:
            load_params(params_file)
            taken.append(key)
        except UserError as error:
            assert f"{key} = 2.5: Value '2.5' of type 'float' could not be converted to Integer" in str(error)
    assert taken == []


def test_missing_params_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: run the stage from the project root"):
        load_params(tmp_path / "params.yaml")


def write_value(path: Path, key: str, text: str) -> None:
    """Write `text` as the value of `key` (top-level, or group.key, group.subgroup.key) by
    hand, as YAML has it."""
    *groups, name = key.split(".")
    lines, index = path.read_text().splitlines(), -1
    for depth, part in enumerate([*groups, name]):
        prefix = f"{'  ' * depth}{part}:"
        index = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(prefix))
    lines[index] = f"{'  ' * len(groups)}{name}: {text}"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        # YAML 1.1 reads these as a boolean, a number or a date; a text param keeps the text.
        ("freeze", "off", "off"),
        ("device", "yes", "yes"),
        ("model.arch", "007", "007"),
        ("model.arch", "1e3", "1e3"),
        ("device", "0x1F", "0x1F"),
        ("prepare.data_dir", "off", "off"),  # text to DVC too, which puts it into dvc.yaml
        # quoted, as the refusal of a plain 007 or true says to write it: text to DVC as well
        ("prepare.data_dir", "'007'", "007"),
        ("pretrain.data_dir", '"true"', "true"),
        ("model.arch", "1_000", "1_000"),
        ("model.arch", "2024-01-01", "2024-01-01"),
        ("train.unfreeze_to", "no", "no"),
        # null is null, in any spelling; quoted text was always text.
        ("model.weights", "NULL", None),
        ("model.weights", "~", None),
        ("model.weights", "'null'", "null"),
        # an optional text param: a weights name or file, as written
        ("model.weights", "007", "007"),
        ("model.weights", "no", "no"),
        ("freeze", "'off'", "off"),
    ],
)
def test_text_params_are_taken_as_written(params_file: Path, key: str, text: str, expected: object) -> None:
    write_value(params_file, key, text)
    assert attrgetter(key)(load_params(params_file)) == expected


@pytest.mark.parametrize(
    ("key", "text", "fragment"),
    [
        # a choice is text too: refused as written, two levels deep as well
        ("train.optimizer", "off", "train.optimizer = off: Invalid value 'off', expected one of [sgd, adamw]"),
        ("train.augment.policy", "no", "train.augment.policy = no: Invalid value 'no', expected one of [none, "),
        ("train.epochs", "0x0", "train.epochs = 0x0 (read as 0) is not allowed"),
        ("train.epochs", "yes", "train.epochs = yes: "),
        ("train.lr", ".inf", "train.lr = .inf (read as inf) is not allowed; it must be a finite number"),
        ("train.lr", "-.inf", "train.lr = -.inf (read as -inf) is not allowed"),
        ("train.momentum", ".nan", "train.momentum = .nan (read as nan) is not allowed; it must be a finite number"),
        ("pretrain.weight_decay", ".Inf", "pretrain.weight_decay = .Inf (read as inf)"),
        # two levels deep: named with both groups
        ("train.augment.mixup_alpha", ".inf", "train.augment.mixup_alpha = .inf (read as inf) is not allowed"),
        ("train.early_stopping.min_delta", ".nan", "train.early_stopping.min_delta = .nan (read as nan)"),
        # numbers YAML 1.1 (the pipeline) and YAML 1.2 (DVC, which shows and records them) read apart
        (
            "train.epochs",
            "010",
            "train.epochs = 010 is read as 8 by the pipeline (YAML 1.1) but as 10 by DVC (YAML 1.2); ",
        ),
        (
            "train.lr",
            "0o10",
            "train.lr = 0o10 is read as '0o10' by the pipeline (YAML 1.1) but as 8 by DVC (YAML 1.2); ",
        ),
        (
            "train.augment.randaugment_ops",
            "1:30",
            "ops = 1:30 is read as 90 by the pipeline (YAML 1.1) but as '1:30' by",
        ),
        ("train.epochs", "-010", "DVC (YAML 1.2); write the number in plain digits, e.g. -10"),
        # a folder that dvc.yaml interpolates: DVC must read text there too, or fails on every command
        ("prepare.data_dir", "007", "prepare.data_dir = 007 is read as 7 by DVC (YAML 1.2), not as a folder name for "),
        ("pretrain.data_dir", "true", "dvc.yaml's ${pretrain.data_dir}; quote it: 'true'"),
        # The same number spelt another way is not worth a remark.
        ("train.epochs", "-0", "train.epochs = 0 is not allowed"),
        ("train.lr", "-1e-2", "train.lr = -0.01 is not allowed"),
    ],
)
def test_messages_quote_the_value_as_written(params_file: Path, key: str, text: str, fragment: str) -> None:
    write_value(params_file, key, text)
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    assert fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("metric", "mode", "ok"),
    [
        ("val_loss", "min", True),
        ("val_loss", "max", False),
        ("val_accuracy", "max", True),
        ("val_accuracy", "min", False),
        ("val_f1", "min", False),
    ],
)
def test_select_mode_must_suit_the_metric(params_file: Path, metric: str, mode: str, ok: bool) -> None:
    write_value(params_file, "select.metric", metric)
    write_value(params_file, "select.mode", mode)
    if ok:
        assert load_params(params_file).select.mode.value == mode
        return
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    best = "min" if metric == "val_loss" else "max"
    assert f"select.mode = '{mode}' is not allowed; it must be {best} with select.metric {metric}" in str(caught.value)


# Each number param's range as docs/params.md states it: values at each end that must pass,
# and the nearest values beyond it that must stop the stage, naming the key. Every check in
# config.validate has a row, so an end moved by one, a `<` for a `<=` or a check dropped shows.
RANGES: list[tuple[str, list[object], list[object]]] = [
    *[
        (f"{group}.{key}", ok, bad)
        for group in ("train", "pretrain")
        for key, ok, bad in [
            ("epochs", [1], [0]),
            ("batch_size", [1], [0]),
            ("lr", [1e-9], [0.0, -0.01]),
            ("momentum", [0.0], [-0.01]),
            ("weight_decay", [0.0], [-1e-6]),
        ]
    ],
    ("prepare.val_fraction", [0.01, 0.7], [0.0, 1.0]),
    ("prepare.test_fraction", [0.01, 0.7], [0.0, 1.0]),
    ("pretrain.val_fraction", [0.01, 0.99], [0.0, 1.0]),
    ("model.image_size", [1], [0]),
    ("wait_minutes", [0.01], [0.0]),
    ("train.warmup_epochs", [0], [-1]),
    ("train.step_every", [1], [0]),
    ("train.step_gamma", [0.001, 2.0], [0.0]),
    ("train.trunk_lr_scale", [0.0], [-0.01]),
    ("train.layer_decay", [0.01, 1.0], [0.0, 1.01]),
    ("train.clip_grad_norm", [0.0], [-0.01]),
    ("train.ema_decay", [0.0, 0.9999], [1.0, -0.01]),
    ("train.drop_path", [None, 0.0, 0.99], [1.0, -0.01]),
    ("train.unfreeze_after", [0], [-1]),
    ("train.processes", [1], [0]),
    ("train.accumulate_steps", [1], [0]),
    ("train.threads", [0], [-1]),
    ("train.label_smoothing", [0.0, 0.99], [1.0, -0.01]),
    ("train.early_stopping.patience", [0], [-1]),
    ("train.early_stopping.min_delta", [0.0], [-0.01]),
    ("train.augment.min_scale", [0.01, 1.0], [0.0, 1.01]),
    ("train.augment.max_aspect", [1.0], [0.99]),
    ("train.augment.randaugment_ops", [1], [0]),
    ("train.augment.randaugment_magnitude", [0, 30], [-1, 31]),
    ("train.augment.erasing", [0.0, 1.0], [-0.01, 1.01]),
    ("train.augment.mix_switch", [0.0, 1.0], [-0.01, 1.01]),
    ("train.augment.mixup_alpha", [0.0], [-0.01]),
    ("train.augment.cutmix_alpha", [0.0], [-0.01]),
    ("evaluate.batch_size", [1], [0]),
    ("evaluate.cuda_batch_size", [1], [0]),
    ("evaluate.processes", [1], [0]),
    *[(key, [0], [-1]) for key in ("prepare.seed", "pretrain.seed", "train.seed")],
    # every whole number up to C's int, which torch and tqdm count in: one shared bound
    *[(key, [2**31 - 1], [2**31]) for key in ("train.seed", "train.epochs", "train.threads", "evaluate.batch_size")],
]


def admitted(allowed: str, value: float) -> bool | None:
    """Whether the range a refusal states (`in [0, 1)`, `between 0 and 1 (exclusive)`, `>= 1`,
    `> 0`, `<= 2147483647`) holds `value`, read as a user reads it; None where it states no range."""
    number = r"(-?\d+(?:\.\d+)?)"
    if found := re.search(rf"([\[(]){number}, {number}([\])])", allowed):
        opening, low, high, closing = found.groups()
        above = value >= float(low) if opening == "[" else value > float(low)
        return above and (value <= float(high) if closing == "]" else value < float(high))
    if found := re.search(rf"between {number} and {number} \(exclusive\)", allowed):
        return float(found[1]) < value < float(found[2])
    if found := re.search(rf"([<>]=?) {number}", allowed):
        compare = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}[found[1]]
        return compare(float(value), float(found[2]))
    return None


def test_each_number_param_is_refused_just_beyond_its_documented_range(params_file: Path) -> None:
    """validate on the repo's params with one value changed (loaded once: each load is a tenth
    of a second). Each refusal quotes the value given and states a range that the documented
    values at its ends fall in and the refused one does not: the user fixes the value by it.
    Besides the table: the global batch must split evenly over processes x accumulated batches
    (66 splits over 2 processes, not over 2 x 2), and the held-out fractions must leave some
    images for training."""
    loaded = load_params(params_file)

    def refusal(changes: dict[str, object]) -> ParamError | None:
        params = copy.deepcopy(loaded)
        for key, value in changes.items():
            parent, _, name = key.rpartition(".")
            setattr(attrgetter(parent)(params) if parent else params, name, value)
        try:
            validate(params)
        except ParamError as error:
            return error
        return None

    def problem(changes: dict[str, object]) -> str | None:
        return error.key if (error := refusal(changes)) else None

    wrong = []
    for key, oks, bads in RANGES:
        wrong += [f"{key} = {ok!r} refused" for ok in oks if problem({key: ok}) is not None]
        for bad in bads:
            if (error := refusal({key: bad})) is None or error.key != key:
                wrong.append(f"{key} = {bad!r} passed (or named {error and error.key})")
                continue
            # A message quoting a neighbour's value shows where the two differ: accumulate_steps'
            # 0 beside processes' default 1.
            said, _, allowed = str(error).partition(" is not allowed; it must be ")
            numbers = [ok for ok in oks if ok is not None]
            if not said.endswith(f" {key} = {bad!r}"):
                wrong.append(f"{error}: quotes another value than {bad!r}")
            elif [admitted(allowed, value) for value in [bad, *numbers]] != [False] + [True] * len(numbers):
                wrong.append(f"{error}: states a range that does not hold {numbers} and refuse {bad!r}")
    split = {"train.processes": 2, "train.accumulate_steps": 2}
    assert problem({**split, "train.batch_size": 64}) is None
    assert problem({**split, "train.batch_size": 66}) == "train.batch_size"
    assert problem({"prepare.val_fraction": 0.6, "prepare.test_fraction": 0.39}) is None
    held_out = "prepare.val_fraction + prepare.test_fraction"
    assert problem({"prepare.val_fraction": 0.6, "prepare.test_fraction": 0.4}) == held_out
    assert wrong == []


def test_every_param_that_dvc_yaml_interpolates_is_checked_as_dvc_reads_it() -> None:
    assert set(re.findall(r"\$\{([\w.]+)\}", (REPO / "dvc.yaml").read_text())) == set(DVC_INTERPOLATED)


def test_a_batch_that_does_not_split_names_the_parts_it_must_split_into(params_file: Path) -> None:
    """2 processes x 3 accumulated steps: the global batch must be a multiple of 6 (2 or 3
    alone would pass 64 or fail 66 the other way)."""
    for key, text in {"train.processes": "2", "train.accumulate_steps": "3", "train.batch_size": "64"}.items():
        write_value(params_file, key, text)
    with pytest.raises(UserError) as caught:
        load_params(params_file)
    message = str(caught.value)
    assert "train.batch_size = 64 is not allowed; it must be a multiple of train.processes x" in message
    assert "train.accumulate_steps (6): it is the global batch" in message


FIVE_CHANGES = {"train.seed": 3, "train.momentum": 0.5, "prepare.seed": 4, "train.lr": 0.5, "train.epochs": 3}
FIRST_THREE = "prepare.seed = 4 (checked: 0), train.epochs = 3 (checked: 8), train.lr = 0.5 (checked: 0.01)"
# three, one of them two groups deep: named in full, with nothing "more"
THREE_CHANGES = {"train.augment.hflip": True, "prepare.seed": 4, "train.epochs": 3}
THREE = "prepare.seed = 4 (checked: 0), train.augment.hflip = True (checked: False), train.epochs = 3 (checked: 8)"


@pytest.mark.parametrize(
    ("changes", "named"), [(FIVE_CHANGES, f"{FIRST_THREE} and 2 more"), (THREE_CHANGES, THREE)], ids=["five", "three"]
)
def test_a_stage_names_three_params_that_differ_from_the_checked_ones_and_counts_the_rest(
    params_file: Path, monkeypatch: pytest.MonkeyPatch, changes: dict, named: str
) -> None:
    """Params changed after check_params: a stage names the first three in key order, each
    with both values, and says how many more there are."""
    monkeypatch.chdir(params_file.parent)
    record_checked(load_params(params_file))
    set_params(params_file.parent, **changes)
    with pytest.raises(UserError) as caught:
        load_checked_params()
    assert str(caught.value).startswith(f"params.yaml is not what check_params checked: {named}; ")


def test_a_record_with_other_keys_than_params_yaml_names_each_such_key(
    params_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record written by another version of the project (a param added since, one removed):
    a stage refuses, naming each key that only one side holds, bare, as there is no pair of
    values to show."""
    monkeypatch.chdir(params_file.parent)
    record_checked(load_params(params_file))
    record_file = params_file.parent / "checks" / "params.json"
    record = json.loads(record_file.read_text())
    del record["train.seed"]
    record["train.retired"] = 1
    record_file.write_text(json.dumps(record))
    with pytest.raises(UserError) as caught:
        load_checked_params()
    assert str(caught.value).startswith("params.yaml is not what check_params checked: train.retired, train.seed; ")
