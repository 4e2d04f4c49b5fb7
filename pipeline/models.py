"""Models: build a classifier of any backbone family, load its weights, give it a new head, freeze it.

model.arch names a model of a family (pipeline.backbones): a torchvision model's name
(resnet18) or `timm/` and a timm model's name (timm/convnext_atto).

Freeze specs (the top-level `freeze` param):
    none            train everything
    all_but_head    train only the new head; the rest is a fixed feature extractor
    first:N         freeze the first N backbone stages (`stage_names` lists them; for timm
                    models, timm's own groups: the stem, then each stage or block)
    modules:A+B     freeze the named modules, e.g. modules:conv1+bn1+layer1

Frozen modules run in inference mode, BatchNorm and dropout included, so their
running statistics never change (like Keras's `trainable=False`, unlike a bare
`requires_grad=False`).
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backbones import Weights, family_of, grouped_stages
from pipeline.backbones.preprocessing import Preprocessing, at_size
from pipeline.checkpoints import CheckpointError, is_checkpoint, load_weights_file, verify_checkpoint
from pipeline.cli import UserError, error_line
from pipeline.data import Sizing

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


def build_model(arch: str, weights: str | None, classes: list[str] | None, image_size: int) -> Built:
    """Build `arch` with `weights` (a weights name of its family, such as torchvision's
    IMAGENET1K_V1 or a timm pretrained tag; a .pt/.pth/.safetensors path; or None) and a new
    head for `classes` (None: keep the head the weights came with, for a backbone that is
    saved without it; its spec then lists no classes).

    The spec takes the weights' preprocessing (see `preprocessing`). Every check that needs
    no weights (arch, weights name, input size) runs first.
    """
    family = family_of(arch)
    weights_path, named, model_kwargs = _checked_model_params(arch, weights, image_size)
    loaded = None if weights_path is None else load_weights_file(weights_path)
    source = _checkpoint_spec(loaded, weights_path)
    sizing, mean, std = preprocessing(arch, named, source, image_size)
    if source is not None:  # built as the checkpoint's model was (Inception's transform_input, timm's img_size...)
        model_kwargs = {**source.model_kwargs, **model_kwargs}
    model = family.build(arch, named, model_kwargs)
    _drop_aux_heads(model)
    head = family.find_head(model)
    if weights_path is not None:
        _load_weights_file(model, arch, head, weights_path, loaded, source)
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
    loaded = None if weights_path is None else load_weights_file(weights_path)
    return preprocessing(arch, named, _checkpoint_spec(loaded, weights_path), image_size)[0]


def _checkpoint_spec(loaded: Any, path: Path | None) -> ModelSpec | None:
    """The spec of a loaded pipeline checkpoint; None for nothing loaded or a plain state_dict."""
    if path is None or not is_checkpoint(loaded):
        return None
    return ModelSpec.from_checkpoint(verify_checkpoint(loaded, path))


def _checked_model_params(
    arch: str, weights: str | None, image_size: int
) -> tuple[Path | None, Weights | None, dict[str, Any]]:
    """The checks of arch, weights and input size that need no weights: (the weights file or
    None; the family's named weights that `weights` names, or None; the constructor's size
    kwargs)."""
    family = family_of(arch)
    family.check_arch(arch)
    weights_path = Path(weights) if weights is not None and is_weights_file(weights) else None
    named = family.named_weights(arch, weights) if weights is not None and not weights_path else None
    model_kwargs = family.size_kwargs(arch, named, image_size)
    check_input_size(arch, model_kwargs, image_size)
    if weights_path is not None and not weights_path.is_file():
        raise UserError(f"model.weights = {weights!r}: the file does not exist")
    return weights_path, named, model_kwargs


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the exact model a checkpoint was saved from; needs no params.yaml."""
    model = ModelSpec.from_checkpoint(checkpoint).untrained_model()
    model.load_state_dict(checkpoint["model_state_dict"])
    return model


