"""Edits of `cluster.yaml` that keep the operator's comments and layout (`add-node`,
`remove-node`): a round trip through ruamel.yaml, the result checked by the one loader."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from hakit.errors import HakitError


class EditError(HakitError):
    exit_code = 2


def _round_trip() -> YAML:
    y = YAML()  # round-trip mode: comments, order and flow style kept
    y.preserve_quotes = True
    return y


def _nodes(doc: Any, file: str) -> Any:
    nodes = doc.get("nodes") if isinstance(doc, Mapping) else None
    if not isinstance(nodes, Mapping):
        raise EditError(f"{file}: no `nodes:` mapping to edit")
    return nodes


def _edit(text: str, file: str, change: Any) -> str:
    y = _round_trip()
    try:
        doc = y.load(text)
    except YAMLError as e:
        raise EditError(f"{file}: cannot edit: {e}") from None
    change(_nodes(doc, file))
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def add_node(text: str, file: str, node: str, addresses: Mapping[str, str]) -> str:
    """`text` with `node` (network -> address) appended to `nodes`."""

    def change(nodes: Any) -> None:
        if node in nodes:
            raise EditError(f"{file}: node {node} is already in the cluster")
        nodes[node] = {"addresses": dict(addresses)}

    return _edit(text, file, change)


def remove_node(text: str, file: str, node: str) -> str:
    """`text` without `node`."""

    def change(nodes: Any) -> None:
        if node not in nodes:
            raise EditError(f"{file}: no node {node} in the cluster; nodes: {', '.join(nodes)}")
        del nodes[node]

    return _edit(text, file, change)
