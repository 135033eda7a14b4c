"""Pascal VOC: one ``Annotations/<id>.xml`` per image, images in ``JPEGImages/``.

Coordinates. The original devkit stores ``xmin..xmax`` as *inclusive 1-based pixel indices*:
pixel ``i`` covers the continuous span ``[i - 1, i]``. With ``one_based=True`` (the default) a VOC
box therefore becomes ``(xmin - 1, ymin - 1, xmax, ymax)`` inside detops, and is written back as
``xmin = x1 + 1, xmax = x2``; a whole 640-wide image is ``xmin=1 xmax=640`` in VOC and
``0..640`` inside. With ``one_based=False`` the four corners are taken and written as they are.
Decimal coordinates are accepted.

Categories are ``labels.txt`` (one name per line) when present, else names in order of first
appearance. ``difficult``, ``truncated``, ``occluded`` and ``pose`` go to
``Annotation.attributes``; ``<annotator>`` and ``<iscrowd>`` children of ``<object>`` (not in
the devkit; other readers ignore them) carry the annotator and the crowd flag. Splits are
``ImageSets/Main/<split>.txt``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

from detops.data.dataset import Category, Dataset
from detops.data.formats._files import (
    FieldTally,
    as_int,
    as_number,
    check_categories,
    check_unique,
    fmt_float,
    place_images,
    read_image_size,
    relative_name,
)
from detops.errors import FormatError

_IMAGE_CARRIED = {"filename", "size", "object"}
_IMAGE_LOCATION = {"folder", "path"}  # replaced by where the files actually are
_IMAGE_STANDARD = {"source", "owner", "segmented"}
_OBJECT_CARRIED = {"name", "bndbox", "difficult", "truncated", "occluded", "pose",
                   "annotator", "iscrowd"}
_OBJECT_STANDARD = {"part", "actions", "point"}
_INT_ATTRIBUTES = ("difficult", "truncated", "occluded")
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def load_voc(root: str | Path, *, one_based: bool = True, strict: bool = True) -> Dataset:
    """Read ``root/Annotations/**/*.xml`` (images resolve against ``root/JPEGImages``).

    Image files need not exist, unless an XML file has no usable ``<size>``. With a
    ``labels.txt`` an object whose class is not listed raises (``strict=True``) or is kept with
    ``category_id=-1`` and reported in ``ds.loss``.
    """
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise FormatError(ann_dir, None, "folder not found; Pascal VOC needs Annotations/*.xml")
    ds = Dataset(root=root / "JPEGImages")
    labels_txt = root / "labels.txt"
    fixed = labels_txt.is_file()
    if fixed:
        for name in labels_txt.read_text(encoding="utf-8").split("\n"):
            if name.strip():
                ds.categories.append(Category(len(ds.categories), name.strip()))
    tally = FieldTally()
    keys: dict[str, int] = {}
    for xml in sorted(ann_dir.rglob("*.xml")):
        key = xml.relative_to(ann_dir).with_suffix("").as_posix()
        keys[key] = _read_xml(ds, xml, key, 1.0 if one_based else 0.0, fixed, strict, tally)
    tally.flush(ds.loss, ann_dir)
    _read_splits(ds, root / "ImageSets" / "Main", keys)
    return ds


def save_voc(
    ds: Dataset, out_dir: str | Path, *, one_based: bool = True, copy_images: bool = True
) -> Path:
    """Write ``Annotations/``, ``JPEGImages/``, ``labels.txt`` and ``ImageSets/Main/``.

    Without ``copy_images`` the files in ``JPEGImages/`` are symlinks to the originals.
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    check_categories(ds, out)
    for c in ds.categories:
        if not c.name or c.name != c.name.strip() or "\n" in c.name or _XML_BAD.search(c.name):
            raise FormatError(out, f"category {c.id}", f"name {c.name!r} cannot be written to "
                              "VOC (empty, edge spaces, line breaks or non-XML characters)")
    for img in ds.images:
        if img.split is not None and not re.fullmatch(r"[^/\\\s]+", img.split):
            raise FormatError(out, f"image {img.id}", f"split {img.split!r} cannot be a file name")
    targets = {img.id: relative_name(img) for img in ds.images}
    xml_targets = {i: rel.with_suffix(".xml") for i, rel in targets.items()}
    check_unique(targets, out / "JPEGImages", "file")
    check_unique(xml_targets, out / "Annotations", "annotation file")
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    place_images(ds, targets, out / "JPEGImages", copy=copy_images)

    by_image = ds.annotations_by_image()
    off = 1.0 if one_based else 0.0
    splits: dict[str, list[str]] = {}
    for img in ds.images:
        el = ET.Element("annotation")
        ET.SubElement(el, "folder").text = "JPEGImages"
        ET.SubElement(el, "filename").text = targets[img.id].name
        size = ET.SubElement(el, "size")
        ET.SubElement(size, "width").text = str(img.width)
        ET.SubElement(size, "height").text = str(img.height)
        for a in by_image.get(img.id, []):
            _write_object(el, a.box, ds.categories[a.category_id].name, a.attributes,
                          a.annotator, a.iscrowd, off, f"annotation {a.id}")
        ET.indent(el)
        path = out / "Annotations" / xml_targets[img.id]
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(el).write(path, encoding="utf-8", xml_declaration=True)
        if img.split is not None:
            splits.setdefault(img.split, []).append(str(targets[img.id].with_suffix("")))
    (out / "labels.txt").write_text("".join(c.name + "\n" for c in ds.categories),
                                    encoding="utf-8")
    if splits:
        main = out / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        for split, ids in splits.items():
            (main / f"{split}.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    return out


def _write_object(parent: ET.Element, box: tuple[float, float, float, float], name: str,
                  attributes: dict[str, Any], annotator: str | None, crowd: bool,
                  off: float, record: str) -> None:
    obj = ET.SubElement(parent, "object")
    ET.SubElement(obj, "name").text = name
    if "pose" in attributes:
        ET.SubElement(obj, "pose").text = str(attributes["pose"])
    for tag in ("truncated", "occluded", "difficult"):
        if tag in attributes or tag == "difficult":  # the devkit's evaluation needs difficult
            value = as_int(attributes.get(tag, 0), "attributes", record, tag)
            ET.SubElement(obj, tag).text = str(value)
    if annotator is not None:
        ET.SubElement(obj, "annotator").text = annotator
    if crowd:
        ET.SubElement(obj, "iscrowd").text = "1"
    bndbox = ET.SubElement(obj, "bndbox")
    x1, y1, x2, y2 = box
    for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + off, y1 + off, x2, y2),
                      strict=True):
        ET.SubElement(bndbox, tag).text = fmt_float(v)


