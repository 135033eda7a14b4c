"""The inference runtime: preprocessing, post-processing, loading checks, image decoding."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detops.errors import ArtifactCorrupt, ModelError, SpecMismatch
from detops.model import Detections, ModelSpec, Runtime
from detops.model.runtime import ImageDecodeError, InvalidImage, Transform, decode_image
from detops.model.spec import AdapterOptions

NAMES = ["person", "car", "dog"]


def spec(**kw: Any) -> ModelSpec:
    fields: dict[str, Any] = dict(class_names=NAMES, input_width=320, input_height=320)
    fields.update(kw)
    return ModelSpec(**fields)


def detops_runtime(graphs: Any, known: Any, pad_rows: int = 0, **spec_kw: Any) -> Runtime:
    """A runtime over a ``detops``-layout graph that always outputs ``known`` (input pixels)."""
    s = spec(**spec_kw)
    data = graphs.make_const_model(
        {"detections": graphs.rows(known, pad_rows)}, width=s.input_width, height=s.input_height
    )
    return Runtime(data, s)


def blank(w: int, h: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


# -- preprocessing ------------------------------------------------------------------------------

LETTERBOX = [
    # (original w, h), (input w, h) -> scale_x, scale_y, pad_x, pad_y
    # wide 16:9 into a square: half size, 70 px top and bottom
    ((640, 360), (320, 320), 0.5, 0.5, 0, 70),
    # tall: padding goes left and right
    ((360, 640), (320, 320), 0.5, 0.5, 70, 0),
    # already the input size: untouched
    ((320, 320), (320, 320), 1.0, 1.0, 0, 0),
    # upscaling a small image
    ((100, 50), (64, 64), 0.64, 0.64, 0, 16),
    # odd total padding (139 px): the smaller half on top, like Ultralytics
    ((640, 362), (320, 320), 0.5, 181 / 362, 0, 69),
    # non-square input
    ((1000, 1000), (640, 384), 0.384, 0.384, 128, 0),
]


@pytest.mark.parametrize(("orig", "inp", "sx", "sy", "px", "py"), LETTERBOX)
def test_letterbox_transform(orig, inp, sx, sy, px, py, graphs: Any) -> None:
    rt = detops_runtime(graphs, [], input_width=inp[0], input_height=inp[1])
    batch, (t,) = rt.preprocess([blank(*orig)])
    assert batch.shape == (1, 3, inp[1], inp[0]) and batch.dtype == np.float32
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == pytest.approx((sx, sy, px, py))
    assert (t.width, t.height) == orig


def test_letterbox_pixels_content_and_pad(graphs: Any) -> None:
    rt = detops_runtime(graphs, [], mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = np.empty((360, 640, 3), np.uint8)
    img[...] = (255, 0, 51)
    batch, _ = rt.preprocess([img])
    inside = batch[0, :, 70:250, :]
    # (pixel / 255 - mean) / std per channel
    for c, want in enumerate([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 0.2]):
        np.testing.assert_allclose(inside[c], want, atol=1e-6)
    for rows in (batch[0, :, :70], batch[0, :, 250:]):
        for c, (m, s) in enumerate(zip((0.5, 0.25, 0.0), (0.5, 0.25, 1.0), strict=True)):
            np.testing.assert_allclose(rows[c], (114 / 255 - m) / s, atol=1e-6)


def test_bgr_reverses_channels(graphs: Any) -> None:
    rt = detops_runtime(graphs, [], channel_order="bgr", scale=1.0)
    img = np.empty((320, 320, 3), np.uint8)
    img[...] = (200, 100, 10)  # RGB
    batch, _ = rt.preprocess([img])
    assert batch[0, :, 0, 0].tolist() == [10, 100, 200]


def test_stretch_maps_each_axis_separately(graphs: Any) -> None:
    # box (32, 64, 160, 320) on the 320x320 input of a 640x360 image stretched to fit
    rt = detops_runtime(graphs, [((32, 64, 160, 320), 0.9, 0)], resize="stretch")
    batch, (t,) = rt.preprocess([blank(640, 360)])
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 320 / 360, 0, 0)
    (d,) = rt.predict([blank(640, 360)])
    np.testing.assert_allclose(d.boxes, [[64, 72, 320, 360]], atol=1e-3)


def test_invalid_image_arrays(graphs: Any) -> None:
    rt = detops_runtime(graphs, [])
    for bad in (
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
    ):
        with pytest.raises(InvalidImage, match="image 1"):
            rt.preprocess([blank(5, 5), bad])


# -- post-processing ---------------------------------------------------------------------------

A = (10.0, 10.0, 110.0, 110.0)
A_SHIFTED = (20.0, 20.0, 120.0, 120.0)  # IoU with A = 8100 / 11900 = 0.68
FAR = (200.0, 200.0, 260.0, 260.0)

POST = [
    # (known rows, spec/override kwargs, expected (score, label) kept in order)
    # same class, IoU 0.68 > 0.5: the weaker box is suppressed
    ([(A, 0.9, 0), (A_SHIFTED, 0.8, 0), (FAR, 0.7, 0)], {}, [(0.9, 0), (0.7, 0)]),
    # per-class NMS: different classes do not suppress each other
    ([(A, 0.9, 0), (A_SHIFTED, 0.8, 1)], {}, [(0.9, 0), (0.8, 1)]),
    # class-agnostic NMS suppresses across classes
    ([(A, 0.9, 0), (A_SHIFTED, 0.8, 1)], {"class_agnostic_nms": True}, [(0.9, 0)]),
    # a looser IoU threshold keeps both
    ([(A, 0.9, 0), (A_SHIFTED, 0.8, 0)], {"nms_iou": 0.7}, [(0.9, 0), (0.8, 0)]),
    # the spec's score threshold (0.25) drops the weak box; zero-score padding never appears
    ([(A, 0.9, 0), (FAR, 0.2, 1)], {"pad_rows": 3}, [(0.9, 0)]),
    # threshold exactly at a score keeps it (score >= threshold)
    ([(A, 0.9, 0), (FAR, 0.25, 1)], {}, [(0.9, 0), (0.25, 1)]),
    # call override: lower threshold
    ([(A, 0.9, 0), (FAR, 0.2, 1)], {"call": {"score_threshold": 0.1}}, [(0.9, 0), (0.2, 1)]),
    # threshold 0 keeps every real row but still not the zero-score padding
    (
        [(A, 0.9, 0), (FAR, 0.01, 1)],
        {"call": {"score_threshold": 0.0}, "pad_rows": 2},
        [(0.9, 0), (0.01, 1)],
    ),
    # call override: max detections keeps the best
    ([(FAR, 0.5, 1), (A, 0.9, 0)], {"call": {"max_detections": 1}}, [(0.9, 0)]),
    # spec max detections
    ([(FAR, 0.5, 1), (A, 0.9, 0)], {"max_detections": 1}, [(0.9, 0)]),
    # call override: NMS IoU
    ([(A, 0.9, 0), (A_SHIFTED, 0.8, 0)], {"call": {"nms_iou": 0.9}}, [(0.9, 0), (0.8, 0)]),
    # graph already ran NMS: overlapping boxes are kept, only sorted and thresholded
    ([(A_SHIFTED, 0.8, 0), (A, 0.9, 0)], {"adapter": "yolo_nms"}, [(0.9, 0), (0.8, 0)]),
    # ... unless the spec says NMS did not run in the graph
    (
        [(A_SHIFTED, 0.8, 0), (A, 0.9, 0)],
        {"adapter": "yolo_nms", "adapter_options": AdapterOptions(nms_in_graph=False)},
        [(0.9, 0)],
    ),
]


@pytest.mark.parametrize(("known", "kw", "want"), POST)
def test_postprocess_table(known: list, kw: dict, want: list, graphs: Any) -> None:
    kw = dict(kw)
    call = kw.pop("call", {})
    pad_rows = kw.pop("pad_rows", 0)
    name = "output0" if kw.get("adapter") == "yolo_nms" else "detections"
    s = spec(**kw)
    rt = Runtime(graphs.make_const_model({name: graphs.rows(known, pad_rows)}), s)
    (d,) = rt.predict([blank(320, 320)], **call)
    assert [
        (round(float(sc), 4), int(lab)) for sc, lab in zip(d.scores, d.labels, strict=True)
    ] == want


def test_boxes_are_clipped_to_the_image(graphs: Any) -> None:
    # a box reaching into the letterbox padding and past the right edge of the input
    rt = detops_runtime(graphs, [((-20, 40, 340, 200), 0.9, 0)])
    (d,) = rt.predict([blank(640, 360)])
    np.testing.assert_allclose(d.boxes, [[0, 0, 640, 260]], atol=1e-3)


def test_batch_of_two_sizes_each_mapped_with_its_own_transform(graphs: Any) -> None:
    rt = detops_runtime(graphs, [((40, 80, 120, 240), 0.9, 2)])
    small, wide = rt.predict([blank(160, 160), blank(640, 360)])
    np.testing.assert_allclose(small.boxes, [[20, 40, 60, 120]], atol=1e-3)  # scale 2, no pad
    np.testing.assert_allclose(wide.boxes, [[80, 20, 240, 340]], atol=1e-3)  # scale .5, pad 70


def test_postprocess_original_sizes_override_clip(graphs: Any) -> None:
    rt = detops_runtime(graphs, [((0, 0, 320, 320), 0.9, 0)])
    batch, transforms = rt.preprocess([blank(320, 320)])
    (d,) = rt.postprocess(rt.infer(batch), transforms, [(100, 200)])
    np.testing.assert_allclose(d.boxes, [[0, 0, 200, 100]])


@pytest.mark.parametrize(
    ("fixed_batch", "n_images"),
    [
        (1, 3),  # exported with batch 1: images run one at a time
        (4, 3),  # exported with batch 4: the last run is filled with blank images
        (2, 5),  # several runs, the last one partial
    ],
)
def test_fixed_batch_graphs(fixed_batch: int, n_images: int, graphs: Any) -> None:
    data = graphs.make_const_model(
        {"detections": graphs.rows([((40, 80, 120, 240), 0.9, 2)])}, batch=fixed_batch
    )
    rt = Runtime(data, spec())
    assert rt.max_batch == fixed_batch
    dets = rt.predict([blank(160, 160)] * n_images)
    assert len(dets) == n_images
    for d in dets:
        np.testing.assert_allclose(d.boxes, [[20, 40, 60, 120]], atol=1e-3)


def test_empty_inputs_and_results(graphs: Any) -> None:
    rt = detops_runtime(graphs, [], pad_rows=4)
    assert rt.predict([]) == []
    (d,) = rt.predict([blank(8, 8)])
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.to_list(NAMES) == []


def test_pre_nms_top_k_keeps_the_best_candidates(graphs: Any) -> None:
    known = [((i * 30, 0, i * 30 + 20, 20), 0.3 + 0.05 * i, 0) for i in range(8)]
    rt = detops_runtime(graphs, known, pre_nms_top_k=3)
    (d,) = rt.predict([blank(320, 320)])
    np.testing.assert_allclose(d.scores, [0.65, 0.6, 0.55], atol=1e-6)


def test_transform_roundtrip() -> None:
    t = Transform(scale_x=0.5, scale_y=0.25, pad_x=3, pad_y=7, width=100, height=400)
    orig = np.array([[10, 20, 30, 40]], np.float32)
    inp = orig * np.array([0.5, 0.25, 0.5, 0.25], np.float32) + np.array([3, 7, 3, 7], np.float32)
    np.testing.assert_allclose(t.to_original(inp), orig)


# -- loading ------------------------------------------------------------------------------------

INPUT_MISMATCH = [
    # one-channel input
    (
        {"channels": 1},
        {},
        r"input 'images': expected shape \[B, 3, 320, 320\].*got \[\?, 1, 320, 320\]",
    ),
    # the graph is 640x640, the spec says 320x320
    ({"width": 640, "height": 640}, {}, r"input 'images'.*got \[\?, 3, 640, 640\]"),
    # width and height swapped in the spec
    (
        {"width": 320, "height": 192},
        {"input_width": 192, "input_height": 320},
        r"expected shape \[B, 3, 320, 192\].*got \[\?, 3, 192, 320\]",
    ),
    # the spec names an input the graph does not have
    ({}, {"input_name": "pixel_values"}, r"input 'pixel_values' named in the spec.*'images'"),
]


@pytest.mark.parametrize(("graph_kw", "spec_kw", "message"), INPUT_MISMATCH)
def test_input_mismatch(graph_kw: dict, spec_kw: dict, message: str, graphs: Any) -> None:
    data = graphs.make_const_model({"detections": graphs.rows([])}, **graph_kw)
    with pytest.raises(SpecMismatch, match=message):
        Runtime(data, spec(**spec_kw))


def test_dynamic_input_size_is_accepted(graphs: Any) -> None:
    data = graphs.make_const_model({"detections": graphs.rows([])}, width=None, height=None)
    assert Runtime(data, spec()).max_batch is None


def test_expected_sha256(tmp_path, graphs: Any) -> None:
    data = graphs.make_const_model({"detections": graphs.rows([((1, 1, 9, 9), 0.9, 0)])})
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    assert Runtime(path, spec(), expected_sha256=good.upper()).sha256 == good
    # one flipped byte in the middle of the file
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(
        ArtifactCorrupt, match=rf"{path}: ONNX bytes hash to .*expected {good[:12]}"
    ):
        Runtime(path, spec(), expected_sha256=good)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"definitely not a protobuf", "not a loadable ONNX model"),  # garbage bytes
        ("missing.onnx", "ONNX file not found"),  # no such file
    ],
)
def test_unloadable_models(source: Any, message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=message):
        Runtime(source, spec())


def test_from_files_and_session_options(tmp_path, graphs: Any) -> None:
    data = graphs.make_const_model({"detections": graphs.rows([((1, 1, 9, 9), 0.9, 0)])})
    (tmp_path / "m.onnx").write_bytes(data)
    spec().save(tmp_path / "spec.yaml")
    for spinning, flag in ((False, "0"), (True, "1")):
        rt = Runtime.from_files(
            tmp_path / "m.onnx", tmp_path / "spec.yaml", allow_spinning=spinning, intra_op_threads=1
        )
        opts = rt._session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == flag
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    rt.warmup()
    assert "m.onnx" in repr(rt)


def test_infer_narrow_is_a_one_thread_session_with_the_same_outputs(graphs: Any) -> None:
    rt = Runtime(graphs.make_mean_box_model(width=64, height=48), spec(input_width=64,
                 input_height=48), intra_op_threads=2, allow_spinning=True)
    x = np.random.default_rng(0).random((3, 3, 48, 64), dtype=np.float32)
    wide, narrow = rt.infer(x), rt.infer_narrow(x)
    np.testing.assert_array_equal(wide["detections"], narrow["detections"])
    opts = rt._narrow.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert rt.infer_narrow(x[:1])["detections"].shape == (1, 1, 6)  # made once, reused
    rt.drop_narrow()
    assert rt._narrow is None
    np.testing.assert_array_equal(rt.infer_narrow(x)["detections"], wide["detections"])


def test_infer_quiet_runs_on_a_non_spinning_twin_only_when_the_runtime_spins(graphs: Any) -> None:
    x = np.random.default_rng(1).random((2, 3, 48, 64), dtype=np.float32)
    onnx = graphs.make_mean_box_model(width=64, height=48)
    sp = spec(input_width=64, input_height=48)
    spinning = Runtime(onnx, sp, intra_op_threads=2, allow_spinning=True)
    assert spinning.spinning and spinning._quiet is None
    np.testing.assert_array_equal(spinning.infer_quiet(x)["detections"],
                                  spinning.infer(x)["detections"])
    opts = spinning._quiet.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2  # every thread, as the main session
    main = spinning._session.get_session_options()
    assert main.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    # no spinning, or one thread (no pool to spin): the main session, no twin
    for rt in (Runtime(onnx, sp, intra_op_threads=2, allow_spinning=False),
               Runtime(onnx, sp, intra_op_threads=1, allow_spinning=True)):
        assert not rt.spinning
        np.testing.assert_array_equal(rt.infer_quiet(x)["detections"], rt.infer(x)["detections"])
        assert rt._quiet is None


def test_importing_detops_model_loads_neither_onnxruntime_nor_torch() -> None:
    code = (
        "import sys, detops.model as m; assert 'onnxruntime' not in sys.modules; "
        "m.ModelSpec; m.Detections; assert 'onnxruntime' not in sys.modules; "
        "m.Runtime; assert 'onnxruntime' in sys.modules and 'torch' not in sys.modules; "
        "assert set(m.__all__) == set(m._LAZY) <= set(dir(m))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- image bytes --------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


RGB = Image.new("RGB", (40, 30), (10, 200, 30))
PNG = encode(RGB, "PNG")
JPEG = encode(RGB, "JPEG")
NOISE_PNG = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")

DECODE_OK = [
    # PNG, RGB
    (PNG, (30, 40, 3), (10, 200, 30)),
    # JPEG (lossy: colour checked loosely below)
    (JPEG, (30, 40, 3), (10, 200, 30)),
    # greyscale becomes RGB
    (encode(Image.new("L", (5, 7), 77), "PNG"), (7, 5, 3), (77, 77, 77)),
    # alpha is dropped
    (encode(Image.new("RGBA", (5, 7), (1, 2, 3, 4)), "PNG"), (7, 5, 3), (1, 2, 3)),
    # palette image
    (
        encode(
            Image.new("RGB", (6, 6), (9, 8, 7)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"
        ),
        (6, 6, 3),
        (9, 8, 7),
    ),
]


@pytest.mark.parametrize(("data", "shape", "colour"), DECODE_OK)
def test_decode_image(data: bytes, shape: tuple, colour: tuple) -> None:
    arr = decode_image(data)
    assert arr.shape == shape and arr.dtype == np.uint8
    np.testing.assert_allclose(arr[0, 0], colour, atol=3)


DECODE_BAD = [
    # nothing at all
    (b"", "empty"),
    # not an image
    (b"hello, world", "not a recognised image format"),
    # PNG cut in half
    (PNG[: len(PNG) // 2], "corrupt or truncated"),
    # JPEG cut in half
    (JPEG[: len(JPEG) // 2], "corrupt or truncated"),
    # a valid header, then a damaged compressed stream
    (
        NOISE_PNG[:60] + bytes(b ^ 0xFF for b in NOISE_PNG[60:-12]) + NOISE_PNG[-12:],
        "corrupt or truncated",
    ),
]


@pytest.mark.parametrize(("data", "message"), DECODE_BAD)
def test_decode_image_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_decode_refuses_images_above_the_pixel_limit(graphs: Any) -> None:
    with pytest.raises(ImageDecodeError, match="40x30 = 1200 pixels, above the limit of 1000"):
        decode_image(PNG, max_pixels=1000)
    rt = Runtime(
        graphs.make_const_model({"detections": graphs.rows([])}), spec(), max_image_pixels=1000
    )
    with pytest.raises(ImageDecodeError):
        rt.predict_bytes([PNG])
    assert issubclass(ImageDecodeError, ValueError)


def test_predict_bytes_end_to_end(graphs: Any) -> None:
    # 40x30 image letterboxed to 320x320: scale 8, 40 px pad top
    rt = detops_runtime(graphs, [((80, 120, 160, 200), 0.9, 1)])
    (d,) = rt.predict_bytes([PNG], score_threshold=0.5)
    np.testing.assert_allclose(d.boxes, [[10, 10, 20, 20]], atol=1e-3)
    assert d.to_list(NAMES) == [
        {
            "box": pytest.approx([10, 10, 20, 20], abs=1e-3),
            "score": pytest.approx(0.9),
            "class_id": 1,
            "label": "car",
        }
    ]


def test_detections_validate_shapes() -> None:
    with pytest.raises(ValueError, match="must be"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64))
