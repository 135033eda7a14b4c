"""COCO / YOLO / VOC import and export: bad input, edge cases, the loss report, round trips."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from detops.data import formats
from detops.data.dataset import Category, Dataset
from detops.data.formats import (
    detect_format,
    load,
    load_coco,
    load_voc,
    load_yolo,
    save,
    save_coco,
    save_voc,
    save_yolo,
)
from detops.errors import DetopsError, FormatError

# -- factories ----------------------------------------------------------------------------------


def write_png(path: Path, width: int, height: int) -> Path:
    """A tiny real image, so loaders that read headers have one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height)).save(path)
    return path


def make_dataset(n_images: int = 4, seed: int = 0, root: Path | None = None) -> Dataset:
    """Random boxes inside random-size images; image 0 has no boxes; PNGs written under root."""
    rng = random.Random(seed)
    ds = Dataset(categories=[Category(0, "cat"), Category(1, "dog house", "animal"),
                             Category(2, "ñandú 鳥")], root=root)
    for i in range(n_images):
        w, h = rng.randint(1, 300), rng.randint(1, 300)
        img = ds.add_image(f"img{i}.png", w, h, split=rng.choice([None, "train", "val"]))
        if root is not None:
            write_png(root / img.file, w, h)
        for _ in range(0 if i == 0 else rng.randint(1, 3)):
            a, b = sorted(rng.uniform(0, w) for _ in range(2))
            c, d = sorted(rng.uniform(0, h) for _ in range(2))
            ds.add_annotation(img.id, (a, c, b + 1e-3, d + 1e-3), rng.randrange(3))
    return ds


def coco_doc() -> dict[str, Any]:
    """A small valid COCO file: arbitrary category ids, an annotation with id 0, a crowd box."""
    return {
        "info": {"description": "tiny"},
        "licenses": [{"id": 1, "name": "CC"}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "sub/b.png", "width": 20, "height": 10},
        ],
        "categories": [
            {"id": 7, "name": "cat", "supercategory": "animal"},
            {"id": 3, "name": "dog house"},
        ],
        "annotations": [
            {"id": 0, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "area": 50,
             "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0.5, 0.25, 4.5, 3],
             "area": 13.5, "iscrowd": 1},
        ],
    }


def write_json(folder: Path, doc: Any) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def make_yolo(root: Path, files: dict[str, Any] | None = None) -> Path:
    """A YOLO folder (names cat, dog; images/a.png 8x4 with one box), then ``files`` applied.

    ``files`` maps a relative path to text, to a ``(w, h)`` image, or to None to delete it.
    """
    base: dict[str, Any] = {
        "data.yaml": "names: [cat, dog]\n",
        "images/a.png": (8, 4),
        "labels/a.txt": "0 0.5 0.5 0.25 0.5\n",
    }
    base.update(files or {})
    for rel, value in sorted(base.items(), key=lambda kv: kv[1] is None):  # deletions last
        path = root / rel
        if value is None:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif isinstance(value, tuple):
            write_png(path, *value)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.write_bytes if isinstance(value, bytes) else path.write_text)(value)
    return root


VOC_XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>{filename}</filename>
  <size><width>{width}</width><height>30</height><depth>3</depth></size>
  <object>
    <name>{name}</name><pose>Left</pose><truncated>1</truncated><difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>2</ymin><xmax>11</xmax><ymax>7</ymax></bndbox>
  </object>