# -- reading ------------------------------------------------------------------------------------
def _read_xml(ds: Dataset, xml: Path, key: str, off: float, fixed: bool, strict: bool,
              tally: FieldTally) -> int:
    try:
        top = ET.parse(xml).getroot()
    except ET.ParseError as e:
        line, col = e.position  # expat counts columns from 0
        what = str(e).rsplit(": line", 1)[0]
        raise FormatError(xml, f"line {line}, column {col + 1}",
                          f"not well-formed XML ({what})") from None
    if top.tag != "annotation":
        raise FormatError(xml, None, f"root element must be <annotation>, got <{top.tag}>")
    filename = _text(top, "filename", xml, None)
    file = (PurePosixPath(key).parent / filename).as_posix()
    width, height = _size(top, xml, ds.root / file if ds.root else Path(file))
    img = ds.add_image(file, width, height)
    for child in top:
        _note(tally, "image", child.tag, _IMAGE_CARRIED | _IMAGE_LOCATION, _IMAGE_STANDARD, key)
    for k, obj in enumerate(top.findall("object"), 1):
        where = f"object {k}"
        name = _text(obj, "name", xml, where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise FormatError(xml, where, "missing <bndbox>")
        xmin, ymin, xmax, ymax = (as_number(_text(bndbox, t, xml, where), xml, where, t)
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        attributes: dict[str, Any] = {}
        for tag in _INT_ATTRIBUTES:
            if obj.find(tag) is not None:
                attributes[tag] = as_int(_text(obj, tag, xml, where), xml, where, tag)
        if obj.find("pose") is not None:
            attributes["pose"] = (obj.findtext("pose") or "").strip()
        annotator = obj.findtext("annotator")
        crowd = as_int(obj.findtext("iscrowd") or 0, xml, where, "iscrowd")
        if crowd not in (0, 1):
            raise FormatError(xml, where, f"iscrowd must be 0 or 1, got {crowd}")
        category_id = _category(ds, name, fixed, strict, xml, where, attributes)
        ds.add_annotation(img.id, (xmin - off, ymin - off, xmax, ymax), category_id,
                          annotator=None if annotator is None else annotator.strip(),
                          iscrowd=bool(crowd), attributes=attributes)
        for child in obj:
            _note(tally, "object", child.tag, _OBJECT_CARRIED, _OBJECT_STANDARD,
                  f"{key} {where}")
    return img.id


def _text(el: ET.Element, tag: str, xml: Path, where: str | None) -> str:
    text = el.findtext(tag)
    if text is None or not text.strip():
        raise FormatError(xml, where, f"missing <{tag}>")
    return text.strip()


def _size(top: ET.Element, xml: Path, image: Path) -> tuple[int, int]:
    size = top.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w = as_int(_text(size, "width", xml, "size"), xml, "size", "width")
        h = as_int(_text(size, "height", xml, "size"), xml, "size", "height")
        if w > 0 and h > 0:
            return w, h
    if not image.is_file():  # a 0x0 or missing <size> happens in the wild; the header knows
        raise FormatError(xml, "size", f"no usable <size> and image {image} is missing, so "
                          "the image size is unknown")
    return read_image_size(image)


def _category(ds: Dataset, name: str, fixed: bool, strict: bool, xml: Path, where: str,
              attributes: dict[str, Any]) -> int:
    for c in ds.categories:
        if c.name == name:
            return c.id
    if not fixed:
        return ds.category_id(name, create=True)
    problem = f"class {name!r} is not in labels.txt"
    if strict:
        raise FormatError(xml, where, problem + "; pass strict=False to keep it as -1")
    ds.loss.add("unknown_category", xml, where, problem + "; kept as -1")
    attributes["source_category"] = name
    return -1


def _note(tally: FieldTally, level: str, tag: str, known: set[str], standard: set[str],
          record: str) -> None:
    if tag in standard:
        tally.note("field_dropped", level, tag, record)
    elif tag not in known:
        tally.note("unknown_field", level, tag, record)


def _read_splits(ds: Dataset, main: Path, keys: dict[str, int]) -> None:
    if not main.is_dir():
        return
    files = {p.stem: p for p in sorted(main.glob("*.txt"))}
    # <class>_<split>.txt files repeat the annotations per class; trainval is train + val
    skip = {s for s in files for n in ds.category_names if s.startswith(n + "_")}
    if "train" in files and "val" in files:
        skip.add("trainval")
    images = ds.image_by_id()
    for split, path in files.items():
        if split in skip:
            continue
        unknown: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            key = line.split()[0]
            if key not in keys:
                unknown.append(key)
                continue
            img = images[keys[key]]
            if img.split is None:
                img.split = split
            elif img.split != split:
                ds.loss.add("split_conflict", path, key,
                            f"image listed in {img.split!r} and {split!r}; kept {img.split!r}")
        if unknown:
            ds.loss.add("split_entry_unknown", path, unknown[0],
                        f"{len(unknown)} id(s) have no Annotations/<id>.xml; ignored")
