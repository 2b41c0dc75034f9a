"""ordered_map: results in input order whatever the number of workers; no worker left after an error."""

import multiprocessing
import os

import pytest

from sfm.data.parallel import ordered_map


def square_and_pid(x):
    return x * x, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_input_order(workers):
    items = list(range(20))
    with ordered_map(square_and_pid, items, workers, "test", "item", progress=False) as (results, bar):
        out = []
        for value, pid in results:
            out.append(value)
            bar.update()
    assert out == [x * x for x in items]
    assert (pid == os.getpid()) == (workers == 1)  # 1: in this process; more: in forked workers


def test_an_error_in_the_loop_leaves_no_worker_behind():
    with pytest.raises(RuntimeError, match="caller failed"):
        with ordered_map(square_and_pid, list(range(8)), 2, "test", "item", progress=False) as (results, _):
            next(results)
            raise RuntimeError("caller failed")
    for child in multiprocessing.active_children():
        child.join(5)
    assert not multiprocessing.active_children()
