"""The timm family of backbones: `model.arch: timm/<name>` builds any model of `timm.list_models()`.

It implements pipeline.backbones.Family. What the pipeline needs from a model, timm states
itself, and this module asks it:
the classifier layer (`pretrained_cfg["classifier"]`, replaced by `reset_classifier`), the
stages that `freeze: first:N` and the layers that layer-wise LR decay count (`group_matcher`),
what weight decay leaves alone (`no_weight_decay`), the input
size of models built for one (`fixed_input_size`: ViT, Swin...; built here for
model.image_size), and the preprocessing (`resolve_model_data_config`).

Pretrained weights (model.weights DEFAULT or a pretrained tag such as a1_in1k) are read
from the local Hugging Face cache (`$HF_HOME/hub`, as huggingface_hub finds it) and never
downloaded; the few that timm has only at a URL, from `$TORCH_HOME/hub/checkpoints`.

timm is imported inside the functions that use it: the import takes seconds, which runs
of torchvision models do not pay. A model is told to be timm's by its `pretrained_cfg`,
which no torchvision model has, so that asking needs no import either.
"""

import difflib
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.backbones.preprocessing import Preprocessing
from pipeline.cli import UserError
from pipeline.data.decode import Sizing

log = logging.getLogger(__name__)

PREFIX = "timm/"
DEFAULT_WEIGHTS = "DEFAULT"  # model.weights for the model's default pretrained tag, as for torchvision
# What a model's Hugging Face repo holds its weights in, in the order timm's loader tries them.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def owns(arch: str) -> bool:
    return arch.startswith(PREFIX)


def _is_timm_model(model: nn.Module) -> bool:
    return hasattr(model, "pretrained_cfg")


def timm_name(arch: str) -> str:
    """timm's name of the model that `arch` (timm/<name>) names."""
    return arch.removeprefix(PREFIX)


def check_arch(arch: str) -> None:
    import timm

    name = timm_name(arch)
    known = timm.list_models()
    if name in known:
        return
    model, _, tag = name.partition(".")
    if tag and model in known:
        raise UserError(
            f"model.arch = {arch!r} names a pretrained tag: set model.arch: {PREFIX}{model}, model.weights: {tag}"
        )
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else " (timm.list_models() lists them)"
    raise UserError(f"model.arch = {arch!r} is not a timm model{hint}")


def named_weights(arch: str, weights: str) -> str:
    """timm's name of `arch` with the pretrained tag that `weights` names (DEFAULT: the model's
    default tag), as timm.create_model takes it: resnet18.a1_in1k."""
    import timm

    name = timm_name(arch)
    tags = [tagged.partition(".")[2] for tagged in timm.list_pretrained(f"{name}.*")]
    tag = timm.models.get_pretrained_cfg(name).tag if weights == DEFAULT_WEIGHTS else weights
    if tag not in tags:
        valid = f"valid names: {DEFAULT_WEIGHTS}, {', '.join(tags)}" if tags else "timm has no weights for it"
        raise UserError(
            f"model.weights = {weights!r} is not a pretrained tag of {arch}; {valid}, "
            "a path to a .pt/.pth/.safetensors file, or null"
        )
    return f"{name}.{tag}"


def size_kwargs(arch: str, weights: str | None, image_size: int) -> dict[str, Any]:
    # As timm itself passes it: a model whose config has a fixed input size takes it as img_size,
    # pretrained or not: timm resizes their position embeddings when it loads weights made for another.
    import timm

    return {"img_size": image_size} if timm.models.get_pretrained_cfg(timm_name(arch)).fixed_input_size else {}


def build(arch: str, weights: str | None, model_kwargs: dict[str, Any]) -> nn.Module:
    """`arch` with its original head, and the pretrained `weights` (from `named_weights`) or
    random ones (None)."""
    import timm

    if weights is None:
        return timm.create_model(timm_name(arch), **model_kwargs)
    cfg = timm.models.get_pretrained_cfg(weights)
    path = _hub_file(weights, cfg.hf_hub_id) if cfg.hf_hub_id else _torch_hub_file(weights, cfg.url)
    # timm loads a file named this way as a state_dict (not with the loader of an original
    # format, custom_load, such as ViT's .npz), through the model's own checkpoint filter,
    # which resizes position embeddings to the model's input size.
    model = timm.create_model(weights, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **model_kwargs)
    log.info("loaded timm weights %s from %s", weights, path)
    return model


