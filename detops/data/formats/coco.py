"""COCO detection JSON: ``bbox`` is ``[x, y, w, h]`` in absolute pixels, category ids arbitrary.

Inside detops a box is ``(x1, y1, x2, y2) = (x, y, x + w, y + h)`` and a category id is its index
in the file's ``categories`` list. Image ids are kept as they are (prediction files refer to
them); annotation ids are kept on load and written as ``1..N`` on save, because pycocotools never
matches a ground-truth annotation whose id is 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

from detops.data.dataset import Annotation, Category, Dataset, ImageRecord
from detops.data.formats._files import (
    FieldTally,
    as_int,
    as_number,
    check_categories,
    check_unique,
    place_images,
    relative_name,
)
from detops.errors import FormatError

_TOP = {"images", "annotations", "categories", "info", "licenses"}
_IMAGE = {"id", "file_name", "width", "height", "sha256", "tags", "split"}
_IMAGE_STANDARD = {"license", "coco_url", "flickr_url", "date_captured"}
_ANN = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation",
        "annotator", "attributes", "keypoints", "num_keypoints"}
_CATEGORY = {"id", "name", "supercategory"}
_CATEGORY_STANDARD = {"keypoints", "skeleton"}


def load_coco(
    json_path: str | Path, images_root: str | Path | None = None, *, strict: bool = True
) -> Dataset:
    """Read a COCO detection file (or a folder holding ``annotations.json``).

    ``images_root`` defaults to the ``images/`` folder beside the file or the file's folder,
    whichever holds the first image (``images/`` if neither does and it exists). Unknown
    category ids raise with ``strict=True``; with ``strict=False`` the annotation is kept with
    ``category_id=-1`` and the loss report says so.

    >>> load_coco("no/such/file.json")
    Traceback (most recent call last):
    detops.errors.FormatError: no/such/file.json: annotation file not found
    """
    path = Path(json_path)
    if path.is_dir():
        path = path / "annotations.json"
    data = _read_json(path)
    ds = Dataset(root=Path(images_root) if images_root is not None else _default_root(path, data))
    tally = FieldTally()
    for key in data:
        if key not in _TOP:
            tally.note("unknown_field", "top-level", key, key)
    for key in ("info", "licenses"):
        if key in data:
            ds.info[key] = data[key]
    if isinstance(ds.info.get("info"), dict) and "detops" in ds.info["info"]:
        info = dict(ds.info["info"])
        extra = info.pop("detops")
        ds.info["info"] = info
        if isinstance(extra, dict):
            ds.info.update({k: v for k, v in extra.items() if k not in ("info", "licenses")})

    cat_index = _read_categories(ds, path, _list(data, "categories", path), tally)
    _read_images(ds, path, _list(data, "images", path), tally)
    anns = _list(data, "annotations", path) if "annotations" in data else []
    _read_annotations(ds, path, anns, cat_index, tally, strict=strict)
    tally.flush(ds.loss, path)
    return ds


def save_coco(ds: Dataset, out_dir: str | Path, *, copy_images: bool = True) -> Path:
    """Write ``out_dir/annotations.json`` and, with ``copy_images``, ``out_dir/images/...``.

    Without ``copy_images`` each ``file_name`` points at the original file: relative to
    ``out_dir`` when it lies inside, else absolute. Keys of ``ds.info`` other than ``info`` and
    ``licenses`` are kept under ``info["detops"]``. Returns the path of the JSON file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_categories(ds, out)
    if copy_images:
        targets = {img.id: relative_name(img) for img in ds.images}
        check_unique(targets, out / "images", "file")
        place_images(ds, targets, out / "images", copy=True)
    else:
        targets = {img.id: _path_from(out, ds.image_path(img)) for img in ds.images}
    doc = to_coco_dict(ds, {i: t.as_posix() for i, t in targets.items()})
    path = out / "annotations.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def to_coco_dict(ds: Dataset, file_names: dict[int, str] | None = None) -> dict[str, Any]:
    """The COCO document of ``ds`` (category ids 1-based, annotation ids 1..N, image ids kept).

    ``file_names`` maps image id to the ``file_name`` to write (default: ``ImageRecord.file``).
    This is also the ground truth that evaluation reads.
    """
    images = []
    for img in ds.images:
        rec: dict[str, Any] = {"id": img.id, "file_name": (file_names or {}).get(img.id, img.file),
                               "width": img.width, "height": img.height}
        if img.sha256 is not None:
            rec["sha256"] = img.sha256
        if img.tags:
            rec["tags"] = img.tags
        if img.split is not None:
            rec["split"] = img.split
        images.append(rec)
    annotations = []
    for i, a in enumerate(ds.annotations):
        x1, y1, x2, y2 = a.box
        rec = {"id": i + 1, "image_id": a.image_id, "category_id": a.category_id + 1,
               "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
               "iscrowd": int(a.iscrowd), "segmentation": []}
        if a.annotator is not None:
            rec["annotator"] = a.annotator
        if a.attributes:
            rec["attributes"] = a.attributes
        annotations.append(rec)
    categories = []
    for i, c in enumerate(ds.categories):
        crec: dict[str, Any] = {"id": i + 1, "name": c.name}
        if c.supercategory is not None:
            crec["supercategory"] = c.supercategory
        categories.append(crec)
    info = dict(ds.info.get("info", {}))
    extra = {k: v for k, v in ds.info.items() if k not in ("info", "licenses")}
    if extra:  # the rest of Dataset.info travels inside COCO's free-form info object
        info["detops"] = extra
    doc = {"info": info, "licenses": ds.info.get("licenses", []),
           "images": images, "annotations": annotations, "categories": categories}
    return doc


