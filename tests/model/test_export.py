"""ONNX export of the default detector and the PyTorch <-> ONNX Runtime parity check.

Export warnings: ``export_onnx`` itself silences the two DeprecationWarnings the legacy
(TorchScript) exporter emits about itself, so no filterwarnings mark is needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from detops.errors import ParityError
from detops.model.detector import Detector, DetectorConfig, DetectorGraph, spec_dict
from detops.model.export import _compare_post, export_onnx, parity_check, preprocess
from detops.model.spec import ModelSpec

TINY = {"widths": (8, 16, 16, 16), "depths": (0, 1, 0, 0), "stem": 8, "neck": 8, "head": 8}
SIZE = 64


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path]:
    torch.manual_seed(0)
    model = Detector(DetectorConfig(num_classes=3, **TINY))
    # random, non-trivial BN statistics so folding them into the convs is exercised
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        model.heat.bias.uniform_(-3, 1)  # scores spread over (0, 1)
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", imgsz=SIZE)
    return model, path


def test_graph_contract(exported: tuple[Detector, Path]) -> None:
    _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["detections"]
    spec = ModelSpec(**spec_dict(["a", "b", "c"], imgsz=SIZE))
    spec.check_graph(proto)  # the runtime's own check of input and output shapes


@pytest.mark.parametrize("batch", [1, 3])  # the batch axis is dynamic
def test_onnx_decode_equals_torch_decode(exported: tuple[Detector, Path], batch: int) -> None:
    model, path = exported
    x = preprocess(_images(batch, seed=batch), SIZE)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    with torch.no_grad():
        want = DetectorGraph(model).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (batch, 100, 6)
    np.testing.assert_allclose(np.sort(got[..., 4], 1), np.sort(want[..., 4], 1), atol=1e-5)


def test_parity_check_passes_on_random_weights(exported: tuple[Detector, Path]) -> None:
    model, path = exported
    report = parity_check(model, path, _images(4), imgsz=SIZE)
    assert report.ok and report.max_abs_diff <= 1e-4
    assert set(report.diffs) >= {"heat_logits", "ltrb_raw", "post.box_px"}
    assert report.diffs["post.box_px"] <= 0.5
    assert report.n_images == 4 and report.n_detections > 0


def test_parity_check_catches_a_broken_export(
    exported: tuple[Detector, Path], tmp_path: Path
) -> None:
    model, path = exported
    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.name == "/model/heat/Conv")
    init = next(t for t in proto.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    msg = r"heat_logits: max \|diff\| [0-9.e-]+ > tolerance 0.0001"
    with pytest.raises(ParityError, match=msg):
        parity_check(model, broken, _images(2), imgsz=SIZE)


def _rows(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 6)


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float]:
    return _compare_post(a, b, 0.05, 0.5, 1e-4, 0.5, where="img")


def test_post_parity_forgives_a_score_on_the_threshold() -> None:
    # 0.05000 in PyTorch, 0.04999 in ONNX Runtime: kept by one, dropped by the other
    a = _rows((0, 0, 10, 10, 0.9, 1), (40, 40, 50, 50, 0.05000, 2))
    b = _rows((0, 0, 10, 10, 0.90002, 1), (40, 40, 50, 50, 0.04999, 2))
    assert _compare(a, b) == (1, 0.0, pytest.approx(2e-5, abs=1e-6))
    assert _compare(b, a)[0] == 1


def test_post_parity_forgives_an_iou_on_the_nms_threshold_and_its_cascade() -> None:
    # B's IoU with A is 0.5 + 1e-4 in PyTorch (suppressed) and 0.5 - 1e-4 in ONNX Runtime
    # (kept, and then B suppresses C, which PyTorch kept): both unmatched rows are borderline
    def shifted(iou: float) -> float:  # box [d, 0, 10 + d, 10] vs [0, 0, 10, 10] has this IoU
        return 10 * (1 - iou) / (1 + iou)

    a = _rows((0, 0, 10, 10, 0.9, 1), (shifted(0.5001), 0, 10 + shifted(0.5001), 10, 0.8, 1),
              (4.5, 0, 14.5, 10, 0.7, 1))  # IoU 0.38 with A, 0.82 with B
    b = a.copy()
    b[1, [0, 2]] = shifted(0.4999), 10 + shifted(0.4999)
    matched, box, _ = _compare(a, b)
    assert matched == 1 and box == 0.0  # A matched; B (ORT only) and C (torch only) borderline


def _full_top_k(last: tuple[float, ...], k: int = 100) -> np.ndarray:
    """K graph rows: K - 1 boxes apart from each other, scores 0.9 down to 0.2, then ``last``."""
    rows = [(20.0 * (i % 10), 20.0 * (i // 10), 20.0 * (i % 10) + 8, 20.0 * (i // 10) + 8,
             0.9 - 0.7 * i / (k - 2), 1.0) for i in range(k - 1)]
    return _rows(*rows, last)


def test_post_parity_forgives_a_swap_at_the_top_k_cut_only_there() -> None:
    # the K-th candidate differs: PyTorch's is a class-4 box at 0.17280, ONNX Runtime's a
    # class-2 box elsewhere at 0.17281 (each runtime's K+1-th), both above the threshold
    a = _full_top_k((300, 300, 310, 310, 0.17280, 4))
    b = _full_top_k((250, 300, 260, 310, 0.17281, 2))
    assert _compare_post(a, b, 0.05, 0.5, 1e-4, 0.5, where="img", top_k=100)[0] == 99
    assert _compare_post(b, a, 0.05, 0.5, 1e-4, 0.5, where="img", top_k=100)[0] == 99
    # without the cut (fewer rows than K, or K not given) the same rows are a real mismatch
    with pytest.raises(ParityError, match="class-4 detection of PyTorch"):
        _compare(a, b)
    with pytest.raises(ParityError, match="class-4 detection of PyTorch"):
        _compare_post(a, b, 0.05, 0.5, 1e-4, 0.5, where="img", top_k=101)
    # a detection well above the cut still has to match
    c = b.copy()
    c[50, 5] = 3.0  # a mid-ranked row changes class in ONNX Runtime
    with pytest.raises(ParityError, match="class-1 detection of PyTorch"):
        _compare_post(a, c, 0.05, 0.5, 1e-4, 0.5, where="img", top_k=100)


def test_post_parity_still_catches_a_clear_extra_detection() -> None:
    a = _rows((0, 0, 10, 10, 0.9, 1))
    b = _rows((0, 0, 10, 10, 0.9, 1), (40, 40, 50, 50, 0.3, 2))
    with pytest.raises(ParityError, match=r"img: a class-2 detection of ONNX Runtime \(score "
                       r"0.3000.*no counterpart in PyTorch"):
        _compare(a, b)
    with pytest.raises(ParityError, match="class-2 detection of PyTorch"):
        _compare(b, a)
    moved = b.copy()
    moved[1, :4] += 2.0  # same class and score, box 2 px away: not a counterpart
    with pytest.raises(ParityError, match="nearest of its class is 2 px away > tolerance 0.5 px"):
        _compare(b, moved)


def test_spec_dict_is_a_valid_runtime_spec() -> None:
    spec = ModelSpec(**spec_dict(["circle", "square"]))
    assert (spec.input_width, spec.input_height, spec.resize) == (320, 320, "stretch")
    assert spec.adapter == "detops" and spec.max_detections == 100
    assert spec.scale == pytest.approx(1 / 255)
