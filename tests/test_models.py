"""Models: every torchvision classifier gets a new head and freezes cleanly; weights load; sizes are checked.

The all-model tests call `build_model` itself inside `torch.device("meta")`: every step it
takes (checks, construction, dropping auxiliary heads, finding and replacing the head) runs
as in the stages, but on the meta device, so no memory is allocated and no weights are
initialised. A meta-device forward pass checks shapes without computing anything.
"""

import copy
import csv
import dataclasses
import functools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models.regnet import BlockParams

from pipeline import models
from pipeline.backbones import torchvision as torchvision_backbones
from pipeline.batches import ImageBatches
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.cli import UserError
from pipeline.config import Optimizer, OptimParams
from pipeline.data.decode import Sizing
from pipeline.engine import LoopOptions, train_one_epoch
from pipeline.freezing import (
    FREEZE_SYNTAX,
    FreezeSpec,
    count_parameters,
    freeze,
    loose_parameters,
    parse_freeze,
    set_train_mode,
    stage_names,
    trainable_names,
)
from pipeline.models import ModelSpec, build_model, check_input_size, model_from_checkpoint, skeleton_model
from pipeline.optim import make_optimizer
from testing.project import REPO, run, run_script, set_checked_params, stage

ARCHS = torchvision.models.list_models(module=torchvision.models)
NUM_CLASSES = 3
CLASSES = ["ant", "bee", "cat"]
SIZE = 16  # resnet18 takes 16 px: its last stage then sees 1x1 feature maps
RESNET18_STAGES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
STAGE_LIST = ", ".join(RESNET18_STAGES)

# GoogLeNet and Inception warn that their from-scratch initialisation will change.
pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization of:FutureWarning")


# --- every torchvision classification model, built by build_model on the meta device ------


def probe_size(arch: str) -> int:
    return 299 if arch == "inception_v3" else 224


