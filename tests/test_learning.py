"""The model learns: a guard against a pipeline that runs cleanly and learns nothing.

Every other test would pass if, say, the labels were scrambled on the way into training:
the stages still run, checkpoints are still written and resumed bit-identically. These
tests train for real, through the stage entry points, on the demo's digits (5-9, five
classes, so chance is 20%) at 16 px for a few epochs, and check the numbers:

- from random weights, the training loss falls and validation accuracy is far above chance;
- the control: the same run on the same images with the labels shuffled among them stays
  near chance (so the thresholds above are not met by anything that merely runs);
- the demo's transfer claim: with only the head trained, a backbone pretrained on the
  source digits 0-4 beats a random backbone.

Margins are wide on purpose: float kernels differ between CPUs, and the numbers move a
little (README, "Results on the demo"), but not by this much.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.checkpoints import load_checkpoint
from testing.project import copy_project, make_project, set_checked_params, stage

CHANCE = 1 / 5  # five classes, nearly balanced
# Small and quick: resnet18 from scratch at 16 px reaches about 0.88 validation accuracy
# in 3 epochs of 538 images on this project's CPUs (about 1 s per epoch).
LEARN = {
    "model.weights": None,
    "model.image_size": 16,
    "train.epochs": 3,
    "train.batch_size": 32,
    "train.lr": 0.01,
}


def history(project: Path) -> list[dict]:
    """Each epoch's record, from the checkpoints the train stage wrote."""
    paths = sorted((project / "checkpoints").glob("epoch_*.pt"))
    return [{k: v for k, v in load_checkpoint(p).items() if not k.endswith("state_dict")} for p in paths]


def train(project: Path, **params: object) -> list[dict]:
    set_checked_params(project, **params)
    stage("train", project)
    return history(project)


def describe(records: list[dict]) -> str:
    return "; ".join(
        f"epoch {r['epoch']}: loss {r['loss']:.3f}, val loss {r['val_loss']:.3f}, val acc {r['val_accuracy']:.3f}"
        for r in records
    )


def shuffle_labels(project: Path, source: str, target: str, seed: int = 0) -> None:
    """Copy the images under `source` to `target`, each into a class folder drawn by a
    permutation of all labels: the same images and class sizes, labels unrelated to them."""
    files = sorted((project / source).glob("*/*.png"))
    labels = [path.parent.name for path in files]
    shuffled = np.random.default_rng(seed).permutation(labels)
    for path, label in zip(files, shuffled, strict=True):
        (project / target / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, project / target / label / path.name)
    assert sum(a == b for a, b in zip(labels, shuffled, strict=True)) < 0.3 * len(files)


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the target digits prepared, and random starting weights, once for the module."""
    project = make_project(tmp_path_factory.mktemp("learning") / "project")
    set_checked_params(project, **{"model.weights": None})
    stage("prepare", project)
    stage("weights", project)
    return project


@pytest.fixture
def digits(prepared_digits: Path, tmp_path: Path) -> Path:
    """A copy of `prepared_digits` for one test to train in."""
    return copy_project(prepared_digits, tmp_path / "project")


def test_training_loss_falls_and_validation_accuracy_beats_chance(digits: Path) -> None:
    records = train(digits, **LEARN)
    losses = [r["loss"] for r in records]
    assert losses[-1] < 0.5 * losses[0], describe(records)
    assert losses[-1] < 0.5 * math.log(5), describe(records)  # ln 5: the loss of a uniform guess
    # Well above chance (0.2) at the best epoch, as select-best would keep it.
    assert max(r["val_accuracy"] for r in records) > 0.6, describe(records)


def test_with_shuffled_labels_the_same_run_stays_near_chance(digits: Path) -> None:
    """The control for the test above: it proves those thresholds can fail."""
    shuffle_labels(digits, "data/digits/target", "data/shuffled")
    set_checked_params(digits, **{"prepare.data_dir": "data/shuffled"})
    stage("prepare", digits)
    records = train(digits, **LEARN)
    # 179 validation images: chance is 0.2 +- 0.03; nothing to learn, so no epoch gets far.
    assert max(r["val_accuracy"] for r in records) < CHANCE + 0.15, describe(records)
    assert records[-1]["loss"] > 0.8 * math.log(5), describe(records)


def test_head_only_on_the_pretrained_backbone_beats_a_random_backbone(digits: Path) -> None:
    """The demo's transfer claim (README, "Results on the demo"), scaled down."""
    head_only = {"freeze": "all_but_head", "train.epochs": 5, "train.batch_size": 32, "train.lr": 0.01}
    random = train(digits, **head_only)[-1]  # the fixture's random starting weights
    pretraining = {"model.weights": "pretrain", "pretrain.epochs": 3, "pretrain.batch_size": 32}
    set_checked_params(digits, **pretraining)
    stage("weights", digits)
    pretrained = train(digits)[-1]
    both = describe([pretrained, random])
    assert pretrained["val_loss"] < 0.8 * random["val_loss"], both
    assert pretrained["val_accuracy"] > 0.6, both
