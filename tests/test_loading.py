"""Batches are read ahead of the computation, in order, with the same content and the same errors."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from vlmbench.batch import load_batch, prefetched
from vlmbench.request import RunError


class Numbered(torch.utils.data.Dataset):
    """Item i: a 3x2x2 image filled with i/100 (pixels above 1 from ``bad`` on), label i % 3; notes each access."""

    def __init__(self, n: int = 12, bad: int | None = None) -> None:
        self.n, self.bad = n, bad
        self.seen: list[int] = []
        self.reached = {i: threading.Event() for i in range(n)}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.seen.append(index)
        self.reached[index].set()
        value = 2.0 if self.bad is not None and index >= self.bad else index / 100
        return torch.full((3, 2, 2), value), index % 3


def cell_of(dataset: Numbered) -> SimpleNamespace:
    return SimpleNamespace(dataset=dataset, device=torch.device("cpu"),
                           protocol=SimpleNamespace(data=SimpleNamespace(dataset="numbered")))


def test_prefetched_batches_equal_loaded_ones_in_order_and_the_next_is_read_while_one_is_held():
    dataset = Numbered()
    cell = cell_of(dataset)
    batches = [[0, 1, 2], [3, 4, 5], [6, 7], [9]]
    with prefetched(cell, batches) as loaded:
        first = next(loaded)
        assert dataset.reached[3].wait(timeout=30)  # batch 1 is read while batch 0 is still being used
        got = [first, *loaded]
    assert len(got) == len(batches)
    for (x, y), indices in zip(got, batches):
        expected_x, expected_y = load_batch(cell, indices)
        assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    assert 8 not in dataset.seen and 10 not in dataset.seen  # only the asked-for images are read


def test_a_bad_batch_raises_its_own_error_when_taken_and_the_threads_stop():
    cell = cell_of(Numbered(bad=3))
    with pytest.raises(RunError, match="pixels outside"):
        with prefetched(cell, [[0, 1], [2, 3], [4, 5]]) as loaded:
            assert torch.equal(next(loaded)[1], torch.tensor([0, 1]))
            next(loaded)
    before = threading.active_count()
    with prefetched(cell_of(Numbered()), [[0], [1], [2]]) as loaded:
        next(loaded)  # leaving early: the reader is shut down, nothing keeps running
    assert threading.active_count() <= before
    with prefetched(cell, []) as loaded:
        assert list(loaded) == []
