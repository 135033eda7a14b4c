"""Batch prediction throughput: ``predict_files`` against a bare ONNX Runtime loop.

    python bench/predict_bench.py                 # 400 320x320 JPEGs, batch 1 and 8
    python bench/predict_bench.py --n 100 --repeat 1

Both pipelines run the default detector (random weights: timing only) exported to ONNX, on the
same files, at the same batch size, with the same session options (intra-op threads = cores,
inter-op 1, spinning off, full graph optimisation), in this one process. The bare loop reads
bytes, decodes with PIL, resizes to the input size, normalises with numpy and calls
``session.run``; ``predict_files`` does that plus post-processing (threshold, NMS, mapping
boxes back), with decoding of the next batch overlapped with inference. Each measurement is
the best of ``--repeat`` passes, the pipelines alternating so background load hits both.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Smooth random scenes (JPEG-compressible like photos, not white noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def export_detector(path: Path, imgsz: int, num_classes: int) -> dict:
    import torch

    from detops.model.detector import Detector, DetectorConfig, spec_dict
    from detops.model.export import export_onnx

    torch.manual_seed(0)
    model = Detector(DetectorConfig(num_classes=num_classes)).eval()
    export_onnx(model, path, imgsz=imgsz)
    return spec_dict([f"class{i}" for i in range(num_classes)], imgsz=imgsz)


def bare_session(onnx: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])


def bare_loop(session: ort.InferenceSession, spec: dict, paths: list[Path], batch: int) -> int:
    """The minimal pipeline: read, decode, resize, normalise, run. Returns images done."""
    w, h = spec["input_width"], spec["input_height"]
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    scale = np.float32(spec["scale"])
    name = session.get_inputs()[0].name
    done = 0
    for start in range(0, len(paths), batch):
        arrays = []
        for p in paths[start : start + batch]:
            with Image.open(io.BytesIO(p.read_bytes())) as im:
                im = im.convert("RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(im))
        x = (np.stack(arrays).astype(np.float32) * scale - mean) / std
        session.run(None, {name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        done += len(arrays)
    return done


def rate(fn: Callable[[], int]) -> float:
    """Images per second of one pass of ``fn`` (which returns how many it did)."""
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="images")
    ap.add_argument("--size", type=int, default=320, help="image side (and input size)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--classes", type=int, default=3)
    args = ap.parse_args()

    from detops.model import ModelSpec, Runtime
    from detops.model.predict import predict_files

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.n, args.size)
        onnx = folder / "detector.onnx"
        spec = export_detector(onnx, args.size, args.classes)
        runtime = Runtime(onnx, ModelSpec.model_validate(spec), intra_op_threads=threads,
                          allow_spinning=False)
        session = bare_session(onnx, threads)
        warm = paths[:8]
        predict_files(runtime, warm, batch=8)
        bare_loop(session, spec, warm, 8)

        print(f"{args.n} {args.size}x{args.size} JPEGs, default detector ({args.classes} "
              f"classes, random weights), {threads} intra-op threads, spinning off, "
              f"best of {args.repeat}")
        print(f"{'pipeline':<28} {'batch':>5} {'images/s':>9} {'vs bare':>8}")
        for batch in (int(b) for b in args.batches.split(",")):
            runs: dict[str, Callable[[], int]] = {
                "bare onnxruntime loop": lambda b=batch: bare_loop(session, spec, paths, b),
                "detops predict_files": lambda b=batch: len(predict_files(runtime, paths,
                                                                          batch=b)),
            }
            rates = dict.fromkeys(runs, 0.0)
            for _ in range(args.repeat):  # alternate, so load spikes hit both
                for name, fn in runs.items():
                    rates[name] = max(rates[name], rate(fn))
            bare = rates["bare onnxruntime loop"]
            for name, r in rates.items():
                print(f"{name:<28} {batch:>5} {r:>9.1f} {r / bare:>8.2f}")


if __name__ == "__main__":
    main()
