"""check_params: every param is checked up front, and each message names the right key."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from pipeline.check_params import check, ineffective
from pipeline.checkpoints import save_checkpoint
from pipeline.cli import UserError
from pipeline.config import EarlyStoppingParams, Mode, load_params
from pipeline.models import build_model
from pipeline.runs import early_stop
from testing.project import REPO, run, run_script, set_params, stage
from tests.conftest import Reproduced


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
        # digits that str.isdigit takes and int() does not
        ({"freeze": "first:²"}, "freeze = 'first:²' is not a freeze spec"),
        ({"train.unfreeze_to": "first:①"}, "train.unfreeze_to = 'first:①' is not a freeze spec"),
        ({"train.unfreeze_to": "first:99"}, "train.unfreeze_to = first:99, but this model has"),
        ({"train.unfreeze_to": "modules:layer9"}, "train.unfreeze_to names module(s) layer9"),
        ({"freeze": "modules:layer9"}, "does not have"),
        # the example of a dotted name is one of the model's own modules (conv1, the first stage, has no children)
        ({"freeze": "modules:layer9"}, "(any dotted module name works, e.g. layer1.0)"),
        # GoogLeNet's auxiliary classifiers: dropped for fine-tuning, so neither named nor counted
        ({"model.arch": "googlenet", "model.image_size": 32, "freeze": "modules:aux1"}, "module(s) aux1 that the"),
        ({"model.arch": "googlenet", "model.image_size": 32, "freeze": "first:13"}, "but this model has 12 stages"),
        # a module holding the head freezes it too: refused, as the head itself is
        ({"model.arch": "mobilenet_v3_small", "freeze": "modules:classifier"}, "names the head (classifier.3) or a"),
        ({"model.arch": "resnet19"}, "did you mean resnet18"),
        # torchvision models that are not classifiers: segmentation, video, detection
        ({"model.arch": "fcn_resnet50"}, "model.arch = 'fcn_resnet50' is not a torchvision classification model"),
        ({"model.arch": "r3d_18"}, "model.arch = 'r3d_18' is not a torchvision classification model"),
        ({"model.arch": "fasterrcnn_resnet50_fpn"}, "'fasterrcnn_resnet50_fpn' is not a torchvision classification"),
        ({"model.weights": "IMAGENET1K_V9"}, "is not a weights name of resnet18"),
        # another model's weights, named in full: resnet50 has an IMAGENET1K_V2 of its own
        (
            {"model.arch": "resnet50", "model.weights": "ResNet101_Weights.IMAGENET1K_V2"},
            "model.weights = 'ResNet101_Weights.IMAGENET1K_V2' is not a weights name of resnet50",
        ),
        # resnet18d's tag, not resnet18's (timm.list_pretrained("resnet18.*") lacks it)
        ({"model.arch": "timm/resnet18", "model.weights": "ra2_in1k"}, "is not a pretrained tag of timm/resnet18"),
        # a tag after a model timm does not have: the model is the mistake
        ({"model.arch": "timm/resnet81.a1_in1k"}, "'timm/resnet81.a1_in1k' is not a timm model; did you mean"),
        # a file beside params.yaml, by its suffix: not taken for a weights name
        ({"model.weights": "mine.pt"}, "model.weights = 'mine.pt': put weights files in models/weights/"),
        ({"model.weights": "models/weights/nope.pt"}, "the file does not exist"),
        # elsewhere, DVC would not see the file change: the weights stage depends on models/weights/
        ({"model.weights": "models/mine.pt"}, "model.weights = 'models/mine.pt': put weights files in models/weights/"),
        ({"model.weights": "models/weights/../mine.pt"}, "'models/weights/../mine.pt': put weights files in models/"),
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
        # the weights stage depends on the folder whatever model.weights says
        ({"model.weights": None, "pretrain.data_dir": "data/nope"}, "pretrain.data_dir = 'data/nope': no such folder"),
        ({"train.label_smoothing": 1.0}, "train.label_smoothing = 1.0 is not allowed; it must be a number in [0, 1)"),
        # seeds numpy or torch refuse as the stage starts, or whose epoch seeds overflow torch's
        ({"prepare.seed": -1}, "prepare.seed = -1 is not allowed; it must be an integer >= 0"),
        ({"pretrain.seed": -1}, "pretrain.seed = -1 is not allowed; it must be an integer >= 0"),
        ({"train.seed": 10**15}, "train.seed = 1000000000000000 is not allowed; it must be an integer <= 2147483647"),
        # counts that overflow torch's threads, the steps of an epoch, or the progress bar
        ({"train.threads": 2**32}, "train.threads = 4294967296 is not allowed; it must be an integer <= 2147483647"),
        (
            {"train.batch_size": 10**19},
            "train.batch_size = 10000000000000000000 is not allowed; it must be an integer <=",
        ),
        ({"train.epochs": 10**20}, "train.epochs = 100000000000000000000 is not allowed; it must be an integer <="),
        ({"device": "gpu"}, "is not a device"),
        # devices torch knows of that the pipeline does not run on (docs/params.md: auto, cpu, cuda, cuda:N)
        ({"device": "mps"}, "device = 'mps' is not a device; use auto, cpu, cuda or cuda:N"),
        ({"device": "meta"}, "device = 'meta' is not a device"),
        ({"device": "cpu:1"}, "device = 'cpu:1' is not a device"),
    ],
)
def test_bad_params_are_named(params_file: Path, overrides: dict, message: str) -> None:
    set_params(params_file.parent, **overrides)
    assert message in problem(params_file)


@pytest.mark.parametrize("arch", ["convnext_tiny", "timm/resnet18"])
def test_a_drop_path_rate_of_zero_is_taken_by_models_that_have_stochastic_depth(params_file: Path, arch: str) -> None:
    """0 turns stochastic depth off (docs/params.md: a rate in [0, 1)); timm builds no DropPath
    modules at 0, so the check must not take their absence for a model without any."""
    set_params(params_file.parent, **{"model.arch": arch, "model.weights": None, "train.drop_path": 0.0})
    check(load_params(params_file))


def test_an_unknown_key_stops_it(params_file: Path) -> None:
    params_file.write_text(params_file.read_text() + "trian:\n  lr: 0.1\n")
    assert "unknown key 'trian'" in problem(params_file)


def save_pipeline_checkpoint(arch: str, image_size: int, name: str) -> str:
    """A checkpoint of this pipeline, of random weights, under models/weights/ (`weights_root`)."""
    torch.manual_seed(0)
    built = build_model(arch, None, ["a", "b"], image_size)
    path = Path("models/weights") / name
    save_checkpoint({**built.spec.to_dict(), "model_state_dict": built.model.state_dict()}, path)
    return path.as_posix()


def test_a_weights_file_of_another_arch_is_caught_before_any_training(params_file: Path, weights_root: Path) -> None:
    weights = save_pipeline_checkpoint("resnet34", 16, "r34.pt")
    set_params(params_file.parent, **{"model.arch": "resnet18", "model.weights": weights})
    assert "r34.pt holds a resnet34 checkpoint, but model.arch is resnet18" in problem(params_file)


def test_a_broken_link_for_weights_says_so(params_file: Path, weights_root: Path) -> None:
    """A link left in models/weights/ after its file moved: said as it is, not that the file
    lies outside models/weights/ (where the link, followed, points)."""
    (weights_root / "models/weights/big.pt").symlink_to("/nowhere/big.pt")
    set_params(params_file.parent, **{"model.weights": "models/weights/big.pt"})
    assert problem(params_file) == (
        "model.weights = 'models/weights/big.pt' is a broken link (to '/nowhere/big.pt'): fix or remove it"
    )


def test_a_checkpoint_saved_at_another_image_size_is_refused(params_file: Path, weights_root: Path) -> None:
    """A pipeline checkpoint of timm's test_vit made at 32 px, with model.image_size 64: the
    model is built at the params' size (as build_model builds it), where its position embedding
    has 1 + (64 / 16) ** 2 = 17 places for 16-px patches, not the file's 1 + (32 / 16) ** 2 = 5,
    so the weights stage could not load it: check_params says so first."""
    weights = save_pipeline_checkpoint("timm/test_vit", 32, "v.pt")
    set_params(params_file.parent, **{"model.arch": "timm/test_vit", "model.weights": weights})
    for size, fits in ((32, True), (64, False)):
        set_params(params_file.parent, **{"model.image_size": size})
        if fits:
            check(load_params(params_file))
        else:
            assert "pos_embed (1, 5, 64), the model's (1, 17, 64)" in problem(params_file)
    # A stochastic depth rate changes no shape: the file still fits at its own size.
    set_params(params_file.parent, **{"model.image_size": 32, "train.drop_path": 0.1})
    check(load_params(params_file))


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


# --- weights files: their structure checked against the arch, before any stage -------------

SMALL = "shufflenet_v2_x0_5"


def state_of(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None).state_dict()


@pytest.fixture
def weights_root(params_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root of its own (the data folders linked), to put weights files where they go;
    model.arch is the small model."""
    root = tmp_path / "root"
    (root / "models" / "weights").mkdir(parents=True)
    (root / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.chdir(root)
    set_params(params_file.parent, **{"model.arch": SMALL, "model.image_size": 16})
    return root


def save_weights(obj: dict, name: str) -> str:
    path = Path("models/weights") / name
    path.parent.mkdir(exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(obj, path)
    else:  # name "legacy...": torch.save's format before 1.6, which cannot be memory-mapped
        torch.save(obj, path, _use_new_zipfile_serialization=not name.startswith("legacy"))
    return path.as_posix()


def turned(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {**state, key: state[key].transpose(0, 1).contiguous()}


@pytest.mark.parametrize(
    ("saved", "name", "fragment"),
    [
        (lambda: state_of("resnet18"), "resnet18.pt", "does not fit shufflenet_v2_x0_5: "),
        (lambda: state_of("shufflenet_v2_x1_0"), "wider.pth", "tensors of other shapes: "),
        (lambda: state_of("resnet18"), "resnet18.safetensors", "does not fit shufflenet_v2_x0_5: "),
        (lambda: {**state_of(SMALL), "extra.weight": torch.zeros(2)}, "extra.pt", "1 unexpected keys ['extra.weight']"),
        (lambda: {k: v for k, v in state_of(SMALL).items() if "stage4" not in k}, "part.pt", "missing keys ['stage4."),
        # the same number of values in another shape (a tensor saved transposed)
        (lambda: turned(state_of(SMALL), "conv1.0.weight"), "turned.pt", "shapes: conv1.0.weight (3, 24, 3, 3), the"),
        (lambda: {"state_dict": {f"net.{k}": v for k, v in state_of(SMALL).items()}}, "lit.ckpt.pt", "with 'net.'"),
        (lambda: {"weights": state_of(SMALL)}, "other.pt", "nor a dict that holds a state_dict under"),
    ],
)
def test_a_weights_file_that_does_not_fit_the_arch_is_refused(
    params_file: Path, weights_root: Path, saved, name: str, fragment: str
) -> None:
    set_params(params_file.parent, **{"model.weights": save_weights(saved(), name)})
    message = problem(params_file)
    assert fragment in message and "\n" not in message, message


def test_a_weights_file_missing_a_stage_is_refused_with_every_missing_key_counted(
    params_file: Path, weights_root: Path
) -> None:
    state = state_of(SMALL)
    part = {k: v for k, v in state.items() if not k.startswith("stage4.")}
    set_params(params_file.parent, **{"model.weights": save_weights(part, "part.pt")})
    # torch's BatchNorm takes a missing num_batches_tracked as 0: the others are missing.
    missing = [k for k in state if k not in part and not k.endswith("num_batches_tracked")]
    message = problem(params_file)
    assert f"{len(missing)} missing keys ['stage4." in message and " ..." in message, message


@pytest.mark.parametrize(
    ("wrap", "name"),
    [
        (lambda state: state, "plain.pt"),
        (lambda state: {f"module.{k}": v for k, v in state.items()}, "ddp.pt"),
        (lambda state: {f"module.{k}": v for k, v in state.items()}, "ddp.safetensors"),
        (lambda state: {"state_dict": state, "epoch": 3}, "lightning.pt"),
        (lambda state: {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, "references.pth"),
        (lambda state: {"model_state_dict": state, "optimizer_state_dict": {"state": {}}}, "tutorial.pt"),
        (lambda state: state, "legacy.pth"),
        (lambda state: state, "mine/plain.pt"),  # in a folder of its own under models/weights/
    ],
)
def test_the_wrappers_users_bring_pass(params_file: Path, weights_root: Path, wrap, name: str) -> None:
    set_params(params_file.parent, **{"model.weights": save_weights(wrap(state_of(SMALL)), name)})
    check(load_params(params_file))


def test_a_weights_file_without_batchnorm_counters_passes_the_stage_in_silence(project: Path) -> None:
    """torchvision's older weights files (resnet18-5c106cde.pth and its kin) hold no
    num_batches_tracked, which BatchNorm fills in itself: the stage passes such a file and
    prints nothing (no warning for each BatchNorm layer)."""
    state = {k: v for k, v in state_of(SMALL).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, project / "models/weights/old.pth")
    set_params(project, **{"model.arch": SMALL, "model.image_size": 16, "model.weights": "models/weights/old.pth"})
    checked = stage("check_params", project)
    assert (checked.stdout, checked.stderr) == ("", ""), checked.stderr[-2000:]


def test_dvc_repro_stops_on_a_weights_file_of_another_model_before_prepare(project: Path) -> None:
    torch.save(state_of(SMALL), project / "models/weights/mine.pt")
    set_params(project, **{"model.arch": SMALL, "model.weights": "models/weights/mine.pt"})
    run([sys.executable, "-m", "dvc", "repro", "check_params"], project)  # it fits
    # The file replaced by another model's under the same name, params unchanged: check_params
    # depends on models/weights/, so it runs again, and refuses the file before prepare starts.
    torch.save(state_of("shufflenet_v2_x1_0"), project / "models/weights/mine.pt")
    dvc_fails_before_real_work(project, "models/weights/mine.pt does not fit shufflenet_v2_x0_5", "repro")
    assert not (project / "data/prepared").exists()


# --- data folders: enough classes, by a scan that decodes nothing ---------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # One level too deep: a class folder, whose images are loose files.
        ({"prepare.data_dir": "data/digits/target/5"}, "prepare.data_dir = 'data/digits/target/5': "),
        ({"pretrain.data_dir": "data/digits/source/0"}, "pretrain.data_dir = 'data/digits/source/0': "),
    ],
)
def test_a_data_folder_without_two_classes_is_refused(params_file: Path, overrides: dict, message: str) -> None:
    set_params(params_file.parent, **overrides)
    assert message + "data/digits" in problem(params_file)
    assert "holds 0 class folder(s) with image files" in problem(params_file)


def test_the_pretrain_folder_is_scanned_only_when_pretraining(params_file: Path) -> None:
    # Random weights, or torchvision's (checked by name, never downloaded): no stage reads the folder.
    for weights in [None, "IMAGENET1K_V1"]:
        set_params(params_file.parent, **{"pretrain.data_dir": "data/digits/source/0", "model.weights": weights})
        check(load_params(params_file))
    # ...while the data folder is scanned whatever the starting weights
    set_params(params_file.parent, **{"prepare.data_dir": "data/digits/target/5"})
    assert "prepare.data_dir = 'data/digits/target/5': " in problem(params_file)


# --- values as written -------------------------------------------------------------------


def test_a_freeze_spec_that_yaml_reads_as_a_boolean_is_named_as_written(params_file: Path) -> None:
    text = params_file.read_text().replace("\nfreeze: none\n", "\nfreeze: off\n")
    params_file.write_text(text)
    assert "freeze = 'off' is not a freeze spec" in problem(params_file)


# --- settings that cannot take effect: a warning each ---------------------------------------


def warnings_for(params_file: Path, **overrides: object) -> list[str]:
    set_params(params_file.parent, **overrides)
    return ineffective(load_params(params_file))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # unfreeze_to apart from freeze (none), so the line names the spec that never takes over
        (
            {"train.epochs": 8, "train.unfreeze_after": 8, "train.unfreeze_to": "first:2"},
            "train.unfreeze_after = 8 is not smaller than train.epochs = 8: train.unfreeze_to (first:2) never takes",
        ),
        ({"train.epochs": 8, "train.unfreeze_after": 9, "freeze": "first:2"}, "train.unfreeze_after = 9 is not"),
        ({"freeze": "first:2", "train.unfreeze_after": 2, "train.unfreeze_to": "first:2"}, "is freeze itself"),
        (
            {"train.unfreeze_to": "first:2"},
            "train.unfreeze_to = 'first:2' has no effect while train.unfreeze_after is 0",
        ),
        ({"train.epochs": 4, "train.warmup_epochs": 4}, "the run ends within the warm-up"),
        # numbers apart from each other, so each is seen in its place
        ({"train.epochs": 4, "train.warmup_epochs": 5}, "train.warmup_epochs = 5 is not smaller than train.epochs = 4"),
        ({"train.epochs": 4, "train.schedule": "step", "train.step_every": 4}, "never steps in 4 epochs"),
        (
            {"train.epochs": 4, "train.schedule": "step", "train.step_every": 5},
            "step_every = 5: the step schedule never steps in 4 epochs",
        ),
        ({"train.epochs": 4, "train.schedule": "step", "train.step_every": 2, "train.warmup_epochs": 2}, "never"),
        # the run's 8 epochs named as such, not patience + 1 or epochs - 1
        (
            {"train.epochs": 8, "train.early_stopping.patience": 7},
            "train.early_stopping.patience = 7: in 8 epochs no run can go that long after its best epoch",
        ),
        ({"train.early_stopping.min_delta": 0.1}, "min_delta has no effect"),
        ({"train.sync_batchnorm": True}, "sync_batchnorm has no effect"),
        ({"freeze": "all_but_head", "train.trunk_lr_scale": 0.1}, "train.trunk_lr_scale = 0.1 has no effect"),
        ({"freeze": "all_but_head", "train.trunk_lr_scale": 2.0}, "train.trunk_lr_scale = 2.0 has no effect"),
        ({"freeze": "all_but_head", "train.layer_decay": 0.5}, "train.layer_decay = 0.5 has no effect"),
        # unfreezing to what is already trainable leaves the trunk frozen: the scale is named too
        (
            {
                "freeze": "all_but_head",
                "train.trunk_lr_scale": 0.1,
                "train.unfreeze_after": 1,
                "train.unfreeze_to": "all_but_head",
            },
            "train.trunk_lr_scale = 0.1 has no effect",
        ),
    ],
)
def test_settings_that_cannot_take_effect_are_warned_of(params_file: Path, overrides: dict, fragment: str) -> None:
    lines = warnings_for(params_file, **overrides)
    assert any(fragment in line for line in lines) and len(lines) <= 2, lines
    check(load_params(params_file))  # warned of, not refused: the run goes on


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults
        {"train.epochs": 8, "train.unfreeze_after": 7, "train.unfreeze_to": "first:2"},
        {"train.epochs": 4, "train.warmup_epochs": 3},
        {"train.epochs": 4, "train.schedule": "step", "train.step_every": 3},
        {"train.epochs": 2, "train.schedule": "cosine", "train.step_every": 4},  # step_every shapes step alone
        {"train.epochs": 8, "train.early_stopping.patience": 6},
        # a one-epoch run (a smoke test): early stopping is off (patience 0), so however few the
        # epochs, there is no patience that no run can reach
        {"train.epochs": 1},
        {"freeze": "all_but_head", "train.trunk_lr_scale": 0.1, "train.unfreeze_after": 2},
        # a partly frozen trunk trains at its scale and decay; head-only or partly frozen runs
        # without unfreezing leave train.unfreeze_to at its default, which is no setting of theirs
        {"freeze": "first:2", "train.trunk_lr_scale": 0.1, "train.layer_decay": 0.5},
        {"freeze": "modules:layer1+layer2", "train.trunk_lr_scale": 0.1},
        {"freeze": "all_but_head"},
        {"freeze": "first:2"},
        {"freeze": "first:0"},  # freezes nothing, as none does (the end of a sweep first:0,2,4)
        # a timm model whose own grouping of its layers fails (RDNet's coarse matcher asserts):
        # its stages are found as a torchvision model's are
        {"model.arch": "timm/rdnet_tiny", "model.weights": None, "freeze": "first:1"},
        # each of these takes effect only beside the other setting
        {"train.epochs": 8, "train.early_stopping.patience": 3, "train.early_stopping.min_delta": 0.1},
        {"train.sync_batchnorm": True, "train.processes": 2},
    ],
)
def test_settings_that_take_effect_are_not_warned_of(params_file: Path, overrides: dict) -> None:
    assert warnings_for(params_file, **overrides) == []
    if not (overrides.get("train.sync_batchnorm") and not torch.cuda.is_available()):  # it needs GPUs
        check(load_params(params_file))


