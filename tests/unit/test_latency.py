"""hakit.latency: the histograms the metrics and the lab's reports read."""

from __future__ import annotations

import pytest

from hakit.latency import Latency, difference, merged, parsed, quantile


def test_samples_land_in_the_first_bucket_whose_bound_is_not_below() -> None:
    h = Latency((0.1, 0.2, 0.5))
    for v in (0.05, 0.1, 0.15, 0.3, 0.9):
        h.add(v)
    snap = h.snapshot()
    assert snap["counts"] == [2, 1, 1, 1]
    assert snap["sum"] == pytest.approx(1.5)
    assert snap["max"] == 0.9


def test_quantiles_are_the_upper_bound_of_their_bucket() -> None:
    snap = {"bounds": [0.1, 0.2, 0.5], "counts": [90, 9, 1, 0], "sum": 10.0}
    assert quantile(snap, 0.5) == 0.1
    assert quantile(snap, 0.95) == 0.2
    assert quantile(snap, 0.999) == 0.5
    above = {"bounds": [0.1], "counts": [1, 1], "sum": 3.0}
    assert quantile(above, 0.99) == float("inf")
    assert quantile({"bounds": [0.1], "counts": [0, 0], "sum": 0}, 0.5) is None


@pytest.mark.parametrize(
    "bad",
    [None, 3, {}, {"bounds": [0.1], "counts": [1]}, {"bounds": ["x"], "counts": [1, 2]}],
)
def test_what_is_not_a_snapshot_reads_as_none(bad: object) -> None:
    assert parsed(bad) is None
    assert quantile(bad, 0.5) is None


def test_difference_counts_what_happened_between_two_snapshots() -> None:
    a = {"bounds": [0.1, 0.2], "counts": [10, 2, 0], "sum": 1.0}
    b = {"bounds": [0.1, 0.2], "counts": [15, 2, 1], "sum": 2.5, "max": 0.4}
    assert difference(b, a) == {"bounds": [0.1, 0.2], "counts": [5, 0, 1], "sum": 1.5, "max": 0.4}
    restarted = {"bounds": [0.1, 0.2], "counts": [1, 0, 0], "sum": 0.05}
    assert difference(restarted, b) == restarted  # counts began again: all of it is new
    assert difference(None, a) is None


def test_merged_adds_histograms_of_the_same_buckets() -> None:
    a = {"bounds": [0.1], "counts": [3, 1], "sum": 1.0, "max": 0.3}
    b = {"bounds": [0.1], "counts": [2, 0], "sum": 0.1, "max": 0.05}
    other = {"bounds": [0.5], "counts": [7, 7], "sum": 9.0}
    assert merged([a, None, b, other]) == {
        "bounds": [0.1],
        "counts": [5, 1],
        "sum": 1.1,
        "max": 0.3,
    }
    assert merged([]) is None