def _load_weights_file(
    model: nn.Module, arch: str, head: str, path: Path, loaded: Any, source: ModelSpec | None
) -> None:
    """Load a plain state_dict or a pipeline checkpoint (`loaded` from `path`, already
    verified, with spec `source`) into everything but the head."""
    if source is not None:
        if source.arch != arch:
            raise UserError(f"{path} holds a {source.arch} checkpoint, but model.arch is {arch}")
        state = loaded["model_state_dict"]
    elif isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        state = loaded
    else:
        raise CheckpointError(f"{path} is neither a state_dict nor a checkpoint of this pipeline")
    trunk = {k: v for k, v in state.items() if not _is_head_key(k, head)}
    # Checked first: load_state_dict raises on other shapes (a ViT's position embedding made
    # for another image size) with a message of many lines.
    own = model.state_dict()
    shapes = [k for k, v in trunk.items() if k in own and own[k].shape != v.shape]
    if shapes:
        more = " ..." if len(shapes) > 5 else ""
        raise UserError(f"{path} does not fit {arch}: tensors of other shapes {shapes[:5]}{more}")
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    missing = [k for k in missing if not _is_head_key(k, head)]
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit {arch}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(missing) > 5 or len(unexpected) > 5 else ''}"
        )
    log.info("loaded %d tensors from %s (its head, if any, is replaced)", len(trunk), path)


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


# --- freezing -------------------------------------------------------------------------


@dataclass(frozen=True)
class FreezeSpec:
    kind: str  # none | all_but_head | first | modules
    count: int = 0
    modules: tuple[str, ...] = ()
    key: str = field(default="freeze", compare=False)  # the param it came from, for messages


FREEZE_SYNTAX = "none, all_but_head, first:N (freeze the first N backbone stages) or modules:NAME+NAME"


def parse_freeze(text: str, key: str = "freeze") -> FreezeSpec:
    """`text`, the value of the param `key`, as a FreezeSpec; a UserError naming `key` if it is none."""
    kind, _, arg = text.partition(":")
    if text in ("none", "all_but_head"):
        return FreezeSpec(text, key=key)
    if kind == "first" and arg.isdigit():
        return FreezeSpec("first", count=int(arg), key=key)
    if kind == "modules" and arg and all(arg.split("+")):
        return FreezeSpec("modules", modules=tuple(arg.split("+")), key=key)
    raise UserError(f"{key} = {text!r} is not a freeze spec; use {FREEZE_SYNTAX}")


def stage_names(model: nn.Module, head: str) -> list[str]:
    """The backbone's stages, in order, as `first:N` counts them.

    Those that the model's family groups it into, where it has a grouping (timm's own
    groups, see pipeline.backbones.timm.stages), each its modules and parameters joined by
    `+`. For any other model (and the few timm models whose grouping does not run), start
    from the top-level modules that hold parameters, leaving out the one holding the head.
    While one stage holds over 90% of the parameters (MobileNet's `features`, ViT's
    `encoder`), open it up into its own children.
    """
    grouped = grouped_stages(model, head)
    if grouped:
        return grouped

    def children(prefix: str) -> list[str]:
        parent = model.get_submodule(prefix)
        return [
            f"{prefix}.{name}".lstrip(".")
            for name, child in parent.named_children()
            if any(True for _ in child.parameters()) and not f"{head}.".startswith(f"{prefix}.{name}.".lstrip("."))
        ]

    def size(name: str) -> int:
        return sum(p.numel() for p in model.get_submodule(name).parameters())

    stages = children("")
    while stages:
        largest = max(stages, key=size)
        inner = children(largest)
        if size(largest) <= 0.9 * sum(size(s) for s in stages) or not inner:
            return stages
        position = stages.index(largest)
        stages[position : position + 1] = inner
    return stages


def stage_parameters(model: nn.Module, stage: str) -> dict[str, nn.Parameter]:
    """The parameters of a stage, or of a module: every parameter of the modules it names
    (several joined by `+`), and the parameters it names themselves."""
    params = dict(model.named_parameters())
    found: dict[str, nn.Parameter] = {}
    for part in stage.split("+"):
        if part in params:
            found[part] = params[part]
        else:
            found.update(model.get_submodule(part).named_parameters(prefix=part))
    return found


def loose_parameters(model: nn.Module, stages: list[str]) -> dict[str, nn.Parameter]:
    """Parameters held directly by the root or by a module that `stage_names` opened up,
    and named by no stage, so in none: torchvision ViT's class_token and encoder.pos_embedding."""
    parts = {part for stage in stages for part in stage.split("+")}
    containers = {".".join(part.split(".")[:depth]) for part in parts for depth in range(part.count(".") + 1)}
    loose = {
        f"{container}.{name}".lstrip("."): param
        for container in sorted(containers)
        for name, param in model.get_submodule(container).named_parameters(recurse=False)
    }
    return {name: param for name, param in loose.items() if name not in parts}


