"""Reading a YAML config file into a config model: ``${VAR}`` substitution, errors with their line.

String values may use ``${VAR}`` or ``${VAR:-default}`` to take a value from the environment
(secrets, paths that systemd gives, such as ``${CREDENTIALS_DIRECTORY}``). Errors name the
dotted key path and the line of the YAML file they come from, every one of them at once
(``ConfigError.problems``). The models are ``daemon.config``'s: ``AppConfig`` unless another
(``WorkerConfig``) is named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from daemon.config import AppConfig


@dataclass(frozen=True)
class ConfigProblem:
    """One error in a config file: dotted key path, 1-based line (0 = unknown) and message."""

    path: str
    line: int
    message: str

    def format(self, filename: str) -> str:
        """``file:line: key.path: message``."""
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """A config file cannot be used; ``problems`` lists every error found."""

    def __init__(self, filename: str, problems: list[ConfigProblem]):
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p.line == 0, p.line))  # in file order, unknown lines last
        super().__init__("\n".join(p.format(filename) for p in problems))


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: str, environ: dict[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; raise KeyError(VAR) for an unset VAR without default."""
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise KeyError(name)
    return ENV_REFERENCE.sub(replace, value)


def _line_index(node: yaml.Node, path: tuple = (), index: dict | None = None) -> dict[tuple, int]:
    """Map each key path of a composed YAML tree to the 1-based line of its key (or item)."""
    index = {} if index is None else index
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            index[key_path] = key_node.start_mark.line + 1
            _line_index(value_node, key_path, index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index[path + (i,)] = item.start_mark.line + 1
            _line_index(item, path + (i,), index)
    return index


def _line_of(path: tuple, lines: dict[tuple, int]) -> int:
    """Line of a key path, or of its nearest parent that the file has (missing keys)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 0


def _substitute_tree(data: Any, path: tuple, environ: dict, lines: dict, problems: list) -> Any:
    """Apply ``${VAR}`` substitution to every string of the loaded YAML data."""
    if isinstance(data, dict):
        return {k: _substitute_tree(v, path + (k,), environ, lines, problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_tree(v, path + (i,), environ, lines, problems) for i, v in enumerate(data)]
    if isinstance(data, str):
        try:
            return substitute_env(data, environ)
        except KeyError as exc:
            problems.append(ConfigProblem(_dotted(path), _line_of(path, lines),
                                          f"environment variable {exc.args[0]} is not set (write ${{{exc.args[0]}:-default}} for a default)"))
    return data


def _dotted(path: tuple) -> str:
    """``('camera', 'source', 'fps')`` -> ``camera.source.fps`` (list items as ``[i]``)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _data_path(loc: tuple, data: Any) -> tuple:
    """A pydantic error location as a path in the data: drops union tags such as ``'scenes'``."""
    path, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # the discriminated union names the variant; the YAML has no such key
        path.append(part)
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return tuple(path)


def _message(error: dict) -> str:
    """A pydantic error as one readable sentence with the offending value."""
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the config schema; check its spelling and indentation)"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return "needs a `type:` key (opencv, images, picamera2 or scenes)"
    msg = msg.removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], (dict, list)) and not kind.startswith("union_tag"):
        msg += f" (got {error['input']!r})"
    return msg


def parse_config(text: str, filename: str = "<config>", environ: dict[str, str] | None = None,
                 model: type[BaseModel] = AppConfig) -> BaseModel:
    """Validate YAML text as an AppConfig (or another ``model``); raise ConfigError listing every problem."""
    environ = dict(os.environ) if environ is None else environ
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(filename, [ConfigProblem("", mark.line + 1 if mark else 0, f"not valid YAML: {problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(filename, [ConfigProblem("", 1, "the file must be a mapping of sections (model:, camera:, ...)")])
    lines = _line_index(node) if node is not None else {}
    problems: list[ConfigProblem] = []
    data = _substitute_tree(data, (), environ, lines, problems)
    if problems:
        raise ConfigError(filename, problems)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = _data_path(error["loc"], data)
            if error["type"] == "union_tag_invalid":
                path += ("type",)  # point at the line that names the unknown kind
            problems.append(ConfigProblem(_dotted(path), _line_of(path, lines), _message(error)))
        raise ConfigError(filename, problems) from None


def load_config(path: str | os.PathLike, model: type[BaseModel] = AppConfig) -> BaseModel:
    """Read and validate a config file as ``model``; raise ConfigError (also for a missing file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", 0, f"cannot read the file: {exc.strerror}")]) from None
    return parse_config(text, str(path), model=model)


def key_line(text: str, path: tuple) -> int:
    """The 1-based line of a key path in YAML text (or of its nearest parent there; 0 = none)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return _line_of(path, _line_index(node) if node is not None else {})
