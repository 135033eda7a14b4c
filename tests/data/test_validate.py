"""validate(): one case per finding kind, a clean dataset, determinism, JSON shape."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from detops.data.dataset import Category, Dataset
from detops.data.validate import SEVERITY, Finding, ValidationReport, validate
from detops.errors import ValidationFailed

W, H = 96, 64  # every generated image


def make_dataset(root: Path, n_images: int = 3, seed: int = 0) -> Dataset:
    """``n_images`` distinct textured JPEGs, one in-bounds box each, categories a/b/c."""
    rng = np.random.default_rng(seed)
    ds = Dataset(categories=[Category(i, n) for i, n in enumerate("abc")], root=root)
    for i in range(n_images):
        pixels = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((W, H), Image.Resampling.NEAREST).save(
            root / f"img{i}.jpg", quality=90)
        img = ds.add_image(f"img{i}.jpg", W, H)
        ds.add_annotation(img.id, (10.0, 5.0, 50.0, 40.0), i % 3)
    return ds


def kinds(report: ValidationReport) -> list[tuple[str, str]]:
    return [(f.kind, f.record) for f in report.findings]


# -- one mutation per finding kind ----------------------------------------------------------
def _delete(ds: Dataset, root: Path) -> None:
    (root / "img1.jpg").unlink()


def _truncate(ds: Dataset, root: Path) -> None:
    p = root / "img1.jpg"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # header intact, scan data cut: only load() fails


def _garbage(ds: Dataset, root: Path) -> None:
    (root / "img1.jpg").write_bytes(b"this is not a jpeg at all" * 40)


def _wrong_size(ds: Dataset, root: Path) -> None:
    ds.images[1].width = W + 1


def _exif_rotated(ds: Dataset, root: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(root / "img1.jpg") as im:
        im.load()
        im.save(root / "img1.jpg", exif=exif)


def _box_outside(ds: Dataset, root: Path) -> None:
    ds.annotations[1].box = (10.0, 5.0, W + 0.5, 40.0)


def _box_within_tolerance(ds: Dataset, root: Path) -> None:
    ds.annotations[1].box = (-5e-4, 0.0, W + 5e-4, H + 5e-4)


def _zero_width(ds: Dataset, root: Path) -> None:
    ds.annotations[1].box = (20.0, 5.0, 20.0, 40.0)


def _nan_box(ds: Dataset, root: Path) -> None:
    ds.annotations[1].box = (float("nan"), 5.0, 20.0, float("inf"))


def _category_out_of_range(ds: Dataset, root: Path) -> None:
    ds.annotations[1].category_id = 3


def _lenient_unknown(ds: Dataset, root: Path) -> None:
    ds.annotations[1].category_id = -1
    ds.annotations[1].attributes["source_category"] = "zebra"


def _duplicate_other_labels(ds: Dataset, root: Path) -> None:
    shutil.copy(root / "img0.jpg", root / "copy.jpg")
    img = ds.add_image("copy.jpg", W, H)
    ds.add_annotation(img.id, (1.0, 1.0, 9.0, 9.0), 2)


def _duplicate_same_labels(ds: Dataset, root: Path) -> None:
    shutil.copy(root / "img0.jpg", root / "copy.jpg")
    img = ds.add_image("copy.jpg", W, H)
    ds.add_annotation(img.id, (10.0, 5.0, 50.0, 40.0), 0)  # img0's label, as float noise aside
    ds.annotations[-1].box = (10.0 + 1e-9, 5.0, 50.0, 40.0)


def _no_labels(ds: Dataset, root: Path) -> None:
    ds.annotations = [a for a in ds.annotations if a.image_id != 1]


def _orphan(ds: Dataset, root: Path) -> None:
    ds.add_annotation(99, (1.0, 1.0, 5.0, 5.0), 0)


Case = tuple[Callable[[Dataset, Path], None], list[tuple[str, str]], str]

CASES: dict[str, Case] = {
    # file gone from disk
    "missing": (_delete, [("missing_image", "image 1")], "file not found"),
    # a real JPEG cut in half: opens (header fine), fails only on full decode
    "truncated_jpeg": (_truncate, [("unreadable_image", "image 1")], "truncated"),
    # bytes that are no image at all, with a .jpg name
    "garbage_bytes": (_garbage, [("unreadable_image", "image 1")], "cannot identify"),
    # record says 97 px wide, file is 96
    "size_mismatch": (_wrong_size, [("size_mismatch", "image 1")], "declared 97x64"),
    # EXIF Orientation=6: viewers rotate, boxes are on stored pixels
    "exif_rotated": (_exif_rotated, [("exif_rotated", "image 1")], "Orientation=6"),
    # x2 half a pixel past the right edge
    "out_of_bounds": (_box_outside, [("box_out_of_bounds", "annotation 1 (image 1)")],
                      "x2=96.5 is outside the image (96x64)"),
    # float noise below 1e-3 px is not a finding
    "within_tolerance": (_box_within_tolerance, [], ""),
    # x1 == x2
    "zero_width": (_zero_width, [("degenerate_box", "annotation 1 (image 1)")],
                   "width x2-x1=0"),
    # NaN and inf coordinates
    "nan_inf": (_nan_box, [("degenerate_box", "annotation 1 (image 1)")], "x1=nan, y2=inf"),
    # id 3 with categories 0..2
    "unknown_id": (_category_out_of_range, [("unknown_category", "annotation 1 (image 1)")],
                   "category_id 3 is not an index into the categories (0..2)"),
    # loader's lenient mode: -1 plus the source's original id
    "unknown_source": (_lenient_unknown, [("unknown_category", "annotation 1 (image 1)")],
                       "'zebra'"),
    # same bytes as image 0, different labels
    "dup_conflict": (_duplicate_other_labels, [("duplicate_conflict", "image 3")],
                     "same bytes as image 0"),
    # same bytes as image 0, same labels (up to float noise)
    "dup_same": (_duplicate_same_labels, [("duplicate_image", "image 3")],
                 "same bytes as image 0"),
    # image with no box
    "no_labels": (_no_labels, [("no_labels", "image 1")], "no annotations"),
    # annotation pointing at an image id the dataset does not have
    "orphan": (_orphan, [("orphan_annotation", "annotation 3 (image 99)")], "image_id 99"),
}


@pytest.mark.parametrize("mutate, expected, text", CASES.values(), ids=CASES.keys())
def test_each_kind(tmp_path: Path, mutate: Callable[[Dataset, Path], None],
                   expected: list[tuple[str, str]], text: str) -> None:
    ds = make_dataset(tmp_path)
    mutate(ds, tmp_path)
    report = validate(ds, workers=2)
    assert kinds(report) == expected
    for f in report.findings:
        assert text in f.message
        assert f.severity == SEVERITY[f.kind]
        assert f.file == ("" if f.kind == "orphan_annotation" else ds.images[
            int(f.record.split("image ")[-1].rstrip(")"))].file)
    assert report.ok == (not any(SEVERITY[k] == "error" for k, _ in expected))


def test_every_kind_has_a_case() -> None:
    covered = {kind for _, expected, _ in CASES.values() for kind, _ in expected}
    assert covered == set(SEVERITY)


def test_clean_dataset_has_no_findings(tmp_path: Path) -> None:
    report = validate(make_dataset(tmp_path, n_images=5))
    assert report.findings == [] and report.ok
    assert report.counts() == {"images": 5, "annotations": 5, "errors": 0, "warnings": 0,
                               "by_kind": {}}


def _broken(root: Path) -> Dataset:
    """Twelve images with problems spread over them, listed in the order a report gives them."""
    ds = make_dataset(root, n_images=12)
    (root / "img1.jpg").unlink()
    ds.images[2].height = 65
    ds.annotations[3].box = (-3.0, 0.0, W + 2.0, 10.0)
    ds.annotations[3].category_id = 9
    ds.annotations[5].box = (5.0, 5.0, 5.0, float("nan"))
    ds.annotations = [a for a in ds.annotations if a.image_id != 6]
    (root / "img7.jpg").write_bytes(b"junk")
    orphan = ds.add_annotation(99, (1.0, 1.0, 5.0, 5.0), 0)
    _duplicate_other_labels(ds, root)  # image 12 = image 0's bytes
    ds.info["expected"] = [
        ("missing_image", "image 1"),
        ("size_mismatch", "image 2"),
        ("box_out_of_bounds", "annotation 3 (image 3)"),
        ("unknown_category", "annotation 3 (image 3)"),
        ("degenerate_box", "annotation 5 (image 5)"),
        ("no_labels", "image 6"),
        ("unreadable_image", "image 7"),
        ("duplicate_conflict", "image 12"),
        ("orphan_annotation", f"annotation {orphan.id} (image 99)"),
    ]
    return ds


def test_deterministic_and_sorted(tmp_path: Path) -> None:
    ds = _broken(tmp_path)
    runs = [validate(ds, workers=w).to_dict() for w in (1, 2, 4, 0)]
    assert all(r == runs[0] for r in runs)
    assert kinds(validate(ds, workers=3)) == ds.info["expected"]
    msg = validate(ds).findings[2].message
    assert msg == "x1=-3, x2=98 are outside the image (96x64)"


def test_json_shape(tmp_path: Path) -> None:
    report = validate(_broken(tmp_path), workers=2)
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"findings", "counts"}
    for f in d["findings"]:
        assert set(f) == {"kind", "file", "record", "message", "severity"}
        assert f["severity"] in ("error", "warning")
    assert d["counts"]["errors"] == len(report.errors) == 8
    assert d["counts"]["warnings"] == len(report.warnings) == 1
    assert sum(d["counts"]["by_kind"].values()) == len(d["findings"])
    assert Finding(**d["findings"][0]) == report.findings[0]


def test_raise_if_errors(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    _no_labels(ds, tmp_path)
    validate(ds).raise_if_errors()  # warnings only
    _delete(ds, tmp_path)
    with pytest.raises(ValidationFailed, match=r"img1\.jpg \[image 1\] missing_image"):
        validate(ds).raise_if_errors()


def test_given_sha256_is_trusted_and_not_recomputed(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset(tmp_path)
    for img in ds.images:
        img.sha256 = "same-hash"  # claim all three are one image: proves the value is used
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    _truncate(ds, tmp_path)  # decoding still happens
    found = kinds(validate(ds, workers=2))
    assert calls == []
    assert found == [("unreadable_image", "image 1"), ("duplicate_conflict", "image 1"),
                     ("duplicate_conflict", "image 2")]


def test_truncation_caught_even_if_caller_allows_truncated_images(tmp_path: Path,
                                                                  monkeypatch:
                                                                  pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    ds = make_dataset(tmp_path)
    _truncate(ds, tmp_path)
    assert kinds(validate(ds, workers=2)) == [("unreadable_image", "image 1")]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_exif_size_swap_is_explained(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    _exif_rotated(ds, tmp_path)
    ds.images[1].width, ds.images[1].height = H, W  # size of the rotated view
    report = validate(ds)
    assert kinds(report) == [("size_mismatch", "image 1"), ("exif_rotated", "image 1")]
    assert "EXIF-rotated view" in report.findings[0].message


def test_progress_reports_every_image(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_images=40)
    seen: list[tuple[int, int]] = []
    validate(ds, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_negative_workers_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        validate(make_dataset(tmp_path, n_images=1), workers=-1)
