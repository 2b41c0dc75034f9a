"""An ordered map over forked worker processes, with a progress bar: the builders' one loop.

    with ordered_map(make_system, tasks, workers=2, desc="demo world", unit="system") as (results, bar):
        for result in results:  # in the order of tasks, whatever the number of workers
            ...
            bar.update()

``workers`` 1 maps in this process. Workers are forked (they inherit what the caller computed
before, e.g. warmed caches); the pool is terminated and the bar closed when the block ends,
however it ends, so an error in the caller or a worker leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def ordered_map(fn, items: list, workers: int, desc: str, unit: str, progress: bool = True, chunksize: int = 1):
    """Yield ``(results, bar)``: ``fn`` over ``items`` in order (an iterator) and a tqdm bar of
    ``len(items)`` steps (disabled without ``progress``) that the caller advances."""
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(fn, items, chunksize=chunksize) if pool else map(fn, items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, mininterval=1.0)
    try:
        yield results, bar
    finally:
        bar.close()
        if pool:
            pool.terminate()
