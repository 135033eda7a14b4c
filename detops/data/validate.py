"""Check a dataset against its image files: what a training run would trip over, found first.

Every finding names the image file and the record (``image 12`` or ``annotation 7 (image 12)``)
and says what is wrong in numbers:

==================  ========  ==========================================================
kind                severity  meaning
==================  ========  ==========================================================
missing_image       error     the file does not exist
unreadable_image    error     the file does not decode fully (corrupt, truncated, not an image)
size_mismatch       error     declared width x height differs from the decoded image
exif_rotated        warning   EXIF Orientation != 1: viewers show the image rotated
box_out_of_bounds   error     a box edge lies outside [0, width] x [0, height] (+1e-3 px)
degenerate_box      error     zero or negative width/height, NaN or inf
unknown_category    error     category_id is not an index into ``Dataset.categories``
orphan_annotation   error     the annotation's image_id is not an image of the dataset
duplicate_conflict  error     same image bytes (sha256) as another record, different labels
duplicate_image     warning   same image bytes as another record, same labels
no_labels           warning   an image without annotations
==================  ========  ==========================================================

Findings are sorted by image id, then image-level before annotation-level, then annotation id,
so two runs over the same data give the same report.

>>> from detops.data.dataset import Dataset, Category
>>> ds = Dataset(categories=[Category(0, "circle")])
>>> img = ds.add_image("/nonexistent/a.png", 64, 48)
>>> report = validate(ds, workers=1)
>>> [(f.kind, f.record) for f in report.findings]
[('missing_image', 'image 0'), ('no_labels', 'image 0')]
>>> report.ok
False
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from PIL import Image, ImageFile, UnidentifiedImageError

from detops.data._pool import map_ordered
from detops.data.dataset import Annotation, Dataset, ImageRecord
from detops.errors import ValidationFailed

__all__ = ["Finding", "ValidationReport", "validate", "BOX_TOLERANCE"]

Severity = Literal["error", "warning"]

BOX_TOLERANCE = 1e-3  # px; float noise from format conversions is far below this

SEVERITY: dict[str, Severity] = {
    "missing_image": "error",
    "unreadable_image": "error",
    "size_mismatch": "error",
    "exif_rotated": "warning",
    "box_out_of_bounds": "error",
    "degenerate_box": "error",
    "unknown_category": "error",
    "orphan_annotation": "error",
    "duplicate_conflict": "error",
    "duplicate_image": "warning",
    "no_labels": "warning",
}
_KIND_ORDER = {k: i for i, k in enumerate(SEVERITY)}

# What a viewer does to the stored pixels for each EXIF Orientation value.
_ORIENTATION = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "mirrored and rotated 90° counter-clockwise (transposed)",
    6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise (transversed)",
    8: "rotated 90° counter-clockwise",
}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one record; ``file`` is the image file as the dataset names it."""

    kind: str
    file: str
    record: str
    message: str
    severity: Severity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    """The findings of :func:`validate`, sorted; ``ok`` means no errors (warnings allowed)."""

    findings: list[Finding] = field(default_factory=list)
    images: int = 0
    annotations: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def counts(self) -> dict[str, Any]:
        by_kind = Counter(f.kind for f in self.findings)
        return {
            "images": self.images,
            "annotations": self.annotations,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "by_kind": {k: by_kind[k] for k in SEVERITY if by_kind[k]},
        }

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.findings], "counts": self.counts()}

    def raise_if_errors(self) -> None:
        """Raise :class:`~detops.errors.ValidationFailed` naming the first errors, if any."""
        errs = self.errors
        if not errs:
            return
        shown = "\n".join(f"  {f.file} [{f.record}] {f.kind}: {f.message}" for f in errs[:10])
        more = f"\n  ... and {len(errs) - 10} more" if len(errs) > 10 else ""
        raise ValidationFailed(f"{len(errs)} validation error(s):\n{shown}{more}")

    def __len__(self) -> int:
        return len(self.findings)


