"""tests/mutations.py stays live: each mutation's text occurs exactly once in pipeline/ and
tools/ and names test files that exist, so the script cannot silently rot as code moves."""

import re
import subprocess
import sys

import pytest
from _pytest.mark.expression import Expression

from tests.mutations import MUTATIONS, REPO, Mutation, MutationError, apply


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_still_applies_to_exactly_one_place(mutation: Mutation, tmp_path) -> None:
    for path in [*(REPO / "pipeline").rglob("*.py"), *(REPO / "tools").rglob("*.py")]:  # apply() edits a copy
        target = tmp_path / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    changed = apply(mutation, tmp_path)
    original = (REPO / changed).read_text()
    assert (tmp_path / changed).read_text() == original.replace(mutation.old, mutation.new)
    assert mutation.old != mutation.new


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_names_tests_that_exist(mutation: Mutation) -> None:
    files = [name.split("::")[0] for name in mutation.tests if name.startswith("tests/")]
    assert files, "a mutation must name the tests that should catch it"
    assert all((REPO / name).is_file() for name in files), files


def selected(tests: tuple[str, ...], collected: list[str]) -> list[str]:
    """The ids of `collected` that `pytest *tests` runs: files and node ids, narrowed by -k,
    which matches a name of the id's parts (folder, file, class, test with its parameters)
    by substring, regardless of case, as pytest's own -k does."""
    args, keyword = list(tests), None
    if "-k" in args:
        at = args.index("-k")
        keyword = Expression.compile(args[at + 1])
        del args[at : at + 2]
    chosen = [
        test for test in collected if any(test == arg or test.startswith((f"{arg}::", f"{arg}[")) for arg in args)
    ]
    return [test for test in chosen if keyword is None or keyword.evaluate(lambda word, test=test: matches(word, test))]


def matches(word: str, test: str) -> bool:
    path, *names = test.split("::")
    return any(word.lower() in name.lower() for name in [*path.split("/"), *names])


def test_each_mutation_selects_tests_that_pytest_collects() -> None:
    """Each mutation's test names (files, node ids, a -k expression) still select at least one
    collected test: after a test is renamed, the script would run none for its mutation and
    call it uncaught, or a copy with the bug would pass for want of tests."""
    listing = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "tests"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    collected = [line for line in listing.splitlines() if line.startswith("tests/") and "::" in line]
    assert len(collected) > len(MUTATIONS)  # the whole suite, not an error's few lines
    selecting_none = [m.name for m in MUTATIONS if not selected(m.tests, collected)]
    assert not selecting_none, selecting_none


def test_a_mutation_whose_text_is_gone_is_an_error(tmp_path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "a.py").write_text("x = 1\n")
    with pytest.raises(MutationError, match="exactly once"):
        apply(Mutation("gone", "no such code", "y = 2", "y = 3", ("tests/test_engine.py",)), tmp_path)


def test_docs_list_every_mutation_under_a_promise() -> None:
    """docs/testing.md's table of promises names each mutation once, and only those that exist."""
    text = (REPO / "docs" / "testing.md").read_text()
    table = text.split("| promise | mutations |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[2] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    listed = [name for row in rows for name in re.findall(r"`([a-z0-9-]+)`", row)]
    assert sorted(listed) == sorted(m.name for m in MUTATIONS)


def test_docs_show_every_mutation_caught_in_the_latest_run() -> None:
    """docs/testing.md's table of the latest run has one row per mutation, each caught by at
    least one of the tests it ran: a mutation added and never run, or one that no test
    caught, shows here."""
    text = (REPO / "docs" / "testing.md").read_text()
    table = text.split("| mutation | tests failed / ran |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d+) / (\d+) \|$", table, re.MULTILINE)
    assert len(rows) == len(table.strip().splitlines()) - 1  # every row but the header's rule
    assert sorted(name for name, _, _ in rows) == sorted(m.name for m in MUTATIONS)
    assert all(0 < int(failed) <= int(ran) for _, failed, ran in rows)