def frozen_parts(model: nn.Module, spec: FreezeSpec, head: str) -> tuple[list[str], frozenset[str]]:
    """What `spec` freezes in `model`: the frozen modules' names, and the frozen parameters'
    names (theirs, plus parameters held outside any module that a spec names). Checks the
    spec against the model; changes nothing."""
    if spec.kind == "none":
        return [], frozenset()
    if spec.kind == "all_but_head":
        # Every parameter outside the head, tokens held by the root (ViT's class_token) included.
        params = frozenset(name for name, _ in model.named_parameters() if not name.startswith(f"{head}."))
        return _siblings_along_path(model, head), params
    stages = stage_names(model, head)
    loose: list[str] = []
    if spec.kind == "first":
        if not 0 <= spec.count <= len(stages):
            raise UserError(
                f"{spec.key} = first:{spec.count}, but this model has {len(stages)} stages: {', '.join(stages)}"
            )
        frozen = stages[: spec.count]
        if spec.count:
            # ViT's class_token and encoder.pos_embedding sit beside the stages, not in one. They
            # are part of the input embedding, so they freeze with the first stage (timm groups
            # them with the patch embedding the same way).
            loose = list(loose_parameters(model, stages))
    else:
        names = [name for name, _ in model.named_modules() if name]
        known = set(names)
        unknown = [name for name in spec.modules if name not in known]
        if unknown:
            # The example must be a module that exists: `<first stage>.0` is not one when the
            # first stage is a single layer (ResNet's conv1 has no children).
            example = next((n for n in names if any(n.startswith(f"{stage}.") for stage in stages)), stages[0])
            raise UserError(
                f"{spec.key} names module(s) {', '.join(unknown)} that the model does not have; "
                f"its stages are {', '.join(stages)} (any dotted module name works, e.g. {example})"
            )
        if any(head == name or head.startswith(f"{name}.") for name in spec.modules):
            raise UserError(f"{spec.key} names the head ({head}) or a module holding it; the head always trains")
        frozen = list(spec.modules)
    params = {name for stage in frozen for name in stage_parameters(model, stage)}
    # The modules among what the stages name (a timm stage may name parameters, too).
    named_params = dict(model.named_parameters())
    modules = [part for stage in frozen for part in stage.split("+") if part not in named_params]
    return modules, frozenset(params | set(loose))


def trainable_names(model: nn.Module, spec: FreezeSpec, head: str) -> frozenset[str]:
    """The names of the parameters that train under `spec`; the model is left as it is."""
    _, frozen = frozen_parts(model, spec, head)
    return frozenset(name for name, _ in model.named_parameters() if name not in frozen)


def freeze(model: nn.Module, spec: FreezeSpec, head: str) -> list[str]:
    """Set requires_grad from `spec`: False on the frozen part, True on the rest (so a later
    call can unfreeze). Returns the frozen modules' names."""
    modules, frozen = frozen_parts(model, spec, head)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    return modules


def _siblings_along_path(model: nn.Module, head: str) -> list[str]:
    """Every module that is neither the head, nor inside it, nor on the path from the root to it."""
    parts = head.split(".")
    siblings = []
    for depth in range(len(parts)):
        prefix = ".".join(parts[:depth])
        parent = model.get_submodule(prefix)
        for name, _ in parent.named_children():
            if name != parts[depth]:
                siblings.append(f"{prefix}.{name}" if prefix else name)
    return siblings


def set_train_mode(model: nn.Module, frozen: list[str]) -> None:
    """model.train(), except frozen modules, which stay in inference mode."""
    # Not torchvision's FrozenBatchNorm2d: swapping modules would change the state_dict keys
    # (checkpoints, pretrained files), and frozen dropout must stay off too.
    model.train()
    for name in frozen:
        model.get_submodule(name).eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


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


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["resnet18"]:
        print(describe(name))


def check_model_params(arch: str, weights: str | None, image_size: int, freeze_specs: dict[str, str]) -> None:
    """Check model.arch, model.weights, model.image_size and freeze specs (param key -> spec)
    without building the model: on its skeleton, in well under a second for most archs.

    A weights file is loaded to compare its arch; a weights name is only resolved.
    """
    specs = {key: parse_freeze(text, key) for key, text in freeze_specs.items()}
    weights_path, _, model_kwargs = _checked_model_params(arch, weights, image_size)
    if weights_path is not None:
        loaded = load_weights_file(weights_path)
        if is_checkpoint(loaded) and loaded.get("arch") != arch:
            raise UserError(
                f"model.weights = {weights!r} holds a {loaded.get('arch')} checkpoint, but model.arch is {arch}"
            )
    skeleton = skeleton_model(arch, model_kwargs)
    _drop_aux_heads(skeleton)
    head = family_of(arch).find_head(skeleton)
    for spec in specs.values():
        freeze(skeleton, spec, head)
