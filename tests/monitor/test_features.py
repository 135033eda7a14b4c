"""Request input features against trusted implementations (PIL's grey, scipy's Laplacian)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from detops.monitor.features import grey_view, image_features


def scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.mark.parametrize(
    "h, w, seed",
    [(1080, 1920, 0), (720, 1280, 1), (480, 640, 2), (64, 48, 3), (256, 256, 4), (3, 900, 5)],
)
def test_features_match_the_oracles_on_the_view(h, w, seed):
    img = scene(h, w, seed)
    f = image_features(img)
    view = grey_view(img)
    step = max(1, -(-max(h, w) // 128))
    assert view.shape == img[::step, ::step].shape[:2]
    # PIL's "L" conversion uses the same BT.601 weights (it rounds to integers)
    pil_grey = np.asarray(Image.fromarray(np.ascontiguousarray(img[::step, ::step])).convert("L"))
    assert f.brightness == pytest.approx(pil_grey.mean(), abs=0.6)
    assert f.contrast == pytest.approx(pil_grey.std(), abs=0.6)
    if min(view.shape) >= 3:
        lap = ndimage.laplace(view.astype(np.float64))[1:-1, 1:-1]  # interior, as ours
        assert f.sharpness == pytest.approx(lap.var(), rel=1e-4)
    assert (f.width, f.height) == (w, h)


def test_sharpness_orders_blur_and_features_track_brightness():
    img = scene(480, 640, 7)
    blurred = np.asarray(Image.fromarray(img).resize((160, 120)).resize((640, 480)))
    assert image_features(blurred).sharpness < image_features(img).sharpness
    darker = (img * 0.5).astype(np.uint8)
    assert image_features(darker).brightness == pytest.approx(
        image_features(img).brightness * 0.5, abs=1
    )
    assert image_features(np.zeros((10, 10, 3), np.uint8)).to_dict() == {
        "width": 10, "height": 10, "brightness": 0.0, "contrast": 0.0, "sharpness": 0.0,
    }  # fmt: skip
