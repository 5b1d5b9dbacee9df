"""YAML loading that remembers where every value came from.

Pydantic reports errors as field paths (``servers.coder.dtype``); users need
``file:line``. We compose the YAML node tree once, build the plain Python value
from it, and keep a map from each path to the line it was written on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[Any, ...]


@dataclass
class Located:
    """A loaded document plus the origin (file, line) of each path in it."""

    data: Any
    where: dict[Path_, tuple[str, int]] = field(default_factory=dict)

    def locate(self, path: Path_) -> tuple[str | None, int | None]:
        """Origin of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self.where:
                return self.where[p]
            if not p:
                return (None, None)
            p = p[:-1]


class YamlSyntaxError(Exception):
    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}  {message}")


def load_located(path: Path) -> Located:
    text = path.read_text()
    name = str(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(x for x in (exc.context, exc.problem) if x) or str(exc)
        raise YamlSyntaxError(name, line, f"invalid YAML: {msg}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - non-marked errors are rare
        raise YamlSyntaxError(name, None, f"invalid YAML: {exc}") from None
    if node is None:
        return Located({}, {(): (name, 1)})
    where: dict[Path_, tuple[str, int]] = {}
    data = _build(node, (), name, where)
    return Located(data, where)


def _build(node: yaml.Node, path: Path_, file: str, where: dict[Path_, tuple[str, int]]) -> Any:
    where[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor"
                merged = _build(value_node, path, file, {})
                for m in merged if isinstance(merged, list) else [merged]:
                    for k, v in m.items():
                        out.setdefault(k, v)
                continue
            key = _scalar(key_node)
            if key in out:
                raise YamlSyntaxError(
                    file, key_node.start_mark.line + 1, f"duplicate key {key!r} (a key may appear once)"
                )
            at = (*path, key)
            out[key] = _build(value_node, at, file, where)
            # Point at the key's line: for a block value the value starts on the next line.
            where[at] = (file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), file, where) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
