"""The Modelling stage end to end on a tiny dataset: train -> export -> parity -> evaluate
through the ONNX runtime -> register, checked against pycocotools on the same predictions."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from detops.data.synth import AnnotatorSpec, SceneConfig, synthesize
from detops.data.versions import add_dataset, load_version
from detops.errors import DetopsError
from detops.model.registry import get_model, load_runtime
from detops.model.train import TrainConfig
from detops.model.workflow import evaluate_runtime, ground_truth, register_run, train_run
from detops.workspace import Workspace, init_workspace

TINY = {"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "stem": 8, "neck": 8, "head": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    ws = Workspace(init_workspace(root / "ws"))
    ds = synthesize(root / "src", 24, 5, SceneConfig(max_objects=4),
                    [AnnotatorSpec("A"), AnnotatorSpec("B", loose=0.5)], workers=1)
    dv = add_dataset(ws, "tiny", ds)
    run = train_run(ws, dv.ref, TrainConfig(epochs=2, batch=8, model=TINY, seed=1))
    yield ws, dv, run
    ws.close()


def test_run_records_everything(trained):
    ws, dv, run = trained
    assert run.status == "finished" and run.dataset == dv.ref
    assert run.dataset_digest == dv.digest
    assert [m["epoch"] for m in run.metrics] == [0, 1]
    assert set(run.artifacts) == {"checkpoint", "onnx", "spec", "report", "pr_curve"}
    for digest in run.artifacts.values():
        ws.artifacts.verify(digest)
    assert run.params["annotator"] == "A"  # the first annotator is the ground truth
    assert run.environment["torch"] and run.environment["onnxruntime"]
    assert "package_version" in run.code
    ev = run.evaluation
    assert set(ev["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
                               "AR100", "ARs", "ARm", "ARl"}
    assert ev["parity"]["max_abs_diff"] <= 1e-4
    assert set(ev["ci"]) == {"AP", "AP50"}
    with Image.open(ws.artifacts.path(run.artifacts["pr_curve"])) as im:
        assert im.format == "PNG"


def test_deployed_threshold_is_the_best_f1_on_validation(trained):
    from detops.model.spec import ModelSpec

    ws, _, run = trained
    spec = ModelSpec.from_yaml(ws.artifacts.get_bytes(run.artifacts["spec"]).decode())
    assert spec.score_threshold == run.evaluation["at_threshold"]["score_threshold"]


def test_register_run_keeps_lineage_and_evaluation(trained):
    ws, dv, run = trained
    mv = register_run(ws, run.id, "tinydet")
    assert mv.lineage["run"] == run.id and mv.lineage["dataset"] == dv.ref
    assert mv.lineage["dataset_digest"] == dv.digest and mv.lineage["annotator"] == "A"
    assert mv.evaluation == run.evaluation
    assert get_model(ws, "tinydet").onnx == run.artifacts["onnx"]


def test_evaluation_through_the_runtime_matches_pycocotools(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ws, dv, run = trained
    mv = register_run(ws, run.id, "oracle")
    runtime = load_runtime(ws, mv)
    val = load_version(ws, dv).split("val")
    out = evaluate_runtime(runtime, val, annotator="A", bootstrap=0)
    # the oracle: predictions from the runtime itself, scored by pycocotools
    images = [np.asarray(Image.open(val.image_path(img)).convert("RGB")) for img in val.images]
    dets = runtime.predict(images, score_threshold=0.01)
    preds = [{"image_id": img.id, "category_id": int(lab) + 1, "score": float(s),
              "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
             for img, d in zip(val.images, dets, strict=True)
             for b, s, lab in zip(d.boxes, d.scores, d.labels, strict=True)]
    assert len(preds) > 50  # the untrained model still scores many boxes above 0.01
    gt = ground_truth(val, "A")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(preds), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    # detops writes boxes rounded to 1e-3 px and scores to 1e-5; nothing else may differ
    np.testing.assert_allclose(list(out["coco"].values()), e.stats, atol=1e-4)


def test_a_dataset_without_validation_images_is_refused(tmp_path):
    ws = Workspace(init_workspace(tmp_path / "ws"))
    (tmp_path / "ws" / "detops.yaml").write_text("data:\n  split: {train: 1.0, val: 0.0}\n")
    ws = Workspace(tmp_path / "ws")
    ds = synthesize(tmp_path / "src", 4, 0, SceneConfig(), workers=1)
    dv = add_dataset(ws, "noval", ds)
    with pytest.raises(DetopsError, match="0 val images"):
        train_run(ws, dv.ref, TrainConfig(epochs=1))


def test_a_crash_marks_the_run_failed(trained, monkeypatch):
    import detops.model.train as train_mod
    from detops.model.tracking import list_runs

    ws, dv, _ = trained

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_mod, "train", boom)
    with pytest.raises(RuntimeError):
        train_run(ws, dv.ref, TrainConfig(epochs=1))
    failed = [r for r in list_runs(ws) if r.status == "failed"]
    assert len(failed) == 1 and "out of memory" in failed[0].error