@contextmanager
def regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet computes its stage widths with tensor ops and reads them back (`.tolist()`),
    which a meta tensor cannot do. Compute just those few numbers on the CPU: its layers
    are still created on meta. (A torchvision limitation, not the pipeline's: skeleton_model
    works around it differently, see test_skeleton_model_builds_regnet_on_meta.)"""
    original = BlockParams.from_init_params.__func__

    def on_cpu(cls: type, *args: object, **kwargs: object) -> BlockParams:
        with torch.device("cpu"):
            return original(cls, *args, **kwargs)

    BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        BlockParams.from_init_params = classmethod(original)


@functools.cache
def _built_on_meta(arch: str) -> models.Built:
    with torch.device("meta"), regnet_widths_on_cpu():
        return build_model(arch, None, CLASSES, probe_size(arch))


def built_on_meta(arch: str) -> models.Built:
    """What `build_model(arch, None, CLASSES, size)` returns, built on meta (once per arch)."""
    built = copy.deepcopy(_built_on_meta(arch))  # each test gets its own model to freeze
    assert all(p.is_meta for p in built.model.parameters())
    return built


AUX_HEADS = ("AuxLogits", "aux1", "aux2")  # Inception's and GoogLeNet's auxiliary classifiers
# The dropout layer right before each torchvision model's head, by name prefix; the others have none
# there (AlexNet's feed frozen layers, not the head).
HEAD_DROPOUT = {
    "efficientnet": "classifier.0",
    "mnasnet": "classifier.0",
    "mobilenet_v2": "classifier.0",
    "squeezenet": "classifier.0",
    "mobilenet_v3": "classifier.2",
    "vgg": "classifier.5",
    "googlenet": "dropout",
    "inception_v3": "dropout",
}


def out_size(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def parameter_names(module: nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{name}" for name, _ in module.named_parameters()}


def test_model_list_is_complete():
    assert len(ARCHS) == 80
    assert {"resnet18", "inception_v3", "googlenet", "squeezenet1_0", "vit_b_16", "swin_t", "regnet_y_128gf"} <= set(
        ARCHS
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_gets_a_new_head_and_only_the_head_trains(arch: str):
    built = built_on_meta(arch)
    model, head = built.model, built.spec.head
    # torchvision's own model, as an independent reference: the layer build_model replaced
    # is its ImageNet classifier (1000 outputs).
    with regnet_widths_on_cpu():
        plain = skeleton_model(arch, built.spec.model_kwargs)
    old_head = plain.get_submodule(head)
    assert isinstance(old_head, nn.Linear | nn.Conv2d)
    assert out_size(old_head) == 1000
    new_head = model.get_submodule(head)
    assert type(new_head) is type(old_head)
    assert out_size(new_head) == NUM_CLASSES
    assert all(p.device.type == "meta" for p in model.parameters())
    assert built.spec.classes == CLASSES
    # Nothing else changed: the same parameters as torchvision's, less the old head and aux heads.
    kept = {name for name, _ in plain.named_parameters() if name.split(".")[0] not in AUX_HEADS}
    assert {n for n in kept if not n.startswith(f"{head}.")} == set(dict(model.named_parameters())) - set(
        parameter_names(new_head, head)
    )

    frozen = freeze(model, parse_freeze("all_but_head"), head)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == parameter_names(new_head, head)
    assert trainable
    assert count_parameters(model)[0] == sum(p.numel() for p in new_head.parameters())

    # In training mode only the head, the modules on the path to it and the dropout right before it
    # (the classifier's own, as in torchvision's fine-tuning, where all of the model trains) train.
    dropout = next((name for prefix, name in HEAD_DROPOUT.items() if arch.startswith(prefix)), None)
    assert dropout is None or isinstance(model.get_submodule(dropout), nn.Dropout)
    set_train_mode(model, frozen)
    for name, module in model.named_modules():
        on_path = name == "" or head == name or head.startswith(f"{name}.") or name.startswith(f"{head}.")
        assert module.training == (on_path or name == dropout), name

    size = probe_size(arch)
    output = model(torch.zeros(2, 3, size, size, device="meta"))
    # A plain tensor even in training mode: no InceptionOutputs/GoogLeNetOutputs left.
    assert isinstance(output, torch.Tensor)
    assert output.shape == (2, NUM_CLASSES)

    if arch in ("inception_v3", "googlenet"):
        assert model.aux_logits is False
        assert not [name for name, _ in model.named_modules() if name.split(".")[0] in AUX_HEADS]
    if arch.startswith("squeezenet"):
        assert isinstance(new_head, nn.Conv2d)
        assert new_head.kernel_size == (1, 1)
    if arch.startswith("vit_"):
        assert head == "heads.head"
    if arch.startswith("swin_"):
        assert head == "head"


def stage_contents(model: nn.Module, stage: str) -> tuple[list[str], set[str]]:
    """The modules a stage names, and the parameters it holds: theirs, and those it names itself
    (ViT's class token and position embedding, in its first stage)."""
    params = dict(model.named_parameters())
    modules = [part for part in stage.split("+") if part not in params]
    named = {part for part in stage.split("+") if part in params}
    return modules, named.union(*(parameter_names(model.get_submodule(m), m) for m in modules))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_has_stages_and_first_n_freezes_them(arch: str):
    built = built_on_meta(arch)
    model, head = built.model, built.spec.head
    stages = stage_names(model, head)
    assert stages
    # Disjoint, and none holds the head.
    parts = [part for stage in stages for part in stage.split("+")]
    for part in parts:
        assert part != head
        assert not head.startswith(f"{part}.")
        assert not any(other.startswith(f"{part}.") for other in parts if other != part)
    # Every parameter is in a stage: ViT's are grouped as timm groups its ViT (the tokens with the
    # patch embedding, the final norm with the last block).
    assert not loose_parameters(model, stages)
    # ...and every other parameter in one, but those beside the head in the top-level module
    # that holds it (MobileNetV3's classifier.0): none left out, as a final norm after the last
    # block would be (Swin's).
    staged = set().union(*(stage_contents(model, stage)[1] for stage in stages))
    holder = head.split(".")[0]
    assert {name for name, _ in model.named_parameters() if name.split(".")[0] != holder} - staged == set()
    if arch.startswith("vit_"):
        blocks = len(model.encoder.layers)
        assert stages[0] == "conv_proj+class_token+encoder.pos_embedding" and len(stages) == blocks + 1
        assert stages[-1] == f"encoder.layers.encoder_layer_{blocks - 1}+encoder.ln"

    modules, first = stage_contents(model, stages[0])
    assert freeze(model, parse_freeze("first:1"), head) == modules
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == first
    assert frozen

    model.requires_grad_(True)
    every = parse_freeze(f"first:{len(stages)}")
    trains = trainable_names(model, every, head)
    assert all(p.requires_grad for p in model.parameters()), "trainable_names leaves the model as it is"
    assert freeze(model, every, head) == [m for stage in stages for m in stage_contents(model, stage)[0]]
    assert trains == {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set().union(*(stage_contents(model, stage)[1] for stage in stages))
    assert not frozen & parameter_names(model.get_submodule(head), head)

    with pytest.raises(UserError, match=f"has {len(stages)} stages"):
        freeze(model, parse_freeze(f"first:{len(stages) + 1}"), head)


def test_skeleton_model_builds_regnet_on_meta():
    # RegNet cannot be constructed under torch.device("meta") (see regnet_widths_on_cpu);
    # skeleton_model, which build_model's size check uses, still gets it there, untouched.
    model = skeleton_model("regnet_y_128gf")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 600_000_000
    output = model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    assert output.shape == (1, 1000)


def test_a_regnet_of_random_weights_draws_them_as_torchvision_does() -> None:
    """model.weights null: the trunk torchvision's own constructor draws from the seed, also
    for RegNet, whose size check builds a skeleton on the CPU with torch's initialisers off
    first (they must be back on for the model itself)."""
    torch.manual_seed(0)
    built = build_model("regnet_x_400mf", None, ["a", "b"], 32)
    torch.manual_seed(0)
    reference = torchvision.models.regnet_x_400mf().state_dict()
    trunk = {key: value for key, value in built.model.state_dict().items() if not key.startswith("fc.")}
    assert trunk.keys() == {key for key in reference if not key.startswith("fc.")}
    assert all(torch.equal(value, reference[key]) for key, value in trunk.items())


# --- freezing a real small model ---------------------------------------------------------


def small_resnet(freeze_text: str = "none", seed: int = 0) -> tuple[models.Built, list[str]]:
    torch.manual_seed(seed)
    built = build_model("resnet18", None, CLASSES, SIZE)
    frozen = freeze(built.model, parse_freeze(freeze_text), built.spec.head)
    return built, frozen


def random_batches(built: models.Built, n: int = 8, seed: int = 0) -> ImageBatches:
    generator = torch.Generator().manual_seed(seed)
    size = built.spec.image_size
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, len(built.spec.classes), (n,), generator=generator)
    return ImageBatches(images, torch.arange(n), targets, torch.device("cpu"), built.spec.mean, built.spec.std)


def sgd(lr: float = 0.1) -> OptimParams:
    return OptimParams(epochs=1, batch_size=4, optimizer=Optimizer.sgd, lr=lr, momentum=0.9, weight_decay=1e-4, seed=0)


def train_two_steps(built: models.Built, frozen: list[str]) -> torch.optim.Optimizer:
    """One epoch of 8 images in batches of 4: two optimizer steps."""
    optimizer = make_optimizer(sgd(), built.model, built.spec.head)
    train_one_epoch(built.model, random_batches(built), optimizer, LoopOptions(batch_size=4, frozen=tuple(frozen)), 1)
    return optimizer


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", FreezeSpec("none")),
        ("all_but_head", FreezeSpec("all_but_head")),
        ("first:0", FreezeSpec("first", count=0)),
        ("first:3", FreezeSpec("first", count=3)),
        ("modules:layer1", FreezeSpec("modules", modules=("layer1",))),
        ("modules:layer1+bn1", FreezeSpec("modules", modules=("layer1", "bn1"))),
        ("modules:layer2.0.bn1", FreezeSpec("modules", modules=("layer2.0.bn1",))),
    ],
)
def test_parse_freeze_accepts(text: str, expected: FreezeSpec):
    assert parse_freeze(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "all", "None", " none", "all_but_head:1", "first", "first:", "first:x", "first:-1", "first:1.5",
     "modules", "modules:", "modules:a++b", "modules:+a", "last:2"],
)  # fmt: skip
def test_parse_freeze_rejects_junk_and_lists_the_syntax(text: str):
    with pytest.raises(UserError) as error:
        parse_freeze(text)
    message = str(error.value)
    assert repr(text) in message
    assert FREEZE_SYNTAX in message
    for form in ("none", "all_but_head", "first:N", "modules:NAME+NAME"):
        assert form in message


