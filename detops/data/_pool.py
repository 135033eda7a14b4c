"""Run a per-image function over many images in a thread pool, in order, with progress.

Threads, not processes: the work is PIL decoding and hashlib, which release the GIL, and
threads share the dataset without pickling it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int], None]


def resolve_workers(workers: int) -> int:
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {workers}")
    return workers or os.cpu_count() or 1


def map_ordered(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int = 0,
    progress: Progress | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` run on ``workers`` threads; ``progress(done, total)`` as it goes.

    ``progress`` is always called from the calling thread, first with ``(0, total)`` and last
    with ``(total, total)``.

    >>> map_ordered(lambda x: x * x, [1, 2, 3], workers=2)
    [1, 4, 9]
    """
    n = len(items)
    nworkers = resolve_workers(workers)
    if progress is not None:
        progress(0, n)
    if nworkers == 1 or n <= 1:
        out: list[R] = []
        for i, x in enumerate(items):
            out.append(fn(x))
            if progress is not None:
                progress(i + 1, n)
        return out

    # Chunks keep the per-future overhead small next to a ~1 ms decode, and small enough that
    # progress moves and the last chunks balance across threads.
    size = max(1, min(32, n // (nworkers * 8)))
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def run(lo: int, hi: int) -> list[R]:
        return [fn(items[i]) for i in range(lo, hi)]

    results: list[list[R] | None] = [None] * len(bounds)
    done = 0
    with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="detops-data") as pool:
        futures = {pool.submit(run, lo, hi): k for k, (lo, hi) in enumerate(bounds)}
        try:
            for fut in as_completed(futures):
                k = futures[fut]
                results[k] = fut.result()
                done += bounds[k][1] - bounds[k][0]
                if progress is not None:
                    progress(done, n)
        except BaseException:
            for f in futures:  # don't decode the rest of the dataset before raising
                f.cancel()
            raise
    return [r for chunk in results for r in chunk]  # type: ignore[union-attr]
