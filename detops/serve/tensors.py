"""Recycled input tensors: a request decoded in the server's pool writes its pre-processed
``[1, 3, H, W]`` float32 array into a slot of a :class:`TensorPool` instead of a fresh
allocation, and the slot comes back by itself once no array over it is left.

Why: each decode thread allocated its tensors (1.2 MB at 320x320) from its own glibc arena,
and each arena keeps the most its thread ever had in flight at once. Under wrk at c=8 (no-op
model, 16 threads) ``malloc_stats`` showed the arenas growing in 1.2 MB steps long after
warm-up while the bytes in use stayed at 42-51 MB: RSS after 20,000 requests was +3.3% to
+5.9% over RSS after 2,000 (seven runs), and still rising at 40,000. Trimming the heap every
second did not help (the pages are touched again at once), nor did one or two arenas
(``MALLOC_ARENA_MAX``: +0.2% to +17%). With the pool: +0.5% to +1.7% (seven runs), and 15-20 MB
less RSS. A lone request decoded on the event loop allocates its own tensor (see
``service._prepare``)."""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections import defaultdict

import numpy as np


class TensorPool:
    """Slots of fixed-shape arrays, handed out by :meth:`take` and returned when the array (and
    every view of it) is garbage: the memory behind a handed-out array is a fresh ctypes view of
    the slot, which every numpy view keeps alive, and a finalizer on it frees the slot.

    At most ``max_bytes`` of slots in all (all shapes together; free slots of one shape make
    room for another); past that, and for shapes of more than a quarter of it, :meth:`take`
    allocates as ``np.empty`` would.

    The one rule for callers: hold a reference to the array (or a view of it) for as long as
    its memory is read or written; a raw pointer (``.ctypes.data``, ``__array_interface__``,
    an ONNX Runtime IOBinding by address) does not keep the slot.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[tuple[int, ...], str], list[bytearray]] = defaultdict(list)
        # reentrant: a finalizer can run inside take (a collection that frees an array in a
        # reference cycle, started by an allocation while the lock is held). It only appends
        # to a list of _free: no key is ever removed, so _room's iteration stays valid
        self._lock = threading.RLock()
        self.bytes = 0  # in slots, free or handed out
        self.fallbacks = 0  # takes that found no slot and allocated

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        key = (tuple(shape), dt.str)
        with self._lock:
            free = self._free.get(key)  # not [key]: a refused shape leaves no entry
            if free:
                slot = free.pop()
            elif nbytes * 4 <= self.max_bytes and self._room(nbytes, key):
                slot = bytearray(nbytes)
                self.bytes += nbytes
            else:
                self.fallbacks += 1
                return np.empty(shape, dt)
        view = (ctypes.c_char * nbytes).from_buffer(slot)
        weakref.finalize(view, self._give_back, key, slot).atexit = False
        return np.frombuffer(memoryview(view), dt).reshape(shape)  # type: ignore[arg-type]

    def _room(self, nbytes: int, key: tuple[tuple[int, ...], str]) -> bool:
        """Whether ``nbytes`` more fit under the cap, after dropping the free slots of other
        shapes if needed (a model of another input size took over); nothing is dropped when
        even that would not make room. Under the lock."""
        over = self.bytes + nbytes - self.max_bytes
        if over <= 0:
            return True
        others = [free for other, free in list(self._free.items()) if other != key]
        if sum(len(slot) for free in others for slot in free) < over:
            return False
        for free in others:
            while free and self.bytes + nbytes > self.max_bytes:
                self.bytes -= len(free.pop())
        return True

    def _give_back(self, key: tuple[tuple[int, ...], str], slot: bytearray) -> None:
        with self._lock:
            self._free[key].append(slot)

    def free_slots(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._free.values())