def test_resnet18_stages():
    built, _ = small_resnet()
    assert built.spec.head == "fc"
    assert stage_names(built.model, built.spec.head) == RESNET18_STAGES


def test_all_but_head_counts_and_optimizer_hold_only_the_head():
    built, frozen = small_resnet("all_but_head")
    model = built.model
    assert built.spec.head == "fc"
    assert model.fc.weight.shape == (len(CLASSES), 512)
    head_params = model.fc.weight.numel() + model.fc.bias.numel()
    assert count_parameters(model) == (head_params, sum(p.numel() for p in model.parameters()))
    optimizer = make_optimizer(sgd(), model, built.spec.head)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(held) == 2
    assert set(frozen) == {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"}


def test_all_but_head_training_leaves_every_trunk_tensor_bit_identical():
    built, frozen = small_resnet("all_but_head")
    before = snapshot(built.model)
    train_two_steps(built, frozen)
    # Weights, running_mean/var and num_batches_tracked of every BatchNorm: untouched.
    assert changed(before, built.model) == {"fc.weight", "fc.bias"}


def test_freeze_none_training_changes_every_tensor_including_batchnorm_statistics():
    # The control for the test above: the same two steps do reach every tensor when nothing is frozen.
    built, frozen = small_resnet("none")
    assert frozen == []
    before = snapshot(built.model)
    train_two_steps(built, frozen)
    assert changed(before, built.model) == set(before)
    assert built.model.bn1.num_batches_tracked.item() == before["bn1.num_batches_tracked"].item() + 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("first:1", ["conv1"]),
        ("first:2", ["conv1", "bn1"]),
        ("first:3", ["conv1", "bn1", "layer1"]),
        ("modules:layer1+bn1", ["layer1", "bn1"]),
        ("modules:layer2.0.bn1", ["layer2.0.bn1"]),
    ],
)
def test_partial_freeze_freezes_exactly_the_named_modules(text: str, expected: list[str]):
    built, frozen = small_resnet(text)
    model = built.model
    assert frozen == expected

    def in_frozen(name: str) -> bool:
        return any(name == f or name.startswith(f"{f}.") for f in expected)

    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n, _ in model.named_parameters() if in_frozen(n)
    }
    set_train_mode(model, frozen)
    for name, module in model.named_modules():
        assert module.training == (not in_frozen(name)), name

    before = snapshot(model)
    train_two_steps(built, frozen)
    assert changed(before, model) == {name for name in before if not in_frozen(name)}
    # train_one_epoch itself puts the frozen BatchNorms into inference mode.
    assert all(not model.get_submodule(name).training for name in expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modules:layer9", "module(s) layer9 that the model does not have; its stages are " + STAGE_LIST),
        ("modules:bn1+nope+layer1", "module(s) nope that"),
        ("modules:fc", "names the head (fc)"),
        ("first:7", "has 6 stages: " + STAGE_LIST),
    ],
)
def test_bad_freeze_targets_raise_and_freeze_nothing(text: str, message: str):
    built, _ = small_resnet()
    with pytest.raises(UserError) as error:
        freeze(built.model, parse_freeze(text), built.spec.head)
    assert message in str(error.value)
    assert all(p.requires_grad for p in built.model.parameters())


def autograd_ops(tensor: torch.Tensor) -> set[str]:
    """Names of every node in the autograd graph behind `tensor`."""
    seen, todo, names = set(), [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("freeze_text", ["all_but_head", "none"])
def test_all_but_head_runs_no_backward_through_the_trunk(freeze_text: str):
    built, frozen = small_resnet(freeze_text)
    model = built.model
    head_inputs = []
    model.fc.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0]))
    set_train_mode(model, frozen)
    images, targets = random_batches(built).load(torch.arange(4))
    loss = nn.functional.cross_entropy(model(images), targets)
    ops = autograd_ops(loss)
    trunk_ops = {op for op in ops if "Convolution" in op or "BatchNorm" in op}
    if freeze_text == "all_but_head":
        assert not head_inputs[0].requires_grad
        assert head_inputs[0].grad_fn is None
        assert not trunk_ops
        assert "AddmmBackward0" in ops  # the head's own op is in the graph
    else:  # control: the same checks see the trunk when it trains
        assert head_inputs[0].requires_grad
        assert trunk_ops

    head_inputs.clear()
    train_two_steps(built, frozen)
    for name, param in model.named_parameters():
        assert (param.grad is None) == (freeze_text == "all_but_head" and not name.startswith("fc.")), name


