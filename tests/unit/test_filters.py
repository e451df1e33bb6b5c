"""Which paths of a replicated directory are replicated."""

from __future__ import annotations

from hakit.core.filters import PathFilter


def test_everything_by_default() -> None:
    f = PathFilter()
    assert f.everything
    assert f.replicated(b"a/b/c")


def test_exclusions_by_path_and_expression_cover_what_is_under() -> None:
    f = PathFilter(exclude=(b"tmp", b"cache/x"), exclude_regex=(r"\.log$", r"^run\b"))
    assert not f.replicated(b"tmp")
    assert not f.replicated(b"tmp/a/b")
    assert f.replicated(b"tmpfile")  # a prefix of the name is not the path
    assert not f.replicated(b"cache/x/y")
    assert f.replicated(b"cache/y")
    assert not f.replicated(b"a/b.log")
    assert not f.replicated(b"a.log/inside")  # under an excluded directory
    assert not f.replicated(b"run/pid")
    assert f.replicated(b"data/run")  # `^` anchors at the start of the relative path


def test_only_these_keeps_ancestors_so_the_paths_can_exist() -> None:
    f = PathFilter(only=(b"db/main",), only_regex=(r"\.conf$",))
    assert f.replicated(b"db")  # ancestor
    assert f.replicated(b"db/main")
    assert f.replicated(b"db/main/table")
    assert not f.replicated(b"db/other")
    assert f.replicated(b"etc/app.conf")
    assert not f.replicated(b"etc/app.txt")


def test_non_utf8_names_are_handled() -> None:
    f = PathFilter(exclude_regex=(r"tmp",))
    assert not f.replicated(b"\xff/tmp")
    assert f.replicated(b"\xff/data")
