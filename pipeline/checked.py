"""What check_params checked, and every other stage's check that params.yaml still holds it.

DVC writes the values of `dvc exp run -S` into params.yaml before it takes the project's
lock, so a refused experiment still changes the file under a running `dvc repro`; and
`dvc repro --single-item STAGE` runs a stage without check_params. So check_params records
the values it checked (checks/params.json: an output that no other stage depends on, so a
new record re-runs nothing), and every other stage

- loads its params with `load_checked_params`, which refuses, before any work, a params.yaml
  whose values differ from that record, naming the keys;
- calls `confirm_unchanged` last, once its outputs are written: DVC reads params.yaml again
  for dvc.lock after the stage ends, so a change made while the stage ran would have DVC
  record values the stage never ran with. The stage fails instead, and DVC records nothing.
  A change in the instant between that check and DVC's reading still goes through.

Values are compared as loaded (`flat_values`), so comments and formatting may change freely.
"""

import dataclasses
import json
from enum import Enum
from typing import Any

from pipeline.cli import UserError
from pipeline.config import Params, load_params
from pipeline.files import write_json
from pipeline.paths import CHECKED_PARAMS, PARAMS_FILE

RERUN = "run `dvc repro` or `dvc exp run`, which check it first (by hand: `python -m pipeline.check_params`)"


def flat_values(params: Params) -> dict[str, Any]:
    """Every param's value by its dotted key (train.augment.hflip), enums as their text."""
    flat: dict[str, Any] = {}

    def visit(obj: object, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                visit(value, f"{prefix}{f.name}.")
            else:
                flat[f"{prefix}{f.name}"] = value.value if isinstance(value, Enum) else value

    visit(params, "")
    return flat


def record_checked(params: Params) -> None:
    """check_params: the values it has just checked, for the other stages to compare with."""
    write_json(flat_values(params), CHECKED_PARAMS)


def load_checked_params() -> Params:
    """params.yaml, loaded, if it holds the values check_params checked; else a UserError
    naming what differs."""
    params = load_params(PARAMS_FILE)
    differences = _differences(params)
    if differences:
        raise UserError(f"{PARAMS_FILE} is not what check_params checked: {differences}; {RERUN}")
    return params


def confirm_unchanged() -> None:
    """At a stage's end: a UserError if params.yaml changed while the stage ran (see above)."""
    try:
        differences = _differences(load_params(PARAMS_FILE))
    except UserError as error:
        differences = f"it no longer loads ({error})"
    if differences:
        raise UserError(
            f"{PARAMS_FILE} changed while this stage ran: {differences}. The stage ran with the values "
            f"check_params checked, but DVC would record the new ones, so it fails instead; {RERUN}"
        )


def _differences(params: Params) -> str:
    """What differs between `params` and the record, as one line; empty when nothing does."""
    if not CHECKED_PARAMS.is_file():
        return f"{CHECKED_PARAMS} does not exist, so it has not been checked"
    try:
        checked = json.loads(CHECKED_PARAMS.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{CHECKED_PARAMS} cannot be read ({type(error).__name__})"
    now = flat_values(params)
    changed = [
        f"{key} = {now[key]!r} (checked: {checked[key]!r})" if key in now and key in checked else key
        for key in sorted(now.keys() | checked.keys())
        if now.get(key, ...) != checked.get(key, ...) or type(now.get(key)) is not type(checked.get(key))
    ]
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return ", ".join(changed[:3]) + more
