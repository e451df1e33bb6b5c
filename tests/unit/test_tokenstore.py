"""The token store's file: written 0600 with hashes only, and a broken file is reported with
what is wrong (no token accepted), never an exception out of the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hakit.adapters.tokenstore import TokenStore
from hakit.errors import HakitError


def test_a_store_is_written_0600_with_hashes_only(tmp_path: Path) -> None:
    s = TokenStore(tmp_path / "etc" / "tokens.json")
    s.load()
    token, rec = s.create("ci", "control", 3600, "root", 100.0)
    assert s.path.stat().st_mode & 0o777 == 0o600
    assert token.split("_", 2)[2] not in s.path.read_text()
    again = TokenStore(s.path)
    again.load()
    assert again.records[rec.id].expires == 3700.0
    assert again.digest() == s.digest()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"tokens": 3}', "not a token store"),
        ('{"tokens": [{"id": "x"}]}', "tokens[0]: token record: bad 'role'"),
    ],
)
def test_a_broken_store_is_reported_and_refuses_every_token(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    s = TokenStore(path)
    s.load()
    assert s.problem is not None
    assert expected in s.problem
    assert s.records == {}
    with pytest.raises(HakitError, match="the token store cannot be used"):
        s.create("x", "monitor", None, "root", 1.0)
    assert path.read_text() == content  # nothing lost: the file is left for the operator


def test_bad_names_roles_and_lifetimes_are_refused(tmp_path: Path) -> None:
    s = TokenStore(tmp_path / "tokens.json")
    s.load()
    with pytest.raises(HakitError, match="bad token name"):
        s.create("../x", "monitor", None, "root", 1.0)
    with pytest.raises(HakitError, match="unknown role"):
        s.create("x", "root", None, "root", 1.0)
    with pytest.raises(HakitError, match="bad lifetime"):
        s.create("x", "monitor", -1, "root", 1.0)
    assert not s.path.exists()
    json.dumps([r.public() for r in s.records.values()])
