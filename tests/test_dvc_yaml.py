"""dvc.yaml declares exactly the code each stage runs, so DVC re-runs what changed and nothing else."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(module: str) -> set[str]:
    """`module` and every pipeline module it imports, directly or not, as file paths."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = f"{name.replace('.', '/')}.py"
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                todo.append(node.module)
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("pipeline.")]
    return seen | {"pipeline/__init__.py"}


@pytest.mark.parametrize("name", STAGES)
def test_stage_lists_exactly_the_code_it_runs(name: str) -> None:
    stage = STAGES[name]
    module = stage["cmd"].removeprefix("python -m ")
    declared = {dep for dep in stage["deps"] if isinstance(dep, str) and dep.startswith("pipeline/")}
    assert declared == imported_modules(module)