# --- weights --------------------------------------------------------------------------


def scrambled_resnet(arch: str = "resnet18", num_classes: int = 1000, seed: int = 1) -> nn.Module:
    """A torchvision model whose every tensor, BatchNorm statistics included, differs from a fresh one."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(17)
    return model


def assert_trunk_equal(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    loaded = model.state_dict()
    trunk = [name for name in state if not name.startswith(f"{head}.")]
    assert set(trunk) == {name for name in loaded if not name.startswith(f"{head}.")}
    for name in trunk:
        assert torch.equal(loaded[name], state[name]), name


def test_plain_state_dict_loads_into_everything_but_the_head(tmp_path: Path):
    state = scrambled_resnet().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    built = build_model("resnet18", str(path), CLASSES, SIZE)
    assert_trunk_equal(built.model, state, "fc")
    assert built.model.fc.weight.shape == (len(CLASSES), 512)
    # Normalised as torchvision's ImageNet weights are (their own transforms, RGB order).
    imagenet = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert (built.spec.mean, built.spec.std) == (list(imagenet.mean), list(imagenet.std))


def save_pipeline_checkpoint(built: models.Built, path: Path) -> None:
    save_checkpoint({**built.spec.to_dict(), "epoch": 1, "model_state_dict": built.model.state_dict()}, path)


def test_pipeline_checkpoint_loads_with_its_normalisation(tmp_path: Path):
    source = build_model("resnet18", None, ["zero", "one", "two", "three", "four"], SIZE)
    source.model = scrambled_resnet(num_classes=5)
    source.spec = dataclasses.replace(source.spec, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    path = tmp_path / "pretrained.pt"
    save_pipeline_checkpoint(source, path)

    built = build_model("resnet18", str(path), CLASSES, SIZE)
    assert_trunk_equal(built.model, source.model.state_dict(), "fc")
    assert built.model.fc.out_features == len(CLASSES)
    assert (built.spec.mean, built.spec.std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


def test_checkpoint_of_another_arch_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "resnet34.pt"
    save_pipeline_checkpoint(build_model("resnet34", None, CLASSES, SIZE), path)
    with pytest.raises(UserError, match=r"holds a resnet34 checkpoint, but model.arch is resnet18"):
        build_model("resnet18", str(path), CLASSES, SIZE)


def test_plain_state_dict_of_another_arch_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "resnet34.pth"
    torch.save(scrambled_resnet("resnet34").state_dict(), path)
    with pytest.raises(UserError, match=r"does not fit resnet18: 0 missing keys \[\], 96 unexpected keys \['layer1.2"):
        build_model("resnet18", str(path), CLASSES, SIZE)


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


# The shapes other training code saves a model in (`state`: the model's state_dict).
WRAPPED = {
    "DistributedDataParallel": lambda state: prefixed(state, "module."),
    "torch.compile": lambda state: prefixed(state, "_orig_mod."),
    "compiled under DDP": lambda state: prefixed(state, "module._orig_mod."),
    "DDP inside a compiled module": lambda state: prefixed(state, "_orig_mod.module."),
    "Lightning": lambda state: {"state_dict": state, "epoch": 3, "global_step": 120},
    "torchvision references": lambda state: {"model": state, "optimizer": {"state": {}, "param_groups": []}},
    "PyTorch tutorial": lambda state: {"model_state_dict": state, "epoch": 3, "loss": 0.25},
    "wrapped DDP": lambda state: {"state_dict": prefixed(state, "module."), "epoch": 3},
}
SMALL = "shufflenet_v2_x0_5"  # its head is `fc` too; files of 6 MB, not 45


@pytest.mark.parametrize(
    ("shape", "suffix"),
    [(shape, ".pth") for shape in WRAPPED] + [("DistributedDataParallel", ".safetensors")],
)
def test_wrapped_state_dicts_load_as_users_expect(tmp_path: Path, shape: str, suffix: str):
    state = scrambled_resnet(SMALL).state_dict()
    path = tmp_path / f"wrapped{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(WRAPPED[shape](state), path)
    else:
        torch.save(WRAPPED[shape](state), path)
    built = build_model(SMALL, str(path), CLASSES, SIZE)
    assert_trunk_equal(built.model, state, "fc")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_the_weights_stage_starts_from_a_users_wrapped_weights_file(project: Path, suffix: str) -> None:
    """README: a weights file under models/weights/, as DDP under Lightning saves it, becomes
    models/start.pt through the weights stage: start.pt holds the file's own tensors, the
    wrapper's entry and prefix taken off by hand here, and no head; the log names both."""
    state = scrambled_resnet(SMALL).state_dict()
    saved = {"state_dict": prefixed(state, "module."), "epoch": 3}
    name = f"models/weights/mine{suffix}"
    if suffix == ".safetensors":  # a flat file: the prefix alone
        from safetensors.torch import save_file

        save_file(saved["state_dict"], project / name)
    else:
        torch.save(saved, project / name)
    set_checked_params(project, **{"model.arch": SMALL, "model.weights": name})
    result = stage("weights", project)

    start = torch.load(project / "models/start.pt", weights_only=True)
    trunk = {key: value for key, value in state.items() if not key.startswith("fc.")}
    assert start["model_state_dict"].keys() == trunk.keys()
    for key, value in trunk.items():
        assert torch.equal(start["model_state_dict"][key], value), key
    assert start["arch"] == SMALL and start["source"] == name
    entry = "the state_dict under 'state_dict'" if suffix == ".pt" else "the state_dict"
    assert f"{name}: {entry}, its keys without the prefix 'module.'" in result.stderr, result.stderr


