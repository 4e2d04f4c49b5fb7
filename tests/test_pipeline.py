"""End to end, the way users drive it: dvc repro, dvc exp run -S, dvc metrics/exp show."""

import io
import json
import math
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import torch
from omegaconf import OmegaConf
from torchvision.models import ShuffleNet_V2_X0_5_Weights, shufflenet_v2_x0_5

from pipeline.checkpoints import load_checkpoint
from testing.project import REPO, TINY_PARAMS, run
from tests.conftest import Reproduced
from tools import verify


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project).stdout


def trunk(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if not name.startswith(f"{head}.")}


def git_status(project: Path) -> list[str]:
    return run(["git", "status", "--porcelain"], project).stdout.splitlines()


def shown_metrics(row: dict) -> dict:
    """best/metrics.json of a row of `dvc exp show --json`; {} where the table shows `!` or `-`."""
    return (row["metrics"] or {}).get("best/metrics.json", {}).get("data", {})


def shown_experiments(project: Path, baseline_rev: str) -> tuple[dict, list[dict]]:
    """`dvc exp show --json`'s row of the baseline commit, and of each of its experiments
    (with its name and data)."""
    rows = json.loads(dvc(project, "exp", "show", "--json"))
    baseline = next(row for row in rows if row["rev"] == baseline_rev)
    return baseline, [rev for exp in baseline["experiments"] for rev in exp["revs"]]


def documented_sweep_sort() -> list[str]:
    """The options of docs/fine-tuning.md's `dvc exp show --sort-by ...` line."""
    text = (REPO / "docs" / "fine-tuning.md").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("dvc exp show --sort-by")]
    return line.split("#")[0].split()[3:]