# -- reading the files (runs in worker threads) ---------------------------------------------
@dataclass(slots=True)
class _Probe:
    missing: str | None = None  # the path that does not exist
    unreadable: str | None = None  # why decoding failed
    size: tuple[int, int] | None = None
    orientation: int | None = None
    sha256: str | None = None


def _probe(path: str, want_hash: bool) -> _Probe:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _Probe(missing=path)
    except IsADirectoryError:
        return _Probe(unreadable=f"{path} is a directory, not an image file")
    except OSError as e:
        return _Probe(unreadable=f"cannot read {path}: {e.strerror or e}")
    out = _Probe(sha256=hashlib.sha256(data).hexdigest() if want_hash else None)
    try:
        with Image.open(io.BytesIO(data)) as im:
            out.size = im.size
            im.load()  # full decode: a truncated JPEG only fails here
            orientation = im.getexif().get(_EXIF_ORIENTATION)
    except UnidentifiedImageError:  # its message names our BytesIO object's address
        out.unreadable = "cannot identify image file: not a format PIL can read"
        return out
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        out.unreadable = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return out
    if isinstance(orientation, int):
        out.orientation = orientation
    return out


# PIL's truncation switch is process-global; validation must see truncation whatever a caller
# set it to, so it is forced off for the duration of a call (a lock keeps concurrent calls from
# restoring it under each other).
_truncation_lock = threading.Lock()
_truncation_users = 0
_truncation_saved = False


def _strict_decoding_enter() -> None:
    global _truncation_users, _truncation_saved
    with _truncation_lock:
        if _truncation_users == 0:
            _truncation_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _truncation_users += 1


def _strict_decoding_exit() -> None:
    global _truncation_users
    with _truncation_lock:
        _truncation_users -= 1
        if _truncation_users == 0:
            ImageFile.LOAD_TRUNCATED_IMAGES = _truncation_saved


# -- checks on the records ------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:g}"


def _box_findings(
    ann: Annotation, img: ImageRecord, add: Callable[[str, str], None]
) -> None:
    x1, y1, x2, y2 = ann.box
    if not all(math.isfinite(v) for v in ann.box):
        bad = ", ".join(f"{n}={v}" for n, v in zip(("x1", "y1", "x2", "y2"), ann.box, strict=True)
                        if not math.isfinite(v))
        add("degenerate_box", f"box has non-finite coordinates ({bad})")
        return
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        parts = []
        if w <= 0:
            parts.append(f"width x2-x1={_fmt(w)}")
        if h <= 0:
            parts.append(f"height y2-y1={_fmt(h)}")
        add("degenerate_box", f"box {_fmt_box(ann.box)} has {' and '.join(parts)} (must be > 0)")
    tol = BOX_TOLERANCE
    out = [
        f"{n}={_fmt(v)}"
        for n, v, hi in (("x1", x1, img.width), ("y1", y1, img.height),
                         ("x2", x2, img.width), ("y2", y2, img.height))
        if v < -tol or v > hi + tol
    ]
    if out:
        verb = "is" if len(out) == 1 else "are"
        add("box_out_of_bounds",
            f"{', '.join(out)} {verb} outside the image ({img.width}x{img.height})")


