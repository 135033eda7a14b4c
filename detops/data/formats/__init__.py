"""Dataset import and export: COCO, YOLO and Pascal VOC.

Each format converts at the edge to the one in-memory model (``xyxy`` pixel boxes, 0-based
category ids); see ``docs/formats.md`` for each coordinate convention. Loaders never clip or
drop boxes: what they could not carry is listed in ``Dataset.loss``, and malformed input raises
:class:`detops.errors.FormatError` naming the file, the record and the problem.

>>> detect_format("train/annotations.json")
'coco'
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detops.data.dataset import Dataset, LossReport
from detops.data.formats.coco import load_coco, save_coco, to_coco_dict
from detops.data.formats.voc import load_voc, save_voc
from detops.data.formats.yolo import load_yolo, save_yolo
from detops.errors import FormatError

__all__ = [
    "FORMATS",
    "detect_format",
    "export_losses",
    "load",
    "load_coco",
    "load_voc",
    "load_yolo",
    "save",
    "save_coco",
    "to_coco_dict",
    "save_voc",
    "save_yolo",
]

#: format name -> (loader, saver); the dispatchers look formats up here.
FORMATS: dict[str, tuple[Callable[..., Dataset], Callable[..., Path]]] = {
    "coco": (load_coco, save_coco),
    "yolo": (load_yolo, save_yolo),
    "voc": (load_voc, save_voc),
}


def detect_format(path: str | Path) -> str:
    """Name the format at ``path``: ``"coco"``, ``"yolo"`` or ``"voc"``.

    A ``.json`` file, or a folder with ``annotations.json``, is COCO; a ``data.yaml`` (or a
    folder with one, or with ``labels/``) is YOLO; a folder with ``Annotations/`` is VOC.
    """
    p = Path(path)
    if p.suffix.lower() == ".json" or (p / "annotations.json").is_file():
        return "coco"
    if p.suffix.lower() in (".yaml", ".yml") or (p / "data.yaml").is_file() or (
        p / "labels").is_dir():
        return "yolo"
    if (p / "Annotations").is_dir():
        return "voc"
    raise FormatError(p, None, "cannot tell the format: expected a COCO .json file or folder "
                      "with annotations.json, a YOLO folder with data.yaml and labels/, or a "
                      "VOC folder with Annotations/; pass the format explicitly")


def load(path: str | Path, format: str | None = None, **options: Any) -> Dataset:
    """Load a dataset, detecting the format when ``format`` is None.

    Options go to the loader; one another format's loader takes but this one does not (such as
    ``one_based`` for COCO) is ignored, so callers can pass the same options for every format.
    """
    return _call(_lookup(format or detect_format(path)), 0, options)(path)


# What each format writes besides boxes and class names; anything else is reported by
# ``export_losses`` before it is left out.
_CARRIES: dict[str, dict[str, Any]] = {
    "coco": {"tags": True, "attributes": None, "annotator": True, "iscrowd": True},
    "voc": {"tags": False, "attributes": {"difficult", "truncated", "occluded", "pose"},
            "annotator": True, "iscrowd": True},
    "yolo": {"tags": False, "attributes": set(), "annotator": False, "iscrowd": False},
}


def export_losses(ds: Dataset, format: str) -> LossReport:
    """What writing ``ds`` as ``format`` leaves out (image tags, attributes the format lacks)."""
    carries = _CARRIES[format]
    report = LossReport()
    tagged = sum(1 for img in ds.images if img.tags)
    if tagged and not carries["tags"]:
        report.add("tags_dropped", format, None, f"{tagged} images' tags are not written")
    if carries["attributes"] is not None:
        dropped: dict[str, int] = {}
        for a in ds.annotations:
            for key in a.attributes:
                if key not in carries["attributes"]:
                    dropped[key] = dropped.get(key, 0) + 1
        for key, n in sorted(dropped.items()):
            report.add("attribute_dropped", format, key,
                       f"annotation attribute {key!r} ({n} boxes) is not written")
    return report


def save(ds: Dataset, out: str | Path, format: str, **options: Any) -> Path:
    """Write ``ds`` to the folder ``out`` in ``format``; options as for :func:`load`."""
    return _call(_lookup(format), 1, options)(ds, out)


def _lookup(format: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    try:
        return FORMATS[format.lower()]
    except KeyError:
        raise FormatError(format, None, f"unknown format; choose one of "
                          f"{', '.join(FORMATS)}") from None


def _call(pair: tuple[Callable[..., Any], Callable[..., Any]], which: int,
          options: dict[str, Any]) -> Callable[..., Any]:
    fn = pair[which]
    takes = set(inspect.signature(fn).parameters)
    anywhere = {p for f in FORMATS.values() for p in inspect.signature(f[which]).parameters}
    unknown = set(options) - anywhere
    if unknown:
        raise TypeError(f"{fn.__name__}() got unexpected option(s) {', '.join(sorted(unknown))}")
    return functools.partial(fn, **{k: v for k, v in options.items() if k in takes})
