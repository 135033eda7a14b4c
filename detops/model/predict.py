"""Batch prediction over image files through the one runtime.

Decoding and preprocessing of the next batch run in a background thread while ONNX Runtime
works on the current one (both release the GIL), so the model stays busy.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detops.model.detections import Detections

Progress = Callable[[int, int], None]


def _batches(
    runtime: Any, paths: Sequence[Path], batch: int, depth: int = 2
) -> Iterator[tuple[int, np.ndarray, list[Any], BaseException | None]]:
    """Yield (start, preprocessed batch, transforms, error) with decoding one batch ahead."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        for start in range(0, len(paths), batch):
            if stop.is_set():
                return
            try:
                images = [_decode(runtime, Path(p)) for p in paths[start : start + batch]]
                arr, transforms = runtime.preprocess(images)
                q.put((start, arr, transforms, None))
            except BaseException as exc:  # reported in the consumer, naming the batch
                q.put((start, None, None, exc))
                return
        q.put(None)

    worker = threading.Thread(target=produce, name="detops-predict-decode", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            yield item
            if item[3] is not None:
                return
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _decode(runtime: Any, path: Path) -> np.ndarray:
    from detops.errors import ImageDecodeError

    try:
        return runtime.decode_image(path.read_bytes())
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc


def predict_files(
    runtime: Any,
    paths: Sequence[str | Path],
    *,
    batch: int = 8,
    score_threshold: float | None = None,
    progress: Progress | None = None,
) -> list[Detections]:
    """Detections for each image file, in order."""
    files = [Path(p) for p in paths]
    out: list[Detections] = []
    # a graph exported with a static batch size takes at most that many images per run
    step = max(1, min(batch, runtime.max_batch or batch))
    for _start, arr, transforms, error in _batches(runtime, files, step):
        if error is not None:
            raise error  # an ImageDecodeError already names its file
        if runtime.max_batch is not None and len(transforms) < runtime.max_batch:
            fill = np.zeros((runtime.max_batch - len(transforms), *arr.shape[1:]), np.float32)
            arr = np.concatenate([arr, fill])
        out.extend(
            runtime.postprocess(runtime.infer(arr), transforms, score_threshold=score_threshold)
        )
        if progress:
            progress(len(out), len(files))
    return out


def to_coco_results(
    detections: Sequence[Detections], image_ids: Sequence[int], *, category_offset: int = 1
) -> list[dict[str, Any]]:
    """COCO results format: ``{image_id, category_id, bbox [x, y, w, h], score}``.

    ``category_offset`` turns the runtime's 0-based labels into COCO category ids (our COCO
    writer numbers categories from 1).
    """
    results: list[dict[str, Any]] = []
    for dets, image_id in zip(detections, image_ids, strict=True):
        boxes = dets.boxes.astype(np.float64)
        for (x1, y1, x2, y2), score, label in zip(boxes, dets.scores, dets.labels, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label) + category_offset,
                    "bbox": [
                        round(float(x1), 3),
                        round(float(y1), 3),
                        round(float(x2 - x1), 3),
                        round(float(y2 - y1), 3),
                    ],
                    "score": round(float(score), 5),
                }
            )
    return results
