"""Bounded YAML: the one reader of every YAML file hakit loads (cluster, modules, witness).

A file is read only if it is a regular file of at most `MAX_BYTES` bytes of UTF-8. Its document
may nest at most `MAX_DEPTH` levels and hold at most `MAX_NODES` nodes, counting every alias as
the nodes it repeats (so an "alias bomb" is refused after linear work); an alias inside its own
anchor (`&a [*a]`) is refused. Every failure, including a constructor's own error on a bad tagged
value (`!!timestamp 200112-14`), is a `ConfigError` naming the file and the line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from hakit.errors import ConfigError, ConfigIssue

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 50_000

_STANDARD_TAG = "tag:yaml.org,2002:"


def _error(file: str, line: int | None, expected: str) -> ConfigError:
    return ConfigError([ConfigIssue(file, line, "", None, expected)])


def read_file(path: Path) -> str:
    """The text of a YAML file; `ConfigError` unless it is a small regular UTF-8 file.

    `FileNotFoundError` and other `OSError`s are left to the caller, which knows what to advise.
    """
    file = str(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _error(file, None, "not a regular file")
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise _error(file, None, f"file larger than {MAX_BYTES} bytes: not a configuration file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise _error(file, line, f"not UTF-8 text (byte 0x{raw[e.start]:02x})") from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with the composer counting depth and nodes (aliases expanded)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes under it, once composed
        self._heights: dict[int, int] = {}  # id(node) -> levels under it, once composed
        self._open: set[str] = set()  # anchors whose node is being composed

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"more than {MAX_NODES} values (aliases counted as what they repeat)",
                mark,
            )

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)
            if anchor in self._open:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{anchor} inside its own anchor &{anchor}", mark
                )
            node = super().compose_node(parent, index)  # an undefined alias is its error
            self._count(self._sizes.get(anchor, 1), event.start_mark)
            if self._depth + self._heights.get(id(node), 1) > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"alias *{anchor} nests deeper than {MAX_DEPTH} levels",
                    mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
            )
        before = self._nodes
        self._count(1, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._nodes - before
        if isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._heights[id(node)] = 1 + max(
            (self._heights.get(id(c), 1) for c in children), default=0
        )
        self._depth -= 1
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # PyYAML's constructors fail with any error on bad tagged values
            tag = str(node.tag).replace(_STANDARD_TAG, "!!")
            value = node.value if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {tag} value {value!r}"[:200], node.start_mark
            ) from None


def load(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """The data of a one-document YAML text and its node tree (for line numbers), bounded."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _error(file, None, f"larger than {MAX_BYTES} bytes: not a configuration file")
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters at once
        try:
            root = loader.get_single_node()
            data = None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = e.problem or "invalid YAML"
        raise _error(file, line, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        what = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise _error(file, line, f"YAML error: character {what} is not allowed") from None
    except yaml.YAMLError as e:
        raise _error(file, None, f"YAML error: {e}") from None
    return data, root
