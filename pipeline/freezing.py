"""Freezing: which of a model's parameters train, and which modules stay in inference mode.

Freeze specs (the top-level `freeze` param, and `train.unfreeze_to`):
    none            train everything
    all_but_head    train only the new head; the rest is a fixed feature extractor
    first:N         freeze the first N backbone stages (`stage_names` lists them; for timm
                    models, timm's own groups: the stem, then each stage or block)
    modules:A+B     freeze the named modules, e.g. modules:conv1+bn1+layer1

Frozen modules run in inference mode, BatchNorm and dropout included, so their
running statistics never change (like Keras's `trainable=False`, unlike a bare
`requires_grad=False`). The dropout layers that feed the head are the classifier's own, not
the backbone's: they stay on with `all_but_head` (`head_dropout`).
"""

from dataclasses import dataclass, field

from torch import nn

from pipeline.backbones import grouped_stages
from pipeline.cli import UserError


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
    if kind == "first" and arg.isascii() and arg.isdigit():  # isdigit alone takes ² and ①, which int() refuses
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
        dropout = head_dropout(model, head)
        return [name for name in _siblings_along_path(model, head) if name not in dropout], params
    stages = stage_names(model, head)
    loose: list[str] = []
    if spec.kind == "first":
        if not 0 <= spec.count <= len(stages):
            raise UserError(
                f"{spec.key} = first:{spec.count}, but this model has {len(stages)} stages: {', '.join(stages)}"
            )
        frozen = stages[: spec.count]
        if spec.count:
            # Parameters beside the stages, in none, are taken as part of the input embedding and
            # freeze with the first stage, as timm groups ViT's tokens with its patch embedding.
            # stage_names already puts those of the models it knows (torchvision ViT's class_token
            # and encoder.pos_embedding) in the first stage: this is for models it does not.
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


def head_dropout(model: nn.Module, head: str) -> list[str]:
    """The dropout layers that feed the head: those right before it in its container
    (EfficientNet's and MobileNet's classifier.0 or .2, VGG's classifier.5, GoogLeNet's and
    Inception's dropout, timm ViT's head_drop, timm ConvNeXt's head.drop). They are part of
    the classifier, so they stay on while it trains on a frozen backbone, as in timm's and
    torchvision's fine-tuning, where the whole model is in training mode."""
    parent, _, leaf = head.rpartition(".")
    siblings = dict(model.get_submodule(parent).named_children())
    feeding: list[str] = []
    for name in reversed(list(siblings)[: list(siblings).index(leaf)]):
        if not isinstance(siblings[name], nn.modules.dropout._DropoutNd):
            break
        feeding.insert(0, f"{parent}.{name}".lstrip("."))
    return feeding


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
