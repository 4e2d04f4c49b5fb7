"""params.yaml as written: what YAML reads its text as, and what the user typed.

PyYAML reads YAML 1.1, in which a plain `off`, `yes` or `no` is a boolean, `007` is 7,
`0x1F` is 31 and `1_000` is 1000 (DVC itself reads the file as YAML 1.2, where they are
text). For params that are text (freeze, paths, names, choices), the pipeline takes the
text as written, so `freeze: off` is refused as 'off', not as 'False', and a folder named
`007` stays `007`. For numbers and booleans, YAML's reading stands, and messages quote the
text beside it (`train.epochs = 0x0 (read as 0)`).
"""

import dataclasses
import io
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import UserError

# A plain (unquoted) scalar, by dotted key: train.lr -> its node, whose .value is the text.
Written = dict[str, yaml.ScalarNode]


def read_yaml(path: Path) -> tuple[DictConfig, Written]:
    """The file read as omegaconf reads it, and its plain scalars as written; one read of
    the file, so both are of the same text. A UserError for a file that is no YAML mapping."""
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if isinstance(root, yaml.ScalarNode) and root.value:  # omegaconf fails on it with an OSError
            raise UserError(f"{path} does not hold a mapping of params, only the value {root.value!r}")
        loaded = OmegaConf.load(io.StringIO(text))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except yaml.YAMLError as error:  # a hand-edit that broke the syntax: say where, not a traceback
        raise UserError(f"{path} is not valid YAML: {_yaml_problem(error)}") from None
    written: Written = {}
    _collect(root, "", written)
    return loaded, written


def _collect(node: yaml.Node | None, prefix: str, written: Written) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _collect(value, f"{prefix}{key.value}.", written)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        written[prefix.removesuffix(".")] = node


def _yaml_problem(error: yaml.YAMLError) -> str:
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
