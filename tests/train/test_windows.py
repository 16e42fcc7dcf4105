"""Sample order: every epoch a fresh seeded permutation, and a pure function of (seed, sample index)."""

from __future__ import annotations

from utils.train.windows import SampleOrder

WINDOWS = 50


def test_each_epoch_is_a_new_permutation_of_every_window() -> None:
    order = SampleOrder(WINDOWS, seed=3)
    first, second = order.window_indices(0, WINDOWS), order.window_indices(WINDOWS, WINDOWS)
    assert sorted(first) == sorted(second) == list(range(WINDOWS))
    assert list(first) != list(second)  # reshuffled, not the same order again
    assert list(SampleOrder(WINDOWS, seed=4).window_indices(0, WINDOWS)) != list(first)


def test_order_depends_only_on_the_sample_index() -> None:
    """A resumed run builds a fresh SampleOrder at any position, also one straddling an epoch boundary."""
    order = SampleOrder(WINDOWS, seed=3)
    run = order.window_indices(0, 2 * WINDOWS)
    assert list(SampleOrder(WINDOWS, seed=3).window_indices(47, 6)) == list(run[47:53])
    assert list(order.window_indices(3, 4)) == list(run[3:7])  # going back an epoch recomputes it
