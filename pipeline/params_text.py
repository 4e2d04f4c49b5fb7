"""params.yaml as written: what YAML reads its text as, and what the user typed.

PyYAML reads YAML 1.1, in which a plain `off`, `yes` or `no` is a boolean, `007` is 7,
`0x1F` is 31, `1_000` is 1000 and `010` is 8 (DVC itself reads the file as YAML 1.2, where
`off`, `yes` and `no` are text, `010` is 10 and `1:30` is text, not 90). For params that are
text (freeze, paths, names, choices), the pipeline takes the text as written, so
`freeze: off` is refused as 'off', not as 'False', and a weights file named `007` stays
`007`. For numbers and booleans, YAML's reading stands, and messages quote
the text beside it (`train.epochs = 0x0 (read as 0)`); a number the two YAML versions read
apart (`010`), and a folder that dvc.yaml interpolates and DVC reads as no text (`007`), are
refused, since DVC would show, record or use another value.
"""

import dataclasses
import io
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from ruamel.yaml import YAML

from pipeline.cli import UserError, error_line

# A plain (unquoted) scalar, by dotted key: train.lr -> its node, whose .value is the text.
Written = dict[str, yaml.ScalarNode]
NULL_TAG = "tag:yaml.org,2002:null"
DVC_YAML = YAML(typ="safe")  # how DVC reads params.yaml (dvc.utils.serialize.parse_yaml): YAML 1.2


def read_yaml(path: Path) -> tuple[DictConfig, Written]:
    """The file read as omegaconf reads it, and its plain scalars as written; one read of
    the file, so both are of the same text. A UserError for a file that is no YAML mapping."""
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if isinstance(root, yaml.ScalarNode) and root.value:  # omegaconf fails on it with an OSError
            raise UserError(f"{path} does not hold a mapping of params, only the value {root.value!r}")
        written: Written = {}
        _collect(path, root, "", written)
        loaded = OmegaConf.load(io.StringIO(text))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except yaml.YAMLError as error:  # a hand-edit that broke the syntax: say where, not a traceback
        raise UserError(f"{path} is not valid YAML: {yaml_problem(error)}") from None
    except OmegaConfBaseException as error:  # a value tagged !!set or !!timestamp, which YAML reads
        raise UserError(f"{path}: {error.full_key}: {error_line(error)}; no param takes one") from None
    return loaded, written


def _collect(path: Path, node: yaml.Node | None, prefix: str, written: Written) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.tag == NULL_TAG:  # omegaconf refuses it with a traceback that names no key
                where = f"'{prefix}{key.value}' (line {key.start_mark.line + 1})"
                raise UserError(f"{path}: unknown key {where}: YAML reads it as null, which names no param")
            if isinstance(key, yaml.ScalarNode):
                _collect(path, value, f"{prefix}{key.value}.", written)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        written[prefix.removesuffix(".")] = node


def yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or error.context or type(error).__name__
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def take_text_as_written(schema: type, loaded: DictConfig, written: Written, prefix: str = "") -> None:
    """Set each text param of `schema` (str, optional str, enum) that YAML read as a boolean
    or number back to the text written; null stays null."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if f.name not in loaded:
            continue
        value = loaded[f.name]
        if dataclasses.is_dataclass(f.type):
            if isinstance(value, DictConfig):
                take_text_as_written(f.type, value, written, f"{key}.")
        elif _is_text(f.type) and key in written and value is not None and not isinstance(value, str):
            loaded[f.name] = written[key].value


def refuse_numbers_read_apart(path: Path, schema: type, written: Written) -> None:
    """Raise UserError for a number param of `schema` written so that YAML 1.1 (PyYAML and
    omegaconf: the pipeline) and YAML 1.2 (DVC, which shows and records params) read it as
    different numbers: `010` is 8 to one and 10 to the other, `0o10` text and 8, `1:30` 90 and text."""
    for key, node in written.items():
        if _param_type(schema, key) not in (int, float, float | None):
            continue
        read_here, read_by_dvc = yaml.safe_load(node.value), DVC_YAML.load(node.value)
        here, dvc = _number(read_here), _number(read_by_dvc)
        if (here is None and dvc is None) or repr(here) == repr(dvc):  # no number (omegaconf says so), or one
            continue
        instead = dvc if dvc is not None else here
        raise UserError(
            f"{path}: {key} = {node.value} is read as {read_here!r} by the pipeline (YAML 1.1) but as "
            f"{read_by_dvc!r} by DVC (YAML 1.2); write the number in plain digits, e.g. {instead}"
        )


def refuse_text_dvc_reads_otherwise(path: Path, keys: tuple[str, ...], written: Written) -> None:
    """Raise UserError for a param of `keys`, text that dvc.yaml interpolates (`${prepare.data_dir}`),
    written so that DVC reads no text in it (`007`, `1e3`, `true`): the pipeline takes it as
    written, but DVC would fail on every command with a line that names no param."""
    for key in keys:
        node = written.get(key)
        if node is not None and not isinstance(read_by_dvc := DVC_YAML.load(node.value), str):
            raise UserError(
                f"{path}: {key} = {node.value} is read as {read_by_dvc!r} by DVC (YAML 1.2), not as a folder "
                f"name for dvc.yaml's ${{{key}}}; quote it: '{node.value}'"
            )


def _param_type(schema: type, key: str) -> Any:
    """The declared type of the param `key` (dotted) of `schema`; None for a key it lacks."""
    kind: Any = schema
    for name in key.split("."):
        fields = {f.name: f.type for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else {}
        kind = fields.get(name)
    return kind


def _number(value: object) -> int | float | None:
    """`value` as the number a number param takes it for (omegaconf converts the text `1e3`,
    which YAML 1.1 reads as text), or None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _is_text(kind: Any) -> bool:
    return kind in (str, str | None) or (isinstance(kind, type) and issubclass(kind, Enum))


def as_written(written: Written, key: str, value: object) -> str:
    """`value` of param `key` for a message: its repr, and the text written before it where
    YAML read that text as something else (`0x0 (read as 0)`, `yes (read as True)`), not
    merely as the same number (`0` for 0.0, `1e-2` for 0.01)."""
    plain = value.value if isinstance(value, Enum) else value
    shown, node = repr(plain), written.get(key)
    if node is None or node.value in (str(plain), str(plain).lower(), shown) or _same_number(node.value, plain):
        return shown
    return f"{node.value} (read as {shown})"


def _same_number(text: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return float(text) == value
    except ValueError:  # 0x1F, .inf: Python's float() does not read them
        return False
