"""The in-memory dataset: images, box annotations, categories; boxes are xyxy absolute pixels.

Formats convert at the edges (COCO ``xywh``, YOLO normalised ``cxcywh``, VOC corners); inside,
a box is always ``(x1, y1, x2, y2)`` in pixels of the image as stored, and class ids are 0-based
indexes into ``Dataset.categories``.

>>> ds = Dataset(categories=[Category(0, "circle")])
>>> img = ds.add_image("a.png", 64, 48)
>>> ann = ds.add_annotation(img.id, (1.0, 2.0, 11.0, 22.0), 0)
>>> ds.annotations_of(img.id)[0].area
200.0
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Box = tuple[float, float, float, float]


@dataclass(slots=True)
class Category:
    id: int  # 0-based, contiguous: the index into Dataset.categories
    name: str
    supercategory: str | None = None


@dataclass(slots=True)
class ImageRecord:
    id: int
    file: str  # relative to Dataset.root, or absolute
    width: int
    height: int
    sha256: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    location: str | None = None  # where the bytes are, when not at root/file (artifact store)


@dataclass(slots=True)
class Annotation:
    id: int
    image_id: int
    box: Box  # x1, y1, x2, y2 in pixels
    category_id: int
    annotator: str | None = None
    iscrowd: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(slots=True)
class LossEntry:
    """One thing an import could not carry over as it was."""

    kind: str  # e.g. segmentation_dropped, box_clipped, unknown_field
    file: str
    record: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LossReport:
    """Machine-readable list of what an import dropped or changed; nothing is dropped silently."""

    entries: list[LossEntry] = field(default_factory=list)

    def add(self, kind: str, file: object, record: object | None, message: str) -> None:
        self.entries.append(
            LossEntry(kind, str(file), None if record is None else str(record), message)
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.entries:
            out[e.kind] += 1
        return dict(sorted(out.items()))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "entries": [e.to_dict() for e in self.entries]}


@dataclass
class Dataset:
    """Images + annotations + categories, with ``root`` the folder image files resolve against."""

    images: list[ImageRecord] = field(default_factory=list)
    annotations: list[Annotation] = field(default_factory=list)
    categories: list[Category] = field(default_factory=list)
    root: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    loss: LossReport = field(default_factory=LossReport)

    # -- building -------------------------------------------------------------------------
    def add_image(self, file: str, width: int, height: int, **kw: Any) -> ImageRecord:
        img = ImageRecord(
            id=self.images[-1].id + 1 if self.images else 0,
            file=file,
            width=int(width),
            height=int(height),
            **kw,
        )
        self.images.append(img)
        return img

    def add_annotation(self, image_id: int, box: Box, category_id: int, **kw: Any) -> Annotation:
        ann = Annotation(
            id=self.annotations[-1].id + 1 if self.annotations else 0,
            image_id=image_id,
            box=tuple(float(v) for v in box),  # type: ignore[arg-type]
            category_id=int(category_id),
            **kw,
        )
        self.annotations.append(ann)
        return ann

    def category_id(self, name: str, *, create: bool = False) -> int:
        for c in self.categories:
            if c.name == name:
                return c.id
        if not create:
            raise KeyError(name)
        self.categories.append(Category(len(self.categories), name))
        return len(self.categories) - 1

    # -- reading --------------------------------------------------------------------------
    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def annotators(self) -> list[str]:
        return sorted({a.annotator for a in self.annotations if a.annotator is not None})

    def image_path(self, image: ImageRecord) -> Path:
        if image.location is not None:
            return Path(image.location)
        p = Path(image.file)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    def annotations_by_image(self) -> dict[int, list[Annotation]]:
        out: dict[int, list[Annotation]] = {img.id: [] for img in self.images}
        for a in self.annotations:
            out.setdefault(a.image_id, []).append(a)
        return out

    def annotations_of(self, image_id: int) -> list[Annotation]:
        return [a for a in self.annotations if a.image_id == image_id]

    def image_by_id(self) -> dict[int, ImageRecord]:
        return {img.id: img for img in self.images}

    def subset(self, image_ids: set[int] | list[int]) -> Dataset:
        """A new dataset with only these images (ids renumbered from 0)."""
        keep = [img for img in self.images if img.id in set(image_ids)]
        remap = {img.id: i for i, img in enumerate(keep)}
        out = Dataset(categories=list(self.categories), root=self.root, info=dict(self.info))
        for img in keep:
            out.images.append(
                ImageRecord(
                    remap[img.id],
                    img.file,
                    img.width,
                    img.height,
                    img.sha256,
                    dict(img.tags),
                    img.split,
                    img.location,
                )
            )
        for a in self.annotations:
            if a.image_id in remap:
                out.annotations.append(
                    Annotation(
                        len(out.annotations),
                        remap[a.image_id],
                        a.box,
                        a.category_id,
                        a.annotator,
                        a.iscrowd,
                        dict(a.attributes),
                    )
                )
        return out

    def split(self, name: str) -> Dataset:
        return self.subset([img.id for img in self.images if img.split == name])

    def __repr__(self) -> str:
        return (
            f"Dataset(images={len(self.images)}, annotations={len(self.annotations)}, "
            f"categories={self.category_names})"
        )
