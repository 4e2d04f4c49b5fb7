"""tools.verify: damaged checkpoints and DVC cache objects are found, named and removed."""

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import save_checkpoint
from testing.compare import assert_tensors_equal
from testing.project import run
from tests.conftest import Reproduced
from tools import verify


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def cache_object(project: Path, data: bytes) -> Path:
    """The one object of the project's DVC cache that holds `data` (named by its md5)."""
    (found,) = (project / ".dvc" / "cache").rglob(md5(data)[2:])
    return found


def put_object(cache: Path, data: bytes, name: str | None = None, suffix: str = "") -> Path:
    """Store `data` in a DVC 3 cache the way DVC names it (by md5), or under `name`."""
    name = name or md5(data)
    path = cache / "files" / "md5" / name[:2] / (name[2:] + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def save(path: Path, value: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"epoch": 1, "model_state_dict": {"w": torch.full((64,), value)}}, path)
    return path


def truncate(path: Path) -> None:
    with open(path, "r+b") as file:  # in place: hard links to it see the damage too
        file.truncate(path.stat().st_size // 2)


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_cache_objects_are_checked_against_their_names(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = put_object(cache, b"a good file\n")
    listing = json.dumps([{"md5": md5(b"a good file\n"), "relpath": "good.txt"}]).encode()
    good_dir = put_object(cache, listing, suffix=".dir")
    bad = put_object(cache, b"damaged bytes", name=md5(b"the bytes it once held"))
    bad_dir = put_object(cache, b'[{"md5": "trunc', name=md5(listing + b" "), suffix=".dir")
    (cache / "files" / "md5" / "ab").mkdir()
    (cache / "files" / "md5" / "ab" / "not-an-object.tmp").write_bytes(b"ignored")
    # what an interrupted transfer leaves: an object's name, then a suffix of its own
    (cache / "files" / "md5" / "ab" / f"{'c' * 30}.0f1e2d3c.tmp").write_bytes(b"half a file")

    checked, damaged = verify.check_cache(cache)

    assert checked == 4
    assert {damage.path for damage in damaged} == {bad, bad_dir}
    assert good.exists() and good_dir.exists()
    assert "md5 " + md5(b"damaged bytes") in next(d for d in damaged if d.path == bad).reason


def test_a_damaged_object_names_the_workspace_files_linked_to_it(tmp_path: Path) -> None:
    """Files directly in a directory output and deeper in one (dvclive/train's curves), and
    every file linked to one object."""
    cache = tmp_path / ".dvc" / "cache"
    obj = put_object(cache, b"checkpoint bytes")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_001.pt").hardlink_to(obj)
    # Two outputs of the same bytes: DVC links both to the one object.
    (tmp_path / "checkpoints" / "epoch_002.pt").hardlink_to(obj)
    curve = tmp_path / "dvclive" / "train" / "plots" / "metrics" / "loss.tsv"
    curve.parent.mkdir(parents=True)
    curve_obj = put_object(cache, b"step\tloss\n1\t0.5\n")
    curve.hardlink_to(curve_obj)
    outs = "    outs:\n    - path: checkpoints\n    - path: dvclive/train\n"
    (tmp_path / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  train:\n{outs}")
    truncate(tmp_path / "checkpoints" / "epoch_001.pt")
    truncate(curve)

    _, damaged = verify.check_cache(cache, verify.workspace_links(tmp_path))

    assert sorted(d.path for d in damaged) == sorted([obj, curve_obj])
    linked = {d.path: set(d.linked) for d in damaged}
    assert linked == {obj: {tmp_path / "checkpoints" / f"epoch_00{k}.pt" for k in (1, 2)}, curve_obj: {curve}}
    assert "checkpoints/epoch_001.pt" in next(d for d in damaged if d.path == obj).line(tmp_path)


def test_every_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    good = save(tmp_path / "checkpoints" / "epoch_001.pt")
    truncated = save(tmp_path / "checkpoints" / "epoch_002.pt")
    flipped = save(tmp_path / "checkpoints" / "epoch_003.pt", value=1.0)
    best = save(tmp_path / "models" / "best.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "models" / "my_weights.pt")  # weights a user gave
    stripped = tmp_path / "checkpoints" / "epoch_004.pt"  # only the train stage writes here: no checksum is damage
    torch.save({"w": torch.zeros(3)}, stripped)
    # A longer run's (train.epochs above 9, as docs/fine-tuning.md's 600-epoch recipe): epochs from 10 on count too.
    late = save(tmp_path / "checkpoints" / "epoch_012.pt", value=2.0)
    truncate(truncated)
    flip_a_bit(flipped)
    flip_a_bit(late)

    checked, damaged, foreign = verify.check_checkpoints(tmp_path)

    assert checked == 6
    assert [d.path for d in damaged] == [truncated, flipped, stripped, late]
    assert damaged[0].line(tmp_path).startswith("damaged: checkpoints/epoch_002.pt: truncated or corrupt: ")
    assert damaged[1].line(tmp_path) == (
        "damaged: checkpoints/epoch_003.pt: its contents do not match the checksum stored in it"
    )
    assert foreign == [tmp_path / "models" / "my_weights.pt"]
    assert good.exists() and best.exists()


@pytest.fixture
def fake_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a checkpoint linked to its cache object, as `dvc repro` leaves it."""
    cache = tmp_path / ".dvc" / "cache"
    checkpoint = save(tmp_path / "checkpoints" / "epoch_001.pt")
    obj = put_object(cache, checkpoint.read_bytes())
    checkpoint.unlink()
    checkpoint.hardlink_to(obj)
    put_object(cache, b"another output\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: checkpoints\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(verify, "dvc_cache_and_remotes", lambda root: (cache, []))
    return tmp_path


def test_intact_files_pass(fake_project: Path, capsys: pytest.CaptureFixture) -> None:
    verify.main([])
    assert capsys.readouterr().out == "checked 1 checkpoints and 2 cache objects: all intact\n"


def test_damage_is_reported_and_repaired(
    fake_project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint damaged in place (so its cache object too), and the other cache object:
    1 damaged checkpoint and 2 damaged objects, counted apart; --repair deletes each file once."""
    checkpoint = fake_project / "checkpoints" / "epoch_001.pt"
    obj = cache_object(fake_project, checkpoint.read_bytes())
    other = cache_object(fake_project, b"another output\n")
    truncate(checkpoint)
    flip_a_bit(other)

    with pytest.raises(SystemExit) as exit_:
        verify.main([])
    out = capsys.readouterr().out
    assert exit_.value.code == 1
    assert "damaged: checkpoints/epoch_001.pt" in out
    assert f"damaged: {obj.relative_to(fake_project)}" in out
    assert "checked 1 checkpoints and 2 cache objects: 1 damaged checkpoints, 2 damaged cache objects\n" in out
    assert checkpoint.exists() and obj.exists()  # only --repair deletes

    verify.main(["--repair"])
    out = capsys.readouterr().out
    assert not checkpoint.exists() and not obj.exists() and not other.exists()
    deleted = [line for line in out.splitlines() if line.startswith("deleted ")]
    assert sorted(deleted) == sorted(
        f"deleted {path}"
        for path in ("checkpoints/epoch_001.pt", obj.relative_to(fake_project), other.relative_to(fake_project))
    )
    assert "now run `dvc repro`" in out

    verify.main([])
    assert capsys.readouterr().out == "checked 0 checkpoints and 0 cache objects: all intact\n"


def test_a_damaged_checkpoint_whose_cache_object_is_intact_is_reported_and_repaired(
    fake_project: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint replaced by damaged bytes rather than damaged through the hard link (a copy
    written over it; likewise any damage under `cache.type copy`): its cache object stays good,
    yet the checkpoint is damage to name, exit 1 on, and delete, so that `dvc checkout` or
    `dvc repro` restores it from that object."""
    checkpoint = fake_project / "checkpoints" / "epoch_001.pt"
    obj = cache_object(fake_project, checkpoint.read_bytes())
    damaged = checkpoint.read_bytes()[:-100]
    checkpoint.unlink()  # a new file: the object's inode keeps the good bytes
    checkpoint.write_bytes(damaged)

    with pytest.raises(SystemExit) as exit_:
        verify.main([])
    out = capsys.readouterr().out
    assert exit_.value.code == 1
    (line,) = [line for line in out.splitlines() if line.startswith("damaged: ")]  # the object is not named
    assert line.startswith("damaged: checkpoints/epoch_001.pt: ") and "(also" not in line, line
    assert "checked 1 checkpoints and 2 cache objects: 1 damaged checkpoints, 0 damaged cache objects\n" in out

    verify.main(["--repair"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("deleted ")] == ["deleted checkpoints/epoch_001.pt"]
    assert not checkpoint.exists() and obj.exists()  # the good object stays, for DVC to restore from
    assert "now run `dvc repro`" in out
    verify.main([])
    assert capsys.readouterr().out == "checked 0 checkpoints and 2 cache objects: all intact\n"


def test_a_file_that_cannot_be_deleted_is_named_the_rest_are_deleted_and_the_exit_is_1(
    fake_project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--repair deletes what it can: a damaged checkpoint it cannot delete (a read-only mount)
    is named, every other damaged file still goes, and the exit code is 1."""
    checkpoint = fake_project / "checkpoints" / "epoch_001.pt"
    obj = cache_object(fake_project, checkpoint.read_bytes())
    truncate(checkpoint)
    unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        if path.name == "epoch_001.pt":
            raise PermissionError(13, "Read-only file system")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(SystemExit) as exit_:
        verify.main(["--repair"])
    assert exit_.value.code == 1
    assert "could not delete checkpoints/epoch_001.pt: Read-only file system" in capsys.readouterr().out
    assert checkpoint.exists() and not obj.exists()


def test_repair_points_to_dvc_pull_when_a_remote_is_configured(
    fake_project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "dvc_cache_and_remotes", lambda root: (fake_project / ".dvc" / "cache", ["storage"]))
    truncate(fake_project / "checkpoints" / "epoch_001.pt")
    verify.main(["--repair"])
    assert "now run `dvc pull`" in capsys.readouterr().out


def test_in_place_damage_that_reached_the_cache_is_found_and_repaired(reproduced: Reproduced) -> None:
    """The end to end claim: damage written through a hard link into DVC's cache, which
    `dvc repro` would restore as it is, is found; after --repair, `dvc repro` retrains it."""
    project = reproduced.path
    dvc = [sys.executable, "-m", "dvc"]
    tool = [sys.executable, "-m", "tools.verify"]
    # A weights file of other code in models/: named as not checked, and not counted as damage.
    torch.save({"w": torch.zeros(3)}, project / "models" / "theirs.pt")
    intact = run(tool, project)
    assert "not checked: models/theirs.pt is not a checkpoint of this pipeline (no checksum in it)" in intact.stdout
    assert intact.stdout.endswith("cache objects: all intact\n")
    checkpoint = project / "checkpoints" / "epoch_002.pt"
    # The workspace file is the cache object (and the finished run's copy in .cache/runs).
    assert checkpoint.stat().st_nlink >= 2
    obj = cache_object(project, checkpoint.read_bytes())
    truncate(checkpoint)
    # And a file output that is no checkpoint, damaged the same way: only its link names it.
    scores = project / "eval" / "scores.csv"
    scores_obj = cache_object(project, scores.read_bytes())
    assert scores.stat().st_ino == scores_obj.stat().st_ino
    truncate(scores)
    # A checkpoint replaced rather than damaged in place (a truncated copy written over it, as
    # any damage is under cache.type copy): its cache object stays good and is not named.
    best = project / "models" / "best.pt"
    good_best = best.read_bytes()
    best_obj = cache_object(project, good_best)
    best.unlink()
    best.write_bytes(good_best[: len(good_best) // 2])

    found = run(tool, project, check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "damaged: checkpoints/epoch_002.pt" in found.stdout
    assert f"damaged: {obj.relative_to(project)}" in found.stdout
    line = next(
        line for line in found.stdout.splitlines() if line.startswith(f"damaged: {scores_obj.relative_to(project)}")
    )
    assert line.endswith("(also the workspace file eval/scores.csv)"), line
    assert "epoch_001.pt" not in found.stdout
    assert "damaged: models/best.pt: " in found.stdout and str(best_obj.relative_to(project)) not in found.stdout
    assert ": 2 damaged checkpoints, 2 damaged cache objects\n" in found.stdout

    repaired = run([*tool, "--repair"], project)
    assert "now run `dvc repro`" in repaired.stdout
    assert not checkpoint.exists() and not obj.exists()
    assert not scores.exists() and not scores_obj.exists()
    assert not best.exists() and best_obj.exists()
    rerun = run([*dvc, "repro"], project)
    assert "Running stage 'train'" in rerun.stdout, rerun.stdout  # retrained, not restored from the run-cache
    # evaluate, which read every checkpoint after it, refuses a damaged one.
    assert "Running stage 'evaluate'" in rerun.stdout, rerun.stdout
    # The same model and record, but for the epoch's wall time (and so the checksum over it):
    # the retrained epochs may be the chosen one.
    timeless = ("seconds", "checksum")
    good = {k: v for k, v in torch.load(io.BytesIO(good_best), weights_only=True).items() if k not in timeless}
    rebuilt = {k: v for k, v in torch.load(best, weights_only=True).items() if k not in timeless}
    assert_tensors_equal(rebuilt, good, "models/best.pt")
    assert run(tool, project).stdout.endswith("cache objects: all intact\n")
    assert "up to date" in run([*dvc, "status"], project).stdout


def test_data_tracked_with_dvc_add_is_named_and_repaired_too(project: Path) -> None:
    """The README's `dvc add data/raw`: DVC links the images into its cache as it links the
    stages' outputs, so an image damaged in place damages its object, and the tool names the
    image with it; --repair deletes both (a .dvc file's data, not only dvc.lock's outputs)."""
    raw = project / "data" / "raw" / "cats"
    raw.mkdir(parents=True)
    for index in range(3):
        (raw / f"{index}.png").write_bytes(bytes(range(index, index + 200)))
    run([sys.executable, "-m", "dvc", "add", "data/raw"], project)
    image = raw / "1.png"
    assert image.stat().st_nlink == 2  # the workspace file is the cache object
    truncate(image)

    found = run([sys.executable, "-m", "tools.verify"], project, check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    (line,) = [line for line in found.stdout.splitlines() if line.startswith("damaged: ")]
    assert line.endswith("(also the workspace file data/raw/cats/1.png)"), line
    run([sys.executable, "-m", "tools.verify", "--repair"], project)
    assert not image.exists() and (raw / "0.png").exists()
