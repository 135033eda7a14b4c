"""Plumbing the three formats share: image headers, placing image files, numbers, field tallies."""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from detops.data.dataset import Dataset, ImageRecord, LossReport
from detops.errors import FormatError


def image_extensions() -> set[str]:
    """Suffixes PIL can open, lower case with the dot (``.png``, ``.jpg``, ...)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; PIL opens lazily, so pixels are never decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise FormatError(path, None, "image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise FormatError(path, None, f"cannot read the image header ({e})") from None


def fmt_float(v: float) -> str:
    """Shortest text that reads back as the same float, never in exponent notation."""
    if v == int(v):
        return str(int(v))
    s = repr(float(v))
    if "e" in s or "E" in s:
        s = f"{v:.17f}".rstrip("0").rstrip(".")
    return s


def as_int(value: Any, file: object, record: object, what: str) -> int:
    """An integer field; integral floats (``640.0``) pass, anything else is a FormatError."""
    if isinstance(value, bool):
        raise FormatError(file, record, f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str):
        try:
            return as_int(float(value) if "." in value else int(value), file, record, what)
        except ValueError:
            pass
    raise FormatError(file, record, f"{what} must be an integer, got {value!r}")


def as_number(value: Any, file: object, record: object, what: str) -> float:
    """A finite number; text is parsed (VOC and YOLO store numbers as text)."""
    if isinstance(value, bool):
        raise FormatError(file, record, f"{what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FormatError(file, record, f"{what} must be a number, got {value!r}") from None
    if not isinstance(value, int | float):
        raise FormatError(file, record, f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FormatError(file, record, f"{what} must be finite, got {value!r}")
    return float(value)


class FieldTally:
    """Counts fields a loader could not carry, to report each (level, key) once with a count."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._first: dict[tuple[str, str, str], str] = {}

    def note(self, kind: str, level: str, key: str, record: str) -> None:
        k = (kind, level, key)
        self._counts[k] += 1
        self._first.setdefault(k, record)

    def flush(self, loss: LossReport, file: object) -> None:
        for (kind, level, key), n in self._counts.items():
            what = "not understood" if kind == "unknown_field" else "not carried by detops"
            loss.add(
                kind,
                file,
                self._first[(kind, level, key)],
                f"{level} field {key!r} is {what}; dropped from {n} record(s)",
            )


def relative_name(img: ImageRecord) -> PurePosixPath:
    """Where an image goes inside an export: its relative path, or its bare name if absolute."""
    p = PurePosixPath(Path(img.file).as_posix())
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return PurePosixPath(p.name)
    return p


def check_unique(targets: dict[int, PurePosixPath], out: Path, what: str) -> None:
    """Two images must not be written to the same place."""
    seen: dict[str, int] = {}
    for image_id, rel in targets.items():
        key = rel.as_posix()
        if key in seen:
            raise FormatError(
                out / key,
                f"image {image_id}",
                f"images {seen[key]} and {image_id} would both be written as this {what}; "
                "rename one of them",
            )
        seen[key] = image_id


def place_images(
    ds: Dataset, targets: dict[int, PurePosixPath], folder: Path, *, copy: bool
) -> None:
    """Copy (or, with ``copy=False``, symlink) each image to ``folder / targets[image.id]``."""
    for img in ds.images:
        src = ds.image_path(img).absolute()
        dst = folder / targets[img.id]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            continue
        if copy:
            if not src.exists():
                raise FormatError(
                    src, f"image {img.id}",
                    "image file not found, so it cannot be copied; pass copy_images=False "
                    "to write links instead",
                )
            shutil.copyfile(src, dst)
        else:
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src)


def check_categories(ds: Dataset, out: Path) -> None:
    """Writers refuse annotations whose category is unknown (``category_id == -1``)."""
    n = len(ds.categories)
    for a in ds.annotations:
        if not 0 <= a.category_id < n:
            src = a.attributes.get("source_category")
            raise FormatError(
                out, f"annotation {a.id}",
                f"category_id {a.category_id} is not in the {n} categories"
                + (f" (source category {src!r})" if src is not None else "")
                + "; fix or drop it before exporting",
            )