EPOCH_DELAY = 0.5  # seconds
# Runs a stage as `python -m` does, its epochs' training slowed by EPOCH_DELAY: an epoch's
# duration has a known floor, whatever the machine.
SLOW_EPOCHS = f"""\
import runpy, sys, time
import pipeline.engine as engine
train_and_score = engine.train_and_score
def slowed(*args, **kwargs):
    time.sleep({EPOCH_DELAY})
    return train_and_score(*args, **kwargs)
engine.train_and_score = slowed
runpy.run_module(sys.argv[1], run_name="__main__")
"""


def test_the_train_stage_freezes_the_modules_the_freeze_spec_names(prepared: Path) -> None:
    """docs/fine-tuning.md's `modules:A+B` through the train stage (first:N is counted by the
    same freeze(), against torchvision's modules above): every tensor of those modules,
    BatchNorm statistics included, is start.pt's after an epoch; every other one of the
    backbone has trained. The names are torchvision's, not the checkpoint's."""
    frozen = ["conv1", "stage3"]
    assert {name for name, _ in torchvision.models.get_model(SMALL).named_children()} >= set(frozen)
    set_checked_params(prepared, **{"freeze": "modules:conv1+stage3", "train.epochs": 1})
    began = time.perf_counter()
    run_script(SLOW_EPOCHS, ["pipeline.train"], prepared)  # `python -m pipeline.train`, each epoch EPOCH_DELAY longer
    took = time.perf_counter() - began
    # docs/design.md: start.pt is the backbone without its head. `prepared` pretrained it on the
    # source digits (model.weights: pretrain), whose classes the backbone's spec must not keep:
    # it has no outputs for them. The head's keys are those of torchvision's own model's `fc`.
    whole = load_checkpoint(prepared / "models/start.pt")
    assert whole["classes"] == [] and whole["source"].startswith("pretrained on ")
    assert not {key for key in torchvision.models.get_model(SMALL).state_dict() if key.startswith("fc.")} & set(
        whole["model_state_dict"]
    )
    start = whole["model_state_dict"]
    checkpoint = load_checkpoint(prepared / "checkpoints/epoch_001.pt")
    # docs/design.md's `seconds` of the epoch: a duration that holds the delay slept inside the
    # epoch's training (a clock started after it would give microseconds) and, the epoch being
    # part of the stage's process, no more than the stage took by this test's clock. dvclive's
    # epoch_seconds curve is the same duration.
    assert EPOCH_DELAY <= checkpoint["seconds"] <= took
    with open(prepared / "dvclive/train/plots/metrics/epoch_seconds.tsv", newline="") as file:
        curve = [(row["step"], float(row["epoch_seconds"])) for row in csv.DictReader(file, delimiter="\t")]
    assert curve == [("1", pytest.approx(checkpoint["seconds"]))], curve
    trained = checkpoint["model_state_dict"]
    same = {name for name, tensor in start.items() if torch.equal(trained[name], tensor)}
    in_frozen = {name for name in start if name.split(".")[0] in frozen}
    assert in_frozen and same == in_frozen, sorted(same ^ in_frozen)[:5]


@pytest.mark.parametrize(
    ("entries", "taken"),
    [(("state_dict", "model"), "state_dict"), (("model", "model_state_dict"), "model")],
)
def test_a_dict_with_two_state_dict_entries_gives_the_first_in_the_documented_order(
    tmp_path: Path, entries: tuple[str, str], taken: str
):
    """docs/design.md: `state_dict`, then `model`, then `model_state_dict`. Each entry holds other
    weights, so taking the wrong one shows."""
    first, second = scrambled_resnet(SMALL, seed=1).state_dict(), scrambled_resnet(SMALL, seed=2).state_dict()
    assert not torch.equal(first["conv1.0.weight"], second["conv1.0.weight"])
    held = dict(zip(entries, (first, second), strict=True))
    torch.save(dict(reversed(held.items())), tmp_path / "both.pt")  # saved order is not the rule
    built = build_model(SMALL, str(tmp_path / "both.pt"), CLASSES, SIZE)
    assert_trunk_equal(built.model, held[taken], "fc")


def encoder_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def reshaped_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = next(iter(state))
    return {**state, key: torch.zeros(2, *state[key].shape)}