@pytest.mark.parametrize(("after", "warned"), [(4, True), (3, False)])
def test_the_trunk_settings_are_warned_of_when_unfreezing_comes_after_the_last_epoch(
    params_file: Path, after: int, warned: bool
) -> None:
    """A frozen trunk unfrozen after epoch `after` of 4: after epoch 4 it never trains, so its
    rate scale and layer decay change nothing; after epoch 3 it trains in epoch 4."""
    overrides = {"train.epochs": 4, "train.unfreeze_after": after, "train.unfreeze_to": "none"}
    trunk = {"train.trunk_lr_scale": 0.1, "train.layer_decay": 0.5}
    lines = warnings_for(params_file, freeze="all_but_head", **overrides, **trunk)
    for key, value in trunk.items():
        assert any(f"{key} = {value} has no effect" in line for line in lines) == warned, lines


@pytest.mark.parametrize(("patience", "epochs"), [(6, 8), (7, 8), (1, 3), (2, 3), (3, 3)])
def test_the_early_stopping_warning_is_right_about_early_stop(params_file: Path, patience: int, epochs: int) -> None:
    """Warned of exactly when runs.early_stop can stop no run: not even one whose first epoch was its best."""
    config = EarlyStoppingParams(patience=patience, min_delta=0.0)
    history = [{"epoch": e, "val_loss": float(e)} for e in range(1, epochs + 1)]  # epoch 1 best, then worse
    stops = any(early_stop(history[:done], "val_loss", Mode.min, config) for done in range(1, epochs))
    warned = warnings_for(params_file, **{"train.epochs": epochs, "train.early_stopping.patience": patience})
    assert bool(warned) == (not stops), (warned, stops)


