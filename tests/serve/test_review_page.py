"""The review page in a real headless browser (Debian's Chromium driven by Playwright) against a
real server: delete a suggested box, draw a new one, resize one, change a class, submit; the
stored feedback is the oracle.

Chromium comes from Debian (``apt-get install chromium``, as .ci/run and the README do); the
test fails, never skips, when it is missing. Playwright never downloads a browser here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from detops.store.schema import review_feedback, review_items
from tests.serve.conftest import const_onnx, image_bytes, spec, wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JPEG = {"content-type": "image/jpeg"}
W, H = 160, 120  # the image sent; the page magnifies it (zoom 4)
# network input 64x64, stretched: graph boxes are scaled by (2.5, 1.875) to the image
KNOWN = (((8.0, 8.0, 24.0, 24.0), 0.875, 1), ((32.0, 16.0, 56.0, 48.0), 0.75, 2))
SUGGESTED = [[20.0, 15.0, 60.0, 45.0], [80.0, 30.0, 140.0, 90.0]]  # car, dog in image pixels


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get install -y chromium` (as .ci/run does)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def server(running_server, make_ws):
    from detops.model.registry import register_model, set_alias

    ws = make_ws({"serve.automation": "ai_assistance", "serve.token": "s3cret"})
    register_model(ws, "det", const_onnx(KNOWN), spec(resize="stretch"))
    set_alias(ws, "det@v2", "production")
    return running_server(ws=ws)


def enqueue(server, n):
    ids = []
    for i in range(n):
        data = image_bytes(W, H, seed=i)
        ids.append(server.client.post("/v1/detect", content=data, headers=JPEG).json()["review_id"])
    wait_until(lambda: server.service.review.written == n, what="the review items")
    return ids


def feedback(ws):
    with ws.db.read() as conn:
        return {r.review_id: r._asdict() for r in conn.execute(select(review_feedback))}


def states(ws):
    with ws.db.read() as conn:
        return dict(conn.execute(select(review_items.c.id, review_items.c.state)).all())


class Page:
    """Image-pixel helpers over a Playwright page showing an item."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def screen(self, x: float, y: float) -> tuple[float, float]:
        bb = self.page.locator("#overlay").bounding_box()
        return bb["x"] + x * bb["width"] / W, bb["y"] + y * bb["height"] / H

    def drag(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        m = self.page.mouse
        m.move(*self.screen(*a))
        m.down()
        m.move(*self.screen(*b), steps=8)
        m.up()

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.screen(x, y))

    def wait_item(self, review_id: str) -> None:
        self.page.wait_for_function(
            "id => document.body.dataset.item === id", arg=review_id, timeout=15_000
        )

    def n_boxes(self) -> int:
        return self.page.locator("#overlay rect.body").count()


def close(a, b, tol=0.5):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_review_an_image_in_the_browser(browser, server):
    first, second = enqueue(server, 2)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    # only this server is ever contacted
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
    try:
        page.goto(f"{server.url}/review?token=s3cret")
        p = Page(page)
        p.wait_item(first)
        assert "token" not in page.url  # taken off the address bar, kept in sessionStorage
        assert page.evaluate("sessionStorage.getItem('detops-review-token')") == "s3cret"
        assert p.n_boxes() == 2
        labels = page.locator("#boxes select.label")
        assert [labels.nth(i).input_value() for i in range(2)] == ["car", "dog"]
        page.fill("#reviewer", "ann")

        # delete the car: select it on the image, press Delete
        p.click(40, 30)
        page.keyboard.press("Delete")
        assert p.n_boxes() == 1
        # the dog is now box 0: resize it from its south-east corner, change its class
        p.click(110, 60)  # select (shows the handles)
        p.drag((140, 90), (150, 100))
        labels.nth(0).select_option("person")
        # draw a new box as "car"
        page.select_option("#new-class", "car")
        p.drag((10, 10), (50, 70))
        assert p.n_boxes() == 2
        page.click("#submit")
        p.wait_item(second)  # the next item loaded

        fb = feedback(server.ws)[first]
        assert fb["reviewer"] == "ann" and fb["changed"] is True
        (b0, l0), (b1, l1) = [(b["box"], b["label"]) for b in fb["boxes"]]
        assert l0 == "person" and close(b0, [80, 30, 150, 100])
        assert l1 == "car" and close(b1, [10, 10, 50, 70])
        assert states(server.ws) == {first: "done", second: "pending"}

        # the second: accept the suggestions as they are; a click on a box moves nothing
        p.click(40, 30)
        page.click("#submit")
        page.wait_for_selector("#empty:not([hidden])", timeout=15_000)
        fb2 = feedback(server.ws)[second]
        assert fb2["changed"] is False
        with server.ws.db.read() as conn:
            model = conn.execute(
                select(review_items.c.detections).where(review_items.c.id == second)
            ).scalar_one()
        assert [b["box"] for b in fb2["boxes"]] == [d["box"] for d in model]  # exactly
        assert all(close(d["box"], s, 1e-3) for d, s in zip(model, SUGGESTED, strict=True))
        assert "override rate 50%" in page.inner_text("#counts")
    finally:
        ctx.close()
    assert errors == []
    assert hosts == {server.url.split("/")[2]}


def test_the_page_asks_for_the_token_and_shows_bad_input(browser, server):
    [rid] = enqueue(server, 1)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    try:
        page.goto(f"{server.url}/review")
        assert "token" in page.inner_text("#status")
        page.fill("#token", "wrong")
        page.dispatch_event("#token", "change")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('not valid')"
        )
        assert page.locator("#status.error").count() == 1 and feedback(server.ws) == {}
        page.fill("#token", "s3cret")
        page.dispatch_event("#token", "change")
        p = Page(page)
        p.wait_item(rid)
        # working on the image takes the focus off the token field, whose browser "change"
        # event then fires with the same token: that must not reload the item and lose edits
        p.click(40, 30)
        page.keyboard.press("Delete")
        page.wait_for_timeout(500)
        assert p.n_boxes() == 1
        page.click("#submit")  # no reviewer name yet: refused on the page, nothing sent
        assert "reviewer" in page.inner_text("#status")
        assert feedback(server.ws) == {}
    finally:
        ctx.close()
