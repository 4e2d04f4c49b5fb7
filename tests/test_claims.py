"""README claims that no other test checked, each through the entry point a user runs.

Most of them share the reproduced project (tests/conftest.py: shufflenet at 16 px), whose
`dvc repro` recorded which params each stage reads, so that dvc.yaml's `params:` lists can
be compared with what the code really reads.
"""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageFilter

from pipeline import export
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.config import Params
from pipeline.freezing import freeze, parse_freeze, set_train_mode
from pipeline.models import build_model
from testing.project import REPO, copy_project, run, set_checked_params, stage
from tests.conftest import Reproduced
from tests.helpers import load_export

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
READ_ON_CUDA_ONLY = {"evaluate.cuda_batch_size"}


def leaves(schema: type = Params, prefix: str = "") -> set[str]:
    """Every param key, dotted: freeze, device, prepare.data_dir, ..., train.augment.min_scale."""
    keys = set()
    for name, kind in schema.__annotations__.items():
        if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
            keys |= leaves(kind, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


@pytest.fixture(scope="module")
def pipeline_run(reproduced_once: Reproduced, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reproduced project (conftest.py), whose `dvc repro` recorded which params each
    stage read: (a copy of it for this module's tests, the folder of params read per stage module)."""
    project = copy_project(reproduced_once.path, tmp_path_factory.mktemp("claims") / "project")
    return project, reproduced_once.params_read


# --- dvc.yaml lists exactly the params each stage reads --------------------------------------


# check_params lists the whole of params.yaml by design (tests/test_dvc_yaml.py checks that).
@pytest.mark.parametrize("name", [name for name in STAGES if name != "check_params"])
def test_dvc_yaml_lists_exactly_the_params_the_stage_reads(pipeline_run: tuple[Path, Path], name: str) -> None:
    _, read_dir = pipeline_run
    module = STAGES[name]["cmd"].removeprefix("python -m ")
    read = set(json.loads((read_dir / f"{module}.json").read_text()))
    assert read, f"{module} read no params (is the recorder installed?)"
    declared = [entry for entry in STAGES[name].get("params", []) if isinstance(entry, str)]
    known = leaves()

    def covered(key: str, entry: str) -> bool:
        return key == entry or key.startswith(f"{entry}.")

    # Nothing read is left out: a change to it would not re-run the stage.
    assert {key for key in read if not any(covered(key, entry) for entry in declared)} == set()
    # Nothing declared goes unread: a change to it would re-run the stage for nothing. Some
    # params are read on one kind of device only; this run's device cannot read the others.
    unread_here = READ_ON_CUDA_ONLY if not torch.cuda.is_available() else set()
    for entry in declared:
        assert {key for key in known - unread_here if covered(key, entry)} <= read, f"{entry}: not all of it is read"


def test_the_recorder_sees_a_param_read(pipeline_run: tuple[Path, Path]) -> None:
    # A control for the test above: each stage's record holds what it obviously reads.
    _, read_dir = pipeline_run
    assert "select.metric" in json.loads((read_dir / "pipeline.select_best.json").read_text())
    assert "train.augment.min_scale" in json.loads((read_dir / "pipeline.train.json").read_text())
    assert "prepare.seed" in json.loads((read_dir / "pipeline.prepare.json").read_text())


# --- select-best and its .pt2 ---------------------------------------------------------------


def test_pt2_refuses_other_image_sizes(pipeline_run: tuple[Path, Path]) -> None:
    project, _ = pipeline_run
    model, metadata = load_export(project / "models" / "best.pt2")
    size = metadata["image_size"]
    assert size == 16
    with torch.no_grad():
        assert model(torch.zeros(3, 3, size, size)).shape == (3, 5)
        for other in (size - 4, size + 8):
            with pytest.raises(Exception, match=r"(?i)shape|size|dim|guard|expected"):
                model(torch.zeros(3, 3, other, other))


def test_select_best_refuses_a_damaged_checkpoint(pipeline_run: tuple[Path, Path], tmp_path: Path) -> None:
    project = tmp_path / "project"
    copy_project(pipeline_run[0], project)
    for output in ("models/best.pt", "models/best.pt2", "best/metrics.json"):
        (project / output).unlink()
    path = project / "checkpoints" / "epoch_001.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()  # a hard link to the run's files: replace, don't edit in place
    path.write_bytes(bytes(data))

    result = stage("select_best", project, check=False)
    assert result.returncode == 2
    assert "checkpoints/epoch_001.pt is damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "models" / "best.pt").exists()
    assert not (project / "best" / "metrics.json").exists()


# --- predict's --batch-size and --device ------------------------------------------------------


def predict(project: Path, *args: str, check: bool = True):
    command = [sys.executable, "-m", "tools.predict", "data/digits/target/5", "--format", "json", *args]
    return run(command, project, check=check)


def test_predict_batch_size_and_device(pipeline_run: tuple[Path, Path]) -> None:
    project, _ = pipeline_run
    default = json.loads(predict(project).stdout)
    assert len(default) > 100  # more than one batch of 64
    for args in (["--batch-size", "7"], ["--batch-size", "1000", "--device", "cpu"]):
        result = predict(project, *args)
        other = json.loads(result.stdout)
        assert [o["path"] for o in other] == [d["path"] for d in default]
        for mine, theirs in zip(other, default, strict=True):
            assert [t["class"] for t in mine["top"]] == [t["class"] for t in theirs["top"]]
            probabilities = [t["probability"] for t in mine["top"]], [t["probability"] for t in theirs["top"]]
            assert probabilities[0] == pytest.approx(probabilities[1], abs=2e-6)
    assert "on cpu" in result.stderr

    for args, message in [
        (["--device", "tpu:9"], "is not a device"),
        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "CUDA is not available here")]),
    ]:
        result = predict(project, *args, check=False)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_predict_piped_into_head_stops_quietly_with_exit_code_141(pipeline_run: tuple[Path, Path]) -> None:
    """docs/design.md: `python -m tools.predict ... | head` stops quietly (exit code 141). The
    digits twice (relative and absolute paths: two entries each) make about 127 kB of CSV,
    more than a pipe holds (64 kB), so predict is still writing when head has gone."""
    project, _ = pipeline_run
    paths = f"data/digits/target {project / 'data/digits/target'}"
    predict = f"{sys.executable} -m tools.predict {paths} --format csv --top-k 5"
    result = run(["bash", "-c", f"set -o pipefail; {predict} | head -n 2"], project, check=False)
    assert result.returncode == 141, result.stderr
    assert result.stdout.splitlines()[0].startswith("path,class_1,probability_1")
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_the_export_page_s_examples_run_on_torch_alone_and_give_predict_s_answer(
    pipeline_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """docs/export.md's two Python examples, as written, in a copy of the reproduced project,
    with torchvision and this project's code made unimportable: each prints predict's class
    for the example image (and best.pt2's for a landscape and a portrait picture, through a
    resize margin), and its probability: to the 4 decimals printed from best_image.pt2
    (the same preprocessing inside), and to 2e-3 from best.pt2 (the page resizes with Pillow,
    within a step of 8-bit value of torchvision's resize; equal to 4 decimals here). The tiny run's model gives nearly
    the same probabilities (0.20) whatever its input, so best.pt's model is replaced by a
    random resnet18 with a head 30 times larger: a model whose answer moves with its input."""
    project = copy_project(pipeline_run[0], tmp_path / "project")
    checkpoint = load_checkpoint(project / "models/best.pt")
    torch.manual_seed(0)
    fresh = build_model("resnet18", None, checkpoint["classes"], checkpoint["image_size"])
    state = fresh.model.state_dict()
    checkpoint |= {"arch": "resnet18", "head": "fc", "model_kwargs": fresh.spec.model_kwargs}
    checkpoint["model_state_dict"] = {**state, "fc.weight": state["fc.weight"] * 30}
    checkpoint["resize_size"] = 20  # a resize margin, as ImageNet weights have: the page's crop offsets count
    save_checkpoint(checkpoint, project / "models/best.pt")
    export.write_exports(checkpoint, project / "models/best.pt2", project / "models/best_image.pt2")

    page = (REPO / "docs/export.md").read_text()
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    assert [("best_image.pt2" in block, "best.pt2" in block) for block in blocks] == [(True, False), (False, True)]
    image = "data/digits/target/5/0005.png"
    assert all(image in block for block in blocks)
    # The page's resize arithmetic on a landscape and a portrait picture too (the example's is square).
    rng = np.random.default_rng(0)
    for name, (width, height) in {"wide.png": (41, 30), "tall.png": (30, 57)}.items():
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).filter(ImageFilter.SMOOTH)
        picture.save(project / name)
    images = [image, "wide.png", "tall.png"]
    predicted = json.loads(run([sys.executable, "-m", "tools.predict", *images, "--format", "json"], project).stdout)
    tops = [row["top"][0] for row in predicted]
    assert all(0.4 < top["probability"] < 0.999 for top in tops)  # neither flat nor saturated
    cut_off = "import sys\nsys.modules['torchvision'] = None\nsys.modules['pipeline'] = None\n"
    for block, pictures, tolerance in zip(blocks, ([image], images), (1e-4, 2e-3), strict=True):
        # One process runs the block, as written, for each picture in turn.
        loop = "".join(f"\nexec({block.replace(image, path)!r})" for path in pictures)
        printed = run([sys.executable, "-c", cut_off + loop], project).stdout.split()
        assert len(printed) == 2 * len(pictures)
        for top, (label, probability) in zip(tops, zip(printed[::2], printed[1::2], strict=True), strict=False):
            assert label == top["class"]
            assert float(probability) == pytest.approx(top["probability"], abs=tolerance)


