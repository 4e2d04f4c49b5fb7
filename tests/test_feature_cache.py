"""With a frozen backbone, training the head on features computed once gives the same run."""

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import load_checkpoint
from testing.project import set_params, stage

METRICS = ("loss", "val_loss", "val_accuracy", "val_f1")
# The stage runs on `device: auto`. On the CPU both paths compute in float32 and differ only
# by summation order. On CUDA both run the backbone in bf16; on an H200 (torch 2.11) the two
# runs' checkpoints were bit-identical. A GPU whose kernels depend on the batch size may round
# the features differently: allow one bf16 rounding step (2**-8 of a value's size, bf16 keeping
# 8 significant bits) of relative difference, no more.
RTOL, ATOL = (4e-3, 1e-4) if torch.cuda.is_available() else (1e-4, 1e-6)


def train(project: Path, cache_features: bool) -> tuple[list[dict], str]:
    set_params(project, **{"freeze": "all_but_head", "train.cache_features": cache_features, "train.epochs": 3})
    result = stage("train", project)
    checkpoints = [load_checkpoint(path) for path in sorted((project / "checkpoints").glob("*.pt"))]
    shutil.rmtree(project / "checkpoints")
    return checkpoints, result.stderr


def test_cached_features_give_the_same_checkpoints_as_the_full_model(prepared: Path) -> None:
    project = prepared
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
