"""Temporal window indices (BasicSR padding semantics) and training windows."""

import itertools

import pytest

from vsrx.errors import InputError, UsageError
from vsrx.io.windows import PADDINGS, frame_indices, training_window


@pytest.mark.parametrize(
    ("padding", "start", "end"),
    [
        ("replicate", [0, 0, 0, 1, 2], [7, 8, 9, 9, 9]),
        ("reflection", [2, 1, 0, 1, 2], [7, 8, 9, 8, 7]),
        ("reflection_circle", [4, 3, 0, 1, 2], [7, 8, 9, 6, 5]),
        ("circle", [3, 4, 0, 1, 2], [7, 8, 9, 5, 6]),
    ],
)
def test_basicsr_examples(padding: str, start: list[int], end: list[int]) -> None:
    assert frame_indices(0, 5, 10, padding) == start
    assert frame_indices(9, 5, 10, padding) == end


def test_interior_window_is_consecutive() -> None:
    for padding in PADDINGS:
        assert frame_indices(5, 7, 20, padding) == [2, 3, 4, 5, 6, 7, 8]


def test_indices_always_inside_clip() -> None:
    for padding, num_frames, total in itertools.product(
        PADDINGS, (1, 3, 5, 7, 15), (1, 2, 3, 4, 5, 6, 9, 16)
    ):
        for center in range(total):
            indices = frame_indices(center, num_frames, total, padding)
            assert len(indices) == num_frames
            assert indices[num_frames // 2] == center
            assert all(0 <= i < total for i in indices), (padding, num_frames, total, center, indices)


def test_single_frame_clip_repeats_it() -> None:
    for padding in PADDINGS:
        assert frame_indices(0, 5, 1, padding) == [0] * 5


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="padding"):
        frame_indices(0, 5, 10, "zeros")
    with pytest.raises(UsageError, match="odd"):
        frame_indices(0, 4, 10)
    with pytest.raises(ValueError, match="outside"):
        frame_indices(10, 5, 10)


def test_training_window_shifts_to_fit() -> None:
    assert training_window(0, 5, 10) == [0, 1, 2, 3, 4]
    assert training_window(9, 5, 10) == [5, 6, 7, 8, 9]
    assert training_window(4, 5, 10) == [2, 3, 4, 5, 6]
    assert training_window(2, 5, 5) == [0, 1, 2, 3, 4]
    for total, center in itertools.product(range(7, 12), range(7)):
        window = training_window(center, 7, total)
        assert window == list(range(window[0], window[0] + 7)) and 0 <= window[0] <= total - 7


def test_training_window_refuses_short_clip() -> None:
    with pytest.raises(InputError, match="fewer than the 7-frame"):
        training_window(0, 7, 5)
