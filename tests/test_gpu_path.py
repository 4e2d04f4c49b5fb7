"""The GPU path, checked on the CPU: device identity, one memory layout for model and inputs,
no host sync inside an epoch, streamed batches, and one compiled graph per run.

No GPU is needed: the meta device stands in for one where only the code path matters
(what is copied where, how often), and a patched layout policy makes the CPU take the
channels_last path that CUDA takes.
"""

import copy
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline import batches, devices
from pipeline import features as feature_pass
from pipeline.augment import draw_augmentation
from pipeline.batches import Batches, CropBatches, ImageBatches, iterate, streamed
from pipeline.cli import UserError
from pipeline.config import EvaluateParams
from pipeline.devices import autocast, canonical_device, resolve_device, set_determinism, to_device
from pipeline.engine import (
    EpochOrder,
    LoopOptions,
    compile_for_training,
    epoch_generator,
    predict,
    train_one_epoch,
    train_steps,
)
from pipeline.evaluate import batch_size_on
from tests.helpers import crop_batches_of

REPO = Path(__file__).resolve().parent.parent
META = torch.device("meta")
CPU = torch.device("cpu")


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def conv_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip


def image_batches(n: int, on: torch.device, device: torch.device, size: int = 8) -> ImageBatches:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n + 3, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 3, (n,), generator=generator)
    rows = torch.arange(3, n + 3)  # not the first rows: the gather must use `rows`
    return ImageBatches(images.to(on), rows, targets, device, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])


# --- device identity ----------------------------------------------------------------------------


def test_cuda_without_an_index_is_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # The crash this guards against: torch.device("cuda") != torch.device("cuda:0"), the name
    # tensors report, so images already on the GPU were "moved" again and pinned.
    assert torch.device("cuda") != torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert canonical_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert canonical_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert canonical_device(CPU) == CPU


def test_resolve_device_on_a_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cuda", torch.cuda.current_device())
        assert resolve_device("auto").index is not None
        return
    assert resolve_device("auto") == CPU
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="is not a device"):
        resolve_device("gpu")


@pytest.mark.parametrize(("count", "name", "fine"), [(1, "cuda:0", True), (1, "cuda:1", False), (2, "cuda:1", True)])
def test_a_cuda_index_must_name_a_device_there_is(
    monkeypatch: pytest.MonkeyPatch, count: int, name: str, fine: bool
) -> None:
    """On a machine with `count` GPUs (faked), cuda:N names one only for N < count."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if fine:
        assert resolve_device(name) == torch.device(name)
    else:
        with pytest.raises(UserError, match=f"device = '{name}', but there are {count} CUDA device"):
            resolve_device(name)


def test_a_tensor_already_on_the_device_is_not_copied() -> None:
    tensor = torch.zeros(3, device=META)
    assert to_device(tensor, META) is tensor
    cpu = torch.zeros(3)
    assert to_device(cpu, CPU) is cpu


def test_no_raw_device_comparisons_in_pipeline_or_bench() -> None:
    """Devices are compared only in canonical form (see canonical_device)."""
    raw = re.compile(r"\.device\s*(==|!=)|(==|!=)\s*[\w.]*\.device\b")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for folder in ("pipeline", "bench", "tools")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if raw.search(line) and "canonical_device" not in line
    ]
    assert not offenders, "\n".join(offenders)


# --- layouts ------------------------------------------------------------------------------------


def test_model_and_inputs_share_the_channels_last_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What CUDA does, forced on the CPU: training (augmented too) and prediction feed the
    model channels_last inputs, and the model's convolution is channels_last as well."""
    for module in (devices, batches):  # where models are placed, and where inputs are laid out
        monkeypatch.setattr(module, "memory_format", lambda device: torch.channels_last)
    model = conv_model()
    seen: list[tuple[bool, bool]] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append((
            inputs[0].is_contiguous(memory_format=torch.channels_last),
            module.weight.is_contiguous(memory_format=torch.channels_last),
        ))  # fmt: skip

    model[0].register_forward_pre_hook(record)
    data = image_batches(10, CPU, CPU)
    train_one_epoch(model, data, sgd(model), LoopOptions(batch_size=4, hflip=True), epoch=1)
    predict(model, data, batch_size=4)
    crops = crop_batches_of(tmp_path, [(12, 9), (9, 12)] * 3, 8)
    train_one_epoch(model, crops, sgd(model), LoopOptions(batch_size=4, hflip=True, min_scale=0.5), epoch=1)
    assert len(seen) == 8  # 3 training batches, 3 prediction batches, 2 batches of crops
    assert all(inputs and weight for inputs, weight in seen), seen


