"""timm backbones (`model.arch: timm/<name>`): a new head, timm's own stages for freezing,
weights from files and from an offline Hugging Face cache, timm's preprocessing, and the
checkpoint's model rebuilt for export and predict.

On a sample of timm's families: a ResNet, a ConvNeXt, and a ViT. timm builds a ViT for one
input size (its pretrained_cfg's fixed_input_size), so the pipeline builds it for
model.image_size (`img_size`); 32 px is a 2 x 2 grid of its 16 px patches. Where weights do
not matter, models are built on the meta device.
"""

import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, PILToTensor, Resize, ToDtype

from pipeline import export
from pipeline.backbones import timm as timm_backbones
from pipeline.batches import ImageBatches
from pipeline.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.cli import UserError
from pipeline.config import Optimizer, OptimParams
from pipeline.data.cache import decoded_images
from pipeline.freezing import freeze, parse_freeze, set_train_mode, stage_names
from pipeline.models import build_model, check_model_params, describe, model_from_checkpoint
from pipeline.optim import make_optimizer
from testing.project import REPO, run, set_checked_params, set_params, stage
from tests.helpers import file_sha1

CLASSES = ["ant", "bee", "cat"]
SIZE = 32
ARCHS = ["timm/resnet18", "timm/convnext_atto", "timm/vit_tiny_patch16_224"]
HEADS = {"timm/resnet18": "fc", "timm/convnext_atto": "head.fc", "timm/vit_tiny_patch16_224": "head"}


def on_meta(arch: str) -> tuple[nn.Module, str]:
    with torch.device("meta"):
        built = build_model(arch, None, CLASSES, SIZE)
    return built.model, built.spec.head


def timm_groups(model: nn.Module) -> list[set[str]]:
    """timm's own grouping of the parameters, as its layer-decay optimizer reads it, in order."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [set(groups[index]) for index in sorted(groups)]


def params_of(module: nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{name}" for name, _ in module.named_parameters()}


def test_importing_the_stages_does_not_import_timm() -> None:
    code = "import sys, pipeline.models, pipeline.train, pipeline.weights, tools.predict; print('timm' in sys.modules)"
    result = run([sys.executable, "-c", code], REPO)
    assert result.stdout.strip() == "False"


def test_any_timm_model_is_an_arch_and_a_typo_gets_a_hint() -> None:
    for name in ["resnet18", "convnext_atto", timm.list_models()[-1]]:
        timm_backbones.check_arch(f"timm/{name}")
    with pytest.raises(UserError, match=r"is not a timm model; did you mean timm/resnet18"):
        timm_backbones.check_arch("timm/resnet81")
    with pytest.raises(
        UserError, match=r"names a pretrained tag: set model.arch: timm/resnet18, model.weights: a1_in1k"
    ):
        timm_backbones.check_arch("timm/resnet18.a1_in1k")
    with pytest.raises(UserError, match=r"valid names: DEFAULT, a1_in1k, a2_in1k"):
        check_model_params("timm/resnet18", "in9k", SIZE, {})


@pytest.mark.parametrize("arch", ARCHS)
def test_a_new_head_and_all_but_head_trains_exactly_it(arch: str) -> None:
    model, head = on_meta(arch)
    assert head == HEADS[arch] == model.pretrained_cfg["classifier"]
    assert model.get_submodule(head) is model.get_classifier()
    assert model.get_classifier().out_features == model.num_classes == len(CLASSES)
    # Nothing else changed: the parameters of timm's own model built for these classes.
    name = arch.removeprefix("timm/")
    with torch.device("meta"):
        reference = timm.create_model(name, num_classes=len(CLASSES), **({"img_size": SIZE} if "vit" in name else {}))
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    assert model(torch.zeros(2, 3, SIZE, SIZE, device="meta")).shape == (2, len(CLASSES))

    frozen = freeze(model, parse_freeze("all_but_head"), head)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == params_of(model.get_classifier(), head)
    # Only the head, the modules on the path to it and the dropout right before it train (timm's
    # ResNet drops out in its forward, which runs in training mode on the path).
    dropout = {"timm/convnext_atto": "head.drop", "timm/vit_tiny_patch16_224": "head_drop"}.get(arch)
    assert dropout is None or isinstance(model.get_submodule(dropout), nn.Dropout)
    set_train_mode(model, frozen)
    for name, module in model.named_modules():
        on_path = name == "" or head == name or head.startswith(f"{name}.") or name.startswith(f"{head}.")
        assert module.training == (on_path or name == dropout), name


@pytest.mark.parametrize("arch", ARCHS)
def test_first_n_freezes_timms_first_n_groups(arch: str) -> None:
    model, head = on_meta(arch)
    groups = timm_groups(model)
    assert params_of(model.get_classifier(), head) <= groups[-1]  # the head's group, which is no stage
    stages = stage_names(model, head)
    assert len(stages) == len(groups) - 1
    for count in range(len(stages) + 1):
        frozen = freeze(model, parse_freeze(f"first:{count}"), head)
        assert {n for n, p in model.named_parameters() if not p.requires_grad} == set().union(*groups[:count])
        set_train_mode(model, frozen)
        assert all(not model.get_submodule(name).training for name in frozen)
    with pytest.raises(UserError, match=re.escape(f"has {len(stages)} stages: {', '.join(stages)}")):
        freeze(model, parse_freeze(f"first:{len(stages) + 1}"), head)


def rates_and_decays(model: nn.Module, groups: list[dict], lr: float) -> dict[str, tuple[float, float]]:
    """Each parameter's (learning rate, weight decay) in optimizer param groups; a group's rate
    is its `lr`, or `lr` times timm's `lr_scale`."""
    names = {id(param): name for name, param in model.named_parameters()}
    return {
        names[id(param)]: (group.get("lr", lr * group.get("lr_scale", 1.0)), group["weight_decay"])
        for group in groups
        for param in group["params"]
    }