@pytest.mark.parametrize(
    ("saved", "fragment"),
    [
        (lambda state: {"weights": state}, "nor a dict that holds a state_dict under 'state_dict' or 'model'"),
        # one key too many, none missing: a file of another model, not of a wrapper around this one
        (
            lambda state: {**state, "extra.weight": torch.zeros(2)},
            "0 missing keys [], 1 unexpected keys ['extra.weight']; set model.arch (and model.image_size) to the model",
        ),
        (lambda state: {k: v for k, v in state.items() if not k.startswith("stage4.")}, "missing keys ['stage4."),
        (lambda state: {"state_dict": prefixed(state, "net.")}, "every unexpected key starts with 'net.'"),
        # An encoder saved without its head inside a wrapper (as self-supervised training saves a
        # ViT's, which has no BatchNorm): the missing keys are all the unexpected ones without the
        # prefix, none fewer, and the hint still shows. BatchNorm fills in its num_batches_tracked
        # itself (they are never missing), so they are left out here, as a ViT has none.
        (lambda state: {"state_dict": prefixed(encoder_only(state), "en.")}, "every unexpected key starts with 'en.'"),
        # A prefix is taken off only when every key has it: here one key does, and stays as saved.
        (lambda state: {**state, "module.extra": torch.zeros(2)}, "1 unexpected keys ['module.extra']"),
        (reshaped_first, "tensors of other shapes: conv1.0.weight (2, 24, 3, 3, 3), the model's (24, 3, 3, 3)"),
    ],
)
def test_weights_that_do_not_fit_are_one_line_naming_the_keys(tmp_path: Path, saved, fragment: str):
    path = tmp_path / "mine.pt"
    torch.save(saved(scrambled_resnet(SMALL).state_dict()), path)
    with pytest.raises(UserError) as caught:
        build_model(SMALL, str(path), CLASSES, SIZE)
    assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and no network: a download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.set_dir() would win over TORCH_HOME

    def offline(url: str, *args, **kwargs) -> None:
        raise OSError(f"offline: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    # get_dir() reads TORCH_HOME when called, not at import, so the loader looks here.
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch"


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_torchvision_weights_load_from_the_hub_cache(name: str, torch_home: Path, monkeypatch: pytest.MonkeyPatch):
    url = ResNet18_Weights.IMAGENET1K_V1.url
    cached = torch_home / "hub" / "checkpoints" / Path(url).name
    assert cached.name == "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    state = scrambled_resnet().state_dict()
    torch.save(state, cached)
    # Different fallback statistics, so the test sees where mean and std come from.
    monkeypatch.setattr(torchvision_backbones, "IMAGENET_MEAN", [0.0, 0.0, 0.0])
    monkeypatch.setattr(torchvision_backbones, "IMAGENET_STD", [1.0, 1.0, 1.0])

    built = build_model("resnet18", name, CLASSES, SIZE)
    assert_trunk_equal(built.model, state, "fc")
    assert built.model.fc.out_features == len(CLASSES)
    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert (built.spec.mean, built.spec.std) == (list(transforms.mean), list(transforms.std))
    assert built.spec.mean != [0.0, 0.0, 0.0]


def test_missing_torchvision_weights_name_the_file_and_folder(torch_home: Path):
    with pytest.raises(UserError) as error:
        build_model("resnet18", "DEFAULT", CLASSES, SIZE)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "model.weights: null" in message


def test_unknown_torchvision_weights_name_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"valid names: DEFAULT, IMAGENET1K_V1"):
        build_model("resnet18", "IMAGENET1K_V9", CLASSES, SIZE)


def test_torchvisions_own_googlenet_file_with_its_auxiliary_heads_loads_into_the_trunk(tmp_path: Path) -> None:
    """A weights file as torchvision's own GoogLeNet one holds it, with the auxiliary
    classifiers (aux1, aux2) that fine-tuning drops: it loads, every trunk tensor as saved."""
    torch.manual_seed(0)
    state = torchvision.models.googlenet(aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    built = build_model("googlenet", str(path), CLASSES, 32)
    loaded = built.model.state_dict()
    auxiliary = {key for key in state if key.split(".")[0] in ("aux1", "aux2")}
    assert auxiliary and set(loaded) == set(state) - auxiliary
    assert all(torch.equal(loaded[key], state[key]) for key in loaded if not key.startswith("fc."))


def test_a_checkpoint_of_pretrained_googlenet_rebuilds_with_its_input_transform(torch_home: Path, tmp_path: Path):
    """torchvision builds GoogLeNet (and Inception) with transform_input=True for its weights,
    which rescales the inputs inside the model: a checkpoint trained from them must rebuild
    so, or evaluate and predict feed it other inputs than training did."""
    url = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.url
    cached = torch_home / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict(), cached)
    built = build_model("googlenet", "DEFAULT", CLASSES, 32)
    assert built.model.transform_input  # torchvision's choice for these weights
    path = tmp_path / "checkpoint.pt"
    save_pipeline_checkpoint(built, path)

    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt.transform_input
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), built.model.eval()(images))


@pytest.mark.parametrize(("arch", "size"), [("resnet18", SIZE), ("googlenet", 32), ("vit_b_32", 32)])
def test_model_from_checkpoint_rebuilds_the_same_model(arch: str, size: int, tmp_path: Path):
    torch.manual_seed(0)
    built = build_model(arch, None, CLASSES, size)
    for module in built.model.modules():  # statistics that a fresh build would not have
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
    path = tmp_path / "checkpoint.pt"
    save_pipeline_checkpoint(built, path)

    torch.manual_seed(1)  # a different random init, overwritten by the checkpoint
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = built.model.eval()(images), rebuilt.eval()(images)
    assert actual.shape == (2, len(CLASSES))
    assert torch.equal(actual, expected)


def test_model_spec_round_trips_through_the_checkpoint_keys():
    spec = build_model("vit_b_16", None, CLASSES, 32).spec
    saved = spec.to_dict()
    assert set(saved) == {
        "arch", "head", "classes", "image_size", "mean", "std", "model_kwargs", "resize_size", "interpolation"
    }  # fmt: skip
    assert ModelSpec.from_checkpoint({**saved, "epoch": 3, "model_state_dict": {}}) == spec
    # Checkpoints from before the resize size was kept: inputs resized straight to image_size.
    older = {key: value for key, value in saved.items() if key not in ("resize_size", "interpolation")}
    assert ModelSpec.from_checkpoint(older).sizing == Sizing(32, 32, "bilinear")


# --- input size -----------------------------------------------------------------------


def test_check_input_size_accepts_small_resnet():
    check_input_size("resnet18", {}, SIZE)