</annotation>
"""


def voc_xml(**kw: Any) -> str:
    values = {"filename": "a.png", "width": 40, "name": "cat", "difficult": 0, "xmin": 1}
    return VOC_XML.format(**{**values, **kw})


def make_voc(root: Path, files: dict[str, str | None] | None = None) -> Path:
    """A VOC folder with Annotations/a.xml (one cat), then ``files`` applied (None deletes)."""
    base: dict[str, str | None] = {"Annotations/a.xml": voc_xml()}
    base.update(files or {})
    for rel, text in sorted(base.items(), key=lambda kv: kv[1] is None):  # deletions last
        path = root / rel
        if text is None:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return root


def boxes_by_name(ds: Dataset) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """Image base name -> [(category name, box)], in annotation order."""
    by_image = ds.annotations_by_image()
    return {
        Path(img.file).name: [(ds.categories[a.category_id].name, a.box)
                              for a in by_image[img.id]]
        for img in ds.images
    }


def assert_same_boxes(a: Dataset, b: Dataset, tol: float = 1e-3) -> None:
    assert a.category_names == b.category_names
    sizes_a = {Path(i.file).name: (i.width, i.height) for i in a.images}
    assert sizes_a == {Path(i.file).name: (i.width, i.height) for i in b.images}
    boxes_a, boxes_b = boxes_by_name(a), boxes_by_name(b)
    assert boxes_a.keys() == boxes_b.keys()
    for name, anns in boxes_a.items():
        assert [c for c, _ in anns] == [c for c, _ in boxes_b[name]], name
        for (_, ba), (_, bb) in zip(anns, boxes_b[name], strict=True):
            assert max(abs(x - y) for x, y in zip(ba, bb, strict=True)) <= tol, (name, ba, bb)


def raises_format_error(fn: Any, file_end: str, record: str | None, problem: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        fn()
    err = info.value
    assert err.file.replace("\\", "/").endswith(file_end), err.file
    assert err.record == record
    assert problem in err.problem, err.problem
    assert err.file in str(err) and problem in str(err)
    return err


# -- COCO: bad input ----------------------------------------------------------------------------
def _set(path: list[Any], value: Any) -> Any:
    def mutate(d: dict[str, Any]) -> None:
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


ANN1 = "annotations[1] (id 5)"


@pytest.mark.parametrize(
    ("mutate", "record", "problem"),
    [
        # the three lists a detection file needs
        (_set(["images"], KeyError), None, "missing the 'images' key"),
        (_set(["categories"], KeyError), None, "missing the 'categories' key"),
        (_set(["images"], {"id": 1}), "images", "'images' must be a list"),
        # images
        (_set(["images", 1, "id"], 1), "images[1] (id 1)", "duplicate image id 1"),
        (_set(["images", 0, "width"], 40.5), "images[0] (id 1)", "width must be an integer"),
        (_set(["images", 0, "width"], "wide"), "images[0] (id 1)", "width must be an integer"),
        (_set(["images", 0, "height"], 0), "images[0] (id 1)", "size must be positive"),
        (_set(["images", 0, "file_name"], KeyError), "images[0] (id 1)", "missing 'file_name'"),
        (_set(["images", 0, "tags"], ["night"]), "images[0] (id 1)", "tags must be an object"),
        (_set(["images", 0], "a.png"), "images[0]", "must be an object"),
        # categories
        (_set(["categories", 1, "id"], 7), "categories[1] (id 7)", "duplicate category id 7"),
        (_set(["categories", 0, "name"], None), "categories[0] (id 7)", "name must be a string"),
        # annotations
        (_set(["annotations", 1, "bbox"], [1, 2, 3]), ANN1, "bbox must be 4 numbers"),
        (_set(["annotations", 1, "bbox"], "1 2 3 4"), ANN1, "bbox must be 4 numbers"),
        (_set(["annotations", 1, "bbox"], [1, "x", 3, 4]), ANN1, "bbox[1] must be a number"),
        (_set(["annotations", 1, "bbox"], [1, True, 3, 4]), ANN1, "bbox[1] must be a number"),
        (_set(["annotations", 1, "area"], "big"), ANN1, "area must be a number"),
        (_set(["annotations", 1, "image_id"], 9), ANN1, "image_id 9 is not in 'images'"),
        (_set(["annotations", 1, "category_id"], 99), ANN1, "category_id 99 is not in"),
        (_set(["annotations", 1, "id"], 0), "annotations[1] (id 0)", "duplicate annotation id 0"),
        (_set(["annotations", 1, "iscrowd"], 2), ANN1, "iscrowd must be 0 or 1"),
        (_set(["annotations", 1, "bbox"], KeyError), ANN1, "missing 'bbox'"),
        (_set(["annotations", 1, "annotator"], 3), ANN1, "annotator must be a string"),
    ],
)
def test_coco_bad_input_names_file_record_and_problem(
    tmp_path: Path, mutate: Any, record: str | None, problem: str
) -> None:
    doc = coco_doc()
    mutate(doc)
    path = write_json(tmp_path, doc)
    raises_format_error(lambda: load_coco(path), "annotations.json", record, problem)


@pytest.mark.parametrize(
    ("text", "record", "problem"),
    [
        ('{"images": [', "line 1, column 13", "broken JSON"),  # truncated file
        ('{\n  "images": [],\n  oops\n}', "line 3, column 3", "broken JSON"),  # bare word
        ("[1, 2]", None, "top level must be an object"),  # a results file, not a dataset
    ],
)
def test_coco_broken_json_reports_line_and_column(
    tmp_path: Path, text: str, record: str | None, problem: str
) -> None:
    path = tmp_path / "annotations.json"
    path.write_text(text)
    raises_format_error(lambda: load_coco(path), "annotations.json", record, problem)


def test_coco_missing_annotation_file(tmp_path: Path) -> None:
    raises_format_error(lambda: load_coco(tmp_path / "nope.json"), "nope.json", None,
                        "annotation file not found")


# -- COCO: what is carried ----------------------------------------------------------------------
def test_coco_load_maps_category_ids_keeps_ids_crowd_and_boxes(tmp_path: Path) -> None:
    ds = load_coco(write_json(tmp_path, coco_doc()))
    assert [(c.id, c.name, c.supercategory) for c in ds.categories] == [
        (0, "cat", "animal"), (1, "dog house", None)]
    assert [(a.id, a.image_id, a.category_id, a.box, a.iscrowd) for a in ds.annotations] == [
        (0, 1, 0, (1.0, 2.0, 11.0, 7.0), False),  # id 0 is valid input
        (5, 2, 1, (0.5, 0.25, 5.0, 3.25), True),
    ]
    assert [(i.id, i.file, i.width, i.height) for i in ds.images] == [
        (1, "a.png", 40, 30), (2, "sub/b.png", 20, 10)]
    assert ds.info == {"info": {"description": "tiny"}, "licenses": [{"id": 1, "name": "CC"}]}
    assert not ds.loss


def test_coco_save_is_read_by_pycocotools_with_ids_from_one(tmp_path: Path) -> None:
    src = load_coco(write_json(tmp_path, coco_doc()))
    out = save_coco(src, tmp_path / "out", copy_images=False)
    oracle = COCO(str(out))
    assert [c["name"] for c in oracle.loadCats(oracle.getCatIds())] == ["cat", "dog house"]
    anns = oracle.loadAnns(oracle.getAnnIds())
    assert [a["id"] for a in anns] == [1, 2]  # pycocotools never matches a ground truth id 0
    assert [a["bbox"] for a in anns] == [[1.0, 2.0, 10.0, 5.0], [0.5, 0.25, 4.5, 3.0]]
    assert [a["category_id"] for a in anns] == [1, 2]
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert [a["area"] for a in anns] == [50.0, 13.5]
    assert sorted(oracle.getImgIds()) == [1, 2]


def test_coco_round_trip_carries_tags_split_annotator_attributes(tmp_path: Path) -> None:
    ds = make_dataset(n_images=3, seed=1, root=tmp_path / "src")
    ds.images[1].tags = {"weather": "rain", "night": True}
    ds.images[1].sha256 = "ab" * 32
    ds.annotations[0].annotator = "ann-1"
    ds.annotations[0].attributes = {"occluded": 1}
    ds.annotations[-1].iscrowd = True
    back = load_coco(save_coco(ds, tmp_path / "out"))
    assert back.root == tmp_path / "out" / "images"
    assert all(back.image_path(i).is_file() for i in back.images)
    assert [(i.file, i.width, i.height, i.tags, i.split, i.sha256) for i in back.images] == [
        (i.file, i.width, i.height, i.tags, i.split, i.sha256) for i in ds.images]
    assert [(a.box, a.category_id, a.annotator, a.iscrowd, a.attributes)
            for a in back.annotations] == [
        (a.box, a.category_id, a.annotator, a.iscrowd, a.attributes) for a in ds.annotations]
    assert not back.loss


@pytest.mark.parametrize(
    ("file_name", "on_disk", "expected_root"),
    [
        ("a.png", "images/a.png", "images"),  # the layout save_coco writes
        ("a.png", "a.png", ""),  # file names relative to the JSON's folder
        ("images/a.png", "images/a.png", ""),  # ... even when they start with images/
        ("a.png", None, "images"),  # no image on disk: images/ as it exists
    ],
)
def test_coco_default_images_root(tmp_path: Path, file_name: str, on_disk: str | None,
                                  expected_root: str) -> None:
    (tmp_path / "images").mkdir()
    if on_disk is not None:
        write_png(tmp_path / on_disk, 40, 30)
    doc = coco_doc()
    doc["images"][0]["file_name"] = file_name
    ds = load_coco(write_json(tmp_path, doc))
    assert ds.root == tmp_path / expected_root
    assert ds.image_path(ds.images[0]).is_file() == (on_disk is not None)


@pytest.mark.parametrize(
    ("src", "relative"),
    [
        ("src", False),  # images outside the output folder: absolute paths
        ("out/pictures", True),  # images inside it (a dataset saved in place): relative paths
    ],
)
def test_coco_save_without_copy_points_at_the_originals(tmp_path: Path, src: str,
                                                        relative: bool) -> None:
    ds = make_dataset(n_images=2, seed=2, root=tmp_path / src)
    ds.info["synth"] = {"seed": 2}
    path = save_coco(ds, tmp_path / "out", copy_images=False)
    assert not (tmp_path / "out" / "images").exists()
    names = [i["file_name"] for i in json.loads(path.read_text())["images"]]
    assert [Path(n).is_absolute() for n in names] == [not relative] * 2
    back = load_coco(path)
    assert [back.image_path(i).resolve() for i in back.images] == [
        (tmp_path / src / i.file).resolve() for i in ds.images]
    assert back.info == {"info": {}, "licenses": [], "synth": {"seed": 2}}


def test_coco_unknown_category_non_strict_keeps_annotation_as_minus_one(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"][1]["category_id"] = 99
    ds = load_coco(write_json(tmp_path, doc), strict=False)
    ann = ds.annotations[1]
    assert (ann.category_id, ann.attributes) == (-1, {"source_category": 99})
    assert [(e.kind, e.record) for e in ds.loss.entries] == [("unknown_category", ANN1)]
    # a writer refuses a box it cannot name
    raises_format_error(lambda: save_coco(ds, tmp_path / "out", copy_images=False), "out",
                        "annotation 5", "category_id -1 is not in the 2 categories")


# -- COCO: the loss report ----------------------------------------------------------------------
POLYGON = [[1, 2, 11, 2, 11, 7]]
RLE = {"counts": "abc", "size": [30, 40]}


@pytest.mark.parametrize(
    ("changes", "kinds"),
    [
        ({}, []),  # area equals w*h
        ({"area": 50.04}, []),  # within 1e-3 relative
        ({"area": 49}, ["area_recomputed"]),  # off by 2 %
        ({"area": 25, "segmentation": POLYGON}, ["segmentation_dropped"]),  # mask area differs
        ({"segmentation": RLE, "iscrowd": 1}, ["segmentation_dropped"]),  # crowd RLE
        ({"area": 49, "segmentation": []}, ["area_recomputed"]),  # empty segmentation is none
        ({"area": 49, "segmentation": [[]]}, ["area_recomputed"]),  # nor is an empty polygon
        ({"keypoints": [1, 2, 2, 3, 4, 2], "num_keypoints": 2}, ["keypoints_dropped"]),
        ({"keypoints": [], "num_keypoints": 0}, []),  # nothing to drop
    ],
)
def test_coco_loss_per_annotation(tmp_path: Path, changes: dict[str, Any], kinds: list[str]
                                  ) -> None:
    doc = coco_doc()
    doc["annotations"][0].update(changes)
    ds = load_coco(write_json(tmp_path, doc))
    assert [e.kind for e in ds.loss.entries] == kinds
    assert all(e.record == "annotations[0] (id 0)" for e in ds.loss.entries)
    assert ds.annotations[0].area == 50.0  # always the box area


def test_coco_unknown_fields_are_reported_once_per_level_and_key(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["type"] = "instances"
    for img in doc["images"]:
        img.update(license=1, coco_url="http://x", extra=1)
    for ann in doc["annotations"]:
        ann["score"] = 0.5
    doc["categories"][0]["keypoints"] = ["nose"]
    ds = load_coco(write_json(tmp_path, doc))
    got = sorted((e.kind, e.record, e.message) for e in ds.loss.entries)
    assert got == sorted([
        ("unknown_field", "type", "top-level field 'type' is not understood; "
         "dropped from 1 record(s)"),
        ("field_dropped", "images[0] (id 1)", "image field 'license' is not carried by "
         "detops; dropped from 2 record(s)"),
        ("field_dropped", "images[0] (id 1)", "image field 'coco_url' is not carried by "
         "detops; dropped from 2 record(s)"),
        ("unknown_field", "images[0] (id 1)", "image field 'extra' is not understood; "
         "dropped from 2 record(s)"),
        ("unknown_field", "annotations[0] (id 0)", "annotation field 'score' is not "
         "understood; dropped from 2 record(s)"),
        ("field_dropped", "categories[0] (id 7)", "category field 'keypoints' is not carried "
         "by detops; dropped from 1 record(s)"),
    ])
    assert ds.loss.to_dict()["counts"] == {"field_dropped": 3, "unknown_field": 3}


# -- YOLO: bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "file_end", "record", "problem"),
    [
        # label lines
        ({"labels/a.txt": "0 0.5 0.5 0.25\n"}, "labels/a.txt", "line 1", "expected 5 fields"),
        ({"labels/a.txt": "0 .5 .5 .2 .2 .9 .9\n"}, "labels/a.txt", "line 1", "polygons"),
        ({"labels/a.txt": "0 0.5 x 0.25 0.5\n"}, "labels/a.txt", "line 1", "cy must be a number"),
        ({"labels/a.txt": "0 nan 0.5 0.25 0.5\n"}, "labels/a.txt", "line 1", "must be finite"),
        ({"labels/a.txt": "1.0 0.5 0.5 0.25 0.5\n"}, "labels/a.txt", "line 1",
         "class id '1.0' is not an integer"),
        ({"labels/a.txt": "\n\n2 0.5 0.5 0.1 0.1\n"}, "labels/a.txt", "line 3",
         "class id 2 is not in data.yaml names (0..1)"),  # blank lines still count
        ({"labels/a.txt": b"\xff\xfe0 0.5"}, "labels/a.txt", "byte 0", "not UTF-8"),
        # label file without its image
        ({"labels/b.txt": "0 0.5 0.5 0.1 0.1\n"}, "labels/b.txt", None, "no image for this"),
        # images
        ({"images/a.png": b"not a png"}, "images/a.png", None, "cannot read the image header"),
        ({"images/a.jpg": (2, 2)}, "labels/a.txt", None, "would share this label file"),
        ({"images": None}, "images", None, "folder not found"),
        ({"labels": None}, "labels", None, "folder not found"),
        # data.yaml
        ({"data.yaml": None}, "data.yaml", None, "data.yaml not found"),
        ({"data.yaml": "names: [cat, dog\n"}, "data.yaml", "line 2, column 1", "broken YAML"),
        ({"data.yaml": "- cat\n- dog\n"}, "data.yaml", None, "must be a mapping"),
        ({"data.yaml": "train: images\n"}, "data.yaml", None, "missing 'names'"),
        ({"data.yaml": "names: {0: cat, 2: dog}\n"}, "data.yaml", "names", "without gaps"),
        ({"data.yaml": "names: cat\n"}, "data.yaml", "names", "must be a list or"),
        ({"data.yaml": "names: [cat, null]\n"}, "data.yaml", "names[1]", "must be text"),
        ({"data.yaml": "nc: 3\nnames: [cat, dog]\n"}, "data.yaml", "nc", "nc is 3"),
    ],
)
def test_yolo_bad_input_names_file_record_and_problem(
    tmp_path: Path, files: dict[str, Any], file_end: str, record: str | None, problem: str
) -> None:
    root = make_yolo(tmp_path, files)
    raises_format_error(lambda: load_yolo(root), file_end, record, problem)


# -- YOLO: edge cases ---------------------------------------------------------------------------
def test_yolo_box_and_size_come_from_label_and_image_header(tmp_path: Path) -> None:
    ds = load_yolo(make_yolo(tmp_path))
    assert [(i.file, i.width, i.height, i.split) for i in ds.images] == [("a.png", 8, 4, None)]
    assert [(a.box, a.category_id) for a in ds.annotations] == [((3.0, 1.0, 5.0, 3.0), 0)]
    assert ds.root == tmp_path / "images"
    assert not ds.loss


@pytest.mark.parametrize(
    "data_yaml",
    [
        "names: [cat, dog]\n",  # list
        "names: {0: cat, 1: dog}\n",  # dict, the current Ultralytics form
        "names: {1: dog, 0: cat}\n",  # dict keys in any order
        "names:\n  '0': cat\n  '1': dog\nnc: 2\n",  # string keys, with nc
        "path: ../datasets/x\ntrain: images\nval: images\nnames: [cat, dog]\n",  # path ignored
    ],
)
def test_yolo_names_forms(tmp_path: Path, data_yaml: str) -> None:
    ds = load_yolo(make_yolo(tmp_path, {"data.yaml": data_yaml}))
    assert ds.category_names == ["cat", "dog"]
    assert [i.split for i in ds.images] == [None]


@pytest.mark.parametrize(
    ("data_yaml", "splits"),
    [
        # data.yaml names the split folders
        ("train: images/train\nval: images/val\n", {"train/b.png": "train", "val/c.png": "val"}),
        # a split may be a list of folders
        ("train: [images/train, images/val]\n", {"train/b.png": "train", "val/c.png": "train"}),
        # no split keys: the sub-folder name says it
        ("", {"train/b.png": "train", "val/c.png": "val"}),
        # a .txt list of images
        ("val: val.txt\n", {"train/b.png": "train", "val/c.png": "val", "a.png": "val"}),
    ],
)
def test_yolo_splits(tmp_path: Path, data_yaml: str, splits: dict[str, str]) -> None:
    root = make_yolo(tmp_path, {
        "data.yaml": data_yaml + "names: [cat, dog]\n",
        "images/train/b.png": (3, 3), "images/val/c.png": (3, 3),
        "val.txt": "./images/a.png\nimages/val/c.png\n",
    })
    ds = load_yolo(root)
    assert {i.file: i.split for i in ds.images} == {"a.png": None, **splits}
    assert not ds.loss


def test_yolo_split_entry_that_resolves_to_nothing_is_reported(tmp_path: Path) -> None:
    ds = load_yolo(make_yolo(tmp_path, {"data.yaml": "train: ../train/images\nnames: [a]\n"}))
    assert [(e.kind, e.record) for e in ds.loss.entries] == [("split_unresolved", "train")]


@pytest.mark.parametrize(
    "label",
    [
        None,  # no label file: a background image
        "",  # empty label file
        "\n  \n",  # blank lines only
    ],
)
def test_yolo_image_without_labels(tmp_path: Path, label: str | None) -> None:
    root = make_yolo(tmp_path, {"labels/a.txt": label})
    (root / "labels").mkdir(exist_ok=True)
    ds = load_yolo(root)
    assert len(ds.images) == 1 and ds.annotations == []


@pytest.mark.parametrize(
    ("files", "kind", "record", "annotations"),
    [
        # a label file without image: dropped, reported
        ({"labels/z.txt": "0 0.5 0.5 0.1 0.1\n"}, "label_without_image", None, 1),
        # an unknown class: kept as -1, reported
        ({"labels/a.txt": "5 0.5 0.5 0.25 0.5\n"}, "unknown_category", "line 1", 1),
    ],
)
def test_yolo_non_strict_reports_instead_of_raising(
    tmp_path: Path, files: dict[str, str], kind: str, record: str | None, annotations: int
) -> None:
    ds = load_yolo(make_yolo(tmp_path, files), strict=False)
    assert [(e.kind, e.record) for e in ds.loss.entries] == [(kind, record)]
    assert len(ds.annotations) == annotations
    if kind == "unknown_category":
        assert (ds.annotations[0].category_id, ds.annotations[0].attributes) == (
            -1, {"source_category": 5})


def test_yolo_save_writes_layout_empty_labels_and_names(tmp_path: Path) -> None:
    ds = make_dataset(n_images=4, seed=3, root=tmp_path / "src")
    for img, split in zip(ds.images, [None, "train", "val", "train"], strict=True):
        img.split = split
    yaml_path = save_yolo(ds, tmp_path / "out")
    out = tmp_path / "out"
    assert yaml_path == out / "data.yaml"
    assert (out / "labels" / "img0.txt").read_text() == ""  # image 0 has no boxes
    assert (out / "images" / "train" / "img1.png").is_file()
    assert (out / "labels" / "val" / "img2.txt").read_text().count("\n") == len(
        ds.annotations_of(2))
    back = load_yolo(out)
    assert back.category_names == ds.category_names
    assert {i.file: i.split for i in back.images} == {
        "img0.png": None, "train/img1.png": "train", "val/img2.png": "val",
        "train/img3.png": "train"}
    assert_same_boxes(ds, back, tol=1e-9)


def test_yolo_save_without_copy_links_to_the_originals(tmp_path: Path) -> None:
    ds = make_dataset(n_images=2, seed=4, root=tmp_path / "src")
    save_yolo(ds, tmp_path / "out", copy_images=False)
    links = sorted((tmp_path / "out" / "images").rglob("*.png"))
    assert [p.is_symlink() for p in links] == [True, True]
    assert_same_boxes(ds, load_yolo(tmp_path / "out"), tol=1e-9)


def set_two_annotators(ds: Dataset) -> Dataset:
    for a in ds.annotations:
        a.annotator = "ann-a" if a.id % 2 else "ann-b"
    return ds


@pytest.mark.parametrize(
    ("change", "record", "problem"),
    [
        # who drew a box cannot be written: pick one annotator
        (set_two_annotators, None, "pass annotator=NAME"),
        # crowd boxes would become ordinary boxes
        (lambda ds: setattr(ds.annotations[0], "iscrowd", True), "annotation 0",
         "pass skip_crowd=True"),
        # a box with no category
        (lambda ds: setattr(ds.annotations[0], "category_id", -1), "annotation 0",
         "category_id -1"),
        # a split must be a folder name
        (lambda ds: setattr(ds.images[0], "split", "a/b"), "image 0", "folder name"),
        # YOLO pairs images and labels by file name
        (lambda ds: setattr(ds.images[0], "file", "img1.png"), "image 1",
         "would both be written"),
    ],
)
def test_yolo_save_refuses_what_it_cannot_write(
    tmp_path: Path, change: Any, record: str | None, problem: str
) -> None:
    ds = make_dataset(n_images=3, seed=5, root=tmp_path / "src")
    for img in ds.images:
        img.split = None
    change(ds)
    err = raises_format_error(lambda: save_yolo(ds, tmp_path / "out"), "", record, problem)
    assert isinstance(err, DetopsError)
    assert not (tmp_path / "out" / "data.yaml").exists()


@pytest.mark.parametrize(
    ("kwargs", "kept"),
    [
        ({"annotator": "ann-a"}, lambda a: a.annotator == "ann-a"),  # one annotator's boxes
        ({"annotator": "ann-b"}, lambda a: a.annotator == "ann-b"),
    ],
)
def test_yolo_save_one_annotator(tmp_path: Path, kwargs: dict[str, Any], kept: Any) -> None:
    ds = set_two_annotators(make_dataset(n_images=3, seed=5, root=tmp_path / "src"))
    save_yolo(ds, tmp_path / "out", **kwargs)
    back = load_yolo(tmp_path / "out")
    assert len(back.annotations) == sum(1 for a in ds.annotations if kept(a)) > 0


def test_yolo_save_skip_crowd_leaves_crowd_boxes_out(tmp_path: Path) -> None:
    ds = make_dataset(n_images=3, seed=6, root=tmp_path / "src")
    ds.annotations[0].iscrowd = True
    save_yolo(ds, tmp_path / "out", skip_crowd=True)
    assert len(load_yolo(tmp_path / "out").annotations) == len(ds.annotations) - 1


# -- VOC: bad input -----------------------------------------------------------------------------
A_XML = "Annotations/a.xml"


@pytest.mark.parametrize(
    ("files", "file_end", "record", "problem"),
    [
        ({A_XML: "<annotation><filename>a.png</annotation>"}, A_XML, "line 1, column 30",
         "not well-formed XML (mismatched tag)"),
        ({A_XML: "<voc/>"}, A_XML, None, "root element must be <annotation>"),
        ({A_XML: voc_xml().replace("<filename>a.png</filename>", "")}, A_XML, None,
         "missing <filename>"),
        ({A_XML: voc_xml(name="")}, A_XML, "object 1", "missing <name>"),
        ({A_XML: voc_xml().replace("<bndbox>", "<box>").replace("</bndbox>", "</box>")}, A_XML,
         "object 1", "missing <bndbox>"),
        ({A_XML: voc_xml(xmin="abc")}, A_XML, "object 1", "xmin must be a number"),
        ({A_XML: voc_xml(xmin="")}, A_XML, "object 1", "missing <xmin>"),
        ({A_XML: voc_xml(width="640.5")}, A_XML, "size", "width must be an integer"),
        ({A_XML: voc_xml(difficult="maybe")}, A_XML, "object 1", "difficult must be an integer"),
        # no size and no image to read it from
        ({A_XML: voc_xml(width=0)}, A_XML, "size", "no usable <size>"),
        # a class missing from labels.txt
        ({"labels.txt": "dog\n"}, A_XML, "object 1", "class 'cat' is not in labels.txt"),
        ({"Annotations": None}, "Annotations", None, "folder not found"),
    ],
)
def test_voc_bad_input_names_file_record_and_problem(
    tmp_path: Path, files: dict[str, str | None], file_end: str, record: str | None,
    problem: str
) -> None:
    root = make_voc(tmp_path, files)
    raises_format_error(lambda: load_voc(root), file_end, record, problem)


# -- VOC: edge cases ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("one_based", "corners", "box"),
    [
        (True, ("1", "1", "40", "30"), (0.0, 0.0, 40.0, 30.0)),  # devkit: whole image
        (False, ("1", "1", "40", "30"), (1.0, 1.0, 40.0, 30.0)),  # corners as they are
        (True, ("10.5", "20.25", "30.75", "29"), (9.5, 19.25, 30.75, 29.0)),  # decimals
        (False, ("0", "0.5", "12.0", "1e1"), (0.0, 0.5, 12.0, 10.0)),
        (True, ("50", "40", "45", "35"), (49.0, 39.0, 45.0, 35.0)),  # not fixed by the loader
    ],
)
def test_voc_coordinates(tmp_path: Path, one_based: bool, corners: tuple[str, ...],
                         box: tuple[float, ...]) -> None:
    xmin, ymin, xmax, ymax = corners
    xml = voc_xml(xmin=xmin).replace("<ymin>2</ymin>", f"<ymin>{ymin}</ymin>").replace(
        "<xmax>11</xmax>", f"<xmax>{xmax}</xmax>").replace("<ymax>7</ymax>", f"<ymax>{ymax}</ymax>")
    ds = load_voc(make_voc(tmp_path / "in", {A_XML: xml}), one_based=one_based)
    assert ds.annotations[0].box == box
    save_voc(ds, tmp_path / "out", one_based=one_based, copy_images=False)
    written = ET.parse(tmp_path / "out" / A_XML).getroot().find("object/bndbox")
    assert written is not None
    assert [float(written.findtext(t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax")] == [
        float(c) for c in corners]


def test_voc_attributes_annotator_and_crowd_are_carried_and_written_back(tmp_path: Path
                                                                         ) -> None:
    xml = voc_xml().replace("<pose>Left</pose>", "<pose>Left</pose><occluded>0</occluded>"
                            "<annotator>ann-a</annotator><iscrowd>1</iscrowd>")
    ds = load_voc(make_voc(tmp_path / "in", {A_XML: xml}))
    a = ds.annotations[0]
    assert (a.annotator, a.iscrowd, a.attributes) == (
        "ann-a", True, {"difficult": 0, "truncated": 1, "occluded": 0, "pose": "Left"})
    assert not ds.loss
    save_voc(ds, tmp_path / "out", copy_images=False)
    back = load_voc(tmp_path / "out")
    b = back.annotations[0]
    assert (b.box, b.annotator, b.iscrowd, b.attributes) == (
        a.box, a.annotator, a.iscrowd, a.attributes)


def test_voc_categories_from_labels_txt_keep_order_and_unused_names(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {"labels.txt": "zebra\ncat\n\n", "Annotations/b.xml": voc_xml(
        filename="b.png", name="zebra")})
    ds = load_voc(root)
    assert ds.category_names == ["zebra", "cat"]
    assert [a.category_id for a in ds.annotations] == [1, 0]


def test_voc_categories_in_order_of_first_appearance_without_labels_txt(tmp_path: Path
                                                                        ) -> None:
    root = make_voc(tmp_path, {"Annotations/b.xml": voc_xml(filename="b.png", name="zebra")})
    assert load_voc(root).category_names == ["cat", "zebra"]  # a.xml is read first


def test_voc_non_strict_unknown_class(tmp_path: Path) -> None:
    ds = load_voc(make_voc(tmp_path, {"labels.txt": "dog\n"}), strict=False)
    assert (ds.annotations[0].category_id, ds.annotations[0].attributes["source_category"]) == (
        -1, "cat")
    assert [(e.kind, e.record) for e in ds.loss.entries] == [("unknown_category", "object 1")]


def test_voc_image_without_objects_and_size_from_header(tmp_path: Path) -> None:
    empty = "<annotation><filename>e.png</filename></annotation>"  # no <size>: header knows
    root = make_voc(tmp_path, {"Annotations/e.xml": empty})
    write_png(root / "JPEGImages" / "e.png", 7, 3)
    ds = load_voc(root)
    assert [(i.file, i.width, i.height) for i in ds.images] == [("a.png", 40, 30),
                                                                 ("e.png", 7, 3)]
    assert ds.annotations_of(1) == []


def test_voc_splits_from_image_sets(tmp_path: Path) -> None:
    root = make_voc(tmp_path, {
        "Annotations/b.xml": voc_xml(filename="b.png"),
        "Annotations/c.xml": voc_xml(filename="c.png"),
        "ImageSets/Main/train.txt": "a\n",
        "ImageSets/Main/val.txt": "b\nghost\n",
        "ImageSets/Main/trainval.txt": "a\nb\n",  # the union; not a split of its own
        "ImageSets/Main/cat_train.txt": "a  1\n",  # per-class file
    })
    ds = load_voc(root)
    assert {i.file: i.split for i in ds.images} == {"a.png": "train", "b.png": "val",
                                                    "c.png": None}
    assert [(e.kind, e.record) for e in ds.loss.entries] == [("split_entry_unknown", "ghost")]


def test_voc_fields_it_cannot_carry_are_reported(tmp_path: Path) -> None:
    xml = voc_xml().replace("<folder>VOC2007</folder>", "<source><database>x</database>"
                            "</source><weather>sun</weather>").replace(
        "<pose>", "<part><name>head</name></part><pose>")
    ds = load_voc(make_voc(tmp_path, {A_XML: xml, "Annotations/b.xml": xml}))
    assert sorted((e.kind, e.message) for e in ds.loss.entries) == [
        ("field_dropped", "image field 'source' is not carried by detops; dropped from 2 "
         "record(s)"),
        ("field_dropped", "object field 'part' is not carried by detops; dropped from 2 "
         "record(s)"),
        ("unknown_field", "image field 'weather' is not understood; dropped from 2 record(s)"),
    ]


def test_voc_save_layout(tmp_path: Path) -> None:
    ds = make_dataset(n_images=3, seed=7, root=tmp_path / "src")
    for img, split in zip(ds.images, ["train", "val", None], strict=True):
        img.split = split
    out = save_voc(ds, tmp_path / "out")
    assert (out / "labels.txt").read_text(encoding="utf-8") == "cat\ndog house\nñandú 鳥\n"
    assert (out / "ImageSets" / "Main" / "train.txt").read_text() == "img0\n"
    assert (out / "JPEGImages" / "img2.png").is_file()
    root = ET.parse(out / "Annotations" / "img0.xml").getroot()
    assert (root.findtext("filename"), root.findtext("size/width")) == (
        "img0.png", str(ds.images[0].width))
    assert root.findall("object") == []  # image 0 has no boxes
    back = load_voc(out)
    assert [i.split for i in back.images] == ["train", "val", None]
    assert_same_boxes(ds, back)


@pytest.mark.parametrize(
    "name",
    [
        " cat",  # readers strip element text
        "a\nb",  # one name per line in labels.txt
        "bell\x07",  # not an XML character
        "",
    ],
)
def test_voc_save_refuses_names_it_cannot_write(tmp_path: Path, name: str) -> None:
    ds = make_dataset(n_images=1, seed=0)
    ds.categories[1].name = name
    raises_format_error(lambda: save_voc(ds, tmp_path / "out", copy_images=False), "out",
                        "category 1", "cannot be written to VOC")


def test_save_refuses_to_copy_a_missing_image(tmp_path: Path) -> None:
    ds = make_dataset(n_images=1, seed=0, root=tmp_path / "nowhere-yet")
    (tmp_path / "nowhere-yet" / "img0.png").unlink()
    raises_format_error(lambda: save_voc(ds, tmp_path / "out"), "img0.png", "image 0",
                        "pass copy_images=False")


# -- every format: empty datasets and the dispatchers -------------------------------------------
@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_empty_dataset_round_trip_keeps_categories(tmp_path: Path, fmt: str) -> None:
    ds = Dataset(categories=[Category(0, "a"), Category(1, "b c")])
    save(ds, tmp_path / "out", fmt)
    assert detect_format(tmp_path / "out") == fmt
    back = load(tmp_path / "out")
    assert (back.category_names, back.images, back.annotations) == (["a", "b c"], [], [])


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"x.json": "{}"}, "coco"),  # a .json file itself
        ({"annotations.json": "{}"}, "coco"),  # a folder with annotations.json
        ({"data.yaml": "names: []"}, "yolo"),
        ({"labels/a.txt": ""}, "yolo"),  # labels/ without data.yaml
        ({"Annotations/a.xml": ""}, "voc"),
    ],
)
def test_detect_format(tmp_path: Path, layout: dict[str, str], expected: str) -> None:
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    target = tmp_path / "x.json" if "x.json" in layout else tmp_path
    assert detect_format(target) == expected


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda p: detect_format(p), "cannot tell the format"),  # an empty folder
        (lambda p: load(p, "labelme"), "unknown format"),
        (lambda p: save(Dataset(), p, "csv"), "unknown format"),
    ],
)
def test_dispatch_errors(tmp_path: Path, call: Any, problem: str) -> None:
    with pytest.raises(FormatError, match=problem):
        call(tmp_path)


def test_load_dispatches_with_options(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"][0]["category_id"] = 99
    write_json(tmp_path, doc)
    # one_based means nothing to COCO: ignored, so callers pass one set of options
    assert load(tmp_path, "coco", strict=False, one_based=True).annotations[0].category_id == -1
    with pytest.raises(TypeError, match="onebased"):  # a typo is not ignored
        load(tmp_path, "coco", onebased=True)


def test_public_api() -> None:
    assert sorted(formats.__all__) == sorted(
        ["FORMATS", "detect_format", "export_losses", "load", "load_coco", "load_voc",
         "load_yolo", "save", "save_coco", "save_voc", "save_yolo", "to_coco_dict"])
    assert set(formats.FORMATS) == {"coco", "yolo", "voc"}


# -- round trips on generated datasets ----------------------------------------------------------
NAME_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Cn", "Zl", "Zp"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, Any]:
    """A dataset description: sizes 1..2000 px, boxes inside with positive size, some empty."""
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    images = []
    for _ in range(draw(st.integers(0, 4))):
        w, h = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
        boxes = []
        for _ in range(draw(st.integers(0, 3))):
            fx = sorted(draw(st.lists(st.floats(0, 1), min_size=2, max_size=2, unique=True)))
            fy = sorted(draw(st.lists(st.floats(0, 1), min_size=2, max_size=2, unique=True)))
            box = (fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append((box, draw(st.integers(0, len(names) - 1)), draw(st.booleans())))
        images.append((w, h, draw(st.sampled_from([None, "train", "val"])), boxes))
    return {"names": names, "images": images}


def build(spec: dict[str, Any], root: Path, *, crowd: bool) -> Dataset:
    ds = Dataset(categories=[Category(i, n) for i, n in enumerate(spec["names"])], root=root)
    for i, (w, h, split, boxes) in enumerate(spec["images"]):
        img = ds.add_image(f"im{i}.png", w, h, split=split)
        write_png(root / img.file, w, h)
        for box, cat, is_crowd in boxes:
            ds.add_annotation(img.id, box, cat, iscrowd=crowd and is_crowd)
    return ds


ROUND_TRIP = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(spec=datasets())
def test_round_trip_coco_yolo_coco(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ds = build(spec, d / "src", crowd=False)
        first = load_coco(save_coco(ds, d / "coco1"))
        middle = load_yolo(save_yolo(first, d / "yolo"))
        last = load_coco(save_coco(middle, d / "coco2"))
        assert_same_boxes(ds, last)
        assert {Path(i.file).name: i.split for i in last.images} == {
            i.file: i.split for i in ds.images}
        assert not (first.loss or middle.loss or last.loss)


@ROUND_TRIP
@given(spec=datasets(), one_based=st.booleans())
def test_round_trip_coco_voc_coco(spec: dict[str, Any], one_based: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ds = build(spec, d / "src", crowd=True)
        first = load_coco(save_coco(ds, d / "coco1"))
        middle = load_voc(save_voc(first, d / "voc", one_based=one_based), one_based=one_based)
        last = load_coco(save_coco(middle, d / "coco2"))
        assert_same_boxes(ds, last)
        assert [a.iscrowd for a in last.annotations] == [a.iscrowd for a in ds.annotations]
        assert {i.file: i.split for i in last.images} == {i.file: i.split for i in ds.images}
        assert not (first.loss or middle.loss or last.loss)


@ROUND_TRIP
@given(spec=datasets())
def test_round_trip_coco_is_exact(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ds = build(spec, d / "src", crowd=True)
        back = load_coco(save_coco(ds, d / "out"))
        assert [(c.id, c.name) for c in back.categories] == [
            (c.id, c.name) for c in ds.categories]
        assert [(i.id, i.file, i.width, i.height, i.split) for i in back.images] == [
            (i.id, i.file, i.width, i.height, i.split) for i in ds.images]
        assert [(a.image_id, a.category_id, a.iscrowd) for a in back.annotations] == [
            (a.image_id, a.category_id, a.iscrowd) for a in ds.annotations]
        assert_same_boxes(ds, back, tol=1e-9)


def test_voc_save_refuses_an_attribute_it_cannot_write(tmp_path: Path) -> None:
    ds = make_dataset(n_images=2, seed=0)
    ds.annotations[0].attributes["difficult"] = "very"
    raises_format_error(lambda: save_voc(ds, tmp_path / "out", copy_images=False), "attributes",
                        "annotation 0", "difficult must be an integer")
