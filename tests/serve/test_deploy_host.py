"""A model host holding several versions: warm copies, one-assignment switches, unloading only
when the last request using a version is done."""

from __future__ import annotations

import pytest

from detops.serve.models import LoadedModel, ModelHost
from detops.serve.routing import DeploymentRouter, RoutePlan


class FakeBatcher:
    def __init__(self) -> None:
        self.closed = 0
        self.depth = 0

    def close(self, timeout=None) -> None:
        self.closed += 1


def fake(version: int) -> LoadedModel:
    return LoadedModel("det", version, runtime=None, batcher=FakeBatcher(), policy="off", gain=None)


@pytest.fixture()
def host():
    h = ModelHost(
        "deployment d", resolve=lambda: ("det", 1), load=lambda n, v: fake(v), watch=False
    )
    h.install(fake(1))
    return h


def test_warm_versions_switch_in_one_assignment_and_keep_the_old_one(host):
    v1 = host.current
    host.add_warm(fake(2))
    assert host.loaded() == [("det", 1, "serve"), ("det", 2, "serve")]
    assert host.promote_warm("det", 2, keep_previous=True)
    assert host.current.version == 2 and host.find("det", 1) is v1 and v1.batcher.closed == 0
    assert host.promote_warm("det", 1)  # back, and this time the old one is let go
    assert host.current is v1 and host.find("det", 2) is None
    assert not host.promote_warm("det", 3)  # not loaded: nothing changes
    assert host.current is v1


def test_a_dropped_version_closes_after_its_last_request(host):
    host.add_warm(fake(2))
    host.add_warm(fake(2), role="shadow")
    held = host.acquire_version("det", 2)
    assert held is not None and host.acquire_version("det", 3) is None
    assert host.drop_warm("det", 2)
    assert held.batcher.closed == 0  # still answering a request
    host.release(held)
    assert held.batcher.closed == 1
    assert host.find("det", 2, "shadow") is not None  # the shadow copy is its own
    assert not host.drop_warm("det", 2)
    host.stop()
    assert host.current is None and host.warm == {}


def test_the_router_never_fails_for_a_version_still_loading(host):
    plan = RoutePlan(name="det", live=1, candidate=2, mode="canary", share=1.0)
    router = DeploymentRouter(host, plan)
    r = router.route("r1", "client-a")  # candidate not loaded yet: live answers
    assert (r.model.version, r.reason) == (1, "live")
    router.release(r)
    host.add_warm(fake(2))
    r = router.route("r2", "client-a")
    assert (r.model.version, r.reason) == (2, "canary")
    router.release(r)
    # a plan whose live version is still loading: the installed one answers, with its colour
    router.plan = RoutePlan(name="det", live=3, colours=((1, "blue"), (3, "green")))
    r = router.route("r3")
    assert (r.model.version, r.reason) == (1, "blue")
