"""Benchmark: ``data add`` + ``data validate`` of a 10,000-image COCO dataset (320x320 JPEG).

Target (issue 2): add + validate <= 30 s together on 2 cores; re-adding unchanged files is
served from the hash cache. Baseline in the same run: one thread reading, hashing and fully
decoding every file (what a naive tool does).

    python bench/data_bench.py [--n 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _make(args: tuple[Path, int, int]) -> list[dict]:
    folder, start, stop = args
    anns = []
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((320, 320), Image.BILINEAR)
        draw = ImageDraw.Draw(im)
        for k in range(int(rng.integers(1, 9))):
            x, y = (float(v) for v in rng.uniform(0, 260, 2))
            w, h = (float(v) for v in rng.uniform(12, 60, 2))
            draw.rectangle(
                [x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3))
            )
            anns.append({"image_id": i + 1, "bbox": [x, y, w, h], "category_id": 1 + k % 3})
        im.save(folder / f"{i:06d}.jpg", quality=90)
    return anns


def make_dataset(root: Path, n: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    chunks = [(images, s, min(n, s + 500)) for s in range(0, n, 500)]
    anns: list[dict] = []
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for part in pool.map(_make, chunks):
            anns.extend(part)
    for j, a in enumerate(anns):
        a.update(id=j + 1, area=a["bbox"][2] * a["bbox"][3], iscrowd=0)
    coco = {
        "images": [
            {"id": i + 1, "file_name": f"{i:06d}.jpg", "width": 320, "height": 320}
            for i in range(n)
        ],
        "annotations": anns,
        "categories": [{"id": k, "name": name} for k, name in enumerate(["a", "b", "c"], 1)],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def baseline(folder: Path) -> float:
    t = time.perf_counter()
    for p in sorted(folder.glob("*.jpg")):
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(p) as im:
            im.load()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated data here")
    args = ap.parse_args()

    from detops.data.formats import load_coco
    from detops.data.validate import validate
    from detops.data.versions import add_dataset, load_version
    from detops.workspace import Workspace, init_workspace

    tmp = Path(tempfile.mkdtemp(prefix="detops-bench-"))
    try:
        t = time.perf_counter()
        ann = make_dataset(tmp / "src", args.n)
        gen_s = time.perf_counter() - t
        ws = Workspace(init_workspace(tmp / "ws"))

        base_s = baseline(tmp / "src" / "images")

        t = time.perf_counter()
        dv = add_dataset(ws, "bench", load_coco(ann), source=str(ann), source_format="coco")
        add_s = time.perf_counter() - t

        t = time.perf_counter()
        report = validate(load_version(ws, dv))
        val_s = time.perf_counter() - t

        t = time.perf_counter()
        again = add_dataset(ws, "bench", load_coco(ann))
        readd_s = time.perf_counter() - t
        assert not again.created and again.ref == dv.ref

        rows = [
            ("baseline: 1 thread read+hash+decode", base_s, 1.0),
            ("data add (hash, header, store)", add_s, add_s / base_s),
            ("data validate (full decode)", val_s, val_s / base_s),
            ("add + validate", add_s + val_s, (add_s + val_s) / base_s),
            ("re-add unchanged (cache)", readd_s, readd_s / base_s),
        ]
        print(
            f"\n{args.n} images 320x320 JPEG, {sum(1 for _ in ws.artifacts.root.rglob('*'))} "
            f"artifact entries, {len(report.findings)} findings, cores={os.cpu_count()} "
            f"(generation {gen_s:.1f}s)"
        )
        print(f"{'step':<40} {'seconds':>8} {'x baseline':>11}")
        for name, s, ratio in rows:
            print(f"{name:<40} {s:>8.2f} {ratio:>11.2f}")
        target = 30.0 * args.n / 10_000
        verdict = "PASS" if add_s + val_s <= target else "FAIL"
        print(f"target: add + validate <= {target:.1f} s -> {add_s + val_s:.2f} s {verdict}")
        ws.close()
    finally:
        if args.keep:
            shutil.move(str(tmp), args.keep)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
