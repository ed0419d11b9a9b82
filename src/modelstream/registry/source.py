"""Read a registry file: YAML with the line of every key kept, and ${VAR} / ${VAR:-default} expanded.

Line numbers travel with the data (as attributes of `Located` mappings and lists) so that every
later check can say `file:line` without re-parsing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from modelstream.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Located(dict):
    """A mapping that remembers its own line and the line of each key."""

    line: int = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict[object, int] = {}

    def line_of(self, key: object) -> int:
        return self.lines.get(key, self.line)


class LocatedList(list):
    line: int = 0


def expand_env(text: str, *, file: str, line: int) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset VAR without a default is an error."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is not None and value != "":
            return value
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set",
            file=file,
            line=line,
            hint=f"export {name}=..., or write ${{{name}:-default}} to give a default",
        )

    return _VAR.sub(replace, text)


def _loader_for(file: str) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Located:
        result = Located()
        result.line = node.start_mark.line + 1
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (dict, list)):
                raise ConfigError("a key must be a plain name, not a mapping or a list", file=file,
                                  line=key_node.start_mark.line + 1, hint="check for a stray `{` or `[`")
            if key in result:
                raise ConfigError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1)
            result[key] = loader.construct_object(value_node, deep=True)
            result.lines[key] = key_node.start_mark.line + 1
        return result

    def sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LocatedList:
        result = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        return result

    def string(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
        return expand_env(loader.construct_scalar(node), file=file, line=node.start_mark.line + 1)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    Loader.add_constructor("tag:yaml.org,2002:str", string)
    return Loader


def read(path: str | Path) -> Located:
    """Parse a registry file into Located mappings; YAML syntax errors become ConfigErrors."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read registry: {exc.strerror}", file=file, hint="check the -c path") from exc
    try:
        data = yaml.load(text, Loader=_loader_for(file))  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="check indentation and quoting near this line",
        ) from exc
    if data is None:
        data = Located()
    if not isinstance(data, Located):
        raise ConfigError("a registry must be a mapping (database, models, indexes, ...)", file=file, line=1)
    return data
