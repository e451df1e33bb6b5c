"""The names of hard-linked files the primary's mount keeps coherent (replication/names.py)."""

from __future__ import annotations

from hakit.replication.names import Names


def test_a_file_with_one_link_is_not_kept() -> None:
    n = Names()
    n.saw("/a", 10, 1)
    assert len(n) == 0
    assert n.others("/a") == []


def test_link_returns_every_earlier_name_and_records_the_new_one() -> None:
    n = Names()
    n.saw("/a", 10, 1)
    assert n.linked("/a", "/b", 10) == ["/a"]
    assert n.linked("/b", "/c", 10) == ["/a", "/b"]
    assert n.others("/c") == ["/a", "/b"]


def test_names_seen_with_several_links_are_grouped_by_inode() -> None:
    n = Names()
    n.saw("/x/a", 10, 2)
    n.saw("/y/b", 10, 2)
    n.saw("/z", 11, 3)
    assert n.others("/x/a") == ["/y/b"]
    assert n.others("/z") == []


def test_seen_again_with_one_link_forgets_the_inode() -> None:
    n = Names()
    n.linked("/a", "/b", 10)
    n.saw("/a", 10, 1)
    assert n.others("/a") == []
    assert n.others("/b") == []
    assert len(n) == 0


def test_a_name_reused_for_another_inode_moves() -> None:
    n = Names()
    n.linked("/a", "/b", 10)
    n.saw("/b", 12, 2)
    assert n.others("/a") == []
    assert n.others("/b") == []


def test_unlink_returns_the_remaining_names() -> None:
    n = Names()
    n.linked("/a", "/b", 10)
    n.linked("/a", "/c", 10)
    assert n.removed("/b") == ["/a", "/c"]
    assert n.others("/a") == ["/c"]
    assert n.removed("/unknown") == []


def test_rename_of_a_directory_moves_the_names_under_it() -> None:
    n = Names()
    n.linked("/d/a", "/e/b", 10)
    n.renamed("/d", "/f", exchange=False)
    assert n.others("/e/b") == ["/f/a"]
    assert n.others("/d/a") == []
    n.renamed("/dd", "/g", exchange=False)  # a prefix that is not a parent
    assert n.others("/e/b") == ["/f/a"]


def test_rename_over_a_name_forgets_the_replaced_one() -> None:
    n = Names()
    n.linked("/a", "/b", 10)
    n.linked("/x", "/y", 11)
    n.renamed("/x", "/b", exchange=False)
    assert n.others("/a") == []
    assert n.others("/b") == ["/y"]


def test_exchange_swaps_both_sides() -> None:
    n = Names()
    n.linked("/d/a", "/top", 10)
    n.linked("/e/b", "/other", 11)
    n.renamed("/d", "/e", exchange=True)
    assert n.others("/top") == ["/e/a"]
    assert n.others("/other") == ["/d/b"]
