"""YOLO (Ultralytics / Darknet) labels: one ``labels/<image>.txt`` per image, ``data.yaml`` names.

A label line is ``class cx cy w h``: a 0-based class id, then the box centre and size divided by
the image width and height. Converting back, ``x1 = (cx - w / 2) * W``. Image sizes come from the
image header as stored (EXIF orientation is not applied), so every image must be present.

YOLO carries boxes and class ids only: no annotator, crowd flag, attributes or tags.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from detops.data.dataset import Annotation, Category, Dataset
from detops.data.formats._files import (
    as_int,
    as_number,
    check_categories,
    check_unique,
    fmt_float,
    image_extensions,
    place_images,
    read_image_size,
    relative_name,
)
from detops.errors import FormatError

_SPLIT_KEYS = ("train", "val", "test")
_SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}
_YAML_OWN = {"names", "nc", "path", *_SPLIT_KEYS}


def load_yolo(root: str | Path, *, strict: bool = True) -> Dataset:
    """Read ``root/data.yaml``, ``root/images/**`` and ``root/labels/**.txt``.

    ``root`` may also be the ``data.yaml`` file. Images are read from ``root/images`` whatever
    ``path`` says in data.yaml (a relative ``path`` is resolved differently by every tool).
    Splits come from data.yaml ``train``/``val``/``test`` (folders under ``images/`` or ``.txt``
    lists), else from a first sub-folder named train/val/valid/test. A label file without an
    image raises with ``strict=True`` and is reported in ``ds.loss`` otherwise.
    """
    yaml_path = Path(root)
    if not yaml_path.is_file():
        yaml_path = yaml_path / "data.yaml"
    base = yaml_path.parent
    doc = _read_yaml(yaml_path)
    names = _names(doc, yaml_path)
    images_dir, labels_dir = base / "images", base / "labels"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise FormatError(folder, None, "folder not found; YOLO needs images/ and labels/ "
                              "beside data.yaml")
    ds = Dataset(categories=[Category(i, n) for i, n in enumerate(names)], root=images_dir)
    extras = {k: v for k, v in doc.items() if k not in ("names", "nc")}
    if extras:
        ds.info["data_yaml"] = extras

    exts = image_extensions()
    by_key: dict[str, str] = {}
    files = (p for p in images_dir.rglob("*") if p.suffix.lower() in exts and p.is_file())
    for rel in sorted(p.relative_to(images_dir).as_posix() for p in files):
        key = str(PurePosixPath(rel).with_suffix(""))
        if key in by_key:
            raise FormatError(labels_dir / f"{key}.txt", None,
                              f"images {by_key[key]} and {rel} would share this label file; "
                              "rename one of them")
        by_key[key] = rel
    labels = {p.relative_to(labels_dir).with_suffix("").as_posix(): p
              for p in labels_dir.rglob("*.txt") if p.is_file()}
    for key in sorted(set(labels) - set(by_key)):
        problem = f"no image for this label file (expected images/{key}.<ext>)"
        if strict:
            raise FormatError(labels[key], None, problem + "; pass strict=False to skip it")
        ds.loss.add("label_without_image", labels[key], None, problem + "; its boxes dropped")

    splits = _splits(doc, ds, yaml_path, images_dir, list(by_key.values()))
    for key, rel in by_key.items():
        width, height = read_image_size(images_dir / rel)
        img = ds.add_image(rel, width, height, split=splits.get(rel))
        if key in labels:
            _read_labels(ds, labels[key], img.id, width, height, strict=strict)
    return ds


def save_yolo(
    ds: Dataset,
    out_dir: str | Path,
    *,
    copy_images: bool = True,
    annotator: str | None = None,
    skip_crowd: bool = False,
) -> Path:
    """Write ``images/<split>/...``, ``labels/<split>/....txt`` and ``data.yaml``; returns the yaml.

    YOLO cannot say who drew a box, so a dataset with several annotators needs ``annotator=``
    to pick one; crowd boxes need ``skip_crowd=True``. Without ``copy_images`` the images are
    symlinks to the originals (YOLO finds labels by swapping ``images`` for ``labels``).
    """
    out = Path(out_dir)
    anns = _annotations_to_write(ds, out, annotator, skip_crowd)
    check_categories(Dataset(annotations=anns, categories=ds.categories), out)
    exts = image_extensions()
    targets: dict[int, PurePosixPath] = {}
    for img in ds.images:
        rel = relative_name(img)
        if img.split is not None:
            if not img.split or img.split in (".", "..") or "/" in img.split or "\\" in img.split:
                raise FormatError(out, f"image {img.id}",
                                  f"split {img.split!r} cannot be a folder name")
            if rel.parts[0] != img.split:
                rel = PurePosixPath(img.split) / rel
        if rel.suffix.lower() not in exts:
            raise FormatError(out, f"image {img.id}",
                              f"{img.file!r} has no image suffix, so YOLO cannot find its labels")
        targets[img.id] = rel
    label_targets = {i: rel.with_suffix(".txt") for i, rel in targets.items()}
    check_unique(targets, out / "images", "file")
    check_unique(label_targets, out / "labels", "label file")

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    place_images(ds, targets, out / "images", copy=copy_images)
    by_image: dict[int, list[Annotation]] = defaultdict(list)
    for a in anns:
        by_image[a.image_id].append(a)
    for img in ds.images:
        lines = []
        for a in by_image.get(img.id, []):
            x1, y1, x2, y2 = a.box
            vals = ((x1 + x2) / 2 / img.width, (y1 + y2) / 2 / img.height,
                    (x2 - x1) / img.width, (y2 - y1) / img.height)
            lines.append(" ".join([str(a.category_id), *map(fmt_float, vals)]) + "\n")
        path = out / "labels" / label_targets[img.id]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines), encoding="utf-8")

    doc: dict[str, Any] = {k: v for k, v in ds.info.get("data_yaml", {}).items()
                           if k not in _YAML_OWN}
    splits = list(dict.fromkeys(img.split for img in ds.images if img.split is not None))
    for split in splits or ["train", "val"]:
        doc[split] = f"images/{split}" if splits else "images"
    doc["nc"] = len(ds.categories)
    doc["names"] = {i: c.name for i, c in enumerate(ds.categories)}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False),
                         encoding="utf-8")
    return yaml_path


# -- helpers ------------------------------------------------------------------------------------
def _annotations_to_write(
    ds: Dataset, out: Path, annotator: str | None, skip_crowd: bool
) -> list[Annotation]:
    anns = ds.annotations
    if annotator is not None:
        anns = [a for a in anns if a.annotator == annotator]
    else:
        sources = {a.annotator for a in anns}
        if len(sources) > 1:
            shown = ", ".join(sorted(repr(s) for s in sources))
            raise FormatError(out, None,
                              f"boxes come from {len(sources)} annotators ({shown}) and YOLO "
                              "labels cannot say who drew a box; pass annotator=NAME to "
                              "export one annotator's boxes")
    crowd = [a for a in anns if a.iscrowd]
    if crowd and not skip_crowd:
        raise FormatError(out, f"annotation {crowd[0].id}",
                          f"{len(crowd)} crowd box(es) and YOLO has no crowd flag; pass "
                          "skip_crowd=True to leave them out")
    return [a for a in anns if not a.iscrowd]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, None, "data.yaml not found; YOLO needs it for the class "
                          "names") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = None if mark is None else f"line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise FormatError(path, where, f"broken YAML: {problem}") from None
    if not isinstance(doc, dict):
        raise FormatError(path, None, f"must be a mapping with 'names', got {doc!r:.60}")
    return doc


def _names(doc: dict[str, Any], path: Path) -> list[str]:
    if "names" not in doc:
        raise FormatError(path, None, "missing 'names' (class names as a list or {id: name})")
    raw = doc["names"]
    if isinstance(raw, dict):
        ids = {as_int(k, path, "names", "class id"): v for k, v in raw.items()}
        if sorted(ids) != list(range(len(ids))):
            raise FormatError(path, "names", f"class ids must be 0..{len(ids) - 1} without "
                              f"gaps, got {sorted(ids)}")
        values = [ids[i] for i in range(len(ids))]
    elif isinstance(raw, list):
        values = raw
    else:
        raise FormatError(path, "names", f"must be a list or {{id: name}}, got {raw!r:.60}")
    names = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise FormatError(path, f"names[{i}]", f"class name must be text, got {v!r}; "
                              "quote it")
        names.append(str(v))
    if "nc" in doc and as_int(doc["nc"], path, "nc", "nc") != len(names):
        raise FormatError(path, "nc", f"nc is {doc['nc']} but names has {len(names)} entries")
    return names


def _splits(
    doc: dict[str, Any], ds: Dataset, yaml_path: Path, images_dir: Path, rels: list[str]
) -> dict[str, str]:
    out: dict[str, str] = {}
    base, top = yaml_path.parent, images_dir.resolve()

    def assign(rel: str, split: str) -> None:
        old = out.setdefault(rel, split)
        if old != split:
            ds.loss.add("split_conflict", yaml_path, split,
                        f"image {rel} is listed in {old!r} and {split!r}; kept {old!r}")

    for split in _SPLIT_KEYS:
        entries = doc.get(split)
        for entry in entries if isinstance(entries, list) else [entries]:
            if entry is None:
                continue
            target = (base / str(entry)).resolve()
            if target.is_dir() and target.is_relative_to(top):
                sub = target.relative_to(top).as_posix()
                if sub != ".":  # the images folder itself says nothing about splits
                    for rel in rels:
                        if rel.startswith(sub + "/"):
                            assign(rel, split)
            elif target.is_file() and target.suffix == ".txt":
                for line in target.read_text(encoding="utf-8").splitlines():
                    p = (base / line.strip()).resolve()
                    if line.strip() and p.is_relative_to(top):
                        assign(p.relative_to(top).as_posix(), split)
            else:
                ds.loss.add("split_unresolved", yaml_path, split,
                            f"{split}: {entry!r} is not a folder under images/ or a .txt list; "
                            "its images get no split from it")
    for rel in rels:
        first = rel.split("/", 1)[0]
        if rel not in out and "/" in rel and first in _SPLIT_FOLDERS:
            out[rel] = first
    return out


def _read_labels(
    ds: Dataset, path: Path, image_id: int, width: int, height: int, *, strict: bool
) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"byte {e.start}", "not UTF-8 text") from None
    n = len(ds.categories)
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {lineno}"
        if len(fields) != 5:
            hint = "; segmentation polygons are not supported" if len(fields) > 5 else ""
            raise FormatError(path, where, f"expected 5 fields 'class cx cy w h', got "
                              f"{len(fields)}{hint}")
        try:
            cls = int(fields[0])
        except ValueError:
            raise FormatError(path, where, f"class id {fields[0]!r} is not an integer") from None
        cx, cy, w, h = (as_number(v, path, where, k)
                        for v, k in zip(fields[1:], ("cx", "cy", "w", "h"), strict=True))
        attributes: dict[str, Any] = {}
        if not 0 <= cls < n:
            known = f"0..{n - 1}" if n else "none"
            problem = f"class id {cls} is not in data.yaml names ({known})"
            if strict:
                raise FormatError(path, where, problem + "; pass strict=False to keep it as -1")
            ds.loss.add("unknown_category", path, where, problem + "; kept as -1")
            attributes["source_category"] = cls
            cls = -1
        box = ((cx - w / 2) * width, (cy - h / 2) * height,
               (cx + w / 2) * width, (cy + h / 2) * height)
        ds.add_annotation(image_id, box, cls, attributes=attributes)
