"""With a frozen backbone, training the head on features computed once gives the same run,
its own dropout included."""

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoints import load_checkpoint
from pipeline.features import head_network
from pipeline.freezing import freeze, parse_freeze, set_train_mode
from pipeline.models import build_model
from testing.project import set_checked_params, stage
from tests.conftest import SMALL_MODEL

METRICS = ("loss", "val_loss", "val_accuracy", "val_f1")
# The stage runs on `device: auto`. On the CPU both paths compute in float32 and differ only
# by summation order. On CUDA both run the backbone in bf16; on an H200 (torch 2.11) the two
# runs' checkpoints were bit-identical. A GPU whose kernels depend on the batch size may round
# the features differently: allow one bf16 rounding step (2**-8 of a value's size, bf16 keeping
# 8 significant bits) of relative difference, no more.
RTOL, ATOL = (4e-3, 1e-4) if torch.cuda.is_available() else (1e-4, 1e-6)


def train(project: Path, cache_features: bool) -> tuple[list[dict], str]:
    set_checked_params(project, **{"freeze": "all_but_head", "train.cache_features": cache_features, "train.epochs": 3})
    result = stage("train", project)
    checkpoints = [load_checkpoint(path) for path in sorted((project / "checkpoints").glob("*.pt"))]
    shutil.rmtree(project / "checkpoints")
    return checkpoints, result.stderr


# shufflenet_v2_x0_5 has no dropout before its head; mobilenet_v3_small's classifier.2 (p 0.2) feeds it.
@pytest.mark.parametrize("arch", ["shufflenet_v2_x0_5", "mobilenet_v3_small"])
def test_cached_features_give_the_same_checkpoints_as_the_full_model(prepared: Path, arch: str) -> None:
    project = prepared
    if arch != SMALL_MODEL["model.arch"]:  # the prepared project's weights are its small model's
        set_checked_params(project, **{"model.arch": arch, "model.weights": None})
        stage("weights", project)
    cached, cached_log = train(project, cache_features=True)
    full, full_log = train(project, cache_features=False)
    assert "features computed once" in cached_log
    assert "features computed once" not in full_log

    assert len(cached) == len(full) == 3
    for mine, theirs in zip(cached, full, strict=True):
        for key in METRICS:
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL, abs=ATOL), key
        assert mine["model_state_dict"].keys() == theirs["model_state_dict"].keys()
        for name, tensor in mine["model_state_dict"].items():
            torch.testing.assert_close(tensor, theirs["model_state_dict"][name], rtol=RTOL, atol=ATOL, msg=name)


def test_the_head_trains_through_its_own_dropout_on_a_frozen_backbone() -> None:
    """mobilenet_v3_small's classifier.2 (Dropout 0.2) feeds its head: with all_but_head it
    stays on, as in torchvision's fine-tuning. In the whole model, the head's input in training
    is torch's dropout of its input in eval mode (the frozen backbone draws nothing random); on
    cached features, head_network applies the same dropout before the head."""
    torch.manual_seed(0)
    built = build_model("mobilenet_v3_small", None, ["a", "b", "c"], 32)
    model, head = built.model, built.spec.head
    # With random weights at 32 px the features reaching the head are all but zero, where
    # dropped and kept features look alike: a bias of unit size before the head gives them
    # the size of real ones.
    with torch.no_grad():
        model.get_submodule("classifier.0").bias.normal_()
    set_train_mode(model, freeze(model, parse_freeze("all_but_head"), head))
    captured = []
    model.get_submodule(head).register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].detach()))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        model(images)  # training
        model.eval()(images)
    training, evaluation = captured
    assert evaluation.abs().mean() > 0.1
    torch.manual_seed(1)
    torch.testing.assert_close(training, F.dropout(evaluation, p=0.2, training=True))
    assert not torch.equal(training, evaluation)

    net = head_network(model, head).train()
    torch.manual_seed(2)
    with torch.no_grad():
        ours = net(evaluation.clone())  # mobilenet's dropout works in place
        torch.manual_seed(2)
        expected = model.get_submodule(head)(F.dropout(evaluation, p=0.2, training=True))
    torch.testing.assert_close(ours, expected)


def test_a_head_whose_output_is_not_the_model_s_trains_on_the_whole_model(prepared: Path) -> None:
    """SqueezeNet's head is a 1x1 convolution that the model pools after: its output is not
    the logits, so the cache of its inputs cannot stand in for the model, and all_but_head
    trains the whole (frozen) model instead, through the train stage."""
    project = prepared
    recipe = {"model.arch": "squeezenet1_1", "model.weights": None, "model.image_size": 32, "train.epochs": 1}
    set_checked_params(project, freeze="all_but_head", **recipe)
    stage("weights", project)
    result = stage("train", project)
    assert "features computed once" not in result.stderr
    checkpoint = load_checkpoint(project / "checkpoints/epoch_001.pt")
    assert checkpoint["arch"] == "squeezenet1_1" and math.isfinite(checkpoint["loss"])


def test_random_augmentation_trains_the_whole_frozen_model_not_cached_features(prepared: Path) -> None:
    """docs/design.md: the head trains on cached features only with no random augmentation;
    features computed once could not be flipped, so flips would be silently lost."""
    set_checked_params(prepared, **{"freeze": "all_but_head", "train.augment.hflip": True, "train.epochs": 1})
    result = stage("train", prepared)
    assert "features computed once" not in result.stderr
    assert load_checkpoint(prepared / "checkpoints/epoch_001.pt")["freeze"] == "all_but_head"
