"""The README and the docs pages: every command in a ```bash block names real things, every
relative link leads somewhere, and the README stays short.

Checked in each command (comments, `&&` chains and `\\` continuations allowed):
- `python -m X.Y`: X/Y.py exists in this repo (for pipeline, tools, bench, tests), or X is a
  module that Python or requirements.txt provides;
- `dvc repro [-s] NAME` and `dvc exp run ... NAME`: NAME is a stage in dvc.yaml;
- `-S key=value` / `--set-param key=value`: the dotted key is in params.yaml (`+key` and
  `++key` add keys and `~key` deletes one, which params.yaml validation refuses), and the
  values of each `dvc exp run` together are ones params.yaml's schema takes.
"""

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.cli import UserError
from pipeline.config import load_params

REPO = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")), "bench/README.md"]
FIRST_PARTY = {"pipeline", "tools", "bench", "tests"}
OTHER_MODULES = {"venv", "pip", "pytest", "dvc"}  # Python's own, or pinned in requirements.txt
STAGES = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
# `dvc exp run` options that take a value, so the word after them is not a stage.
EXP_RUN_VALUE_OPTIONS = {"-S", "--set-param", "-n", "--name", "-j", "--jobs", "-m", "--message", "-C", "--copy-paths"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTS = {">", ">>", "<", "2>", "2>>"}


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the first command line, body) of each ```bash block."""
    return [
        (text.count("\n", 0, found.start(1)) + 1, found.group(1))
        for found in re.finditer(r"^```bash[ \t]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


def commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, as lists of words."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        words: list[str] = []
        tokens = iter(shlex.split(line, comments=True))
        for token in tokens:
            if token in SEPARATORS:
                found.append(words)
                words = []
            elif token in REDIRECTS:
                next(tokens, None)  # the file it redirects to
            else:
                words.append(token)
        found.append(words)
    return [words for words in found if words]


def param_exists(key: str) -> bool:
    node: object = PARAMS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_module(module: str) -> list[str]:
    top = module.split(".")[0]
    if top in FIRST_PARTY:
        path = REPO / f"{module.replace('.', '/')}.py"
        return [] if path.is_file() else [f"`python -m {module}`: no {path.relative_to(REPO)}"]
    return [] if top in OTHER_MODULES else [f"`python -m {module}`: not a module of this repo or its requirements"]


def check_stage(name: str, command: str) -> list[str]:
    stage = name.rsplit(":", 1)[-1]  # dvc.yaml:train names the stage train
    return [] if stage in STAGES else [f"`{command}`: {stage!r} is not a stage in dvc.yaml"]


def check_set_param(assignment: str) -> list[str]:
    if assignment.startswith(("+", "~")):
        return [f"-S {assignment!r}: adds or deletes a key; params.yaml must hold every key already"]
    if "=" not in assignment:
        return [f"-S {assignment!r}: not key=value"]
    key = assignment.split("=", 1)[0]
    file, _, dotted = key.rpartition(":")
    if file not in ("", "params.yaml"):
        return [f"-S {assignment!r}: no params file {file}"]
    return [] if param_exists(dotted) else [f"-S {assignment!r}: {dotted!r} is not in params.yaml"]


def check_command(words: list[str]) -> list[str]:
    problems = []
    command = " ".join(words)
    if words[0] in ("python", "python3") and "-m" in words:
        problems += check_module(words[words.index("-m") + 1])
    if words[:2] == ["dvc", "repro"]:
        for word in words[2:]:
            if not word.startswith("-"):
                problems += check_stage(word, command)
    if words[:3] == ["dvc", "exp", "run"]:
        rest = iter(words[3:])
        for word in rest:
            if word in ("-S", "--set-param"):
                problems += check_set_param(next(rest, ""))
            elif word.startswith("--set-param="):
                problems += check_set_param(word.removeprefix("--set-param="))
            elif word.startswith("-S") and len(word) > 2:
                problems += check_set_param(word[2:])
            elif word in EXP_RUN_VALUE_OPTIONS:
                next(rest, None)
            elif not word.startswith("-"):
                problems += check_stage(word, command)
    return problems


def problems_in(text: str) -> list[str]:
    """What is wrong with the commands of the bash blocks in a Markdown text."""
    problems = []
    for line, block in bash_blocks(text):
        for words in commands(block):
            problems += [f"block at line {line}: {problem}" for problem in check_command(words)]
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_bash_blocks_name_real_things(page: str) -> None:
    text = (REPO / page).read_text()
    assert bash_blocks(text) or page != "README.md", "the README has no bash block"
    assert problems_in(text) == []