@pytest.mark.parametrize(("arch", "size"), [("vit_b_16", 30), ("maxvit_t", 64), ("alexnet", 16)])
def test_sizes_a_model_cannot_take_are_user_errors(arch: str, size: int):
    # ViT and MaxViT refuse the size in their constructor, AlexNet in its forward pass.
    with pytest.raises(UserError, match=rf"^model.image_size = {size} does not fit {arch}: "):
        build_model(arch, None, CLASSES, size)


def test_vit_from_scratch_takes_any_multiple_of_its_patch_size():
    check_input_size("vit_b_16", torchvision_backbones.size_kwargs("vit_b_16", None, 32), 32)
    built = build_model("vit_b_16", None, CLASSES, 32)
    assert built.spec.model_kwargs == {"image_size": 32}
    assert built.model.image_size == 32


def test_maxvit_from_scratch_is_built_for_the_size_it_is_given():
    """MaxViT fixes its input size at construction (its default: 224, and sizes of 7 x 32 x k
    alone fit its windows): built from scratch at model.image_size 448, it is built for 448
    px, as torchvision's maxvit_t(input_size=(448, 448)), on the meta device."""
    with torch.device("meta"):
        built = build_model("maxvit_t", None, CLASSES, 448)
        reference = torchvision.models.maxvit_t(input_size=(448, 448), num_classes=len(CLASSES))
    assert built.spec.model_kwargs == {"input_size": [448, 448]}
    assert [module.grid_size for module in built.model.modules() if hasattr(module, "grid_size")] == [
        module.grid_size for module in reference.modules() if hasattr(module, "grid_size")
    ]


def test_vit_with_torchvision_weights_needs_their_size(torch_home: Path):
    # Fails on the size before looking for the weights file (the cache is empty).
    min_size = torchvision.models.ViT_B_16_Weights.DEFAULT.meta["min_size"][0]
    assert min_size == 224
    with pytest.raises(UserError, match=r"^model.image_size = 32 does not fit vit_b_16: "):
        build_model("vit_b_16", "DEFAULT", CLASSES, 32)
    check_input_size("vit_b_16", torchvision_backbones.size_kwargs("vit_b_16", None, min_size), min_size)


def drop_rates(model: nn.Module) -> dict[str, float]:
    """Each stochastic depth module's rate: torchvision's StochasticDepth p, timm's DropPath drop_prob."""
    return {
        name: module.p if type(module).__name__ == "StochasticDepth" else module.drop_prob
        for name, module in model.named_modules()
        if type(module).__name__ in ("StochasticDepth", "DropPath")
    }


def library_model(arch: str, rate: float) -> nn.Module:
    """`arch` as its library builds it with stochastic depth at `rate`."""
    if arch.startswith("timm/"):
        import timm

        return timm.create_model(arch.removeprefix("timm/"), drop_path_rate=rate)
    return torchvision.models.get_model(arch, stochastic_depth_prob=rate)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "convnext_tiny", "timm/vit_tiny_patch16_224", "timm/resnet18"])
def test_drop_path_gives_each_block_the_rate_its_library_gives_it(arch: str) -> None:
    """train.drop_path 0.3: every block's stochastic depth rate as the library's own constructor
    spreads 0.3 over the depth (torchvision's stochastic_depth_prob, timm's drop_path_rate), in
    the trained model and in the one rebuilt from its checkpoint's spec; null keeps the model's own."""
    with torch.device("meta"):
        built = build_model(arch, None, CLASSES, 224, drop_path=0.3)
        expected = drop_rates(library_model(arch, 0.3))
        rebuilt = built.spec.untrained_model()
        default = drop_rates(build_model(arch, None, CLASSES, 224).model)
    assert len(expected) > 3 and len(set(expected.values())) > 3  # rates that grow with depth
    assert drop_rates(built.model) == pytest.approx(expected)
    assert drop_rates(rebuilt) == pytest.approx(expected)
    assert default != drop_rates(built.model)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "convnext_tiny", "timm/vit_tiny_patch16_224"])
def test_a_drop_path_of_zero_turns_stochastic_depth_off(arch: str) -> None:
    """train.drop_path 0 turns it off (docs/params.md), whatever the model's default (0.2 and 0.1
    for these torchvision models): blocks at p 0, timm's without DropPath modules, as the
    libraries' own constructors build them at 0."""
    with torch.device("meta"):
        built = build_model(arch, None, CLASSES, 224, drop_path=0.0)
        expected = drop_rates(library_model(arch, 0.0))
    assert set(expected.values()) <= {0.0}
    assert drop_rates(built.model) == expected


def test_train_drop_path_wins_over_the_rate_a_starting_checkpoint_was_trained_with(tmp_path: Path) -> None:
    """A pipeline checkpoint trained with train.drop_path 0.1 as model.weights: the new run's
    0.3 is what its model gets, as the library spreads it; null keeps the checkpoint's 0.1
    (docs/params.md), not the library's 0.2."""
    path = tmp_path / "weights.pt"
    save_pipeline_checkpoint(build_model("efficientnet_b0", None, CLASSES, 32, drop_path=0.1), path)
    for rate, kept in [(0.3, 0.3), (None, 0.1)]:
        built = build_model("efficientnet_b0", str(path), CLASSES, 32, drop_path=rate)
        with torch.device("meta"):
            expected = drop_rates(torchvision.models.efficientnet_b0(stochastic_depth_prob=kept))
        assert drop_rates(built.model) == pytest.approx(expected), rate


