"""Models: build a classifier of any backbone family, load its weights, give it a new head.

model.arch names a model of a family (pipeline.backbones): a torchvision model's name
(resnet18) or `timm/` and a timm model's name (timm/convnext_atto). What to freeze of it
is pipeline.freezing's.

    python -m pipeline.models ARCH...   # each model's head, and the stages `freeze: first:N` counts
"""

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backbones import Weights, family_of
from pipeline.backbones.preprocessing import Preprocessing, at_size
from pipeline.checkpoints import is_checkpoint, load_weights_file, verify_checkpoint, weights_state
from pipeline.cli import UserError, error_line, run_stage
from pipeline.data.decode import Sizing
from pipeline.freezing import freeze, loose_parameters, parse_freeze, stage_names

log = logging.getLogger(__name__)

WEIGHTS_FILE_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a trained model without params.yaml: the checkpoint's description of it."""

    arch: str
    head: str  # the classifier layer's module name (fc, classifier.1, heads.head...)
    classes: list[str]  # output i is classes[i]
    image_size: int
    mean: list[float]  # per-channel normalisation of [0, 1] RGB inputs
    std: list[float]
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # for the family's constructor (get_model, create_model)
    # The shorter side is resized to this before the centre image_size crop (torchvision
    # weights' resize_size); 0 means image_size, with no margin (checkpoints from before it).
    resize_size: int = 0
    interpolation: str = "bilinear"  # the resize's filter, a torchvision InterpolationMode value

    @property
    def sizing(self) -> Sizing:
        return Sizing(self.resize_size or self.image_size, self.image_size, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint keys that hold this spec: plain values, so weights_only loading reads them."""
        return {
            "arch": self.arch,
            "head": self.head,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "model_kwargs": dict(self.model_kwargs),
            "resize_size": self.sizing.resize,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> "ModelSpec":
        return cls(**{f.name: checkpoint[f.name] for f in fields(cls) if f.name in checkpoint})

    def untrained_model(self) -> nn.Module:
        """The architecture with its new head, randomly initialised."""
        model = new_model(self.arch, self.model_kwargs)
        _drop_aux_heads(model)
        family_of(self.arch).replace_head(model, self.head, len(self.classes))
        return model


@dataclass
class Built:
    """A freshly built model and its spec."""

    model: nn.Module
    spec: ModelSpec


def is_weights_file(weights: str) -> bool:
    return weights.endswith(WEIGHTS_FILE_SUFFIXES) or "/" in weights or os.sep in weights


def build_model(
    arch: str, weights: str | None, classes: list[str] | None, image_size: int, drop_path: float | None = None
) -> Built:
    """Build `arch` with `weights` (a weights name of its family, such as torchvision's
    IMAGENET1K_V1 or a timm pretrained tag; a .pt/.pth/.safetensors path; or None) and a new
    head for `classes` (None: keep the head the weights came with, for a backbone that is
    saved without it; its spec then lists no classes), with stochastic depth at `drop_path`
    (None: the model's own rate).

    The spec takes the weights' preprocessing (see `preprocessing`). Every check that needs
    no weights (arch, weights name, input size) runs first.
    """
    family = family_of(arch)
    weights_path, named, model_kwargs = _checked_model_params(arch, weights, image_size, drop_path)
    loaded = None if weights_path is None else load_weights_file(weights_path)
    source = _checkpoint_spec(loaded, weights_path)
    sizing, mean, std = preprocessing(arch, named, source, image_size)
    if source is not None:  # built as the checkpoint's model was (Inception's transform_input, timm's img_size...)
        model_kwargs = {**source.model_kwargs, **model_kwargs}
    model = family.build(arch, named, model_kwargs)
    _drop_aux_heads(model)
    head = family.find_head(model)
    if weights_path is not None:
        _load_weights_file(model, arch, head, weights_path, loaded)
    if hasattr(model, "transform_input"):  # Inception, GoogLeNet: part of how their weights expect input
        model_kwargs["transform_input"] = model.transform_input
    if classes is not None:
        family.replace_head(model, head, len(classes))
    spec = ModelSpec(
        arch, head, list(classes or []), image_size, mean, std, model_kwargs, sizing.resize, sizing.interpolation
    )
    return Built(model, spec)


def preprocessing(arch: str, weights: Weights | None, source: ModelSpec | None, image_size: int) -> Preprocessing:
    """How inputs of `image_size` pixels are made for `arch` with the named `weights`, or
    with the weights of a pipeline checkpoint of spec `source`: (sizing, mean, std).

    A checkpoint carries the ones it was trained with (the resize keeping their resize/crop
    ratio, see `at_size`); otherwise the family says (its `preprocessing`).
    """
    if source is None:
        return family_of(arch).preprocessing(arch, weights, image_size)
    return at_size(source.sizing, image_size), list(source.mean), list(source.std)


def model_sizing(arch: str, weights: str | None, image_size: int) -> Sizing:
    """The sizing `build_model(arch, weights, ..., image_size)` gives its spec, without building it."""
    weights_path, named, _ = _checked_model_params(arch, weights, image_size)
    # Lazily: a state_dict's tensors are never read, a checkpoint's only for its checksum.
    loaded = None if weights_path is None else load_weights_file(weights_path, lazy=True)
    return preprocessing(arch, named, _checkpoint_spec(loaded, weights_path), image_size)[0]


def _checkpoint_spec(loaded: Any, path: Path | None) -> ModelSpec | None:
    """The spec of a loaded pipeline checkpoint; None for nothing loaded or a plain state_dict."""
    if path is None or not is_checkpoint(loaded):
        return None
    return ModelSpec.from_checkpoint(verify_checkpoint(loaded, path))


def _checked_model_params(
    arch: str, weights: str | None, image_size: int, drop_path: float | None = None
) -> tuple[Path | None, Weights | None, dict[str, Any]]:
    """The checks of arch, weights, input size and drop path that need no weights: (the weights
    file or None; the family's named weights that `weights` names, or None; the constructor's
    size and drop path kwargs)."""
    family = family_of(arch)
    family.check_arch(arch)
    weights_path = Path(weights) if weights is not None and is_weights_file(weights) else None
    named = family.named_weights(arch, weights) if weights is not None and not weights_path else None
    model_kwargs = family.size_kwargs(arch, named, image_size)
    check_input_size(arch, model_kwargs, image_size)
    if drop_path is not None:
        model_kwargs |= drop_path_kwargs(arch, model_kwargs, drop_path)
    if weights_path is not None and not weights_path.is_file():
        raise UserError(f"model.weights = {weights!r}: the file does not exist")
    return weights_path, named, model_kwargs


def model_from_checkpoint(checkpoint: dict[str, Any], path: Path | str = "the checkpoint") -> nn.Module:
    """Rebuild the exact model a checkpoint (from `path`) was saved from; needs no params.yaml.
    A UserError when its state_dict does not fit the model it describes."""
    spec = ModelSpec.from_checkpoint(checkpoint)
    if not spec.classes:  # the weights stage saves its backbone so: train gives it a head
        raise UserError(
            f"{path} holds a backbone without a head (the weights stage's starting weights), not a trained "
            "classifier: give a checkpoint of train (checkpoints/epoch_NNN.pt) or models/best.pt"
        )
    model = spec.untrained_model()
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:  # torch lists every missing, unexpected or reshaped key, a line each
        reasons = "; ".join(line.strip() for line in str(error).splitlines()[1:])
        raise UserError(f"{path} does not fit the {spec.arch} model it describes: {reasons}") from None
    return model


def _load_weights_file(model: nn.Module, arch: str, head: str, path: Path, loaded: Any) -> None:
    """Load what `path` holds (`loaded`, already verified when a pipeline checkpoint) into
    everything but the head."""
    state = weights_state(loaded, path, arch)
    fit_weights(model, arch, head, path, state)
    log.info("loaded %d tensors from %s (its head, if any, is replaced)", len(state), path)


def fit_weights(model: nn.Module, arch: str, head: str, path: Path, state: dict[str, torch.Tensor]) -> None:
    """Load `state` (from `path`) into all of `model` but its head, or raise a UserError naming
    the keys and shapes that do not fit. On a meta-device skeleton, with meta tensors, the
    same check reads and copies nothing."""
    trunk = {k: v for k, v in state.items() if not _is_head_key(k, head)}
    # Checked first: load_state_dict raises on other shapes (a ViT's position embedding made
    # for another image size) with a message of many lines.
    own = model.state_dict()
    shapes = [k for k, v in trunk.items() if k in own and own[k].shape != v.shape]
    if shapes:
        more = " ..." if len(shapes) > 5 else ""
        listed = ", ".join(f"{k} {tuple(trunk[k].shape)}, the model's {tuple(own[k].shape)}" for k in shapes[:5])
        raise UserError(f"{path} does not fit {arch}: tensors of other shapes: {listed}{more}{_ANOTHER_MODEL}")
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    missing = [k for k in missing if not _is_head_key(k, head)]
    if missing or unexpected:
        more = " ..." if len(missing) > 5 or len(unexpected) > 5 else ""
        raise UserError(
            f"{path} does not fit {arch}: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}{more}{_prefix_hint(missing, unexpected) or _ANOTHER_MODEL}"
        )


_ANOTHER_MODEL = "; set model.arch (and model.image_size) to the model the file was saved from"


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when the missing keys are the unexpected ones without a first name they all
    share: the attribute of a wrapper that held the model (Lightning's self.model...)."""
    prefixes = {key.split(".", 1)[0] for key in unexpected}
    if len(prefixes) != 1 or not missing or not set(missing) <= {key.partition(".")[2] for key in unexpected}:
        return ""
    return f"; every unexpected key starts with '{prefixes.pop()}.': save the inner model's state_dict instead"


def backbone_state(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """`model`'s state_dict without its head (and without auxiliary heads)."""
    return {k: v for k, v in model.state_dict().items() if not _is_head_key(k, head)}


def _is_head_key(key: str, head: str) -> bool:
    return key.startswith(f"{head}.") or key.split(".")[0] in _AUX_HEADS


# Auxiliary classifiers help train Inception/GoogLeNet from scratch; fine-tuning drops them.
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")


def _drop_aux_heads(model: nn.Module) -> None:
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in _AUX_HEADS:
            if hasattr(model, name):
                setattr(model, name, None)


def check_input_size(arch: str, model_kwargs: dict[str, Any], image_size: int) -> None:
    """Run a shape-only forward pass, so a size the model cannot take fails before any work."""
    with torch.no_grad():
        try:
            # Inside the try: ViT (AssertionError) and MaxViT (ValueError) reject a size in
            # their constructor already, the others only in the forward pass.
            probe = skeleton_model(arch, model_kwargs)
            probe.eval()(torch.zeros(1, 3, image_size, image_size, device="meta"))
        except Exception as error:
            raise UserError(f"model.image_size = {image_size} does not fit {arch}: {error_line(error)}") from None


# Stochastic depth's modules in torchvision (torchvision.ops) and timm (timm.layers), by class name:
# a builder may take the rate and ignore it (torchvision's MobileNetV3 takes any keyword).
DROP_PATH_MODULES = ("StochasticDepth", "DropPath")


def drop_path_kwargs(arch: str, model_kwargs: dict[str, Any], rate: float) -> dict[str, Any]:
    """The constructor's kwargs for stochastic depth at `rate` (train.drop_path), after checking
    on a skeleton that `arch` takes it and has stochastic depth (at a rate above 0: timm leaves
    its modules out at 0)."""
    kwargs = family_of(arch).drop_path_kwargs(arch, rate)
    try:
        probe = skeleton_model(arch, {**model_kwargs, **family_of(arch).drop_path_kwargs(arch, max(rate, 0.1))})
    except TypeError:  # an unknown keyword, or one the builder sets itself (torchvision's Swin and MaxViT)
        probe = None
    if probe is None or not any(type(m).__name__ in DROP_PATH_MODULES for m in probe.modules()):
        raise UserError(
            f"train.drop_path = {rate}: {arch} takes no stochastic depth rate ({', '.join(kwargs)}); "
            "set train.drop_path: null"
        )
    return kwargs


def new_model(arch: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """`arch` with random weights and its original head."""
    return family_of(arch).build(arch, None, model_kwargs)


def skeleton_model(arch: str, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """`arch` on the meta device: structure only, no memory, built in milliseconds."""
    try:
        with torch.device("meta"):
            return new_model(arch, model_kwargs or {})
    except NotImplementedError:
        # RegNet computes its widths from tensor values, which meta tensors do not have, and
        # its constructor takes no `device` (so nn.utils.skip_init cannot help). Build it on
        # the CPU instead, with the initialisers off: filling regnet_y_128gf's weights would
        # take over 10 s, and a skeleton needs none of them.
        with _no_weight_init():
            model = new_model(arch, model_kwargs or {})
        return model.to("meta")


@contextmanager
def _no_weight_init() -> Iterator[None]:
    """Every public torch.nn.init function a no-op inside the block; restored on exit, even on error."""
    initializers = [name for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")]
    originals = {name: getattr(nn.init, name) for name in initializers}
    for name in initializers:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(nn.init, name, original)


def describe(arch: str) -> str:
    """What `python -m pipeline.models ARCH` prints: the head and the stages `first:N` counts."""
    family = family_of(arch)
    family.check_arch(arch)
    model = skeleton_model(arch)
    _drop_aux_heads(model)
    head = family.find_head(model)
    stages = stage_names(model, head)
    loose = loose_parameters(model, stages)
    lines = [f"{arch}: head {head}; {len(stages)} stages for freeze first:N"]
    lines += [f"  first:{i + 1:<3d} freezes up to and including {name}" for i, name in enumerate(stages)]
    if loose:
        lines.append(f"  (first:1 and up also freeze {', '.join(loose)})")
    return "\n".join(lines)


def check_model_params(
    arch: str, weights: str | None, image_size: int, freeze_specs: dict[str, str], drop_path: float | None = None
) -> None:
    """Check model.arch, model.weights, model.image_size, freeze specs (param key -> spec) and
    train.drop_path without building the model: on its skeleton, in well under a second for
    most archs.

    A weights name is only resolved. A weights file's structure is read, not its tensors
    (`load_weights_file(lazy=True)`: under a second for a 1 GB file), and must fit the
    skeleton as the weights stage loads it (`weights_state`, `fit_weights`): keys and shapes.
    """
    specs = {key: parse_freeze(text, key) for key, text in freeze_specs.items()}
    weights_path, _, model_kwargs = _checked_model_params(arch, weights, image_size, drop_path)
    loaded = None if weights_path is None else load_weights_file(weights_path, lazy=True)
    if is_checkpoint(loaded):  # built as the checkpoint's model was, as build_model builds it
        model_kwargs = {**loaded.get("model_kwargs", {}), **model_kwargs}
    skeleton = skeleton_model(arch, model_kwargs)
    _drop_aux_heads(skeleton)
    head = family_of(arch).find_head(skeleton)
    if weights_path is not None:
        state = weights_state(loaded, weights_path, arch)
        with warnings.catch_warnings():
            # BatchNorm fills in the num_batches_tracked that an older file lacks with a CPU
            # tensor, and torch warns that copying it into a meta skeleton does nothing: as meant.
            warnings.filterwarnings("ignore", "for .*: copying from a non-meta parameter", UserWarning)
            fit_weights(skeleton, arch, head, weights_path, {k: v.to("meta") for k, v in state.items()})
    for spec in specs.values():
        freeze(skeleton, spec, head)


def main() -> None:
    """`python -m pipeline.models [ARCH ...]` (resnet18 when none is named)."""
    for name in sys.argv[1:] or ["resnet18"]:
        print(describe(name))


if __name__ == "__main__":
    run_stage(main)
