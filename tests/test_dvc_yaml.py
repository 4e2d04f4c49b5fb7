"""dvc.yaml against the code: the dependency rule, and the paths.

Every stage depends on all of pipeline/, and pipeline/ imports only itself. So a change to
any pipeline module re-runs the stages (and changes the train stage's resume fingerprint,
which hashes the same files), and code outside pipeline/ (tools/, bench/, testing/) can
change without re-running anything. No module imports a stage: each runs as `python -m`.

The files dvc.yaml names are the ones pipeline/paths.py names, and no others.
"""

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from pipeline.runs import code_files

REPO = Path(__file__).resolve().parent.parent
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
STAGE_MODULES = {stage["cmd"].removeprefix("python -m ") for stage in STAGES.values()}
PROJECT_PACKAGES = {"pipeline", "tools", "testing", "tests", "bench"}


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_depends_on_the_whole_pipeline_package(name: str) -> None:
    deps = STAGES[name]["deps"]
    assert "pipeline" in deps
    assert not [dep for dep in deps if isinstance(dep, str) and dep.startswith("pipeline/")], "pipeline/ as a whole"


def imports_of(path: Path) -> set[str]:
    """The project modules that the file at `path` imports (absolute imports only); for
    `from package import name`, the package and `package.name` (which may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}


def module_name(path: Path) -> str:
    """pipeline/backbones/timm.py -> pipeline.backbones.timm; a package's __init__.py -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """pipeline's modules, those of its subpackages included -> the project modules each imports."""
    modules = {module_name(path): path for path in sorted((REPO / "pipeline").rglob("*.py"))}
    modules.pop("pipeline")
    # A package's own name is left out: its __init__ imports its submodules by it.
    return {module: imports_of(path) - {"pipeline", module} for module, path in modules.items()}


def test_pipeline_imports_nothing_outside_itself() -> None:
    outside = {
        module: sorted(n for n in names if not n.startswith("pipeline.")) for module, names in module_graph().items()
    }
    assert {module: names for module, names in outside.items() if names} == {}


def test_no_module_imports_a_stage() -> None:
    """What a stage and another module share lives in the core modules (tests alone test the stages)."""
    importers = {
        path.relative_to(REPO).as_posix(): sorted(imports_of(path) & STAGE_MODULES)
        for folder in ("pipeline", "tools", "bench", "testing")
        for path in sorted((REPO / folder).rglob("*.py"))
    }
    assert {path: stages for path, stages in importers.items() if stages} == {}


def test_stages_sit_on_top_of_the_core_modules_without_cycles() -> None:
    graph = module_graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for name in graph.get(module, ()):
                visit(name, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_the_resume_fingerprint_hashes_what_dvc_tracks() -> None:
    """Every file under pipeline/ that DVC sees (bytecode is in .dvcignore), and nothing else."""
    seen_by_dvc = {
        path.relative_to(REPO)
        for path in (REPO / "pipeline").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert set(code_files()) == seen_by_dvc
    assert "__pycache__/" in (REPO / ".dvcignore").read_text().splitlines()


@pytest.mark.parametrize("name", [name for name in STAGES if name != "check_params"])
def test_each_stage_waits_for_the_params_check(name: str) -> None:
    assert paths.PARAMS_OK.as_posix() in STAGES[name]["deps"]
    assert STAGES["check_params"]["params"] == [{"params.yaml": None}]  # all of the file


def dvc_yaml_paths() -> set[str]:
    """Every file and folder that dvc.yaml names: the stages' deps, params files and outs,
    the metrics and the plots' files (not the data folders, which are params: ${...})."""
    named: set[str] = set()
    for stage in STAGES.values():
        named.update(dep for dep in stage["deps"] if dep != "pipeline" and not dep.startswith("${"))
        named.update(file for entry in stage.get("params", []) if isinstance(entry, dict) for file in entry)
        named.update(stage["outs"])
    named.update(DVC_YAML["metrics"])
    for plot in DVC_YAML["plots"]:
        if isinstance(plot, str):  # a file plotted as it is: an image
            named.add(plot)
            continue
        (definition,) = plot.values()
        named.update(definition["y"])
    return named


PATHS = {name: value.as_posix() for name, value in vars(paths).items() if isinstance(value, Path)}


def outside(named: set[str], known: set[str]) -> list[str]:
    """The paths in `named` that are neither in `known` nor inside a folder of it."""
    return sorted(path for path in named if path not in known and not any(path.startswith(f"{k}/") for k in known))


def test_dvc_yaml_names_the_paths_of_pipeline_paths() -> None:
    # Both ways; a file inside a folder the other names is its stage's own business
    # (dvclive's files in dvclive/train, prepare's reports in data/prepared).
    assert outside(dvc_yaml_paths(), set(PATHS.values())) == []
    assert outside(set(PATHS.values()), dvc_yaml_paths()) == []