def _fmt_box(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(_fmt(v) for v in box) + ")"


def _category_finding(ann: Annotation, ds: Dataset) -> str | None:
    n = len(ds.categories)
    if 0 <= ann.category_id < n:
        return None
    known = f"0..{n - 1}" if n else "the dataset has no categories"
    source = ann.attributes.get("source_category")
    if ann.category_id == -1 and source is not None:
        return (f"category {source!r} from the source file is not one of the dataset's "
                f"categories ({known}); map it or add the category")
    return f"category_id {ann.category_id} is not an index into the categories ({known})"


def _label_key(anns: list[Annotation]) -> tuple[tuple[Any, ...], ...]:
    # Two decimals: equal up to float noise from format round-trips, not up to annotator jitter.
    return tuple(sorted((a.category_id, *(round(v, 2) for v in a.box)) for a in anns))


# -- the entry point ------------------------------------------------------------------------
def validate(
    ds: Dataset,
    *,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Check every image file and annotation of ``ds``; see the module docstring for the kinds.

    Images are read once each on ``workers`` threads (0 = one per CPU): fully decoded, and
    hashed with sha256 only when ``img.sha256`` is not given. ``progress(done, total)`` is
    called from the calling thread as images finish.
    """
    found: list[tuple[tuple[int, int, int, int], Finding]] = []
    images = list(ds.images)
    anns_by_image = ds.annotations_by_image()

    def adder(img_id: int, file: str, record: str, ann_id: int) -> Callable[[str, str], None]:
        level = 0 if ann_id < 0 else 1

        def add(kind: str, message: str) -> None:
            key = (img_id, level, ann_id, _KIND_ORDER[kind])
            found.append((key, Finding(kind, file, record, message, SEVERITY[kind])))

        return add

    def probe(img: ImageRecord) -> _Probe:
        return _probe(str(ds.image_path(img)), want_hash=img.sha256 is None)

    _strict_decoding_enter()
    try:
        probes = map_ordered(probe, images, workers=workers, progress=progress)
    finally:
        _strict_decoding_exit()

    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for img, pr in zip(images, probes, strict=True):
        add = adder(img.id, img.file, f"image {img.id}", -1)
        if pr.missing is not None:
            add("missing_image", f"file not found: {pr.missing}")
        elif pr.unreadable is not None:
            add("unreadable_image", f"cannot decode {ds.image_path(img)}: {pr.unreadable}")
        if pr.size is not None and pr.size != (img.width, img.height):
            w, h = pr.size
            msg = f"declared {img.width}x{img.height} but the file is {w}x{h}"
            if pr.orientation in (5, 6, 7, 8) and (h, w) == (img.width, img.height):
                msg += (f"; the declared size is the EXIF-rotated view (Orientation="
                        f"{pr.orientation}), so the boxes were likely drawn on rotated pixels")
            add("size_mismatch", msg)
        if pr.orientation is not None and pr.orientation != 1:
            what = _ORIENTATION.get(pr.orientation, "an invalid value")
            add("exif_rotated",
                f"EXIF Orientation={pr.orientation} ({what}): viewers show the image turned, "
                f"but the declared size and the boxes refer to the stored pixels")
        anns = anns_by_image.get(img.id, [])
        if not anns:
            add("no_labels", "image has no annotations")
        sha = img.sha256 or pr.sha256
        if sha is not None:
            by_hash[sha].append(img)

    image_ids = {img.id for img in images}
    by_id = {img.id: img for img in images}
    for ann in ds.annotations:
        owner = by_id.get(ann.image_id)
        record = f"annotation {ann.id} (image {ann.image_id})"
        if owner is None:
            add = adder(ann.image_id, "", record, ann.id)
            add("orphan_annotation",
                f"image_id {ann.image_id} is not an image of the dataset "
                f"({len(image_ids)} images)")
            continue
        add = adder(owner.id, owner.file, record, ann.id)
        _box_findings(ann, owner, add)
        problem = _category_finding(ann, ds)
        if problem is not None:
            add("unknown_category", problem)

    for sha, group in by_hash.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: r.id)
        first = group[0]
        first_key = _label_key(anns_by_image.get(first.id, []))
        for img in group[1:]:
            add = adder(img.id, img.file, f"image {img.id}", -1)
            anns = anns_by_image.get(img.id, [])
            same = f"same bytes as image {first.id} ({first.file}, sha256 {sha[:12]}…)"
            key = _label_key(anns)
            if key == first_key:
                add("duplicate_image", f"{same}, with the same labels; drop one of them")
            else:
                here = sum((Counter(key) - Counter(first_key)).values())
                there = sum((Counter(first_key) - Counter(key)).values())
                add("duplicate_conflict",
                    f"{same} but different labels: {here} of this image's {len(key)} boxes "
                    f"are not in image {first.id}, {there} of its {len(first_key)} are not "
                    f"here; decide which is right")

    found.sort(key=lambda kf: kf[0])
    return ValidationReport(
        findings=[f for _, f in found], images=len(images), annotations=len(ds.annotations)
    )