def test_the_stage_prints_the_warnings(project: Path) -> None:
    set_params(project, **{"train.unfreeze_after": 2, "train.unfreeze_to": "first:2"})  # TINY_PARAMS: 2 epochs
    result = stage("check_params", project)
    assert "pipeline.check_params: train.unfreeze_after = 2 is not smaller than train.epochs = 2" in result.stderr


# --- a params.yaml changed under a running stage -----------------------------------------

# On PYTHONPATH, in every Python process started (dvc's own too); it acts only in the train
# stage's, while HOLD_AT is set: it creates HOLD_DIR/held and waits for HOLD_DIR/go, either at
# once when the process starts (start), or just before the finished run is marked finished,
# when every checkpoint is written (finish).
HOLD = """\
import os
import sys
import time

argv = sys.orig_argv
if os.environ.get("HOLD_AT") and argv[1:3] == ["-m", "pipeline.train"]:
    folder = os.environ["HOLD_DIR"]

    def hold():
        open(os.path.join(folder, "held"), "w").close()
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.05)

    if os.environ["HOLD_AT"] == "start":
        hold()
    else:
        sys.path.insert(0, os.getcwd())
        from pipeline.runs import RunFolder

        finish = RunFolder.finish

        def held_finish(self, *args, **kwargs):
            hold()
            return finish(self, *args, **kwargs)

        RunFolder.finish = held_finish
"""


