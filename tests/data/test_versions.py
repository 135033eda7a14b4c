"""Dataset versions: content identity, stored once, stable splits, diff, failed adds
store nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from detops.config import SplitSettings
from detops.data.dataset import Category, Dataset
from detops.data.versions import (
    add_dataset,
    diff_versions,
    get_version,
    list_versions,
    load_version,
    split_for,
)
from detops.errors import DatasetNotFound, FormatError, InvalidReference
from detops.store.schema import dataset_versions, file_cache
from detops.workspace import Workspace, init_workspace


def make_images(
    folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (40, 30)
) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def make_dataset(folder: Path, n_images: int = 5, seed: int = 0, write: bool = True) -> Dataset:
    paths = (
        make_images(folder, n_images, seed)
        if write
        else [folder / f"img{i:03d}.png" for i in range(n_images)]
    )
    ds = Dataset(categories=[Category(0, "a"), Category(1, "b")], root=folder)
    for i, p in enumerate(paths):
        img = ds.add_image(p.name, 40, 30)
        ds.add_annotation(img.id, (1 + i, 2, 10 + i, 12), i % 2)
    return ds


@pytest.fixture()
def ws(tmp_path):
    w = Workspace(init_workspace(tmp_path / "ws"))
    yield w
    w.close()


def blobs(ws: Workspace) -> set[Path]:
    return {p for p in ws.artifacts.root.rglob("*") if p.is_file()}


def test_add_registers_v1_and_identical_content_returns_it(ws, tmp_path):
    v1 = add_dataset(ws, "shapes", make_dataset(tmp_path / "src"))
    assert (v1.ref, v1.created, v1.n_images, v1.n_annotations) == ("shapes@v1", True, 5, 5)
    n_blobs = len(blobs(ws))
    assert n_blobs == 5 + 1  # five images and one manifest
    again = add_dataset(ws, "shapes", make_dataset(tmp_path / "src"))
    assert (again.ref, again.created, again.digest) == ("shapes@v1", False, v1.digest)
    assert len(blobs(ws)) == n_blobs


def test_identity_ignores_file_names_but_not_labels(ws, tmp_path):
    v1 = add_dataset(ws, "d", make_dataset(tmp_path / "src"))
    renamed = make_dataset(tmp_path / "src")
    for img in renamed.images:
        (tmp_path / "src" / img.file).rename(tmp_path / "src" / ("x" + img.file))
        img.file = "x" + img.file
    assert add_dataset(ws, "d", renamed).ref == v1.ref
    relabelled = make_dataset(tmp_path / "src2")
    relabelled.annotations[0].category_id = 1
    v2 = add_dataset(ws, "d", relabelled)
    assert (v2.ref, v2.created) == ("d@v2", True)
    assert len(blobs(ws)) == 5 + 2  # images are shared; one more manifest


def test_stored_version_round_trips(ws, tmp_path):
    ds = make_dataset(tmp_path / "src")
    ds.images[0].tags = {"source": "cam1"}
    ds.annotations[0].annotator = "A"
    dv = add_dataset(ws, "d", ds)
    back = load_version(ws, "d@v1")
    assert back.category_names == ["a", "b"]
    assert len(back.images) == 5 and len(back.annotations) == 5
    by_file = {img.file: img for img in back.images}
    assert by_file["img000.png"].tags == {"source": "cam1"}
    for img in back.images:  # bytes come from the artifact store, byte-identical
        assert back.image_path(img).read_bytes() == (tmp_path / "src" / img.file).read_bytes()
    assert {a.annotator for a in back.annotations} == {"A", None}
    assert get_version(ws, "d").digest == dv.digest  # bare name = latest


def test_splits_come_from_content_and_do_not_move(ws, tmp_path):
    small = make_dataset(tmp_path / "src", n_images=20)
    add_dataset(ws, "d", small)
    before = {img.sha256: img.split for img in load_version(ws, "d@v1").images}
    bigger = make_dataset(tmp_path / "src", n_images=20, write=False)
    for p in make_images(tmp_path / "more", 20, seed=1):
        bigger.add_image(str(p), 40, 30)
    add_dataset(ws, "d", bigger)
    after = {img.sha256: img.split for img in load_version(ws, "d@v2").images}
    assert len(after) == 40
    assert all(after[h] == s for h, s in before.items())
    for h, s in after.items():
        assert s == split_for(h, ws.settings.data.split)


def test_split_ratios_are_respected():
    import hashlib

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    ratios = SplitSettings(train=0.7, val=0.2, test=0.1)
    splits = [split_for(h, ratios) for h in hashes]
    from scipy.stats import chisquare

    observed = [splits.count(s) for s in ("train", "val", "test")]
    assert chisquare(observed, [14000, 4000, 2000]).pvalue > 1e-3


def test_unchanged_files_are_not_rehashed(ws, tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "src")
    add_dataset(ws, "d", ds)
    with ws.db.read() as conn:
        assert len(conn.execute(select(file_cache)).all()) == 5
    import detops.data.versions as versions

    calls: list[Path] = []
    real = versions._scan_one
    monkeypatch.setattr(versions, "_scan_one", lambda p: calls.append(p) or real(p))
    again = make_dataset(tmp_path / "src", write=False)
    add_dataset(ws, "d", again)
    assert calls == []  # size and mtime unchanged: served from the cache
    (tmp_path / "src" / "img002.png").write_bytes((tmp_path / "src" / "img003.png").read_bytes())
    changed = add_dataset(ws, "d", make_dataset(tmp_path / "src", write=False))
    assert calls == [tmp_path / "src" / "img002.png"]  # only the touched file is read again
    assert changed.ref == "d@v2"


def test_out_of_bounds_and_empty_boxes_are_clipped_or_dropped_with_a_report(ws, tmp_path):
    ds = make_dataset(tmp_path / "src", n_images=2)
    ds.add_annotation(0, (30, 20, 45, 35), 0)  # crosses the 40x30 image: clipped
    ds.add_annotation(1, (5, 5, 5, 9), 1)  # zero width: dropped
    ds.add_annotation(1, (float("nan"), 1, 2, 3), 1)  # not finite: dropped
    dv = add_dataset(ws, "d", ds)
    assert dv.loss_report["counts"] == {"box_clipped": 1, "box_dropped": 2}
    back = load_version(ws, dv.ref)
    # the two original boxes unchanged, the crossing one clipped to the 40x30 image
    assert sorted(tuple(a.box) for a in back.annotations) == [
        (1.0, 2.0, 10.0, 12.0), (2.0, 2.0, 11.0, 12.0), (30.0, 20.0, 40.0, 30.0)]


def test_failed_add_stores_nothing(ws, tmp_path):
    ds = make_dataset(tmp_path / "src")
    (tmp_path / "src" / ds.images[3].file).unlink()
    with pytest.raises(FormatError, match="img003.png.*does not exist"):
        add_dataset(ws, "d", ds)
    assert blobs(ws) == set()
    with ws.db.read() as conn:
        assert conn.execute(select(dataset_versions)).all() == []


def test_failure_while_recording_removes_new_blobs(ws, tmp_path, monkeypatch):
    import detops.data.versions as versions

    def boom(*a, **k):
        raise RuntimeError("database went away")

    monkeypatch.setattr(versions, "utcnow", boom)
    with pytest.raises(RuntimeError):
        add_dataset(ws, "d", make_dataset(tmp_path / "src"))
    assert blobs(ws) == set()
    assert list_versions(ws) == []


def test_corrupt_image_header_is_a_format_error(ws, tmp_path):
    ds = make_dataset(tmp_path / "src")
    (tmp_path / "src" / ds.images[1].file).write_bytes(b"not an image")
    with pytest.raises(FormatError, match="img001.png.*cannot read image header"):
        add_dataset(ws, "d", ds)


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("nope@v1", DatasetNotFound, "dataset nope@v1 not found"),
        ("d@v9", DatasetNotFound, "known: d@v1"),
        ("d@", InvalidReference, "expected NAME@vN"),
        ("bad name", InvalidReference, "is not valid"),
    ],
)
def test_bad_references(ws, tmp_path, ref, error, message):
    add_dataset(ws, "d", make_dataset(tmp_path / "src"))
    with pytest.raises(error, match=message):
        get_version(ws, ref)


def test_diff_reports_images_and_labels(ws, tmp_path):
    a = make_dataset(tmp_path / "src", n_images=4)
    b = make_dataset(tmp_path / "src", n_images=4)
    b.images = b.images[1:]  # image 0 removed
    b.annotations = [x for x in b.annotations if x.image_id != 0]
    b.annotations[0].category_id = 0  # relabel on image 1 (was "b")
    extra = make_images(tmp_path / "new", 1, seed=7)[0]
    new = b.add_image(str(extra), 40, 30)
    b.add_annotation(new.id, (1, 1, 5, 5), 0)
    va, vb = add_dataset(ws, "d", a), add_dataset(ws, "d", b)
    d = diff_versions(load_version(ws, va.ref), load_version(ws, vb.ref))
    assert d["summary"] == {"added": 1, "removed": 1, "changed": 1, "unchanged": 2}
    assert d["images_removed"] == ["img000.png"]
    (changed,) = d["images_changed"]
    assert changed["image"] == "img001.png"
    assert [x["label"] for x in changed["labels_added"]] == ["a"]
    assert [x["label"] for x in changed["labels_removed"]] == ["b"]
    json.dumps(d)  # JSON-serialisable as printed by --json
