"""TensorPool: recycled input tensors, and the server's answers with them under concurrency."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from detops.model.registry import load_runtime
from detops.serve.tensors import TensorPool
from tests.serve.conftest import SIZE, image_bytes, wait_until

SHAPE = (1, 3, 8, 8)
JPEG = {"content-type": "image/jpeg"}


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_slot_comes_back_only_when_the_array_and_every_view_of_it_are_gone():
    pool = TensorPool()
    a = pool.take(SHAPE)
    assert a.shape == SHAPE and a.dtype == np.float32 and a.flags.writeable
    where = address(a)
    row = a[0, 1]  # a view, as a batch or a shadow run might keep
    del a
    gc.collect()
    assert pool.free_slots() == 0  # the view still reads the slot
    b = pool.take(SHAPE)
    assert address(b) != where  # so a second take may not hand it out
    row[:] = 7.0
    assert not (b == 7.0).any()
    del row
    assert pool.free_slots() == 1
    c = pool.take(SHAPE)
    assert address(c) == where  # reused, not allocated again
    assert pool.bytes == 2 * int(np.prod(SHAPE)) * 4


def test_live_arrays_never_share_memory_and_shapes_or_dtypes_do_not_mix():
    pool = TensorPool()
    live = [pool.take(SHAPE) for _ in range(5)]
    live.append(pool.take((1, 3, 4, 4)))
    live.append(pool.take(SHAPE, np.float16))
    for i, x in enumerate(live):
        for y in live[i + 1 :]:
            assert not np.shares_memory(x, y)
    assert live[-2].shape == (1, 3, 4, 4) and live[-1].dtype == np.float16
    del live, x, y  # the loop's names held the last two
    assert pool.free_slots() == 7
    again = pool.take((1, 3, 4, 4))
    assert again.shape == (1, 3, 4, 4) and pool.free_slots() == 6


def test_past_its_byte_cap_the_pool_allocates_like_numpy_and_counts_it():
    nbytes = int(np.prod(SHAPE)) * 4
    pool = TensorPool(max_bytes=4 * nbytes)
    held = [pool.take(SHAPE) for _ in range(6)]
    assert pool.bytes == 4 * nbytes and pool.fallbacks == 2
    assert all(x.shape == SHAPE for x in held)
    big = pool.take((1, 3, 8, 9))  # over a quarter of the cap: never a slot
    assert big.shape == (1, 3, 8, 9) and pool.fallbacks == 3 and pool.bytes == 4 * nbytes
    del held
    assert pool.free_slots() == 4  # the fallbacks were never slots


def test_threads_taking_and_dropping_at_once_never_see_each_others_writes():
    pool = TensorPool()
    errors: list[str] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        start.wait()
        for i in range(300):
            a = pool.take(SHAPE)
            a.fill(k * 1000 + i)
            view = a[0]
            del a  # only the view holds the slot now
            if i % 7 == 0:
                threading.Event().wait(0.0005)  # let the others run in between
            if not (view == k * 1000 + i).all():
                errors.append(f"thread {k}, take {i}: its slot was handed to another")

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(work, range(4)))
    assert errors == []
    assert pool.free_slots() == pool.bytes // (int(np.prod(SHAPE)) * 4) <= 4 * 2


def test_concurrent_requests_decoded_in_the_pool_get_their_own_answers(running_server):
    # the mean-box model's box depends on the pixels: a slot handed to a second request
    # while the first one's tensor still waited for the model would change the first answer
    server = running_server({"serve.batch_policy": "greedy", "serve.max_batch_size": 4})
    rt = load_runtime(server.ws, "det@v1")
    images = [image_bytes(64 + 8 * i, 48 + 4 * i, value=20 * i + 10) for i in range(12)]
    want = [d.to_list(rt.spec.class_names) for d in rt.predict_bytes(images)]
    assert len({repr(w) for w in want}) == len(images)  # every image its own answer

    # the clients made beforehand and the requests let go together: only a request that finds
    # others on the server is decoded in the pool (a lone one is decoded on the loop), and a
    # loaded host that runs the posters one at a time would test nothing
    POSTERS = 8  # noqa: N806 - requests in flight at most
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(len(images))]
    pool = server.service.tensors

    def post(i: int, start: threading.Barrier) -> list[dict]:
        if i < POSTERS:  # the first wave together; the rest as posters come free
            start.wait(30)
        r = clients[i].post("/v1/detect", content=images[i], headers=JPEG)
        assert r.status_code == 200, r.text
        return r.json()["detections"]

    try:
        rounds = 0
        while rounds < 3 or (pool.bytes == 0 and rounds < 10):  # rounds until the pool was used
            start = threading.Barrier(POSTERS)
            with ThreadPoolExecutor(POSTERS) as ex:
                got = list(ex.map(post, range(len(images)), [start] * len(images)))
            assert got == want
            rounds += 1
    finally:
        for c in clients:
            c.close()
    assert pool.bytes > 0, "no request was decoded in the pool: the test proves nothing"
    slot = 3 * SIZE * SIZE * 4
    assert pool.bytes <= POSTERS * slot  # at most one slot per request in flight
    # every slot comes back once the answers (and the work after them) are done
    wait_until(lambda: pool.free_slots() * slot == pool.bytes, what="the slots to come back")


def test_free_slots_of_another_shape_make_room_for_a_new_one():
    nbytes = int(np.prod(SHAPE)) * 4
    pool = TensorPool(max_bytes=4 * nbytes)
    old = [pool.take(SHAPE) for _ in range(4)]
    keep = old.pop()  # still in use: never dropped
    del old
    new = [pool.take((1, 3, 4, 8)) for _ in range(6)]  # half the size: 6 fit in 3 old slots
    assert pool.fallbacks == 0 and pool.bytes == nbytes + 6 * (nbytes // 2)
    assert not any(np.shares_memory(keep, x) for x in new)
    del keep
    assert pool.free_slots() == 1


def test_a_slot_freed_by_a_collection_inside_take_does_not_deadlock():
    pool = TensorPool()

    class Cycle:
        pass

    gc.disable()  # no automatic collection may free the cycle before take holds the lock
    try:
        held = Cycle()
        held.me = held  # only the cyclic collector frees it
        held.array = pool.take(SHAPE)
        del held
        assert pool.free_slots() == 0
        real_room = pool._room

        def room(nbytes: int, key: tuple) -> bool:  # a new shape, under the pool's lock
            gc.collect()  # as an allocation there could start one
            return real_room(nbytes, key)

        pool._room = room  # type: ignore[method-assign]
        done = threading.Event()
        th = threading.Thread(target=lambda: (pool.take((1, 3, 4, 4)), done.set()), daemon=True)
        th.start()
        assert done.wait(10), "take() deadlocked on the slot the collection gave back"
    finally:
        gc.enable()
    assert pool.free_slots() == 2  # the collected one and the new one (dropped at once)


def test_no_free_slot_is_dropped_for_a_shape_that_would_not_fit_anyway():
    nbytes = int(np.prod(SHAPE)) * 4
    pool = TensorPool(max_bytes=8 * nbytes)
    held = [pool.take(SHAPE) for _ in range(7)]
    spare = pool.take(SHAPE)
    del spare  # the cap is full: one free slot of SHAPE, seven in use
    wide = pool.take((1, 3, 8, 16))  # two slots' worth: the free one alone cannot make room
    assert wide.shape == (1, 3, 8, 16) and pool.fallbacks == 1
    assert pool.free_slots() == 1 and pool.bytes == 8 * nbytes  # the free slot was kept
    del held  # (referenced until here: seven slots in use throughout)