def test_quick_start_then_results_shared_through_a_remote(reproduced: Reproduced, tmp_path: Path) -> None:
    """The README's quick start, then docs/fine-tuning.md's sharing of results, in one project
    (each `dvc repro` or `dvc exp run` costs many seconds of stage processes)."""
    project = reproduced.path
    # `dvc repro` ran every stage, left nothing but dvc.lock for git (what the README says),
    # and a second `dvc repro` at once ran nothing.
    assert "Running stage 'select_best'" in reproduced.first_repro
    assert reproduced.status_after_repro == ["?? dvc.lock"]
    assert "Running stage" not in reproduced.second_repro
    assert git_status(project) == []  # dvc.lock committed as the README says

    # One checkpoint per epoch, each with what resuming and choosing need.
    checkpoints = sorted((project / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["epoch_001.pt", "epoch_002.pt"]
    first = load_checkpoint(checkpoints[0])
    for key in ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "val_loss", "val_accuracy"):
        assert key in first
    assert first["classes"] == ["5", "6", "7", "8", "9"]

    # docs/results.md's split of the demo, by hand: in each class of the 896 target digits,
    # val and test each the nearest whole number to 0.2 of it, train the rest.
    sizes = {c: len(list((project / "data/digits/target" / c).iterdir())) for c in "56789"}
    manifest = pd.read_csv(project / "data/prepared/manifest.csv")
    for label, count in sizes.items():
        in_class = manifest[manifest["label"].astype(str) == label]["split"].value_counts().to_dict()
        share = round(0.2 * count)
        assert in_class == {"train": count - 2 * share, "val": share, "test": share}
    assert manifest["split"].value_counts().to_dict() == {"train": 538, "val": 179, "test": 179}

    # Every epoch trains in training mode, not only the first (evaluation between them puts the
    # model in inference mode): with freeze none each BatchNorm counts each batch of each epoch,
    # ceil(538 / 128) = 5 batches in epoch 2 as in epoch 1 (from pretraining's count).
    second = load_checkpoint(checkpoints[1])
    batches = math.ceil(538 / TINY_PARAMS["train.batch_size"])
    counted = {
        name: int(second["model_state_dict"][name] - tensor)
        for name, tensor in first["model_state_dict"].items()
        if name.endswith("num_batches_tracked")
    }
    assert len(counted) > 10 and set(counted.values()) == {batches}, counted

    # The best is the argmin of validation loss over evaluate's table.
    scores = pd.read_csv(project / "eval" / "scores.csv")
    assert scores["epoch"].tolist() == [1, 2]
    best_epoch = int(scores.loc[scores["val_loss"].idxmin(), "epoch"])
    metrics = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    assert metrics["epoch"] == best_epoch
    assert metrics["val_loss"] == scores["val_loss"].min()
    # freeze: none; the counts are torchvision's own model's, with the new 5-class head.
    assert first["arch"] == "shufflenet_v2_x0_5"
    whole = shufflenet_v2_x0_5(num_classes=5)
    assert metrics["trainable_params"] == metrics["total_params"] == sum(p.numel() for p in whole.parameters())

    best = load_checkpoint(project / "models" / "best.pt")
    chosen = load_checkpoint(checkpoints[best_epoch - 1])
    assert not {"optimizer_state_dict", "scheduler_state_dict"} & best.keys()  # for using the model, not resuming
    assert all(torch.equal(best["model_state_dict"][k], v) for k, v in chosen["model_state_dict"].items())
    shared = ["models/best.pt", *(f"checkpoints/{path.name}" for path in checkpoints)]
    baseline_bytes = {name: (project / name).read_bytes() for name in shared}

    # A DVC remote and a git origin (docs/fine-tuning.md, "Sharing experiments"); the baseline
    # goes to both.
    dvc(project, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["git", "commit", "-qam", "a remote"], project)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    dvc(project, "push")
    baseline_rev = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    # The head-only experiment on top of the baseline.
    dvc(project, "exp", "run", "-S", "freeze=all_but_head", "--name", "frozen-head")
    pretrained = load_checkpoint(project / "models" / "start.pt")
    head = pretrained["head"]
    for path in sorted((project / "checkpoints").glob("*.pt")):
        checkpoint = load_checkpoint(path)
        assert checkpoint["freeze"] == "all_but_head"
        # The model's frozen modules, every child of torchvision's model but its head, though
        # with the backbone's features cached (train.cache_features) the loop runs the head alone.
        assert checkpoint["frozen_modules"] == [name for name, _ in whole.named_children() if name != head]
        frozen, original = trunk(checkpoint["model_state_dict"], head), trunk(pretrained["model_state_dict"], head)
        assert frozen.keys() == original.keys()
        # Weights and BatchNorm running statistics alike: bit-identical to the pretrained backbone.
        changed = [name for name in frozen if not torch.equal(frozen[name], original[name])]
        assert changed == []

    frozen_metrics = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    frozen_best = (project / "models" / "best.pt").read_bytes()
    head_only = sum(p.numel() for p in whole.get_submodule(head).parameters())  # fc: 1024 x 5 + 5
    assert (frozen_metrics["trainable_params"], frozen_metrics["total_params"]) == (head_only, metrics["total_params"])

    # dvc exp show puts both runs side by side: the baseline commit's row and its one
    # experiment's, each with its params and its metrics (not `!`: the README's promise).
    baseline, experiments = shown_experiments(project, baseline_rev)
    assert len(experiments) == 1
    runs = [baseline["data"], experiments[0]["data"]]
    freezes = {r["params"]["params.yaml"]["data"]["freeze"]: shown_metrics(r) for r in runs}
    assert freezes == {"none": metrics, "all_but_head": frozen_metrics}

    # A fresh clone gets the baseline's bytes with `dvc pull`, and the experiment with `dvc exp pull`.
    dvc(project, "exp", "push", "origin", "frozen-head")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(clone)], tmp_path)
    dvc(clone, "pull")
    for name, content in baseline_bytes.items():
        assert (clone / name).read_bytes() == content, name
    # tools.verify finds the clone's remote in DVC's own config, so its --repair says
    # `dvc pull` there (tests/test_verify.py checks what it says with one).
    assert verify.dvc_cache_and_remotes(clone) == (clone / ".dvc" / "cache", ["storage"])
    dvc(clone, "exp", "pull", "origin", "frozen-head")
    cloned = json.loads(dvc(clone, "exp", "show", "--json"))
    assert "frozen-head" in [exp["name"] for row in cloned for exp in row.get("experiments") or []]

    # Back to the baseline's params: DVC restores every stage from its run-cache, no retraining.
    output = dvc(project, "exp", "run", "-S", "freeze=none")
    assert "Stage 'train' is cached - skipping run" in output
    restored = json.loads(dvc(project, "metrics", "show", "--json"))[""]["data"]["best/metrics.json"]["data"]
    assert restored == metrics

    # docs/fine-tuning.md's sweep, from its comparison on: the two experiments ranked by the
    # chosen checkpoint's validation loss, then the winner kept in the workspace. (Its
    # `--queue` and `dvc queue start` run stages as tests/test_runs.py's queued run does.)
    ranked = pd.read_csv(io.StringIO(dvc(project, "exp", "show", "--csv", *documented_sweep_sort())))
    ranked = ranked[ranked["typ"] != "baseline"]
    shown = {row["name"]: shown_metrics(row["data"]) for row in shown_experiments(project, baseline_rev)[1]}
    assert set(shown) == set(ranked["Experiment"]) and len(shown) == 2
    assert shown["frozen-head"] == frozen_metrics and metrics in shown.values()
    assert ranked["Experiment"].tolist() == sorted(shown, key=lambda name: shown[name]["val_loss"])
    # Applying the experiment the workspace does not hold brings back its params, metrics and models.
    dvc(project, "exp", "apply", "frozen-head")
    assert OmegaConf.load(project / "params.yaml").freeze == "all_but_head"
    assert json.loads((project / "best" / "metrics.json").read_text()) == frozen_metrics
    assert (project / "models" / "best.pt").read_bytes() == frozen_best


