"""The evaluate stage's table against a reference computed outside the project's code: each
checkpoint's weights loaded into torchvision's own model, the test images decoded by Pillow
and preprocessed by torchvision's transforms as the checkpoint records them, and the scores
computed by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoints import save_checkpoint
from pipeline.models import build_model
from testing.project import stage
from tests.conftest import Reproduced
from tests.helpers import torchvision_logits


def macro_f1(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes that occur in either column."""
    scores = []
    for label in np.union1d(actual, predicted):
        true_positive = np.sum((actual == label) & (predicted == label))
        scores.append(2 * true_positive / (np.sum(actual == label) + np.sum(predicted == label)))
    return float(np.mean(scores))


def test_each_checkpoints_scores_are_what_torchvision_computes_from_its_weights(reproduced: Reproduced) -> None:
    project = reproduced.path
    manifest = pd.read_csv(project / "data/prepared/manifest.csv", dtype=str, keep_default_na=False)
    scores = pd.read_csv(project / "eval/scores.csv")
    assert list(scores["epoch"]) == [1, 2]
    # The documented columns in their order (docs/design.md): validation's scores, then test's.
    assert list(scores.columns) == [
        "epoch", "weights", "tta", "train_loss", "val_loss", "val_accuracy", "val_f1", "test_loss", "test_accuracy",
        "test_f1",
    ]  # fmt: skip
    for epoch in (1, 2):
        checkpoint = torch.load(project / f"checkpoints/epoch_{epoch:03d}.pt", weights_only=True)
        row = scores[scores["epoch"] == epoch].iloc[0]
        assert row["train_loss"] == pytest.approx(checkpoint["loss"])  # the epoch's training loss, as train logged it
        for split in ("val", "test"):
            rows = manifest[manifest["split"] == split]
            targets = torch.tensor([checkpoint["classes"].index(label) for label in rows["label"]])
            logits = torchvision_logits(checkpoint, list(rows["path"]), project)
            predicted = logits.argmax(dim=1)
            # Pillow (prepare's decode) and torchvision resize a few pixels one 8-bit level apart:
            # the loss agrees to a small fraction, and at most two of the images change their answer.
            assert row[f"{split}_loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=2e-2)
            assert abs(row[f"{split}_accuracy"] - (predicted == targets).float().mean().item()) <= 2 / len(rows)
            assert row[f"{split}_f1"] == pytest.approx(macro_f1(targets.numpy(), predicted.numpy()), abs=4 / len(rows))
        # And each test image's row in the predictions file (rows, logits and predicted are the
        # loop's last split's, test's), in the manifest's order: its predicted class, and that
        # class's probability (the softmax's, not a logit).
        written = pd.read_csv(project / f"eval/predictions/epoch_{epoch:03d}.csv", dtype=str, keep_default_na=False)
        assert list(written["path"]) == list(rows["path"]) and list(written["actual"]) == list(rows["label"])
        reference = [checkpoint["classes"][k] for k in predicted]
        agree = np.array([mine == theirs for mine, theirs in zip(written["predicted"], reference, strict=True)])
        assert (~agree).sum() <= 2
        # The tiny model's probabilities hardly depend on the pixels (both decodes give them to
        # 1e-7 on the CPU), but lie close together: the next class's is 6e-3 below at epoch 1
        # (measured). 2e-3 leaves room for CUDA's bf16 autocast (tests/test_predict.py).
        confidence = logits.softmax(dim=1).amax(dim=1).numpy()
        assert written["confidence"].astype(float).to_numpy()[agree] == pytest.approx(confidence[agree], abs=2e-3)


def test_each_image_is_scored_on_its_own_logits(reproduced: Reproduced) -> None:
    """The tiny trained model answers alike for every image (its confidences spread by 1e-5),
    so the test above cannot tell an image scored on another's logits. A checkpoint that
    answers each image its own way (resnet18 from torch's random weights, its head scaled and
    shifted by torchvision's logits to a spread of 2 around 0 over the images): evaluate, in
    batches of 64 (the last one short), gives each test image torchvision's prediction and
    probability, and each split torchvision's loss, accuracy and F1, on the CPU to float
    rounding (on CUDA evaluate runs in bf16, whose 8 significant bits allow 2**-8 of the
    largest logit)."""
    project = reproduced.path
    classes = json.loads((project / "data/prepared/classes.json").read_text())
    torch.manual_seed(0)
    built = build_model("resnet18", None, classes, 16)
    checkpoint = {**built.spec.to_dict(), "model_state_dict": built.model.state_dict(), "epoch": 1, "loss": 0.5}
    manifest = pd.read_csv(project / "data/prepared/manifest.csv", dtype=str, keep_default_na=False)
    head = checkpoint["model_state_dict"]
    products = torchvision_logits(checkpoint, list(manifest["path"]), project) - head["fc.bias"]  # each image's W f
    scale = 2 / products.std(dim=0).mean()
    head["fc.weight"], head["fc.bias"] = head["fc.weight"] * scale, -scale * products.mean(dim=0)
    for path in (project / "checkpoints").glob("*.pt"):
        path.unlink()
    save_checkpoint(checkpoint, project / "checkpoints/epoch_001.pt")
    stage("evaluate", project)

    row = pd.read_csv(project / "eval/scores.csv").iloc[0]
    for split in ("val", "test"):
        rows = manifest[manifest["split"] == split]
        targets = torch.tensor([checkpoint["classes"].index(label) for label in rows["label"]])
        logits = torchvision_logits(checkpoint, list(rows["path"]), project)
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        assert confidence.std() > 0.05 and predicted.unique().numel() > 1  # answers that differ
        tolerance = 1e-5 if not torch.cuda.is_available() else 2**-8 * logits.abs().max().item()
        assert row[f"{split}_loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=tolerance)
        assert row[f"{split}_accuracy"] == pytest.approx((predicted == targets).float().mean().item(), abs=1e-7)
        assert row[f"{split}_f1"] == pytest.approx(macro_f1(targets.numpy(), predicted.numpy()), abs=1e-6)
    written = pd.read_csv(project / "eval/predictions/epoch_001.csv", dtype=str, keep_default_na=False)
    assert list(written["path"]) == list(rows["path"])
    assert list(written["predicted"]) == [checkpoint["classes"][k] for k in predicted]
    assert written["confidence"].astype(float).to_numpy() == pytest.approx(confidence.numpy(), abs=tolerance)
    # Each probability as written, to 6 decimals: best/mistakes.csv and tools.predict's comparisons
    # take it from here. Read as text, since a float column cannot tell 5 decimals from 6; over
    # this many images some end in a nonzero sixth digit.
    decimals = written["confidence"].str.partition(".")[2].str.len()
    assert decimals.max() == 6, written["confidence"].head()


def test_checkpoints_of_other_classes_are_refused_not_scored(project: Path) -> None:
    """A checkpoint whose output i is another class than the manifest's i-th (a data folder
    changed under a kept run) would score every image against the wrong names: evaluate stops."""
    stage("check_params", project)
    prepared = project / "data/prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    (prepared / "classes.json").write_text(json.dumps(["dog", "cat"]))
    (prepared / "manifest.csv").write_text("path,label,split,sha1\n")
    # Epoch 1 of the manifest's classes, epoch 2 of the same names in another order: every
    # checkpoint is compared, not the first alone.
    for epoch, classes in [(1, ["dog", "cat"]), (2, ["cat", "dog"])]:
        built = build_model("resnet18", None, classes, 16)
        checkpoint = {**built.spec.to_dict(), "model_state_dict": built.model.state_dict(), "epoch": epoch, "loss": 0.5}
        save_checkpoint(checkpoint, project / f"checkpoints/epoch_{epoch:03d}.pt")

    result = stage("evaluate", project, check=False)

    assert result.returncode == 2, result.stderr
    assert "epoch_002.pt was trained on classes ['cat', 'dog'], but the manifest has ['dog', 'cat']" in result.stderr
    assert not (project / "eval/scores.csv").exists()