def test_the_check_catches_typos() -> None:
    text = """Some prose with `python -m pipeline.nothing` outside a block, which is not checked.

```bash
python -m pipline.train                            # a typo in the package
python -m pipeline.trian && dvc repro trian       # a typo in a module and a stage
dvc repro -s select_best && dvc exp run -S freez=none -S 'train.lr=0.1' evaluate
dvc exp run --queue -S train.lr=0.1,0.2 -n lr-sweep \\
  --set-param model.archh=resnet50 -S +train.new=1 -S ~train.lr -S select.mode
```
"""
    assert problems_in(text) == [
        "block at line 4: `python -m pipline.train`: not a module of this repo or its requirements",
        "block at line 4: `python -m pipeline.trian`: no pipeline/trian.py",
        "block at line 4: `dvc repro trian`: 'trian' is not a stage in dvc.yaml",
        "block at line 4: -S 'freez=none': 'freez' is not in params.yaml",
        "block at line 4: -S 'model.archh=resnet50': 'model.archh' is not in params.yaml",
        "block at line 4: -S '+train.new=1': adds or deletes a key; params.yaml must hold every key already",
        "block at line 4: -S '~train.lr': adds or deletes a key; params.yaml must hold every key already",
        "block at line 4: -S 'select.mode': not key=value",
    ]


def exp_run_settings(text: str) -> list[tuple[int, list[str]]]:
    """(block line, the key=value settings) of each `dvc exp run` in the bash blocks; a sweep
    (`-S key=a,b`) gives one command per value."""
    found = []
    for line, block in bash_blocks(text):
        for words in commands(block):
            if words[:3] != ["dvc", "exp", "run"]:
                continue
            settings = [value for flag, value in itertools.pairwise(words) if flag in ("-S", "--set-param")]
            sweeps = [(i, value.split("=", 1)) for i, value in enumerate(settings) if "," in value]
            found.append((line, settings))
            for i, (key, values) in sweeps:
                found += [(line, [*settings[:i], f"{key}={value}", *settings[i + 1 :]]) for value in values.split(",")]
    return [(line, settings) for line, settings in found if not any("," in s for s in settings)]


def value_problems(settings: list[str], folder: Path) -> list[str]:
    """What load_params (types, ranges, choices) says of params.yaml with `settings` applied,
    each value read as YAML, as `dvc exp run -S` writes it."""
    params = OmegaConf.load(REPO / "params.yaml")
    for setting in settings:
        key, value = setting.split("=", 1)
        OmegaConf.update(params, key, yaml.safe_load(value), force_add=False)
    OmegaConf.save(params, folder / "params.yaml")
    try:
        load_params(folder / "params.yaml")
    except UserError as error:
        return [f"{' '.join(settings)}: {error}"]
    return []


@pytest.mark.parametrize("page", PAGES)
def test_exp_run_values_are_ones_the_params_take(page: str, tmp_path: Path) -> None:
    """Each documented `dvc exp run -S ...` sets values params.yaml's schema takes, together."""
    found = exp_run_settings((REPO / page).read_text())
    assert [problem for line, settings in found for problem in value_problems(settings, tmp_path)] == []


def test_the_value_check_catches_bad_values(tmp_path: Path) -> None:
    text = """```bash
dvc exp run -S train.lr=-0.1 -S train.epochs=2
dvc exp run --queue -S train.optimizer=sgd,adam
```
"""
    found = exp_run_settings(text)
    assert [settings for _, settings in found] == [
        ["train.lr=-0.1", "train.epochs=2"],
        ["train.optimizer=sgd"],
        ["train.optimizer=adam"],
    ]
    problems = [problem for _, settings in found for problem in value_problems(settings, tmp_path)]
    assert len(problems) == 2 and "train.lr" in problems[0] and "train.optimizer" in problems[1], problems


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_lead_somewhere(page: str) -> None:
    path = REPO / page
    text = without_code_blocks(path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", without_code_blocks(linked.read_text()), re.MULTILINE)
            if anchor not in {github_anchor(heading) for heading in headings}:
                broken.append(target)
    assert broken == []


def test_readme_is_short() -> None:
    # Details live in docs/ (the cluster recipes in docs/distributed.md); the README keeps the quick start and own data.
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def params_page_defaults() -> dict[str, object]:
    """docs/params.md's table as {dotted key: default}: a row may name several keys, each
    `.key` in the group of the full key before it, with as many defaults."""
    table = {}
    for row in (REPO / "docs" / "params.md").read_text().splitlines():
        if not row.startswith("| `"):
            continue
        keys, defaults = (re.findall(r"`([^`]+)`", cell) for cell in row.split(" | ")[:2])
        assert len(keys) == len(defaults), row
        group = ""
        for key, default in zip(keys, defaults, strict=True):
            group = group if key.startswith(".") else key.rpartition(".")[0]
            table[group + key if key.startswith(".") else key] = yaml.safe_load(default)
    return table


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    return {
        name: leaf
        for key, value in tree.items()
        for name, leaf in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}).items()
    }


def test_the_params_page_lists_every_param_with_params_yamls_default() -> None:
    """README: docs/params.md lists every knob of params.yaml, with its default."""
    assert params_page_defaults() == flat(yaml.safe_load((REPO / "params.yaml").read_text()))
