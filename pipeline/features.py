"""The frozen-backbone feature pass: with `freeze: all_but_head` and nothing random before the
head but its own dropout, the backbone runs once over every split and the head trains on what
it outputs (`head_feature_batches`), through that dropout (`head_network`). On the CPU the pass
runs a copy of the network with BatchNorm folded into the convolutions (`folded_for_cpu`)."""

import torch
import torch.fx.experimental.optimization as fx_optimization
from torch import nn

from pipeline.batches import FeatureBatches, ImageBatches, batch_indices, iterate
from pipeline.devices import autocast, place_model
from pipeline.distributed import SINGLE, Ranks, unshard
from pipeline.freezing import head_dropout


def folded_for_cpu(model: nn.Module, head: str) -> nn.Module | None:
    """For the frozen feature pass on the CPU: eval-mode `model` with each BatchNorm folded
    into the convolution before it (torch.fx), those convolutions in channels-last layout,
    and `head` kept whole (its forward hook must still fire). Its inputs go channels-last too.

    On a 2-core x86 VM at 224 px (`python -m bench.layout`), the forward pass ran 1.7
    times as fast for resnet18, 2.3 for efficientnet_b0 and 2.3 for mobilenet_v3_small,
    with outputs within float32 rounding (1e-6) of the plain model's. `model` stays as it
    is, since training steps use it in the default layout (see `memory_format`): the
    folded network shares its other modules and holds new copies of the folded
    convolutions only. None when there is nothing to fold (no BatchNorm after a
    convolution, as in ViT) or torch.fx cannot trace the network: the pass then runs
    `model` itself.
    """

    class KeepHead(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return name == head or super().is_leaf_module(module, name)

    try:
        traced = torch.fx.GraphModule(model, KeepHead().trace(model))  # its own containers, model's leaves
        folded = fx_optimization.fuse(traced, inplace=True, no_trace=True)  # new convolutions, in its containers
    except Exception:  # control flow on values, or modules that fx cannot trace
        return None
    own = {id(module) for module in model.modules()}
    convolutions = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and id(m) not in own]
    for convolution in convolutions:
        convolution.to(memory_format=torch.channels_last)
    return folded if convolutions else None


@torch.no_grad()  # not inference_mode: the head trains on these tensors afterwards
def head_inputs(
    network: nn.Module,
    head: str,
    data: ImageBatches,
    batch_size: int,
    ranks: Ranks = SINGLE,
    channels_last: bool = False,
) -> torch.Tensor | None:
    """What eval-mode `network` (on `data`'s device) feeds its head, for every item of
    `data`, in order; its inputs `channels_last` for a `folded_for_cpu` network. With several
    `ranks`, each computes its shard and every rank gets the whole.

    None when the head's output is not the network's output (SqueezeNet pools after its
    1x1-conv head): then the head cannot be trained on these features alone.
    """
    captured: dict[str, torch.Tensor] = {}
    head_module = network.get_submodule(head)

    def capture(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # A copy of just what the head reads: ViT's is x[:, 0], a view that would keep the
        # whole (B, 197, 768) encoder output alive until the end. Under autocast a Linear head
        # casts its input to the autocast dtype itself, so storing that dtype changes no result
        # and halves the cache where the backbone ends in float32 (ViT's final LayerNorm).
        features = inputs[0]
        device_type = features.device.type
        if isinstance(head_module, nn.Linear) and torch.is_autocast_enabled(device_type):
            features = features.to(torch.get_autocast_dtype(device_type))
        captured["input"] = features.clone(memory_format=torch.contiguous_format)
        captured["output"] = output

    handle = head_module.register_forward_hook(capture)
    try:
        features = []
        for images, _ in iterate(data, batch_indices(len(data), batch_size, device=data.index_device, ranks=ranks)):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(data.device):
                output = network(images)
            if output is not captured["output"]:
                return None
            features.append(captured.pop("input"))
            captured.clear()
    finally:
        handle.remove()
    return unshard(torch.cat(features), len(data), ranks)


def head_feature_batches(
    model: nn.Module, head: str, splits: dict[str, ImageBatches], batch_size: int, ranks: Ranks = SINGLE
) -> dict[str, FeatureBatches] | None:
    """Each split as the (frozen) model's `head_inputs` features, from one pass of the
    model in eval mode, folded on the CPU (`folded_for_cpu`); None when the head cannot be
    trained on them."""
    device = next(iter(splits.values())).device
    model.eval()
    place_model(model, device)
    folded = folded_for_cpu(model, head) if device.type == "cpu" else None
    network = model if folded is None else folded
    features = {}
    for name, data in splits.items():
        inputs = head_inputs(network, head, data, batch_size, ranks, channels_last=folded is not None)
        if inputs is None:
            return None
        features[name] = FeatureBatches(inputs, data.targets, data.device)
    return features


def head_network(model: nn.Module, head: str) -> nn.Module:
    """What trains on `head_feature_batches`: the head, after the dropout layers that feed it
    (freezing.head_dropout: EfficientNet's classifier.0, VGG's classifier.5...), which the
    features were computed without (in eval mode). The same modules as `model`'s, so training
    this trains the model's head, and the dropout draws the same masks as in the whole model."""
    dropout = [model.get_submodule(name) for name in head_dropout(model, head)]
    return nn.Sequential(*dropout, model.get_submodule(head)) if dropout else model.get_submodule(head)
