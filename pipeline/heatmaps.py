"""Where the model looked: Grad-CAM heat maps (Selvaraju et al., ICCV 2017) for any backbone.

Grad-CAM takes a layer's activations A (C maps over a grid of positions) and the gradient of
one class's score (its logit) with respect to them; each map's weight is its gradient's mean
over the positions, and the heat map is ReLU(sum_c weight_c * A_c), resized to the input.

Which layer (`feature_layer`), read off one traced forward pass, with no list of models:
- a CNN (and Swin, MaxViT, ConvNeXt...): the last square map of more than one position,
  channels first (NCHW) or last (NHWC, timm's Swin): the last one before the pooling. Only
  maps that a module at most two levels down the model's tree returns (a stage, or a block
  of a stage) count: inside a block a map may hold one branch of it, not all it passes on;
- a vision transformer (torchvision's ViT, timm's ViT, DeiT, EVA, Mixer...): when a repeated
  block that maps tokens (N, T, C) to tokens of the same shape runs after that last square
  map, the tokens going into the last such block. Not its output: with class-token pooling
  the last block's patch tokens get no gradient at all. The last square map before them is
  the patch embedding, whose grid says how the patch tokens lie; the tokens before them
  (class token, registers, distillation token) are left out.
A model with neither gets no heat maps (`feature_layer` returns None).

Not a library. captum (BSD-3) and pytorch-grad-cam (MIT) both compute Grad-CAM, but neither
chooses the layer, nor lays out a transformer's tokens (captum's LayerGradCam averages over
every dimension past the channels, so tokens would need a reshaping module; pytorch-grad-cam
takes a `reshape_transform` written for each model): those are what this module does. The
arithmetic left is the five lines of `grad_cam`, against matplotlib, opencv, scikit-learn and
scipy that pytorch-grad-cam installs, and matplotlib that captum imports.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Layout = Literal["NCHW", "NHWC", "tokens"]


@dataclass(frozen=True)
class FeatureLayer:
    """The activations Grad-CAM weighs: module `name`'s output, or with `tokens` its input."""

    name: str
    layout: Layout
    grid: int  # the positions are a grid x grid square
    prefix: int = 0  # tokens: how many come before the patch grid's (class token, registers)

    def as_maps(self, activations: torch.Tensor) -> torch.Tensor:
        """The activations (or their gradients) as (N, C, grid, grid)."""
        if self.layout == "NHWC":
            return activations.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            patches = activations[:, self.prefix :]
            return patches.transpose(1, 2).reshape(len(activations), -1, self.grid, self.grid)
        return activations


@dataclass(frozen=True)
class _Call:
    """One module call of a traced forward pass, in the order the calls returned."""

    name: str
    input: torch.Size | None
    output: torch.Size | None
    repeated: bool  # a member of a Sequential or ModuleList: one of a stack of blocks


def _square_map(shape: torch.Size | None) -> Layout | None:
    """NCHW or NHWC for a traced image's 4-D activations whose spatial sides are equal and
    above 1 (inputs are square); None for anything else, such as a batch of windows or patches."""
    if shape is None or len(shape) != 4 or shape[0] != 1:
        return None
    if shape[2] == shape[3] > 1:
        return "NCHW"
    if shape[1] == shape[2] > 1:
        return "NHWC"
    return None


def _trace(model: nn.Module, image_size: int) -> list[_Call]:
    """Every module call of one forward pass of a blank image, with its input and output shapes."""
    stacks = (module for module in model.modules() if isinstance(module, nn.Sequential | nn.ModuleList))
    in_stacks = {id(child) for stack in stacks for child in stack.children()}
    calls: list[_Call] = []

    def shape(value: object) -> torch.Size | None:
        return value.shape if isinstance(value, torch.Tensor) else None

    def record(name: str, module: nn.Module):
        def hook(_: nn.Module, args: tuple, output: object) -> None:
            calls.append(_Call(name, shape(args[0]) if args else None, shape(output), id(module) in in_stacks))

        return hook

    # Not Dropout: an identity in eval mode, whose input is recorded anyway; in attention it
    # holds the attention weights (N, heads, T, T), which look like a square map.
    handles = [
        module.register_forward_hook(record(name, module))
        for name, module in model.named_modules()
        if name and not isinstance(module, nn.Dropout)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def feature_layer(model: nn.Module, image_size: int) -> FeatureLayer | None:
    """The layer whose activations Grad-CAM weighs for `model` (in eval mode) on inputs of
    `image_size` pixels, as the module docstring says; None for a model without one."""
    calls = _trace(model, image_size)
    maps = [index for index, call in enumerate(calls) if _square_map(call.output) and call.name.count(".") < 2]
    blocks = [
        index
        for index, call in enumerate(calls)
        if call.repeated
        and call.input is not None
        and len(call.input) == 3
        and call.input[0] == 1
        and call.input == call.output
    ]
    if blocks and (not maps or blocks[-1] > maps[-1]):
        # The patch grid: the last square map before the blocks, not one inside them (an
        # attention matrix, N x N, is square too).
        inside = tuple(f"{calls[index].name}." for index in blocks)
        before = [index for index in maps if index < blocks[-1] and not calls[index].name.startswith(inside)]
        if not before:
            return None
        patch_grid, tokens = calls[before[-1]].output, calls[blocks[-1]].input
        grid = patch_grid[2] if _square_map(patch_grid) == "NCHW" else patch_grid[1]
        prefix = tokens[1] - grid * grid
        return FeatureLayer(calls[blocks[-1]].name, "tokens", grid, prefix) if prefix >= 0 else None
    if not maps:
        return None
    last = calls[maps[-1]]
    layout = _square_map(last.output)
    return FeatureLayer(last.name, layout, last.output[2] if layout == "NCHW" else last.output[1])


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, layer: FeatureLayer) -> torch.Tensor:
    """Grad-CAM of each image for its class in `classes`, at `layer`: (N, H, W) like the
    images, each scaled to a maximum of 1 (all 0 where no position speaks for the class).

    `images` are normalised model inputs; `model` is in eval mode, so each image's score
    depends on that image alone and one backward pass serves the batch.
    """
    captured: list[torch.Tensor] = []

    def keep(_: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured.append(args[0] if layer.layout == "tokens" else output)

    handle = model.get_submodule(layer.name).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # An input that needs a gradient builds the graph even when every weight is frozen.
            logits = model(images.detach().requires_grad_(True))
            (gradients,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), captured[-1])
    finally:
        handle.remove()
    activations, gradients = layer.as_maps(captured[-1].detach()), layer.as_maps(gradients)
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations.float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp(min=torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