def test_the_cpu_keeps_the_default_layout() -> None:
    model = conv_model()
    data = image_batches(4, CPU, CPU)
    images, _ = data.load(torch.arange(4))
    assert images.is_contiguous()
    devices.place_model(model, CPU)
    assert model[0].weight.is_contiguous()


# --- host syncs ---------------------------------------------------------------------------------


class TransferCounter(TorchDispatchMode):
    """Counts copies between devices and reads of a tensor's value by the host (`.item()`,
    `bool(t)`): what makes a GPU step wait."""

    def __init__(self) -> None:
        super().__init__()
        self.transfers: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket.__name__)
        if name in ("_local_scalar_dense", "is_nonzero", "nonzero"):
            self.transfers.append(name)
        elif name == "_to_copy" and isinstance(out, torch.Tensor) and out.device.type != args[0].device.type:
            self.transfers.append(f"{name} {args[0].device.type}->{out.device.type}")
        elif name == "copy_" and args[0].device.type != args[1].device.type:
            self.transfers.append(f"{name} {args[1].device.type}->{args[0].device.type}")
        return out


def epoch_transfers(n: int, images_on: torch.device, augment: bool, data: Batches | None = None) -> list[str]:
    """The transfers made by one epoch's steps on the meta device, a stand-in for a GPU: of
    images on `images_on` flipped or not, or of random resized crops of `data`."""
    model = conv_model().to(META)
    data = data or image_batches(n, images_on, META)
    generator = epoch_generator(0, 1)
    order = torch.randperm(n, generator=generator)
    sizes = data.whole_sizes[order] if isinstance(data, CropBatches) else None
    plan = EpochOrder(order, draw_augmentation(n, augment, 1.0 if sizes is None else 0.5, generator, 4 / 3, sizes))
    optimizer = sgd(model)
    with TransferCounter() as counter:
        train_steps(model, data, optimizer, plan, LoopOptions(batch_size=4), "epoch")
    return counter.transfers


@pytest.mark.parametrize("augment", [False, True])
def test_images_on_the_device_make_no_transfer_per_step(augment: bool) -> None:
    short, long = epoch_transfers(8, META, augment), epoch_transfers(40, META, augment)
    assert short == long  # 2 steps or 10: the same transfers, all before the first step
    # The epoch's order, and the flips when there are any, travel once.
    assert long == ["_to_copy cpu->meta"] * (2 if augment else 1)


def test_streamed_images_leave_the_compute_thread_no_transfer_per_step() -> None:
    # Gathering and copying run on the worker thread (dispatch modes are per thread), so
    # the thread that launches the steps never waits for a copy.
    assert epoch_transfers(8, CPU, False) == epoch_transfers(40, CPU, False) == []