# --- the training stage's guards and options --------------------------------------------------


def test_infinite_training_loss_stops_the_stage(pipeline_run: tuple[Path, Path], tmp_path: Path) -> None:
    project = tmp_path / "project"
    copy_project(pipeline_run[0], project)
    for trained in (".cache/runs", "checkpoints"):  # a fresh run, not the finished one republished
        shutil.rmtree(project / trained)
    # The 2nd cross-entropy of the run returns +inf (not NaN): epoch 1, batch 2.
    result = run([sys.executable, "-m", "tests.kill_wrapper", "inf", "2"], project, check=False)
    assert result.returncode == 2, result.stderr
    assert "training loss became inf in epoch 1, batch 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((project / "checkpoints").glob("*.pt")) == []


def test_randomness_inside_frozen_modules_is_off_and_the_heads_own_dropout_on() -> None:
    # EfficientNet-B0: stochastic depth in every block of `features`, which all_but_head freezes
    # (off), and Dropout(0.2) as classifier.0, right before the head: the classifier's own, on
    # as in torchvision's fine-tuning (docs/fine-tuning.md, "Freezing").
    torch.manual_seed(0)
    built = build_model("efficientnet_b0", None, ["a", "b", "c"], 32)
    model, head = built.model, built.spec.head
    seen: list[torch.Tensor] = []
    model.get_submodule(head).register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def two_training_passes(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
        set_train_mode(model, freeze(model, parse_freeze(spec), head))
        with torch.no_grad():
            for _ in range(2):
                model(images)
        return seen[-2], seen[-1]

    first, second = two_training_passes("all_but_head")
    with torch.no_grad():
        model.eval()(images)
    plain = seen[-1]
    for features in (first, second):  # inference's features, each dropped (0) or scaled by 1 / (1 - 0.2)
        kept = features != 0
        torch.testing.assert_close(features[kept], plain[kept] / 0.8)
        assert 0.05 < 1 - kept.float().mean() < 0.4
    assert not torch.equal(first, second)  # the head's dropout draws anew
    first, _ = two_training_passes("none")  # the control: unfrozen, the backbone's randomness is on
    kept = first != 0
    assert not torch.allclose(first[kept], plain[kept] / 0.8)


def test_compile_trains_the_same_model(
    pipeline_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    copy_project(pipeline_run[0], project)
    # Head only on the cached features: torch.compile then compiles just the head, in seconds.
    set_checked_params(project, **{"freeze": "all_but_head", "train.epochs": 2})
    stage("train", project)
    plain = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    set_checked_params(project, **{"train.compile": True})
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # where its compiled code goes
    compiled_run = stage("train", project)
    assert any(path.is_file() for path in (tmp_path / "inductor").rglob("*")), "nothing was compiled"
    compiled = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    assert len(compiled) == len(plain) == 2
    for mine, theirs in zip(compiled, plain, strict=True):
        assert math.isclose(mine["loss"], theirs["loss"], rel_tol=1e-4), compiled_run.stderr
        for key, tensor in theirs["model_state_dict"].items():
            torch.testing.assert_close(mine["model_state_dict"][key], tensor, rtol=1e-4, atol=1e-5)