def _hub_file(name: str, repo_id: str) -> Path:
    """The weights of `name` in the local Hugging Face cache; never a download."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    raise UserError(
        f"timm weights {name} are not in the Hugging Face cache, and the pipeline never downloads them. "
        f"Put {HUB_FILES[0]} of https://huggingface.co/{repo_id} into {folder} (`hf download {repo_id}` "
        "fills it where there is internet, with the same HF_HOME), or set model.weights: null to train from scratch"
    )


def _torch_hub_file(name: str, url: str) -> Path:
    """The weights of `name` that timm has only at `url`, where torch.hub keeps them; never a download."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file():
        raise UserError(
            f"timm weights {name} are not in the cache, and the pipeline never downloads them. Put the file "
            f"{cached.name} (from {url}) into {cached.parent}, or set model.weights: null to train from scratch"
        )
    return cached


def find_head(model: nn.Module) -> str:
    """The module name of the classifier layer, as the model's pretrained_cfg states it."""
    name = model.pretrained_cfg.get("classifier")
    if not isinstance(name, str):  # (head, head_dist) of distilled models; None for encoders alone
        raise UserError(
            f"{PREFIX}{model.pretrained_cfg.get('architecture')} has not one classifier layer but {name!r}; "
            "the pipeline fine-tunes models with one"
        )
    return name


def replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    # reset_classifier replaces the layer at `head`, and keeps the model's num_classes in step.
    device = next(model.parameters()).device
    model.reset_classifier(num_classes)
    model.get_classifier().to(device)


def preprocessing(arch: str, weights: str | None, image_size: int) -> Preprocessing:
    """How inputs of `image_size` pixels are made for `arch` with `weights` (from
    `named_weights`; None: the model's default pretrained tag): as that tag's data config
    states (resolve_model_data_config: interpolation, mean, std), the shorter side resized to
    floor(image_size / crop_pct) as timm's eval transform resizes it, then the centre crop."""
    import timm
    from timm.data import resolve_data_config

    name = weights or timm_name(arch)
    # resolve_model_data_config(model) reads the model's pretrained_cfg, which is this one.
    config = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    if config["crop_mode"] != "center":
        log.warning(
            "timm's data config for %s resizes with crop_mode %s; the pipeline resizes the shorter side and "
            "crops the centre",
            name,
            config["crop_mode"],
        )
    sizing = Sizing(math.floor(image_size / config["crop_pct"]), image_size, config["interpolation"])
    return sizing, list(config["mean"]), list(config["std"])


def stages(model: nn.Module, head: str) -> list[str]:
    """timm's own grouping of the model's parameters (`group_matcher(coarse=True)`: the stem,
    then each stage or block), less the head's group; [] for a model without a usable one,
    and for another family's model (asked without importing timm).

    Each stage is the modules that hold its parameters, joined by `+` (`conv1+bn1`), as
    `freeze: modules:` writes them; a parameter whose module is split between groups is
    named itself (ViT's stem: `cls_token+pos_embed+patch_embed`).
    """
    if not _is_timm_model(model):
        return []
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, AssertionError, NotImplementedError):  # a few models' matchers do not run
        return []
    group_of = {name: group for group, names in groups.items() for name in names}
    head_groups = {group for name, group in group_of.items() if name.startswith(f"{head}.")}
    groups_in = defaultdict(set)  # module name -> the groups of the parameters it holds
    for name, group in group_of.items():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            groups_in[".".join(parts[:depth])].add(group)

    def outermost(name: str, group: int) -> str:
        """The outermost module holding `name` and no parameter of another group; else `name`."""
        parts = name.split(".")
        prefixes = (".".join(parts[:depth]) for depth in range(1, len(parts)))
        return next((prefix for prefix in prefixes if groups_in[prefix] == {group}), name)

    return [
        "+".join(dict.fromkeys(outermost(name, group) for name in groups[group]))
        for group in sorted(groups)
        if group not in head_groups
    ]


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer as timm's `param_groups_layer_decay` numbers them: timm's fine
    groups (`group_matcher(coarse=False)`: the stem, then each block, so a CNN's blocks apart
    and not only its stages), the head's group last; {} for a model without a usable matcher,
    and for another family's model."""
    if not _is_timm_model(model):
        return {}
    from timm.models import group_parameters

    try:
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    except (AttributeError, AssertionError, NotImplementedError):  # as in `stages`
        return {}


def no_weight_decay(model: nn.Module) -> list[str]:
    """What the model itself keeps undecayed (`no_weight_decay()`: ViT's cls_token and
    pos_embed, Swin's relative position tables...), as timm's optimizer factory passes it
    to param_groups_weight_decay; [] for another family's model."""
    if not _is_timm_model(model) or not hasattr(model, "no_weight_decay"):
        return []
    return sorted(model.no_weight_decay())


def drop_path_kwargs(arch: str, rate: float) -> dict[str, Any]:
    return {"drop_path_rate": rate}  # timm's name in every model that has stochastic depth