@pytest.mark.parametrize("hold_at", ["start", "finish"])
def test_a_refused_exp_run_cannot_change_the_params_of_a_running_stage(
    reproduced: Reproduced, tmp_path: Path, hold_at: str
) -> None:
    """`dvc exp run -S` writes params.yaml before DVC's lock refuses it: the train stage that
    `dvc repro` runs must then fail, neither training with the new value nor letting dvc.lock
    record it."""
    project = reproduced.path
    lock = (project / "dvc.lock").read_text()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HOLD)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(tmp_path / "site"), "HOLD_AT": hold_at}
    env["HOLD_DIR"] = str(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    repro = subprocess.Popen(
        [*dvc, "repro", "-f", "-s", "train"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "held").exists():
            assert repro.poll() is None and time.monotonic() < deadline, "the train stage never started"
            time.sleep(0.1)
        refused = run([*dvc, "exp", "run", "-S", "train.lr=0.02"], project, check=False)
        assert refused.returncode != 0, refused.stdout  # DVC's lock: the repro holds it
        assert load_params(project / "params.yaml").train.lr == 0.02  # ...but it wrote params.yaml first
    finally:
        (tmp_path / "go").touch()
        output, _ = repro.communicate(timeout=300)
    assert repro.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("pipeline: error:")]
    assert len(errors) == 1 and "train.lr = 0.02 (checked: 0.01)" in errors[0], output
    assert "epoch 1/" not in output  # nothing trained with 0.02
    assert (project / "dvc.lock").read_text() == lock  # and nothing recorded


# Runs a stage as `python -m` does, with one change: just before the stage's last check of
# params.yaml, the file is replaced by CHANGED_PARAMS, as a refused `dvc exp run -S` would
# write it. A stage that skips that check, or lets a file it cannot load pass, exits 0.
CHANGE_BEFORE_THE_LAST_CHECK = """\
import os, runpy, sys
import pipeline.checked as checked
confirm = checked.confirm_unchanged
def changed_then_confirmed():
    with open("params.yaml", "w") as file:
        file.write(os.environ["CHANGED_PARAMS"])
    confirm()
checked.confirm_unchanged = changed_then_confirmed
runpy.run_module(sys.argv[1], run_name="__main__")
"""


@pytest.mark.parametrize(
    ("name", "change"),
    [("check_params", "lr"), ("weights", "unloadable"), ("prepare", "lr"), ("evaluate", "unloadable"),
     ("select_best", "lr")],
)  # fmt: skip
def test_every_stage_fails_when_params_yaml_changed_while_it_ran(
    reproduced: Reproduced, name: str, change: str
) -> None:
    """docs/design.md, checked params: each stage looks at params.yaml again once its outputs
    are written, so DVC never records values the stage did not run with. The change is either
    another value (train.lr 0.02 for 0.01) or a file that no longer loads."""
    project = reproduced.path
    text = (project / "params.yaml").read_text()
    params = OmegaConf.load(project / "params.yaml")
    assert params.train.lr == 0.01
    params.train.lr = 0.02
    changed = OmegaConf.to_yaml(params) if change == "lr" else text + "train: [\n"
    result = run_script(CHANGE_BEFORE_THE_LAST_CHECK, [f"pipeline.{name}"], project, False, {"CHANGED_PARAMS": changed})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "params.yaml changed while this stage ran: " in errors[0], result.stderr
    why = "train.lr = 0.02 (checked: 0.01)" if change == "lr" else "it no longer loads"
    assert why in errors[0], errors[0]