# XCiT's no_weight_decay() holds a wildcard ('pos_embed.*', a module whose convolution weight is
# 4-D), matched as timm matches it: fnmatch, the parameter's name against the pattern. Its build
# takes a second, so it runs once, for the decay alone.
@pytest.mark.parametrize(
    ("arch", "layer_decay"),
    [*((arch, decay) for arch in ARCHS for decay in (1.0, 0.65)), ("timm/xcit_nano_12_p16_224", 1.0)],
)
def test_parameter_groups_are_timms_name_by_name(arch: str, layer_decay: float) -> None:
    """Weight decay as timm's param_groups_weight_decay (1-D parameters, biases and the model's
    no_weight_decay(): ViT's cls_token and pos_embed undecayed, XCiT's pos_embed.* too), and with
    layer decay each parameter's rate as param_groups_layer_decay scales it: timm's fine groups
    (each ResNet and ConvNeXt block apart), ConvNeXt's head.norm with the head, ViT's final norm
    with its last block."""
    model, head = on_meta(arch)
    params = OptimParams(
        epochs=1, batch_size=2, optimizer=Optimizer.adamw, lr=0.3, momentum=0, weight_decay=0.05, seed=0
    )
    ours = make_optimizer(params, model, head, decay_norms_and_biases=False, layer_decay=layer_decay)
    kept = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay == 1:
        theirs = param_groups_weight_decay(model, 0.05, no_weight_decay_list=kept)
    else:
        theirs = param_groups_layer_decay(model, 0.05, no_weight_decay_list=kept, layer_decay=layer_decay)
    expected = rates_and_decays(model, theirs, 0.3)
    got = rates_and_decays(model, ours.param_groups, 0.3)
    assert got.keys() == expected.keys()
    for name, (rate, decay) in expected.items():
        assert got[name] == (pytest.approx(rate, rel=1e-12), decay), name
    if "vit" in arch:
        assert got["cls_token"][1] == got["pos_embed"][1] == 0 and got["blocks.0.attn.qkv.weight"][1] == 0.05
    if "xcit" in arch:
        assert got["pos_embed.token_projection.weight"][1] == 0 and got["blocks.0.attn.qkv.weight"][1] == 0.05
    # One rate per fine group: the stem, each block (8 for resnet18, 12 for the others), the head's.
    rates = {rate for rate, _ in got.values()}
    assert len(rates) == (1 if layer_decay == 1 else {"timm/resnet18": 10}.get(arch, 14))


