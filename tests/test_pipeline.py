"""End to end, the way users drive it: dvc repro, dvc exp run -S, dvc metrics/exp show."""

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from pipeline.checkpoints import load_checkpoint
from testing.project import run, set_params, stage


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project).stdout


def trunk(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if not name.startswith(f"{head}.")}


def git_status(project: Path) -> list[str]:
    return run(["git", "status", "--porcelain"], project).stdout.splitlines()


def shown_metrics(row: dict) -> dict:
    """best/metrics.json of a row of `dvc exp show --json`; {} where the table shows `!` or `-`."""
    return (row["metrics"] or {}).get("best/metrics.json", {}).get("data", {})


def test_repro_then_frozen_experiment(project: Path) -> None:
    """The README's quick start, in one project (each `dvc repro` costs several seconds)."""
    dvc(project, "repro")
    assert git_status(project) == ["?? dvc.lock"]  # what the README says git lists: nothing else to commit
    assert "Running stage" not in dvc(project, "repro")  # nothing changed: nothing runs

    # One checkpoint per epoch, each with what resuming and choosing need.
    checkpoints = sorted((project / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["epoch_001.pt", "epoch_002.pt"]
    first = load_checkpoint(checkpoints[0])
    for key in ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "val_loss", "val_accuracy"):
        assert key in first
    assert first["classes"] == ["5", "6", "7", "8", "9"]

    # The best is the argmin of validation loss over evaluate's table.
    scores = pd.read_csv(project / "eval" / "scores.csv")
    assert scores["epoch"].tolist() == [1, 2]
    best_epoch = int(scores.loc[scores["val_loss"].idxmin(), "epoch"])
    metrics = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    assert metrics["epoch"] == best_epoch
    assert metrics["val_loss"] == scores["val_loss"].min()
    assert metrics["trainable_params"] == metrics["total_params"]  # freeze: none

    best = load_checkpoint(project / "models" / "best.pt")
    chosen = load_checkpoint(checkpoints[best_epoch - 1])
    assert "optimizer_state_dict" not in best
    assert all(torch.equal(best["model_state_dict"][k], v) for k, v in chosen["model_state_dict"].items())

    # Commit the baseline as the README says, then run the head-only experiment on top.
    run(["git", "add", "dvc.lock"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    assert git_status(project) == []
    baseline_rev = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    dvc(project, "exp", "run", "-S", "freeze=all_but_head")

    pretrained = load_checkpoint(project / "models" / "pretrained.pt")
    head = pretrained["head"]
    for path in sorted((project / "checkpoints").glob("*.pt")):
        checkpoint = load_checkpoint(path)
        assert checkpoint["freeze"] == "all_but_head"
        frozen, original = trunk(checkpoint["model_state_dict"], head), trunk(pretrained["model_state_dict"], head)
        assert frozen.keys() == original.keys()
        # Weights and BatchNorm running statistics alike: bit-identical to the pretrained backbone.
        changed = [name for name in frozen if not torch.equal(frozen[name], original[name])]
        assert changed == []

    frozen_metrics = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    assert frozen_metrics["trainable_params"] < frozen_metrics["total_params"]

    # dvc exp show puts both runs side by side: the baseline commit's row and its one
    # experiment's, each with its params and its metrics (not `!`: the README's promise).
    rows = json.loads(dvc(project, "exp", "show", "--json"))
    baseline = next(row for row in rows if row["rev"] == baseline_rev)
    experiments = [rev for exp in baseline["experiments"] for rev in exp["revs"]]
    assert len(experiments) == 1
    runs = [baseline["data"], experiments[0]["data"]]
    freezes = {r["params"]["params.yaml"]["data"]["freeze"]: shown_metrics(r) for r in runs}
    assert freezes == {"none": metrics, "all_but_head": frozen_metrics}

    # Back to the baseline's params: DVC restores every stage from its run-cache, no retraining.
    output = dvc(project, "exp", "run", "-S", "freeze=none")
    assert "Stage 'train' is cached - skipping run" in output
    restored = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    assert restored == metrics


def test_train_takes_torchvision_weights_from_the_offline_cache(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.weights: IMAGENET1K_V1 with the file already in $TORCH_HOME: no network needed."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(urlparse(weights.url).path).name
    cached.parent.mkdir(parents=True)
    imagenet_like = resnet18().state_dict()  # random values stand in for the real download
    torch.save(imagenet_like, cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    set_params(project, **{"model.weights": "IMAGENET1K_V1", "freeze": "all_but_head", "train.epochs": 1})

    stage("prepare", project)
    stage("train", project)

    checkpoint = load_checkpoint(project / "checkpoints" / "epoch_001.pt")
    assert checkpoint["mean"] == list(weights.transforms().mean)
    assert checkpoint["std"] == list(weights.transforms().std)
    trained = trunk(checkpoint["model_state_dict"], "fc")
    assert trained.keys() == trunk(imagenet_like, "fc").keys()
    assert all(torch.equal(tensor, imagenet_like[name]) for name, tensor in trained.items())


def test_results_travel_through_a_remote_to_a_fresh_clone(project: Path, tmp_path: Path) -> None:
    """dvc push to a local-folder remote; a fresh clone gets the same bytes with dvc pull."""
    set_params(project, **{"model.arch": "shufflenet_v2_x0_5"})  # small checkpoints: this is about the flow
    dvc(project, "repro")
    dvc(project, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "results and remote"], project)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    dvc(project, "push")
    dvc(project, "exp", "run", "-S", "freeze=all_but_head", "--name", "frozen-head")
    dvc(project, "exp", "push", "origin", "frozen-head")

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(clone)], tmp_path)
    dvc(clone, "pull")
    shared = ["models/best.pt", *(f"checkpoints/{p.name}" for p in (project / "checkpoints").glob("*.pt"))]
    run(["git", "checkout", "-q", "."], project)  # back to the committed results (the exp was applied)
    dvc(project, "checkout")
    for name in shared:
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name

    dvc(clone, "exp", "pull", "origin", "frozen-head")
    experiments = json.loads(dvc(clone, "exp", "show", "--json"))
    names = [exp["name"] for row in experiments for exp in row.get("experiments") or []]
    assert "frozen-head" in names