def test_the_models_command_lists_the_head_and_what_first_n_freezes() -> None:
    """docs/fine-tuning.md: `python -m pipeline.models ARCH` names the head and, in order, the
    stages `freeze: first:N` counts: for resnet18 its children with parameters but the head,
    for vit_b_16 the patch embedding (with the class token and position embeddings), then
    each encoder block, as torchvision's own modules list them; for googlenet its children but
    the head and the auxiliary classifiers that fine-tuning drops (aux1, aux2)."""
    result = run([sys.executable, "-m", "pipeline.models", "resnet18", "vit_b_16", "googlenet"], REPO)
    lines = result.stdout.splitlines()
    with torch.device("meta"):
        resnet, vit = torchvision.models.resnet18(), torchvision.models.vit_b_16()
    trunk = [name for name, child in resnet.named_children() if name != "fc" and any(True for _ in child.parameters())]
    assert lines[0] == f"resnet18: head fc; {len(trunk)} stages for freeze first:N"
    assert [line.split()[0] for line in lines[1 : 1 + len(trunk)]] == [f"first:{n}" for n in range(1, len(trunk) + 1)]
    assert [line.split()[-1] for line in lines[1 : 1 + len(trunk)]] == trunk
    blocks = [f"encoder.layers.{name}" for name, _ in vit.encoder.layers.named_children()]
    at = 1 + len(trunk)
    assert lines[at] == f"vit_b_16: head heads.head; {1 + len(blocks)} stages for freeze first:N"
    listed = [line.split()[-1].split("+") for line in lines[at + 1 : at + 2 + len(blocks)]]
    assert listed[0][0] == "conv_proj" and [entry[0] for entry in listed[1:]] == blocks
    at += 2 + len(blocks)
    with torch.device("meta"):
        googlenet = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    trunk = [
        name
        for name, child in googlenet.named_children()
        if name not in ("fc", "aux1", "aux2") and any(True for _ in child.parameters())
    ]
    assert lines[at] == f"googlenet: head fc; {len(trunk)} stages for freeze first:N"
    assert [line.split()[-1] for line in lines[at + 1 :]] == trunk


@pytest.mark.parametrize(
    ("arch", "weights", "size", "resize"),
    [
        ("resnet18", "DEFAULT", 224, 256),  # the weights' own sizes
        ("resnet18", "DEFAULT", 32, 37),  # 32 x 256 / 224 = 36.57: the nearest pixel
        ("inception_v3", "DEFAULT", 150, 172),  # 150 x 342 / 299 = 171.57
        ("resnet18", None, 32, 32),  # no weights: straight to image_size
    ],
)
def test_another_image_size_keeps_the_weights_resize_to_crop_ratio(
    arch: str, weights: str | None, size: int, resize: int
) -> None:
    """docs/params.md: a different image_size keeps the weights' resize/crop ratio; the resizes
    here by hand from the ratios weights.transforms() states (256/224, 342/299)."""
    assert models.model_sizing(arch, weights, size) == Sizing(resize, size, "bilinear")


@pytest.mark.parametrize(
    ("arch", "head"), [("mobilenet_v3_small", "classifier.3"), ("vgg11", "classifier.6"), ("alexnet", "classifier.6")]
)
def test_a_backbone_whose_features_hold_its_weight_is_opened_into_their_blocks(arch: str, head: str) -> None:
    """docs/fine-tuning.md: the stages `first:N` counts are the top-level modules, but one
    that holds over 90% of the backbone's parameters is opened into its children. These
    models' `features` hold nearly all of it (their classifier, which holds the head, is no
    stage): their stages are the blocks of `features` that have parameters, by torchvision's
    own module list."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch)
    blocks = [f"features.{i}" for i, block in enumerate(model.features) if any(True for _ in block.parameters())]
    assert stage_names(model, head) == blocks


@pytest.mark.parametrize(
    ("arch", "head", "trunk"),
    [("swin_t", "head", "features"), ("regnet_y_400mf", "fc", "trunk_output"), ("maxvit_t", "classifier.5", "blocks")],
)
def test_the_module_holding_the_weight_is_opened_beside_a_small_stem_or_norm(arch: str, head: str, trunk: str) -> None:
    """docs/fine-tuning.md's 90% rule where the module holding the weight sits beside small ones
    (Swin's final norm, RegNet's and MaxViT's stem): that module, not the smallest, is opened
    into its children, the others kept as they are, all in torchvision's own module order."""
    with torch.device("meta"), regnet_widths_on_cpu():
        model = torchvision.models.get_model(arch)

    def size(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    holder = head.split(".")[0]  # its top-level module: no stage (the classifier of MaxViT, Swin's bare head)
    top = {name: child for name, child in model.named_children() if name != holder and size(child)}
    assert len(top) > 1 and size(top[trunk]) > 0.9 * sum(size(child) for child in top.values())
    expected = []
    for name, child in top.items():
        opened = [f"{name}.{inner}" for inner, block in child.named_children() if size(block)]
        expected += opened if name == trunk else [name]
    assert stage_names(model, head) == expected


def test_a_pipeline_checkpoint_at_another_image_size_keeps_its_resize_to_crop_ratio(tmp_path: Path) -> None:
    """A checkpoint of this pipeline as model.weights, trained at 16 px from inputs resized to
    20 (the 1.25 of 20/16), used at 32 px: resized to 40, by hand, with its filter."""
    built = build_model("resnet18", None, CLASSES, 16)
    path = tmp_path / "weights.pt"
    spec = {**built.spec.to_dict(), "resize_size": 20, "interpolation": "bicubic"}
    save_checkpoint({**spec, "epoch": 1, "model_state_dict": built.model.state_dict()}, path)
    assert models.model_sizing("resnet18", str(path), 16) == Sizing(20, 16, "bicubic")
    assert models.model_sizing("resnet18", str(path), 32) == Sizing(40, 32, "bicubic")
