"""Break the code on purpose and see which tests notice: a check on the tests themselves.

    python tests/mutations.py [--only NAME ...] [--baseline] [--keep]

Not part of the suite (pytest collects test_*.py only, and this defines no tests). For
each mutation below, it copies the repo (tracked files, and new ones not ignored) to a
temporary folder, applies the mutation there, runs the tests that should catch it in
that copy, and prints which of them failed. A mutation that no test catches is a hole in
the suite. The repo itself is never modified.

A mutation is a text replacement. The pipeline's modules are being reshaped, so it names
no file: the old text must occur exactly once in all of pipeline/**/*.py, wherever it now
lives, or the script stops with an error saying so (update the mutation, then).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, from anywhere: make `testing` importable

from testing.project import copy_repo_files  # noqa: E402


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    old: str
    new: str
    tests: tuple[str, ...]  # what to run in the mutated copy


MUTATIONS = [
    Mutation(
        "scramble-labels",
        "split_batches shuffles each split's labels: training at chance",
        'targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)',
        'targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)'
        "[torch.randperm(int(in_split.sum()), generator=torch.Generator().manual_seed(0))]",
        ("tests/test_learning.py", "tests/test_engine.py"),
    ),
    Mutation(
        "no-resume",
        "a restarted train stage finds no checkpoints of its killed run and starts over",
        "        paths = self.checkpoints()\n        for index, path in enumerate(paths):",
        "        paths = []\n        for index, path in enumerate(paths):",
        ("tests/test_resume.py",),
    ),
    Mutation(
        "no-curve-replay",
        "a resumed train stage does not replay the kept epochs into dvclive's curves",
        "    for record in run.history:\n        log_epoch(live, record)\n",
        "",
        ("tests/test_resume.py", "-k", "uninterrupted_result"),
    ),
    Mutation(
        "select-on-test",
        "select_best keeps the checkpoint the test split prefers, not validation",
        "best = pick_best(scores, params.metric, params.mode)",
        'best = pick_best(scores, params.metric.replace("val_", "test_"), params.mode)',
        ("tests/test_select_best.py",),
    ),
    Mutation(
        "evaluate-stale-weights",
        "evaluate scores every epoch with the first checkpoint's weights",
        "            model.load_state_dict(checkpoint[WEIGHTS[weights]])\n",
        "            model.load_state_dict(checkpoint[WEIGHTS[weights]]) if epoch == 1 else None\n",
        ("tests/test_evaluate.py",),
    ),
    Mutation(
        "decay-vit-tokens",
        "weight decay ignores the model's no_weight_decay(): ViT's class token and position embedding decay",
        " or any(fnmatch.fnmatch(name, p) for p in patterns)",
        "",
        ("tests/test_recipes.py", "tests/test_timm.py", "-k", "parameter_groups or torchvision_vit"),
    ),
    Mutation(
        "ema-without-warmup",
        "the train stage keeps its moving average at ema_decay from the first update, without the warm-up",
        "weights_average(model, config.ema_decay, config.ema_warmup)",
        "weights_average(model, config.ema_decay)",
        ("tests/test_recipes.py", "-k", "warms_up"),
    ),
    Mutation(
        "head-dropout-frozen",
        "all_but_head freezes the classifier's own dropout into eval mode with the backbone",
        "        dropout = head_dropout(model, head)\n",
        "        dropout = []\n",
        ("tests/test_feature_cache.py", "-k", "own_dropout"),
    ),
    Mutation(
        "break-normalize",
        "normalisation forgets to scale the mean to 0-255",
        "torch.tensor(mean, device=device).view(shape) * 255,",
        "torch.tensor(mean, device=device).view(shape),",
        ("tests/test_engine.py", "tests/test_predict.py"),
    ),
]


class MutationError(Exception):
    pass


def copy_repo(target: Path) -> None:
    copy_repo_files(target)
    # The tests copy the project from `git ls-files` (tests/conftest.py): make the copy a repo too.
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)


def apply(mutation: Mutation, root: Path) -> Path:
    """Replace mutation.old with mutation.new in the one pipeline file holding it, once."""
    hits = [
        (path, path.read_text().count(mutation.old))
        for path in sorted((root / "pipeline").rglob("*.py"))
        if mutation.old in path.read_text()
    ]
    if len(hits) != 1 or hits[0][1] != 1:
        where = ", ".join(f"{p.relative_to(root)} ({n}x)" for p, n in hits) or "nowhere"
        raise MutationError(
            f"mutation {mutation.name}: its old text must occur exactly once under pipeline/, "
            f"found {where}; the code changed, update the mutation:\n    {mutation.old}"
        )
    path = hits[0][0]
    path.write_text(path.read_text().replace(mutation.old, mutation.new))
    return path.relative_to(root)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[list[str], int, float]:
    """Run `tests` in `root`: (ids of the failed tests, how many ran, seconds)."""
    report = root / "report.xml"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if not report.exists():
        return ["(pytest wrote no report: collection failed?)"], 0, seconds
    failed, total = [], 0
    for case in ET.parse(report).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            failed.append(f"{module}.py::{case.get('name')}")
    return failed, total, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MUTATIONS], help="run these mutations only")
    parser.add_argument("--baseline", action="store_true", help="first run the same tests unmutated")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies (their paths are printed)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    caught_all = True
    for mutation in chosen:
        for mutated in [False, True] if args.baseline else [True]:
            root = Path(tempfile.mkdtemp(prefix=f"mutation-{mutation.name}-"))
            try:
                copy_repo(root)
                label = f"{mutation.name}: {mutation.what}" if mutated else f"{mutation.name} (baseline, unmutated)"
                if mutated:
                    label += f" [{apply(mutation, root)}]"
                failed, total, seconds = run_tests(root, mutation.tests)
            finally:
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
            print(f"== {label}")
            print(f"   ran {total} tests in {', '.join(mutation.tests)} ({seconds:.0f} s): {len(failed)} failed")
            for test in failed:
                print(f"   FAILED {test}")
            if mutated and not failed:
                caught_all = False
                print("   NOT CAUGHT: no test failed")
            sys.stdout.flush()
    sys.exit(0 if caught_all else 1)


if __name__ == "__main__":
    try:
        main()
    except MutationError as error:
        sys.exit(f"error: {error}")
