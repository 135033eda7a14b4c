"""compute_stats / format_stats / plot_stats, checked against numpy oracles on the same images."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detops.data.dataset import Category, Dataset
from detops.data.stats import LARGE_AREA, SMALL_AREA, compute_stats, format_stats, plot_stats

PCTS = (0, 5, 25, 50, 75, 95, 100)


def two_tone(root: Path, name: str, w: int, h: int, left: int, right: int) -> Path:
    """Left half ``left``, right half ``right``: the split falls on the reduce-grid, so the
    downscaled view has exactly the full-resolution mean and std."""
    a = np.full((h, w), right, dtype=np.uint8)
    a[:, : w // 2] = left
    p = root / name
    Image.fromarray(a).convert("RGB").save(p)
    return p


def gray_oracle(p: Path) -> tuple[float, float]:
    a = np.asarray(Image.open(p).convert("L"), dtype=np.float64)  # full resolution
    return float(a.mean()), float(a.std())


def make_dataset(root: Path, n_images: int = 24, seed: int = 0) -> Dataset:
    """PNG and JPEG two-tone images of a few sizes, random boxes, splits and annotators."""
    rng = np.random.default_rng(seed)
    ds = Dataset(categories=[Category(i, n) for i, n in enumerate(["cat", "dog", "eel"])],
                 root=root, info={"name": "oracle-set"})
    sizes = [(128, 128), (256, 192), (64, 96), (512, 256)]
    for i in range(n_images):
        w, h = sizes[i % len(sizes)]
        ext = "png" if i % 2 else "jpg"
        left, right = (int(v) for v in rng.integers(0, 256, 2))
        two_tone(root, f"{i}.{ext}", w, h, left, right)
        img = ds.add_image(f"{i}.{ext}", w, h, split="val" if i % 4 == 0 else "train")
        for _ in range(int(rng.integers(0, 6))):
            bw, bh = rng.uniform(1, w / 2), rng.uniform(1, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            ds.add_annotation(img.id, (x, y, x + bw, y + bh), int(rng.integers(0, 3)),
                              annotator=["ann", "bob", None][int(rng.integers(0, 3))])
    return ds


@pytest.fixture
def ds(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path)


@pytest.mark.parametrize(
    "value, ext",
    [
        (100, "png"),  # lossless: exact
        (100, "jpg"),  # a flat JPEG decodes back to its value
        (0, "png"),  # black
        (255, "jpg"),  # white, DCT-scaled decode of a 640 px image
    ],
)
def test_uniform_gray_brightness(tmp_path: Path, value: int, ext: str) -> None:
    Image.new("L", (640, 480), value).save(tmp_path / f"g.{ext}")
    ds = Dataset(root=tmp_path)
    ds.add_image(f"g.{ext}", 640, 480)
    s = compute_stats(ds, workers=1)
    assert s["brightness"]["mean"] == pytest.approx(value, abs=0.5)
    assert s["contrast"]["mean"] == pytest.approx(0, abs=0.5)


def test_brightness_and_contrast_match_numpy(ds: Dataset, tmp_path: Path) -> None:
    s = compute_stats(ds, workers=2)
    oracle = np.array([gray_oracle(ds.image_path(img)) for img in ds.images])
    tol = 1.5  # JPEG ringing at the edge between the two halves
    for key, col, edges in (("brightness", 0, np.arange(0, 257, 8)),
                            ("contrast", 1, np.arange(0, 129, 4))):
        got = s[key]
        assert got["n"] == len(ds.images)
        assert got["mean"] == pytest.approx(oracle[:, col].mean(), abs=tol)
        want = np.percentile(oracle[:, col], PCTS)
        assert [got["percentiles"][f"p{p}"] for p in PCTS] == pytest.approx(want, abs=tol)
        assert got["histogram"]["edges"] == edges.tolist()
        assert sum(got["histogram"]["counts"]) == len(ds.images)


def test_png_view_is_exact_for_grid_aligned_images(tmp_path: Path) -> None:
    ds = Dataset(root=tmp_path)
    for i, (w, h) in enumerate([(512, 256), (256, 256), (64, 64)]):
        two_tone(tmp_path, f"{i}.png", w, h, 10 * i, 200)
        ds.add_image(f"{i}.png", w, h)
    s = compute_stats(ds, workers=1)
    oracle = [gray_oracle(ds.image_path(img)) for img in ds.images]
    assert s["brightness"]["percentiles"]["p50"] == pytest.approx(
        float(np.median([m for m, _ in oracle])), abs=1e-3)
    assert s["contrast"]["percentiles"]["p100"] == pytest.approx(
        max(sd for _, sd in oracle), abs=1e-3)


def test_counts_classes_splits_annotators(ds: Dataset) -> None:
    s = compute_stats(ds, workers=2)
    c = s["counts"]
    assert (c["images"], c["annotations"], c["categories"]) == (
        len(ds.images), len(ds.annotations), 3)
    assert c["annotators"] == len({a.annotator for a in ds.annotations} - {None})
    want = Counter(ds.categories[a.category_id].name for a in ds.annotations)
    assert s["classes"] == {n: want.get(n, 0) for n in ("cat", "dog", "eel")}
    assert list(s["classes"].values()) == sorted(s["classes"].values(), reverse=True)

    per_split = Counter(img.split for img in ds.images)
    assert {k: v["images"] for k, v in s["splits"].items()} == dict(per_split)
    split_of = {img.id: img.split for img in ds.images}
    assert {k: v["annotations"] for k, v in s["splits"].items()} == {
        k: sum(1 for a in ds.annotations if split_of[a.image_id] == k) for k in per_split}

    by_annotator = Counter(a.annotator or "unattributed" for a in ds.annotations)
    assert {k: v["annotations"] for k, v in s["annotators"].items()} == dict(by_annotator)


def test_box_distributions_match_numpy(ds: Dataset) -> None:
    s = compute_stats(ds, workers=2)
    b = np.array([a.box for a in ds.annotations])
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    for key, values in (("box_width", w), ("box_height", h), ("box_aspect", w / h)):
        got = [s[key]["percentiles"][f"p{p}"] for p in PCTS]
        assert got == pytest.approx(np.percentile(values, PCTS), abs=1e-3)
    per_image = np.array([sum(1 for a in ds.annotations if a.image_id == img.id)
                          for img in ds.images])
    bpi = s["boxes_per_image"]
    assert bpi["mean"] == pytest.approx(per_image.mean(), abs=1e-3)
    assert bpi["median"] == pytest.approx(np.median(per_image))
    assert bpi["max"] == per_image.max()
    edges, counts = bpi["histogram"]["edges"], bpi["histogram"]["counts"]
    assert counts == [int(((per_image >= lo) & (per_image < hi)).sum())
                      for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    assert s["counts"]["images_without_labels"] == int((per_image == 0).sum())
    assert sum(map(sum, s["box_size_hist2d"]["counts"])) == len(ds.annotations)
    sizes = Counter((img.width, img.height) for img in ds.images)
    assert {(d["width"], d["height"]): d["count"] for d in s["image_sizes"]} == dict(sizes)


@pytest.mark.parametrize(
    "w, h, bucket",
    [
        (31.99, 32, "small"),  # area just under 32**2
        (32, 32, "medium"),  # exactly 32**2: medium (COCO: small is area < 32**2)
        (1024, 1, "medium"),  # thin boxes are bucketed by area, not by side
        (95.99, 96, "medium"),  # just under 96**2
        (96, 96, "large"),  # exactly 96**2: large
        (0, 10, "small"),  # degenerate: area 0
    ],
)
def test_size_bucket_boundaries(w: float, h: float, bucket: str) -> None:
    assert (SMALL_AREA, LARGE_AREA) == (32**2, 96**2)
    ds = Dataset(categories=[Category(0, "x")])
    img = ds.add_image("/nonexistent.png", 2000, 2000)
    ds.add_annotation(img.id, (5, 5, 5 + w, 5 + h), 0)
    sb = compute_stats(ds, workers=1)["size_buckets"]
    assert {k: sb[k] for k in ("small", "medium", "large")} == {
        k: int(k == bucket) for k in ("small", "medium", "large")}


def test_missing_and_unreadable_are_counted(ds: Dataset, tmp_path: Path) -> None:
    (tmp_path / "0.jpg").unlink()
    p = tmp_path / "2.jpg"
    p.write_bytes(p.read_bytes()[:200])  # truncated
    (tmp_path / "3.png").write_bytes(b"not a png")
    ds.annotations[0].box = (float("nan"), 0, 1, 1)
    ds.annotations[1].category_id = 7
    s = compute_stats(ds, workers=2)
    assert (s["counts"]["unreadable"], s["counts"]["missing"]) == (3, 1)
    assert s["brightness"]["n"] == len(ds.images) - 3
    assert s["counts"]["non_finite_boxes"] == 1
    assert s["counts"]["unknown_category"] == 1
    assert "3 unreadable" in format_stats(s)


def test_json_serialisable_and_deterministic(ds: Dataset) -> None:
    a = compute_stats(ds, workers=1)
    b = compute_stats(ds, workers=3)
    assert json.dumps(a) == json.dumps(b)
    assert json.loads(json.dumps(a)) == a


def test_empty_dataset() -> None:
    s = compute_stats(Dataset(), workers=1)
    json.dumps(s)
    assert s["counts"]["images"] == 0
    assert s["brightness"]["percentiles"]["p50"] is None
    assert "0 images" in format_stats(s)


def test_format_stats(ds: Dataset) -> None:
    text = format_stats(compute_stats(ds, workers=2))
    first = text.splitlines()[0]
    assert first.startswith(f"oracle-set: {len(ds.images)} images, {len(ds.annotations)} boxes")
    for part in ("classes:", "box sizes (by box area)", "brightness", "splits:"):
        assert part in text


@pytest.mark.parametrize("n_classes", [3, 45])  # few classes; a long tail folded into one bar
def test_plot_writes_png(ds: Dataset, tmp_path: Path, n_classes: int) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    for i in range(3, n_classes):
        ds.categories.append(Category(i, f"class number {i} with a long name"))
        ds.add_annotation(ds.images[0].id, (1, 1, 2 + i, 3 + i), i)
    out = tmp_path / "stats.png"
    plot_stats(compute_stats(ds, workers=2), out)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (1600, 950)
    assert matplotlib.get_backend() == backend  # no process-wide backend switch


def test_plot_empty_stats(tmp_path: Path) -> None:
    plot_stats(compute_stats(Dataset(), workers=1), tmp_path / "empty.png")
    with Image.open(tmp_path / "empty.png") as im:
        assert im.size == (1600, 950)


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, detops.data.stats, detops.data.validate; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
