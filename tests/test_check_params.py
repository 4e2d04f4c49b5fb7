"""check_params: every param is checked up front, and each message names the right key."""

import shutil
import sys
from pathlib import Path

import pytest
import torch

from pipeline.check_params import check
from pipeline.checkpoints import save_checkpoint
from pipeline.cli import UserError
from pipeline.config import load_params
from pipeline.models import build_model
from testing.project import REPO, run, set_params, stage


def test_the_stage_writes_a_constant_file(project: Path) -> None:
    stage("check_params", project)
    written = (project / "checks/params.ok").read_text()
    set_params(project, **{"train.lr": 0.5})
    stage("check_params", project)
    assert (project / "checks/params.ok").read_text() == written  # later stages see no change


@pytest.fixture
def params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of params.yaml to edit, checked from the repo root (where the data folders are)."""
    monkeypatch.chdir(REPO)
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def problem(path: Path) -> str:
    with pytest.raises(UserError) as error:
        check(load_params(path))
    return str(error.value)


def test_the_default_params_pass(params_file: Path) -> None:
    check(load_params(params_file))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"freeze": "everything"}, "freeze = 'everything' is not a freeze spec"),
        # a bad unfreeze_to is caught even while unfreezing is off, and named as itself
        ({"train.unfreeze_to": "everything"}, "train.unfreeze_to = 'everything' is not a freeze spec"),
        ({"freeze": "first:99"}, "freeze = first:99, but this model has"),
        ({"train.unfreeze_to": "first:99"}, "train.unfreeze_to = first:99, but this model has"),
        ({"train.unfreeze_to": "modules:layer9"}, "train.unfreeze_to names module(s) layer9"),
        ({"freeze": "modules:layer9"}, "does not have"),
        ({"model.arch": "resnet19"}, "did you mean resnet18"),
        ({"model.weights": "IMAGENET1K_V9"}, "is not a weights name of resnet18"),
        ({"model.weights": "models/weights/nope.pt"}, "the file does not exist"),
        # elsewhere, DVC would not see the file change: the weights stage depends on models/weights/
        ({"model.weights": "models/mine.pt"}, "model.weights = 'models/mine.pt': put weights files in models/weights/"),
        ({"model.arch": "vit_b_16", "model.image_size": 20}, "does not fit vit_b_16"),
        # a stochastic depth rate for a model without stochastic depth, also where the builder
        # takes any keyword (MobileNetV3) or sets the rate itself (Swin)
        ({"train.drop_path": 0.2}, "train.drop_path = 0.2: resnet18 takes no stochastic depth rate"),
        ({"train.drop_path": 0.0}, "train.drop_path = 0.0: resnet18 takes no stochastic depth rate"),
        ({"model.arch": "mobilenet_v3_small", "train.drop_path": 0.2}, "mobilenet_v3_small takes no stochastic"),
        ({"model.arch": "swin_t", "model.image_size": 64, "train.drop_path": 0.2}, "swin_t takes no stochastic"),
        ({"model.arch": "timm/vgg11", "train.drop_path": 0.2}, "timm/vgg11 takes no stochastic depth rate"),
        ({"prepare.data_dir": "data/nope"}, "prepare.data_dir = 'data/nope': no such folder"),
        ({"pretrain.data_dir": "data/nope"}, "pretrain.data_dir = 'data/nope': no such folder"),
        ({"device": "gpu"}, "is not a device"),
    ],
)
def test_bad_params_are_named(params_file: Path, overrides: dict, message: str) -> None:
    set_params(params_file.parent, **overrides)
    assert message in problem(params_file)


def test_an_unknown_key_stops_it(params_file: Path) -> None:
    params_file.write_text(params_file.read_text() + "trian:\n  lr: 0.1\n")
    assert "unknown key 'trian'" in problem(params_file)


def test_a_weights_file_of_another_arch_is_caught_before_any_training(
    params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project root of its own (the data folders linked), to put the file where weights go.
    root = tmp_path / "root"
    (root / "models" / "weights").mkdir(parents=True)
    (root / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.chdir(root)
    torch.manual_seed(0)
    built = build_model("resnet34", None, ["a", "b"], 16)
    save_checkpoint(
        {**built.spec.to_dict(), "model_state_dict": built.model.state_dict()}, Path("models/weights/r34.pt")
    )
    set_params(params_file.parent, **{"model.weights": "models/weights/r34.pt"})
    assert "holds a resnet34 checkpoint, but model.arch is resnet18" in problem(params_file)


def dvc_fails_before_real_work(project: Path, message: str, *args: str) -> None:
    result = run([sys.executable, "-m", "dvc", *args], project, check=False)
    assert result.returncode != 0, result.stdout
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("pipeline: error:")]
    assert len(errors) == 1 and message in errors[0], output  # one line, no traceback
    assert "Traceback" not in result.stdout + result.stderr
    assert "Running stage 'check_params'" in result.stdout
    assert "Running stage 'prepare'" not in result.stdout


def test_dvc_repro_stops_on_a_key_that_no_stage_lists(project: Path) -> None:
    path = project / "params.yaml"
    path.write_text(path.read_text() + "trian:\n  lr: 0.1\n")
    dvc_fails_before_real_work(project, "unknown key 'trian'", "repro")


def test_dvc_exp_run_stops_on_an_added_key(project: Path) -> None:
    # DVC's own hint for `-S trian.lr=0.1` is `+trian.lr=0.1`, which adds the key.
    dvc_fails_before_real_work(project, "unknown key 'trian'", "exp", "run", "-S", "+trian.lr=0.1")


def test_a_missing_data_folder_is_named_before_dvc_hashes_it(project: Path) -> None:
    # Without the check, DVC's own check of prepare's dependency says only "[Errno 2]".
    dvc_fails_before_real_work(
        project, "prepare.data_dir = 'data/nope': no such folder", "exp", "run", "-S", "prepare.data_dir=data/nope"
    )