def _path_from(out: Path, image: Path) -> PurePosixPath:
    """The image's path relative to ``out`` if it lies inside, else absolute."""
    absolute = image.absolute()
    if absolute.is_relative_to(out.absolute()):
        return PurePosixPath(absolute.relative_to(out.absolute()).as_posix())
    return PurePosixPath(absolute.as_posix())


# -- reading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, None, "annotation file not found") from None
    except UnicodeDecodeError as e:
        raise FormatError(path, f"byte {e.start}", "not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(path, f"line {e.lineno}, column {e.colno}",
                          f"broken JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise FormatError(path, None, f"top level must be an object, got {type(data).__name__}")
    return data


def _default_root(path: Path, data: dict[str, Any]) -> Path:
    """``images/`` beside the file, or the file's folder: whichever holds the first image."""
    candidates = [path.parent / "images", path.parent]
    images = data.get("images")
    first = images[0].get("file_name") if isinstance(images, list) and images and isinstance(
        images[0], dict) else None
    if isinstance(first, str) and first:
        for root in candidates:
            if (root / first).is_file():
                return root
    return candidates[0] if candidates[0].is_dir() else candidates[1]


def _list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    if key not in data:
        raise FormatError(path, None, f"missing the {key!r} key; is this a COCO detection file?")
    if not isinstance(data[key], list):
        raise FormatError(path, key, f"{key!r} must be a list, got {type(data[key]).__name__}")
    return data[key]


def _record(level: str, i: int, rec: Any, path: Path) -> tuple[str, dict[str, Any]]:
    where = f"{level}[{i}]"
    if not isinstance(rec, dict):
        raise FormatError(path, where, f"must be an object, got {type(rec).__name__}")
    if "id" in rec:
        where += f" (id {rec['id']})"
    return where, rec


def _need(rec: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in rec:
        raise FormatError(path, where, f"missing {key!r}")
    return rec[key]


def _read_categories(
    ds: Dataset, path: Path, cats: list[Any], tally: FieldTally
) -> dict[int, int]:
    index: dict[int, int] = {}
    for i, raw in enumerate(cats):
        where, rec = _record("categories", i, raw, path)
        cid = as_int(_need(rec, "id", path, where), path, where, "id")
        name = _need(rec, "name", path, where)
        if not isinstance(name, str):
            raise FormatError(path, where, f"name must be a string, got {name!r}")
        if cid in index:
            raise FormatError(path, where, f"duplicate category id {cid}")
        sup = rec.get("supercategory")
        index[cid] = len(ds.categories)
        ds.categories.append(Category(len(ds.categories), name, None if sup is None else str(sup)))
        _tally_extra(tally, "category", rec, _CATEGORY, _CATEGORY_STANDARD, where)
    return index


def _read_images(ds: Dataset, path: Path, images: list[Any], tally: FieldTally) -> None:
    seen: dict[int, str] = {}
    for i, raw in enumerate(images):
        where, rec = _record("images", i, raw, path)
        iid = as_int(_need(rec, "id", path, where), path, where, "id")
        if iid in seen:
            raise FormatError(path, where, f"duplicate image id {iid} (first at {seen[iid]})")
        seen[iid] = where
        file = _need(rec, "file_name", path, where)
        if not isinstance(file, str) or not file:
            raise FormatError(path, where, f"file_name must be a non-empty string, got {file!r}")
        w = as_int(_need(rec, "width", path, where), path, where, "width")
        h = as_int(_need(rec, "height", path, where), path, where, "height")
        if w <= 0 or h <= 0:
            raise FormatError(path, where, f"image size must be positive, got {w}x{h}")
        tags = rec.get("tags", {})
        if not isinstance(tags, dict):
            raise FormatError(path, where, f"tags must be an object, got {tags!r}")
        split = rec.get("split")
        if split is not None and not isinstance(split, str):
            raise FormatError(path, where, f"split must be a string, got {split!r}")
        sha = rec.get("sha256")
        ds.images.append(ImageRecord(iid, file, w, h, None if sha is None else str(sha),
                                     dict(tags), split))
        _tally_extra(tally, "image", rec, _IMAGE, _IMAGE_STANDARD, where)


def _read_annotations(
    ds: Dataset, path: Path, anns: list[Any], cat_index: dict[int, int], tally: FieldTally,
    *, strict: bool,
) -> None:
    image_ids = {img.id for img in ds.images}
    seen: set[int] = set()
    for i, raw in enumerate(anns):
        where, rec = _record("annotations", i, raw, path)
        aid = as_int(_need(rec, "id", path, where), path, where, "id")
        if aid in seen:
            raise FormatError(path, where, f"duplicate annotation id {aid}")
        seen.add(aid)
        image_id = as_int(_need(rec, "image_id", path, where), path, where, "image_id")
        if image_id not in image_ids:
            raise FormatError(path, where, f"image_id {image_id} is not in 'images'")
        bbox = _need(rec, "bbox", path, where)
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise FormatError(path, where, f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (as_number(v, path, where, f"bbox[{k}]") for k, v in enumerate(bbox))
        raw_cat = as_int(_need(rec, "category_id", path, where), path, where, "category_id")
        attributes = rec.get("attributes", {})
        if not isinstance(attributes, dict):
            raise FormatError(path, where, f"attributes must be an object, got {attributes!r}")
        attributes = dict(attributes)
        if raw_cat in cat_index:
            category_id = cat_index[raw_cat]
        elif strict:
            raise FormatError(path, where, f"category_id {raw_cat} is not in 'categories' "
                              f"(ids {sorted(cat_index)}); pass strict=False to keep it as -1")
        else:
            category_id = -1
            attributes["source_category"] = raw_cat
            ds.loss.add("unknown_category", path, where,
                        f"category_id {raw_cat} is not in 'categories'; kept as -1")
        crowd = rec.get("iscrowd", 0)
        if crowd not in (0, 1):  # True/False compare equal to 1/0
            raise FormatError(path, where, f"iscrowd must be 0 or 1, got {crowd!r}")
        annotator = rec.get("annotator")
        if annotator is not None and not isinstance(annotator, str):
            raise FormatError(path, where, f"annotator must be a string, got {annotator!r}")
        ds.annotations.append(Annotation(aid, image_id, (x, y, x + w, y + h), category_id,
                                         annotator, bool(crowd), attributes))
        _check_dropped(ds, path, where, rec, w * h)
        _tally_extra(tally, "annotation", rec, _ANN, set(), where)


def _check_dropped(ds: Dataset, path: Path, where: str, rec: dict[str, Any], box_area: float
                   ) -> None:
    seg = rec.get("segmentation")
    has_seg = isinstance(seg, dict) or (
        isinstance(seg, list) and any(not isinstance(p, list) or p for p in seg))
    area = rec.get("area")
    if has_seg:
        ds.loss.add("segmentation_dropped", path, where,
                    f"segmentation dropped; area {area!r} replaced by the box area {box_area:g}")
    elif area is not None:
        a = as_number(area, path, where, "area")
        if not math.isclose(a, box_area, rel_tol=1e-3):
            ds.loss.add("area_recomputed", path, where,
                        f"area {a:g} differs from bbox w*h {box_area:g}; recomputed")
    kp = rec.get("keypoints")
    if kp:
        n = f"{len(kp) // 3} " if isinstance(kp, list) else ""
        ds.loss.add("keypoints_dropped", path, where, f"{n}keypoint(s) dropped")


def _tally_extra(tally: FieldTally, level: str, rec: dict[str, Any], known: set[str],
                 standard: set[str], where: str) -> None:
    for key in rec:
        if key in standard:
            tally.note("field_dropped", level, key, where)
        elif key not in known:
            tally.note("unknown_field", level, key, where)
