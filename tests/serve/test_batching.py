"""The batcher on its own: results in order, policies, bounded queue, deadlines."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from detops.errors import DeadlineExceeded, ModelError, Overloaded
from detops.serve.batching import (
    Batcher,
    choose_lanes,
    choose_policy,
    measure_batch_gain,
    measure_lane_gain,
)


def rowsum(batch: np.ndarray) -> dict[str, np.ndarray]:
    """A fake model: one output row per input row (its sum), so order is checkable."""
    return {"sum": batch.reshape(batch.shape[0], -1).sum(axis=1)}


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    "gain, policy",
    [
        (0.50, "off"),  # batching is clearly slower
        (1.00, "off"),  # a batch of N costs N images (CPUs): batching loses under load
        (1.24, "off"),
        (1.25, "greedy"),  # a real gain: batch what is queued, never wait
        (1.49, "greedy"),
        (1.50, "wait"),  # worth waiting for (GPU)
        (6.00, "wait"),
    ],
)
def test_choose_policy(gain, policy):
    assert choose_policy(gain) == policy


def test_measure_batch_gain_sees_per_call_overhead():
    # a model whose cost is a fixed 2 ms per call whatever the batch: batching 8 gains ~8x
    ev = threading.Event()

    def fixed_cost(batch):
        ev.wait(0.002)
        return {}

    gain = measure_batch_gain(fixed_cost, np.zeros((1, 3, 4, 4), np.float32), 8, repeats=3)
    assert gain > 3
    assert measure_batch_gain(fixed_cost, np.zeros((1, 3, 4, 4), np.float32), 1) == 1.0


@pytest.mark.parametrize("policy", ["wait", "greedy", "off"])
def test_every_job_gets_its_own_rows_in_order(policy):
    seen: list[int] = []

    def model(batch):
        seen.append(batch.shape[0])
        return rowsum(batch)

    b = Batcher(model, name="m", max_batch_size=4, max_queue_delay_ms=50, policy=policy).start()

    async def main():
        futs = []
        for _ in range(10):
            b.announce()  # "wait" holds a batch open only while more requests are announced
        for i in range(10):
            b.unannounce()
            futs.append(b.submit(np.full((1, 2, 2), i, np.float32), timeout_s=5))
        return await asyncio.gather(*futs)

    results = run(main())
    b.close()
    assert [float(r.outputs["sum"][0]) for r in results] == [4.0 * i for i in range(10)]
    assert sum(seen) == 10 and max(seen) <= (1 if policy == "off" else 4)
    if policy != "off":
        assert max(seen) > 1  # ten jobs queued at once were batched
    assert {r.batch_rows for r in results} <= set(seen)


def test_multi_row_jobs_and_static_batch_padding():
    calls: list[tuple[int, ...]] = []

    def model(batch):
        calls.append(batch.shape)
        return rowsum(batch)

    b = Batcher(model, name="m", max_batch_size=8, policy="greedy", static_batch=4).start()

    async def main():
        return await b.submit(np.ones((3, 2, 2), np.float32), timeout_s=5)

    res = run(main())
    b.close()
    assert calls == [(4, 2, 2)]  # padded to the graph's fixed batch of 4
    assert res.outputs["sum"].tolist() == [4.0, 4.0, 4.0]  # the padding row is not returned


def test_full_queue_raises_overloaded_and_expired_jobs_are_dropped():
    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []

    def slow(batch):
        started.set()
        gate.wait(10)
        ran.append(batch.shape[0])
        return rowsum(batch)

    b = Batcher(slow, name="m", max_batch_size=1, max_queue=2, policy="off").start()

    async def main():
        x = np.zeros((1, 2, 2), np.float32)
        first = b.submit(x, timeout_s=5)
        while not started.is_set():  # the first job is inside the model now
            await asyncio.sleep(0.001)
        expiring = b.submit(x, timeout_s=0.0)  # its deadline passes while it waits
        kept = b.submit(x, timeout_s=5)
        with pytest.raises(Overloaded, match="max_queue 2"):
            b.submit(x, timeout_s=5)
        gate.set()
        out = await asyncio.gather(first, expiring, kept, return_exceptions=True)
        return out

    first, expiring, kept = run(main())
    b.close()
    assert isinstance(expiring, DeadlineExceeded)
    assert not isinstance(first, BaseException) and not isinstance(kept, BaseException)
    assert ran == [1, 1]  # the expired job never reached the model


def test_a_failing_batch_fails_its_jobs_and_the_thread_carries_on():
    calls = []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return rowsum(batch)

    b = Batcher(flaky, name="m", policy="off").start()

    async def main():
        x = np.ones((1, 2), np.float32)
        bad = await asyncio.gather(b.submit(x, timeout_s=5), return_exceptions=True)
        good = await b.submit(x, timeout_s=5)
        return bad[0], good

    bad, good = run(main())
    b.close()
    assert isinstance(bad, ModelError) and "boom" in str(bad)
    assert good.outputs["sum"].tolist() == [2.0]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="expected one of wait, greedy, off"):
        Batcher(rowsum, name="m", policy="sometimes")


def test_an_idle_model_runs_a_request_directly_and_a_busy_one_queues_it():
    gate, inside = threading.Event(), threading.Event()

    def model(batch):
        inside.set()
        gate.wait(10)
        return rowsum(batch)

    x = np.ones((1, 2), np.float32)
    b = Batcher(model, name="m", policy="greedy").start()
    gate.set()
    direct = b.try_direct(x)  # idle, nothing queued: runs in this thread
    assert direct is not None and direct.outputs["sum"].tolist() == [2.0] and direct.queue_s == 0
    gate.clear()
    inside.clear()
    holder = threading.Thread(target=b.try_direct, args=(x,))
    holder.start()
    inside.wait(10)
    assert b.try_direct(x) is None  # the model is busy: the caller must queue
    gate.set()
    holder.join(10)
    b.close()
    waiting = Batcher(rowsum, name="w", policy="wait")
    waiting.announce()
    waiting.announce()
    assert waiting.try_direct(x) is None  # another request is on its way: batch with it
    waiting.unannounce()
    assert waiting.try_direct(x) is not None  # alone: never waits


# -- lanes ------------------------------------------------------------------------------------


def recording(used: list[str], name: str, inside: threading.Event | None = None,
              release: threading.Event | None = None):
    """A runner that appends ``name`` to ``used`` and, given events, signals ``inside`` and
    holds until ``release``."""

    def infer(batch):
        used.append(name)
        if inside is not None and release is not None:
            inside.set()
            release.wait(10)
        return rowsum(batch)

    return infer


def test_a_lone_run_takes_the_full_session_and_a_second_one_the_narrow_one_beside_it():
    inside = threading.Event()
    release = threading.Event()
    used: list[str] = []
    b = Batcher(recording(used, "wide", inside, release), name="m", policy="off", lanes=2,
                infer_narrow=recording(used, "narrow")).start()
    x = np.ones((1, 2, 2), np.float32)
    first: list = []
    t = threading.Thread(target=lambda: first.append(b.try_direct(x)))
    t.start()
    assert inside.wait(5)
    second = b.try_direct(x)  # the other lane, beside the running one: the one-thread session
    assert second is not None and used == ["wide", "narrow"]
    release.set()
    t.join(5)
    assert first[0] is not None and float(first[0].outputs["sum"][0]) == 4.0
    assert b.try_direct(x) is not None and used[-1] == "wide"  # alone again
    b.close()


def test_spinning_alone_runs_a_lone_request_on_the_spinning_session_and_load_on_its_twin():
    used: list[str] = []
    b = Batcher(recording(used, "spin"), name="m", policy="off",
                infer_busy=recording(used, "quiet")).start()
    x = np.ones((1, 2, 2), np.float32)
    b.announce()  # the request itself, being decoded
    assert b.try_direct(x) is not None and used == ["spin"]
    b.announce()  # a second request on its way: the server is not this request's alone
    assert b.try_direct(x) is not None and used[-1] == "quiet"
    b.unannounce()
    b.unannounce()

    async def queued():  # a job that waited in the queue ran under load
        return await b.submit(x, timeout_s=5)

    assert float(run(queued()).outputs["sum"][0]) == 4.0 and used[-1] == "quiet"
    assert b.try_direct(x) is not None and used[-1] == "spin"  # alone again
    b.close()


def test_spinning_alone_with_lanes_runs_beside_another_on_the_narrow_session():
    inside, release = threading.Event(), threading.Event()
    used: list[str] = []
    b = Batcher(recording(used, "spin", inside, release), name="m", policy="off", lanes=2,
                infer_narrow=recording(used, "narrow"), infer_busy=recording(used, "quiet")
                ).start()
    x = np.ones((1, 2, 2), np.float32)
    t = threading.Thread(target=b.try_direct, args=(x,))
    t.start()
    assert inside.wait(5)
    assert b.try_direct(x) is not None and used == ["spin", "narrow"]
    release.set()
    t.join(5)
    b.close()


def test_with_every_lane_busy_a_request_is_queued_not_run():
    release = threading.Event()
    running = threading.Semaphore(0)

    def held(batch):
        running.release()
        release.wait(10)
        return rowsum(batch)

    b = Batcher(held, name="m", policy="off", lanes=2, infer_narrow=held).start()
    x = np.ones((1, 2, 2), np.float32)
    threads = [threading.Thread(target=b.try_direct, args=(x,)) for _ in range(2)]
    for th in threads:
        th.start()
    assert running.acquire(timeout=5) and running.acquire(timeout=5)
    assert b.try_direct(x) is None  # both lanes taken
    release.set()
    for th in threads:
        th.join(5)
    b.close()


def test_two_lanes_drain_the_queue_side_by_side_and_keep_each_jobs_rows():
    lock = threading.Lock()
    now = [0]
    peak = [0]
    ev = threading.Event()

    def model(batch):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        ev.wait(0.02)  # sleeps without the GIL, as onnxruntime runs
        with lock:
            now[0] -= 1
        return rowsum(batch)

    b = Batcher(model, name="m", policy="off", lanes=2, infer_narrow=model).start()

    async def main():
        futs = [b.submit(np.full((1, 2, 2), i, np.float32), timeout_s=5) for i in range(12)]
        return await asyncio.gather(*futs)

    results = run(main())
    b.close()
    assert [float(r.outputs["sum"][0]) for r in results] == [4.0 * i for i in range(12)]
    assert peak[0] == 2  # two runs at once, never more


def test_lanes_need_a_narrow_runner():
    with pytest.raises(ValueError, match="infer_narrow"):
        Batcher(rowsum, name="m", lanes=2)


def test_measure_lane_gain_sees_runs_that_overlap():
    # each run holds no GIL for 20 ms (as onnxruntime does): side by side, two lanes do twice
    # the work of one; a runner that serialises (a lock) gains nothing. 20 ms, not less: the
    # side-by-side clock starts after the lanes' barrier, and on a loaded host the lanes can
    # get milliseconds ahead of it
    ev = threading.Event()
    lock = threading.Lock()

    def free(batch):
        ev.wait(0.02)

    def serial(batch):
        with lock:
            ev.wait(0.02)

    x = np.zeros((1, 3, 4, 4), np.float32)
    assert measure_lane_gain(free, free, x, 2) > 1.6
    assert measure_lane_gain(free, serial, x, 2) < 1.05
    assert measure_lane_gain(free, free, x, 1) == 1.0


@pytest.mark.parametrize(("gain", "lanes"), [(0.5, 1), (0.94, 1), (0.95, 2), (1.04, 2), (1.9, 2)])
def test_choose_lanes(gain, lanes):
    assert choose_lanes(gain, 2) == lanes
    assert choose_lanes(gain, 1) == 1
