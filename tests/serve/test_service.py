"""The request pipeline's pieces: error mapping, format sniffing, image size guards."""

from __future__ import annotations

import pytest

from detops.errors import (
    DeadlineExceeded,
    ImageDecodeError,
    ImageTooLarge,
    ModelError,
    Overloaded,
)
from detops.model.runtime import decode_image
from detops.serve.models import NotReady
from detops.serve.service import problem_from, sniff_format
from tests.serve.conftest import image_bytes
from tests.serve.test_hardening import png_header_only


@pytest.mark.parametrize(
    "exc, status, code, headers",
    [
        (ImageTooLarge("big"), 413, "too_many_pixels", {}),
        (ImageDecodeError("bad"), 400, "bad_image", {}),
        (Overloaded("full", 2.4), 503, "overloaded", {"Retry-After": "2"}),
        (Overloaded("full", 0.1), 503, "overloaded", {"Retry-After": "1"}),  # at least 1 s
        (DeadlineExceeded("slow"), 504, "timeout", {}),
        (NotReady("loading"), 503, "not_ready", {"Retry-After": "1"}),
        (ModelError("onnx failed"), 500, "model_error", {}),
        (RuntimeError("surprise"), 500, "model_error", {}),
    ],
)
def test_errors_map_to_http(exc, status, code, headers):
    p = problem_from(exc)
    assert (p.status, p.code, p.headers) == (status, code, headers)
    assert str(exc) in p.detail


@pytest.mark.parametrize(
    "fmt, name", [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp")]
)
def test_sniff_format_agrees_with_pil(fmt, name):
    assert sniff_format(image_bytes(8, 8, fmt)) == name


def test_sniff_format_unknown():
    assert sniff_format(b"GIF89a....") is None and sniff_format(b"") is None


@pytest.mark.parametrize(
    "w, h, limit, words",
    [
        (30_000, 30_000, 40_000_000, "refused before decoding"),  # PIL's own bomb guard
        (7_000, 7_000, 40_000_000, "49000000 pixels, above the limit of 40000000"),
        (2_000, 2_000, 1_000_000, "4000000 pixels, above the limit of 1000000"),
    ],
)
def test_pixel_limits_are_checked_from_the_header(w, h, limit, words):
    data = png_header_only(w, h)
    assert len(data) < 200  # the bomb is tiny; decoding it would need w*h*3 bytes
    with pytest.raises(ImageTooLarge, match=words):
        decode_image(data, max_pixels=limit)
