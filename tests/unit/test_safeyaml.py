"""Bounded YAML: every malformed or hostile file is a located `ConfigError`, after bounded work."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hakit.config import safeyaml
from hakit.config.load import load_cluster, parse_yaml
from hakit.errors import ConfigError


def alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: !!timestamp 200112-14\n", "x.yaml:2: YAML syntax error: invalid !!timestamp"),
        ("a: 2001-13-40\n", "x.yaml:1: YAML syntax error: invalid !!timestamp value"),
        ("a: !!int 0x\n", "x.yaml:1: YAML syntax error: invalid !!int value '0x'"),
        ("a: !!bool maybe\n", "x.yaml:1: YAML syntax error: invalid !!bool value 'maybe'"),
        ("a: !!float x\n", "x.yaml:1: YAML syntax error: invalid !!float value 'x'"),
        ("a: &a [*a]\n", "x.yaml:1: YAML syntax error: alias *a inside its own anchor &a"),
        ("a: *nope\n", "x.yaml:1: YAML syntax error: found undefined alias 'nope'"),
        ("a:\n  " + "[" * 5000 + "]" * 5000 + "\n", "x.yaml:2: YAML syntax error: nested deeper"),
        (alias_bomb(9), "YAML syntax error: more than 50000 values"),
        ("a: 1\n\tb: 2\n", "x.yaml:2: YAML syntax error: found character '\\t'"),
        ("- " * 5000 + "x\n", "x.yaml:1: YAML syntax error: nested deeper than 64 levels"),
        ("a: 1\nb: \x00\n", "x.yaml:2: YAML error: character #x0000 is not allowed"),
        ("a: 1\n---\nb: 2\n", "x.yaml:2: YAML syntax error: but found another document"),
        ("a: 1\na: 2\n", "x.yaml:2: a: duplicate key"),
        ("a: &x [1]\nb: !!python/name:os.system\n", "x.yaml:2: YAML syntax error: could not"),
    ],
)
def test_every_yaml_failure_is_a_located_config_error(text: str, expected: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        parse_yaml(text, "x.yaml")
    assert expected in str(exc.value)
    assert time.monotonic() - start < 1.0  # bounded work, even for an alias bomb


def test_aliases_within_the_bounds_still_work() -> None:
    data, marks = parse_yaml("base: &b {port: 1}\nx: *b\ny: {<<: *b, host: h}\n", "x.yaml")
    assert data == {"base": {"port": 1}, "x": {"port": 1}, "y": {"port": 1, "host": "h"}}
    assert marks.line(("y", "host")) == 3


def test_an_alias_cannot_nest_beyond_the_depth_limit() -> None:
    deep = "[" * 40 + "]" * 40
    with pytest.raises(ConfigError, match=r"x.yaml:2: YAML syntax error: alias \*d nests deeper"):
        parse_yaml(f"a: &d {deep}\nb: {'[' * 30}*d{']' * 30}\n", "x.yaml")


def test_files_are_read_bounded(tmp_path: Path) -> None:
    big = tmp_path / "cluster.yaml"
    big.write_text("a: " + "x" * safeyaml.MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"cluster.yaml: file larger than 1048576 bytes"):
        load_cluster(big)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        load_cluster(bad)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"fifo.yaml: not a regular file"):
        load_cluster(fifo)
    with pytest.raises(ConfigError, match=r"cannot read: Is a directory"):
        load_cluster(tmp_path)