def test_random_resized_crops_leave_the_compute_thread_no_transfer_per_step(tmp_path: Path) -> None:
    """Crops are cut on the CPU, on the worker thread, and copied from there: the order and
    the boxes stay on the CPU, and the thread that launches the steps copies nothing."""
    shapes = [(12, 9), (9, 12), (20, 8), (8, 8)]
    short, long = (crop_batches_of(tmp_path / str(n), shapes * (n // 4), 8, META) for n in (8, 40))
    assert epoch_transfers(8, CPU, True, short) == epoch_transfers(40, CPU, True, long) == []


def test_streamed_batches_equal_loaded_ones() -> None:
    data = image_batches(11, CPU, CPU)
    batches = list(torch.randperm(11, generator=torch.Generator().manual_seed(3)).split(4))
    got = list(streamed(data, batches, [None] * len(batches)))  # the path taken when images are not on the device
    expected = [data.load(index) for index in batches]
    assert len(got) == len(expected) == 3
    for (images, targets), (want_images, want_targets) in zip(got, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(targets, want_targets)


def test_iterate_streams_only_when_the_images_are_elsewhere() -> None:
    assert not image_batches(4, CPU, CPU).streams
    assert not image_batches(4, META, META).streams
    data = image_batches(9, CPU, META)
    assert data.streams
    shapes = [tuple(images.shape) for images, _ in iterate(data, list(torch.arange(9).split(4)))]
    assert shapes == [(4, 3, 8, 8), (4, 3, 8, 8), (1, 3, 8, 8)]


# --- compile ------------------------------------------------------------------------------------


def test_a_ragged_last_batch_and_evaluation_compile_no_second_graph() -> None:
    model = conv_model()
    counter = CompileCounter()
    step_model = compile_for_training(model, backend=counter)
    data = image_batches(10, CPU, CPU)  # batches of 4, 4 and 2
    optimizer = sgd(model)
    for epoch in (1, 2):
        train_one_epoch(model, data, optimizer, LoopOptions(batch_size=4, step_model=step_model), epoch)
        predict(model, data, batch_size=4)
    assert counter.frame_count == 1


# --- frozen-backbone features -------------------------------------------------------------------


class TokenModel(nn.Module):
    """A head that reads one token of a larger tensor, as ViT's heads.head reads x[:, 0]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(images.flatten(2).transpose(1, 2))  # (B, H*W, 16)
        return self.head(tokens[:, 0])


def test_feature_cache_keeps_only_what_the_head_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    concatenated: list[list[torch.Tensor]] = []
    real_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        concatenated.append(list(tensors))
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", spy)
    features = feature_pass.head_inputs(TokenModel(), "head", image_batches(10, CPU, CPU), batch_size=4)
    assert features is not None and features.shape == (10, 16)
    kept = concatenated[-1]  # what head_inputs held until the end
    assert len(kept) == 3
    for tensor in kept:  # a compact copy, not a view that keeps the (B, 64, 16) tokens alive
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


class Float32Tokens(TokenModel):
    """Hands its head float32 under autocast, as ViT's final LayerNorm does under CUDA's."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images.flatten(2).transpose(1, 2))[:, 0].float())


def test_under_autocast_features_are_kept_in_the_dtype_the_head_computes_in(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's bf16 autocast, played by the CPU's: a float32 head input (ViT's) is cached in bf16,
    # and the head gives from it exactly what it gives inside the whole model.
    monkeypatch.setattr(feature_pass, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    torch.manual_seed(0)
    model = Float32Tokens().eval()
    data = image_batches(10, CPU, CPU)
    features = feature_pass.head_inputs(model, "head", data, batch_size=4)
    assert features is not None and features.dtype == torch.bfloat16
    images = data.load(torch.arange(10))[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.head(features), model(images))


class Branchy(nn.Module):
    """Control flow on values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(images))
        x = x.relu() if x.mean() > 0 else x
        return self.fc(x.mean(dim=(2, 3)))


class HalfNormed(nn.Module):
    """A convolution with a BatchNorm after it, and one without: only the first is folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.plain, self.fc = (
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 3),
            nn.Linear(4, 3),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.plain(self.bn(self.conv(images)).relu()).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("arch", "head"),
    [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"), ("half_normed", "fc"), ("branchy", "fc")],
)
def test_the_cpu_feature_pass_folds_batchnorm_and_leaves_the_model_as_it_was(arch: str, head: str) -> None:
    torch.manual_seed(0)
    own = {"half_normed": HalfNormed, "branchy": Branchy}
    model = (own[arch]() if arch in own else torchvision.models.get_model(arch, num_classes=3)).eval()
    for module in model.modules():  # statistics of their own, so that folding changes numbers
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model.state_dict())
    data = image_batches(10, CPU, CPU, size=32)

    features = feature_pass.head_feature_batches(model, head, {"train": data}, batch_size=4)["train"].features

    expected = []
    model.get_submodule(head).register_forward_hook(lambda _, inputs, __: expected.append(inputs[0]))
    with torch.no_grad():
        model(data.load(torch.arange(10))[0])
    torch.testing.assert_close(features, expected[0], rtol=1e-4, atol=1e-5)
    folded = feature_pass.folded_for_cpu(model, head)
    assert (folded is None) == (arch == "branchy")  # the untraceable model runs as it is
    assert folded is None or not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for name, tensor in model.state_dict().items():  # the same numbers, in the CPU's own layout
        assert torch.equal(tensor, before[name]) and tensor.is_contiguous(), name


def test_evaluation_takes_larger_batches_on_a_gpu() -> None:
    params = EvaluateParams(batch_size=256, cuda_batch_size=1024)
    assert batch_size_on(torch.device("cuda", 0), params) == 1024
    assert batch_size_on(CPU, params) == 256


def test_cuda_runs_under_bf16_autocast_and_the_cpu_in_float32(recwarn: pytest.WarningsRecorder) -> None:
    """docs/design.md, on a GPU: bf16 autocast (float16 without a gradient scaler can
    underflow gradients); the CPU's results stay float32. Read from the context on any machine."""
    on_cuda = autocast(torch.device("cuda", 0))
    assert isinstance(on_cuda, torch.autocast) and (on_cuda.device, on_cuda.fast_dtype) == ("cuda", torch.bfloat16)
    assert not isinstance(autocast(CPU), torch.autocast)


def test_deterministic_cuda_sets_cublas_s_workspace_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuBLAS raises on the first matmul under deterministic algorithms unless its workspace
    setting is in the environment before CUDA starts (PyTorch's reproducibility notes)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        set_determinism(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
