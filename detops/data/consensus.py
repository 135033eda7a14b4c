"""One set of labels from several annotators: majority vote on boxes and classes, fused boxes.

The annotators' boxes are matched and grouped into objects exactly as
:mod:`detops.data.consistency` does (class-agnostic optimal assignment at ``iou``). Then:

* **Vote on the box.** An object is kept when at least ``min_votes`` annotators drew it. By
  default that is *at least half of the annotators who labelled the image*: a strict majority
  for an odd number (2 of 3), ties kept for an even one (1 of 2, 2 of 4).
* **Vote on the class.** The class most of them gave; a tie goes to the class of the first
  annotator (in the order compared) among those tied, and is marked ``class_tie``.
* **Fused box.** The per-coordinate median of the boxes drawn (the mean of two), so one loose
  or jittered box among three does not move it.

Each consensus box has ``annotator="consensus"`` and says who agreed in its attributes:
``annotators`` (who drew it), ``agreed`` (who drew it with the consensus class), ``votes``,
``labelled_by`` (how many annotators labelled the image), ``class_votes`` when they disagreed,
``class_tie`` and ``source_ids`` (the annotation ids fused).

>>> from detops.data.dataset import Category, Dataset
>>> ds = Dataset(categories=[Category(0, "star"), Category(1, "square")])
>>> img = ds.add_image("a.png", 100, 100)
>>> for who, box, cls in (("A", (10, 10, 50, 50), 0), ("B", (12, 10, 52, 50), 0),
...                       ("C", (10, 10, 50, 54), 1), ("C", (70, 70, 90, 90), 1)):
...     _ = ds.add_annotation(img.id, box, cls, annotator=who)
>>> out = build_consensus(ds)
>>> [(a.box, ds.category_names[a.category_id], a.attributes["agreed"]) for a in out.annotations]
[((10.0, 10.0, 50.0, 50.0), 'star', ['A', 'B'])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detops.data._agreement import (
    Labels,
    PairMatch,
    group_objects,
    labels_from_dataset,
    match_all,
    nanmedian,
)
from detops.data.dataset import Annotation, Dataset, ImageRecord
from detops.errors import ConsistencyError

__all__ = ["CONSENSUS", "add_consensus", "build_consensus"]

CONSENSUS = "consensus"  # the annotator name of consensus boxes


@dataclass(frozen=True)
class Fused:
    """Consensus objects as columns (rows of the kept objects)."""

    image: np.ndarray  # (C,) image row of Labels
    box: np.ndarray  # (C, 4)
    category: np.ndarray  # (C,)
    member: np.ndarray  # (C, K) rows in Labels of the boxes fused, -1 where none
    votes: np.ndarray  # (C,)
    labelled_by: np.ndarray  # (C,) annotators (of the K) who labelled the image
    tie: np.ndarray  # (C,) bool
    annotators: tuple[int, ...]
    dropped: int  # objects without enough votes


def needed_votes(labelled_by: np.ndarray, min_votes: int | None) -> np.ndarray:
    """Votes an object needs: ``min_votes``, or half of those who labelled the image."""
    if min_votes is not None:
        return np.full(len(labelled_by), int(min_votes))
    return np.maximum(1, (labelled_by + 1) // 2)


def fuse(L: Labels, matches: dict[tuple[int, int], PairMatch], annotators: Sequence[int],
         n_classes: int, *, min_votes: int | None = None) -> Fused:
    """Consensus of the annotators ``annotators`` (indexes into ``L.names``)."""
    cols = tuple(annotators)
    obj = group_objects(L, matches, cols)
    pres = obj.present
    votes = pres.sum(1)
    lab = L.labelled[obj.image][:, list(cols)].sum(1) if cols else np.zeros(0, np.int64)
    keep = votes >= needed_votes(lab, min_votes)
    member = obj.member[keep]
    pres = pres[keep]
    mem = np.where(pres, member, 0)
    cat = np.where(pres, L.category[mem], -1)
    C = len(member)
    tally = np.zeros((C, n_classes), np.int64)
    rows, colsk = np.nonzero(pres)
    np.add.at(tally, (rows, cat[rows, colsk]), 1)
    best = tally.argmax(1) if C else np.zeros(0, np.int64)
    top = tally.max(1) if C else np.zeros(0, np.int64)
    tie = (tally == top[:, None]).sum(1) > 1 if C else np.zeros(0, bool)
    for c in np.flatnonzero(tie):  # first annotator (in order) whose class is among the tied
        tied = set(np.flatnonzero(tally[c] == top[c]).tolist())
        best[c] = next(int(cat[c, k]) for k in range(len(cols))
                       if pres[c, k] and int(cat[c, k]) in tied)
    boxes = np.where(pres[..., None], L.box[mem], np.nan)
    box = nanmedian(boxes, 1) if C else np.zeros((0, 4))
    return Fused(obj.image[keep], box, best, member, votes[keep], lab[keep], tie, cols,
                 int((~keep).sum()))


def build_consensus(ds: Dataset, *, annotators: Sequence[str] | None = None, iou: float = 0.5,
                    min_votes: int | None = None, all_labelled: bool = False) -> Dataset:
    """A new dataset: the same images, one consensus box per object (see the module doc).

    ``info["consensus"]`` records the rule, who was compared and how many objects were kept.
    """
    if min_votes is not None and min_votes < 1:
        raise ConsistencyError(f"min_votes={min_votes}: an object needs at least one vote")
    if not 0 < iou <= 1:
        raise ConsistencyError(f"iou={iou}: must be in (0, 1]")
    L, notes = labels_from_dataset(ds, annotators, all_labelled=all_labelled)
    if min_votes is not None and min_votes > len(L.names):
        raise ConsistencyError(f"min_votes={min_votes}, but only {len(L.names)} annotators "
                               f"({', '.join(L.names)}) are compared")
    matches = match_all(L, iou)
    f = fuse(L, matches, range(len(L.names)), len(ds.categories), min_votes=min_votes)
    out = Dataset(categories=list(ds.categories), root=ds.root, info=dict(ds.info))
    out.images = [ImageRecord(img.id, img.file, img.width, img.height, img.sha256,
                              dict(img.tags), img.split, img.location) for img in ds.images]
    names = ds.category_names
    for c in range(len(f.box)):
        drew = [L.names[k] for k in range(len(L.names)) if f.member[c, k] >= 0]
        cls = {L.names[k]: int(L.category[f.member[c, k]]) for k in range(len(L.names))
               if f.member[c, k] >= 0}
        attrs: dict[str, Any] = {
            "votes": int(f.votes[c]),
            "labelled_by": int(f.labelled_by[c]),
            "annotators": drew,
            "agreed": [n for n in drew if cls[n] == int(f.category[c])],
            "source_ids": [int(L.ann_id[f.member[c, k]]) for k in range(len(L.names))
                           if f.member[c, k] >= 0],
        }
        if len(set(cls.values())) > 1:
            votes: dict[str, list[str]] = {}
            for n, k in cls.items():
                votes.setdefault(names[k], []).append(n)
            attrs["class_votes"] = votes
        if f.tie[c]:
            attrs["class_tie"] = True
        out.annotations.append(Annotation(
            len(out.annotations), int(L.image_ids[f.image[c]]),
            tuple(round(float(v), 4) for v in f.box[c]),  # type: ignore[arg-type]
            int(f.category[c]), CONSENSUS, False, attrs))
    out.info["consensus"] = {
        "of": ds.info.get("name"),
        "annotators": list(L.names),
        "iou": iou,
        "min_votes": min_votes,
        "rule": ("at least half of the annotators who labelled the image" if min_votes is None
                 else f"at least {min_votes} annotators"),
        "objects_kept": len(out.annotations),
        "objects_dropped": f.dropped,
        "class_ties": int(f.tie.sum()),
        "notes": notes,
    }
    return out


def add_consensus(ws: Any, ref: str, name: str, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Build the consensus of dataset version ``ref`` and register it as ``name``'s next
    version (splits kept). Returns the :class:`~detops.data.versions.DatasetVersion` and the
    consensus record (``info["consensus"]`` of the new version: rule, annotators, counts)."""
    from detops.data.versions import add_dataset, get_version, load_version

    progress = options.pop("progress", None)
    dv = get_version(ws, ref)
    out = build_consensus(load_version(ws, dv), **options)
    new = add_dataset(ws, name, out, source=f"consensus:{dv.ref}", source_format="consensus",
                      keep_splits=True, progress=progress)
    return new, out.info["consensus"]
