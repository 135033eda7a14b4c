"""Batch prediction over image files, and conversion to COCO results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detops.model import Detections, ImageDecodeError, ModelSpec, Runtime
from detops.model.predict import predict_files, to_coco_results

NAMES = ["person", "car", "dog"]


def mean_runtime(graphs: Any, batch: int | str = "B") -> Runtime:
    """A runtime whose single detection per image depends on that image's pixels."""
    # stretch: no letterbox padding, so the box (0, 0, s, s) is never shifted off the image
    spec = ModelSpec(class_names=NAMES, input_width=64, input_height=64, resize="stretch",
                     score_threshold=0.1)
    return Runtime(graphs.make_mean_box_model(width=64, height=64, batch=batch), spec)


def write_images(folder: Path, n: int, seed: int = 0, fmt: str = "PNG") -> list[Path]:
    """``n`` noise images of varied sizes and brightness (so each predicts its own box).

    Sizes are at least the 64x64 network input so the predicted box is never clipped.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        hi = int(rng.integers(30, 256))
        arr = rng.integers(0, hi, (h, w, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.{fmt.lower()}"
        Image.fromarray(arr).save(path, fmt)
        paths.append(path)
    return paths


def decoded(paths: list[Path]) -> list[np.ndarray]:
    """The oracle's input: each file decoded by PIL directly."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def assert_same(got: list[Detections], want: list[Detections]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == len(w) == 1, i
        np.testing.assert_array_equal(g.boxes, w.boxes, err_msg=f"image {i}")
        np.testing.assert_array_equal(g.scores, w.scores, err_msg=f"image {i}")
        np.testing.assert_array_equal(g.labels, w.labels, err_msg=f"image {i}")


@pytest.mark.parametrize(
    "n, batch, graph_batch, fmt",
    [
        (10, 1, "B", "PNG"),  # one image per run
        (10, 3, "B", "PNG"),  # last batch partial (1 image)
        (10, 8, "B", "JPEG"),  # last batch partial (2 images); lossy files
        (5, 8, "B", "PNG"),  # fewer images than one batch
        (7, 8, 1, "PNG"),  # graph exported with a static batch of 1: batches must shrink
        (7, 3, 4, "PNG"),  # static batch of 4, asked for 3: each run padded with blanks
    ],
)
def test_predict_files_equals_runtime_predict_in_order(graphs, tmp_path, n, batch, graph_batch,
                                                       fmt):
    runtime = mean_runtime(graphs, graph_batch)
    paths = write_images(tmp_path / "imgs", n, seed=n + batch, fmt=fmt)
    seen: list[tuple[int, int]] = []
    got = predict_files(runtime, paths, batch=batch, progress=lambda d, t: seen.append((d, t)))
    want = mean_runtime(graphs).predict(decoded(paths))
    assert_same(got, want)
    # the boxes differ per image, so equality above also pins the order
    assert len({float(d.boxes[0, 2]) for d in want}) == n
    assert seen[-1] == (n, n)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_predict_files_with_str_paths_and_threshold_override(graphs, tmp_path):
    runtime = mean_runtime(graphs)
    paths = write_images(tmp_path / "imgs", 4)
    everything = predict_files(runtime, [str(p) for p in paths], score_threshold=0.5)
    nothing = predict_files(runtime, paths, score_threshold=0.95)  # the graph scores 0.9
    assert [len(d) for d in everything] == [1] * 4
    assert [len(d) for d in nothing] == [0] * 4
    assert predict_files(runtime, []) == []


@pytest.mark.parametrize(
    "bad_index, batch, content",
    [
        (0, 1, b"not an image at all"),  # first file, batch of one
        (5, 3, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),  # PNG header, garbage body, mid-batch
        (6, 8, b""),  # empty file in the last, partial batch
        (3, 4, "truncated"),  # a real PNG cut in half, last of its batch
    ],
)
def test_corrupt_image_raises_naming_that_file(graphs, tmp_path, bad_index, batch, content):
    paths = write_images(tmp_path / "imgs", 8)
    bad = paths[bad_index]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(ImageDecodeError) as info:
        predict_files(mean_runtime(graphs), paths, batch=batch)
    message = str(info.value)
    assert bad.name in message
    assert [p.name for p in paths if p.name in message] == [bad.name]  # and only that one


def dets(rows: list[tuple[list[float], float, int]]) -> Detections:
    if not rows:
        return Detections.empty()
    return Detections(
        np.array([r[0] for r in rows], np.float32),
        np.array([r[1] for r in rows], np.float32),
        np.array([r[2] for r in rows], np.int64),
    )


@pytest.mark.parametrize(
    "detections, image_ids, offset, expected",
    [
        # one box: xyxy -> xywh, label 0 -> category 1 with the default offset
        (
            [dets([([10, 20, 110, 60], 0.9, 0)])],
            [7],
            1,
            [{"image_id": 7, "category_id": 1, "bbox": [10, 20, 100, 40], "score": 0.9}],
        ),
        # offset 0 keeps 0-based ids; fractional boxes round to 3 decimals
        (
            [dets([([0.5, 1.25, 3.0, 9.0], 0.5, 2)])],
            [1],
            0,
            [{"image_id": 1, "category_id": 2, "bbox": [0.5, 1.25, 2.5, 7.75], "score": 0.5}],
        ),
        # several images, one without detections; rows keep their order within an image
        (
            [
                dets([([0, 0, 10, 10], 0.8, 1), ([5, 5, 6, 8], 0.7, 0)]),
                dets([]),
                dets([([1, 2, 3, 4], 0.25, 2)]),
            ],
            [3, 4, 5],
            10,
            [
                {"image_id": 3, "category_id": 11, "bbox": [0, 0, 10, 10], "score": 0.8},
                {"image_id": 3, "category_id": 10, "bbox": [5, 5, 1, 3], "score": 0.7},
                {"image_id": 5, "category_id": 12, "bbox": [1, 2, 2, 2], "score": 0.25},
            ],
        ),
        # no images at all
        ([], [], 1, []),
    ],
)
def test_to_coco_results(detections, image_ids, offset, expected):
    got = to_coco_results(detections, image_ids, category_offset=offset)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g["image_id"], g["category_id"]) == (e["image_id"], e["category_id"])
        assert type(g["image_id"]) is int and type(g["category_id"]) is int
        np.testing.assert_allclose(g["bbox"], e["bbox"], atol=1e-6)
        assert g["score"] == pytest.approx(e["score"], abs=1e-6)


def test_to_coco_results_refuses_mismatched_ids():
    with pytest.raises(ValueError):
        to_coco_results([Detections.empty(), Detections.empty()], [1])