def test_describe_lists_timms_stages() -> None:
    lines = describe("timm/resnet18").splitlines()
    assert lines[0] == "timm/resnet18: head fc; 5 stages for freeze first:N"
    assert lines[1].split() == ["first:1", "freezes", "up", "to", "and", "including", "conv1+bn1"]
    vit = describe("timm/vit_tiny_patch16_224")
    assert "including cls_token+pos_embed+patch_embed\n" in vit and vit.endswith("including blocks.11+norm")


# --- weights ------------------------------------------------------------------------------


def random_state(name: str, **model_kwargs: object) -> dict[str, torch.Tensor]:
    """A state_dict of timm's model `name` with its original head (1000 classes unless
    `model_kwargs` say otherwise), every tensor random."""
    with torch.device("meta"):
        model = timm.create_model(name, **model_kwargs)
    generator = torch.Generator().manual_seed(1)
    return {
        key: torch.randn(value.shape, generator=generator)
        if value.is_floating_point()
        else torch.randint(0, 100, value.shape, generator=generator)
        for key, value in model.state_dict().items()
    }


def assert_trunk_loaded(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    loaded = model.state_dict()
    trunk = {key for key in state if not key.startswith(f"{head}.")}
    assert trunk == {key for key in loaded if not key.startswith(f"{head}.")}
    for key in trunk:
        assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize(
    ("arch", "suffix"),
    [
        ("timm/resnet18", ".safetensors"),
        ("timm/resnet18", ".pth"),
        ("timm/convnext_atto", ".safetensors"),
        ("timm/vit_tiny_patch16_224", ".safetensors"),
    ],
)
def test_weights_files_load_into_everything_but_the_head(arch: str, suffix: str, tmp_path: Path) -> None:
    state = random_state(arch.removeprefix("timm/"), **({"img_size": SIZE} if "vit" in arch else {}))
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    built = build_model(arch, str(path), CLASSES, SIZE)
    assert_trunk_loaded(built.model, state, built.spec.head)
    assert built.model.get_classifier().out_features == len(CLASSES)


def test_a_vit_file_made_for_another_image_size_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_file(random_state("vit_tiny_patch16_224", img_size=SIZE), path)  # 1 + 2 x 2 position embeddings
    shapes = r"tensors of other shapes: pos_embed \(1, 5, 192\), the model's \(1, 17, 192\);"
    with pytest.raises(UserError, match=rf"vit.safetensors does not fit timm/vit_tiny_patch16_224: {shapes}"):
        build_model("timm/vit_tiny_patch16_224", str(path), CLASSES, 2 * SIZE)
    # check_params reads the same file's header alone, and finds the same
    with pytest.raises(UserError, match=rf"vit.safetensors does not fit timm/vit_tiny_patch16_224: {shapes}"):
        check_model_params("timm/vit_tiny_patch16_224", str(path), 2 * SIZE, {})


def test_a_damaged_safetensors_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(random_state("resnet18"), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"weights.safetensors is not a readable safetensors file: "):
        build_model("timm/resnet18", str(path), CLASSES, SIZE)


def fill_hub_cache(hf_home: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """What `hf download repo_id` leaves in $HF_HOME/hub: refs/main names a commit, whose
    snapshot holds the repo's files (links into blobs/ in a real cache; files do as well)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text(json.dumps({"architecture": repo_id.partition("/")[2].split(".")[0]}))


@pytest.fixture
def offline(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME for the stages run in `project`, and no network: every download goes
    to a closed local port."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("NO_PROXY", "no_proxy", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    return tmp_path / "hf_home"


# vit_tiny's default tag has a custom loader for its original .npz file; the hub holds a
# state_dict, which the ViT's filter resizes to the 2 x 2 grid of 32 px inputs.
@pytest.mark.parametrize(
    ("arch", "weights", "repo_id"),
    [
        ("timm/resnet18", "DEFAULT", "timm/resnet18.a1_in1k"),
        # a tag other than the default, whose head has other classes than the default's (ImageNet-21k's 21,843)
        ("timm/vit_tiny_patch16_224", "augreg_in21k", "timm/vit_tiny_patch16_224.augreg_in21k"),
        ("timm/vit_tiny_patch16_224", "augreg_in21k_ft_in1k", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    ],
)
def test_the_weights_stage_loads_timm_weights_from_an_offline_hub_cache(
    arch: str, weights: str, repo_id: str, project: Path, offline: Path
) -> None:
    config = timm.models.get_pretrained_cfg(repo_id.removeprefix("timm/"))
    # for timm's own input size, 224 px, and the tag's own classes
    state = random_state(arch.removeprefix("timm/"), num_classes=config.num_classes)
    fill_hub_cache(offline, repo_id, state)
    set_checked_params(project, **{"model.arch": arch, "model.weights": weights, "model.image_size": SIZE})
    stage("weights", project)
    start = load_checkpoint(project / "models/start.pt")
    saved = start["model_state_dict"]
    head = HEADS[arch]
    assert set(saved) == {key for key in state if not key.startswith(f"{head}.")}
    resized = {"pos_embed"} if "vit" in arch else set()
    for key in set(saved) - resized:
        assert torch.equal(saved[key], state[key]), key
    for key in resized:  # 1 class token and 14 x 14 patches at 224 px; 1 and 2 x 2 at 32 px
        assert (state[key].shape[1], saved[key].shape[1]) == (1 + 14 * 14, 1 + 2 * 2)
    # The preprocessing of the tag's data config, for 32 px crops.
    expected = (math.floor(SIZE / config.crop_pct), config.interpolation, list(config.mean), list(config.std))
    assert (start["resize_size"], start["interpolation"], start["mean"], start["std"]) == expected


def test_timm_weights_kept_only_at_a_url_load_from_torch_hubs_cache(
    project: Path, offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few of timm's tags are kept at a URL, not on the Hugging Face hub (legacy_seresnet18's
    in1k): the weights stage reads them where torch.hub keeps what it downloads,
    $TORCH_HOME/hub/checkpoints/<the URL's file name>, never downloading them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = timm.models.get_pretrained_cfg("legacy_seresnet18.in1k")
    assert config.url and not config.hf_hub_id
    state = random_state("legacy_seresnet18")
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / config.url.rsplit("/", 1)[1])
    params = {"model.arch": "timm/legacy_seresnet18", "model.weights": "in1k", "model.image_size": SIZE}
    set_checked_params(project, **params)
    log = stage("weights", project).stderr
    # The tag's preprocessing, by hand from its config: the resize keeps crop_pct.
    resize = math.floor(SIZE / config.crop_pct)
    assert f"inputs resized to {resize}, centre {SIZE} crop ({config.interpolation})" in log and resize != SIZE
    saved = load_checkpoint(project / "models/start.pt")["model_state_dict"]
    assert set(saved) == {key for key in state if not key.startswith(f"{config.classifier}.")}
    assert all(torch.equal(saved[key], state[key]) for key in saved)


def test_missing_timm_weights_name_the_file_and_the_folder(project: Path, offline: Path) -> None:
    set_checked_params(project, **{"model.arch": "timm/resnet18", "model.weights": "DEFAULT", "model.image_size": SIZE})
    result = stage("weights", project, check=False)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    folder = offline / "hub" / "models--timm--resnet18.a1_in1k"
    assert "timm weights resnet18.a1_in1k are not in the Hugging Face cache" in errors[0]
    assert f"Put model.safetensors of https://huggingface.co/timm/resnet18.a1_in1k into {folder} " in errors[0]
    assert "model.weights: null" in errors[0]
    assert not (project / "models/start.pt").exists()


# --- preprocessing ---------------------------------------------------------------------


def photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A JPEG with a photo's mix of smooth regions and fine detail."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    detail = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(1)
    )
    Image.blend(coarse.resize((width, height), Image.Resampling.BICUBIC), detail, 0.25).save(path, quality=90)
    return path


# resnet18's default tag: crop_pct 0.95, bicubic; its tv_in1k tag: 0.875, bilinear; ViT's:
# 0.9 and a mean and std of 0.5. At their own 224 px, and at 96 px, where the resize keeps crop_pct.
@pytest.mark.parametrize(
    ("name", "size"),
    [("resnet18", 224), ("resnet18.tv_in1k", 96), ("vit_tiny_patch16_224", 224), ("vit_tiny_patch16_224", 96)],
)
def test_inputs_are_timms_own_eval_transforms(name: str, size: int, tmp_path: Path) -> None:
    paths = [photo(tmp_path / f"{w}x{h}.jpg", w, h, seed) for seed, (w, h) in enumerate([(500, 375), (375, 500)])]
    model_name, _, tag = name.partition(".")  # no tag: the model's default one
    sizing, mean, std = timm_backbones.preprocessing(f"timm/{model_name}", name if tag else None, size)
    manifest = pd.DataFrame({"path": [p.as_posix() for p in paths], "sha1": [file_sha1(p) for p in paths]})
    images = torch.from_numpy(decoded_images(manifest, sizing, tmp_path / "cache"))
    batches = ImageBatches(images, torch.arange(2), torch.zeros(2), torch.device("cpu"), mean, std)
    ours = batches.load(torch.arange(2))[0]

    with torch.device("meta"):
        model = timm.create_model(name)
    config = resolve_model_data_config(model)
    transform = create_transform(**{**config, "input_size": (3, size, size)})  # timm's eval transform, on Pillow
    reference = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    # In steps of 8-bit value: timm resizes with Pillow, the pipeline with torchvision's uint8
    # kernel, which follows Pillow's but rounds apart here and there. Measured: a mean of
    # 0.002 to 0.004 steps and a maximum of 1, but for one pixel in 300,000 at 2. An image
    # off by a pixel in size or place measures about 16 on average (test_preprocessing.py).
    step = 1 / 255 / min(config["std"])
    difference = (ours - reference).abs()
    assert ours.shape == reference.shape
    assert difference.max() <= 2 * step * 1.001
    assert difference.mean() < 0.05 * step


@pytest.mark.parametrize(
    ("name", "crop_mode"),
    [
        ("convnext_base.fb_in22k_ft_in1k_384", "squash"),
        ("deepseek_vit_412m.deepseek_v4_1_flash", "border"),
        ("resnet18.tv_in1k", "center"),
    ],
)
def test_a_tag_whose_eval_transform_is_not_a_centre_crop_is_warned_of(
    name: str, crop_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/fine-tuning.md: tags whose crop_mode is squash or border (timm's data config) get
    the centre crop all the same, with a warning; centre-crop tags get none."""
    model_name = name.partition(".")[0]
    assert timm.models.get_pretrained_cfg(name).to_dict()["crop_mode"] == crop_mode
    with caplog.at_level(logging.WARNING):
        timm_backbones.preprocessing(f"timm/{model_name}", name, 64)
    warned = crop_mode != "center"
    assert ("crop_mode" in caplog.text) == warned, caplog.text
    assert not warned or f"timm's data config for {name} resizes with crop_mode {crop_mode}" in caplog.text


# --- the checkpoint's model: export and predict --------------------------------------------


def tiny_checkpoint(arch: str) -> tuple[dict, nn.Module]:
    torch.manual_seed(0)
    built = build_model(arch, None, CLASSES, SIZE)
    return {**built.spec.to_dict(), "model_state_dict": built.model.state_dict()}, built.model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_export_computes_what_the_model_does(arch: str) -> None:
    checkpoint, model = tiny_checkpoint(arch)
    program = export.tensor_program(checkpoint).module()
    for batch in (1, 5):
        images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(images)
            torch.testing.assert_close(model_from_checkpoint(checkpoint).eval()(images), expected, rtol=0, atol=0)
            torch.testing.assert_close(program(images), expected, rtol=1e-6, atol=1e-6)


def test_predict_classifies_with_a_timm_checkpoint(project: Path) -> None:
    checkpoint, model = tiny_checkpoint("timm/convnext_atto")
    save_checkpoint(checkpoint, project / "models/tiny.pt")
    rng = np.random.default_rng(0)
    for name, shape in [("a.png", (40, 30)), ("b.png", (32, 48))]:
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(project / name)
    result = run([sys.executable, "-m", "tools.predict", "a.png", "b.png", "--model", "models/tiny.pt",
                  "--format", "json", "--top-k", "3"], project)  # fmt: skip

    # The checkpoint's preprocessing (timm's, for convnext_atto: resize 36, bicubic), by torchvision.
    transform = Compose([
        PILToTensor(),
        Resize(checkpoint["resize_size"], interpolation=InterpolationMode(checkpoint["interpolation"])),
        CenterCrop(SIZE),
        ToDtype(torch.float32, scale=True),
        Normalize(checkpoint["mean"], checkpoint["std"]),
    ])  # fmt: skip
    assert (checkpoint["resize_size"], checkpoint["interpolation"]) == (36, "bicubic")
    for obj in json.loads(result.stdout):
        with torch.no_grad():
            probabilities = model(transform(Image.open(project / obj["path"]).convert("RGB"))[None]).softmax(1)[0]
        values, indices = probabilities.topk(3)
        assert [entry["class"] for entry in obj["top"]] == [CLASSES[index] for index in indices.tolist()]
        assert [entry["probability"] for entry in obj["top"]] == pytest.approx(values.tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("arch", "heads"),
    [
        ("timm/deit_tiny_distilled_patch16_224", "('head', 'head_dist')"),
        ("timm/levit_128s", "('head.linear', 'head_dist.linear')"),
    ],
)
def test_a_model_with_two_classifier_layers_is_refused_before_any_work(arch: str, heads: str, project: Path) -> None:
    """docs/fine-tuning.md: distilled DeiT and LeViT carry a head and a distillation head; the
    pipeline fine-tunes one, so check_params refuses them in one line naming both, and no
    stage after it runs."""
    set_params(project, **{"model.arch": arch, "model.weights": None, "model.image_size": 224})
    result = stage("check_params", project, check=False)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{arch} has not one classifier layer but {heads}" in errors[0]


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "resnet18"])
def test_default_weights_are_the_tag_timm_itself_defaults_to(model_name: str) -> None:
    """docs/params.md: for a timm/ arch, model.weights DEFAULT is timm's default tag for the
    model: the one timm.create_model builds with when no tag is named (for the ViT not its
    first listed tag, augreg_in21k, a 21k-class model, but augreg_in21k_ft_in1k)."""
    with torch.device("meta"):
        default_tag = timm.create_model(model_name).pretrained_cfg["tag"]
    assert timm_backbones.named_weights(f"timm/{model_name}", "DEFAULT") == f"{model_name}.{default_tag}"
    first = timm.list_pretrained(f"{model_name}.*")[0]
    assert model_name != "vit_tiny_patch16_224" or first != f"{model_name}.{default_tag}"


def test_timm_weights_kept_as_pytorch_model_bin_are_found_in_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some Hugging Face repos of timm hold pytorch_model.bin and no model.safetensors: the
    weights are found there too, in the cache as `hf download` leaves it, or as timm's own
    download does: with a marker in .no_exist/ that the repo has no model.safetensors."""
    from huggingface_hub import constants

    repo_id = "timm/resnet18.a1_in1k"
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.save({"fc.weight": torch.zeros(2, 2)}, snapshot / "pytorch_model.bin")
    absent = snapshot.parents[1] / ".no_exist" / ("0" * 40)
    absent.mkdir(parents=True)
    (absent / "model.safetensors").touch()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert timm_backbones._hub_file("resnet18.a1_in1k", repo_id) == snapshot / "pytorch_model.bin"