def test_torchvision_weights_are_a_params_only_switch(project: Path, tmp_path: Path) -> None:
    """The README's own-images flow: a folder of class folders tracked with `dvc add`, then
    `dvc exp run -S prepare.data_dir=... -S model.weights=IMAGENET1K_V1` with the file already
    in $TORCH_HOME, with the references' crops and flips: no dvc.yaml edit, no network, no
    demo pretraining, and the weights' own preprocessing. (A small model's weights, with
    ImageNet's usual resize 256 and crop 224; the demo's target digits as the user's images.)"""
    shutil.copytree(project / "data/digits/target", project / "data/raw")
    run([sys.executable, "-m", "dvc", "add", "data/raw"], project)
    weights = ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(urlparse(weights.url).path).name
    cached.parent.mkdir(parents=True)
    imagenet_like = shufflenet_v2_x0_5().state_dict()  # random values stand in for the real download
    torch.save(imagenet_like, cached)
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "prepare.data_dir=data/raw",
         "-S", "model.arch=shufflenet_v2_x0_5", "-S", "model.weights=IMAGENET1K_V1",
         "-S", "freeze=all_but_head", "-S", "train.epochs=1",
         "-S", "train.augment.min_scale=0.08", "-S", "train.augment.hflip=true",
         "train"],  # up to train: what is checked here (evaluate and select-best as in the quick start)
        project, env={"TORCH_HOME": str(tmp_path / "torch")},
    )  # fmt: skip
    log = output.stdout + output.stderr
    assert "pretrain epoch" not in log and "Running stage 'weights'" in log and "Traceback" not in log
    manifest = pd.read_csv(project / "data/prepared/manifest.csv")
    assert len(manifest) == 896 and all(manifest["path"].str.startswith("data/raw/"))
    # prepare decoded every image at the weights' sizing, once: train and evaluate read its cache.
    assert "images at 18px" not in log, log

    # One DVC-tracked file holds the starting weights: the cached tensors, without the head.
    start = load_checkpoint(project / "models" / "start.pt")
    assert start["model_state_dict"].keys() == trunk(imagenet_like, "fc").keys()
    assert all(torch.equal(tensor, imagenet_like[name]) for name, tensor in start["model_state_dict"].items())
    assert "models/start.pt" in (project / "dvc.lock").read_text()

    # Their preprocessing (resize 256, centre crop 224, bilinear), scaled to the 16 px crop.
    checkpoint = load_checkpoint(project / "checkpoints" / "epoch_001.pt")
    transforms = weights.transforms()
    assert checkpoint["mean"] == list(transforms.mean) and checkpoint["std"] == list(transforms.std)
    assert (checkpoint["image_size"], checkpoint["resize_size"], checkpoint["interpolation"]) == (16, 18, "bilinear")
    trained = trunk(checkpoint["model_state_dict"], "fc")
    assert all(torch.equal(tensor, imagenet_like[name]) for name, tensor in trained.items())
