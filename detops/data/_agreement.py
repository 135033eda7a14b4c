"""Matching annotators' boxes image by image, and grouping the matches into objects.

The engine under consistency, consensus, the human-level baseline and label-error candidates.
It works on columns (numpy arrays), never one image at a time in Python:

* :func:`match_pair` pairs the boxes of two annotators by an optimal assignment on IoU
  (maximum total IoU over pairs at or above the threshold) in every image at once, ignoring
  the class (which is compared afterwards). Where every box has at most one partner at or
  above the threshold — nearly always — those partners *are* the optimal assignment and are
  found for all images with array operations; only images where a box has two candidates go
  to ``scipy.optimize.linear_sum_assignment``, one image each.
* :func:`group_objects` joins the matches of every pair of annotators into objects, each
  holding at most one box per annotator: connected components of the match graph, with a
  greedy split (strongest IoU first) of the rare component that would hold two boxes of one
  annotator.

>>> import numpy as np
>>> L = Labels.build(("A", "B"), np.array([7]), np.ones((1, 2), bool),
...                  image=np.array([0, 0, 0]), annotator=np.array([0, 1, 1]),
...                  box=np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float),
...                  category=np.array([0, 0, 1]))
>>> m = match_pair(L, 0, 1, 0.5)
>>> m.ia.tolist(), m.ib.tolist(), round(float(m.iou[0]), 3)
([0], [1], 0.818)
>>> group_objects(L, {(0, 1): m}, (0, 1)).member.tolist()
[[0, 1], [-1, 2]]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detops.data.dataset import Dataset
from detops.errors import ConsistencyError

# candidate (box, box) pairs evaluated per chunk, so memory stays bounded on crowded images
_CHUNK = 2_000_000


@dataclass(frozen=True)
class Labels:
    """The compared boxes as columns, rows sorted by (annotator, image, input order).

    ``labelled[i, m]`` says whether annotator ``m`` labelled image row ``i`` (an image an
    annotator labelled without drawing anything counts; one it never saw does not).
    """

    names: tuple[str, ...]
    image_ids: np.ndarray  # (I,) the Dataset's image ids; image row i is image_ids[i]
    labelled: np.ndarray  # (I, M) bool
    image: np.ndarray  # (N,) int64 image row
    annotator: np.ndarray  # (N,) int64 index into names
    box: np.ndarray  # (N, 4) float64 xyxy pixels
    category: np.ndarray  # (N,) int64 0-based class
    ann_id: np.ndarray  # (N,) int64 Annotation.id (-1 when not from a dataset)
    score: np.ndarray  # (N,) float64, 1.0 for people
    bounds: np.ndarray  # (M + 1,) row where each annotator's block starts

    @classmethod
    def build(cls, names: Sequence[str], image_ids: np.ndarray, labelled: np.ndarray, *,
              image: np.ndarray, annotator: np.ndarray, box: np.ndarray, category: np.ndarray,
              ann_id: np.ndarray | None = None, score: np.ndarray | None = None) -> Labels:
        n = len(image)
        image = np.asarray(image, np.int64)
        annotator = np.asarray(annotator, np.int64)
        order = np.lexsort((np.arange(n), image, annotator))
        labelled = np.array(labelled, bool, copy=True)
        if n:
            labelled[image, annotator] = True  # whoever drew a box on an image labelled it
        bounds = np.searchsorted(annotator[order], np.arange(len(names) + 1), "left")
        return cls(
            names=tuple(names),
            image_ids=np.asarray(image_ids, np.int64),
            labelled=labelled,
            image=image[order],
            annotator=annotator[order],
            box=np.asarray(box, np.float64).reshape(-1, 4)[order],
            category=np.asarray(category, np.int64)[order],
            ann_id=(np.full(n, -1, np.int64) if ann_id is None
                    else np.asarray(ann_id, np.int64)[order]),
            score=np.ones(n) if score is None else np.asarray(score, np.float64)[order],
            bounds=bounds.astype(np.int64),
        )

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def rows_of(self, m: int) -> slice:
        return slice(int(self.bounds[m]), int(self.bounds[m + 1]))


def labels_from_dataset(ds: Dataset, annotators: Sequence[str] | None = None, *,
                        all_labelled: bool = False, what: str | None = None,
                        minimum: int = 2) -> tuple[Labels, list[str]]:
    """The boxes of ``annotators`` (default: all) as :class:`Labels`, plus notes on what was
    left out. Raises :class:`ConsistencyError` naming what is needed and what the data has.

    Who labelled an image: ``image.tags["annotators"]`` (a list of names) when the image has
    it; else, with ``all_labelled``, every annotator; else the annotators with a box on it.
    """
    name = what or str(ds.info.get("name") or "the dataset")
    present = ds.annotators
    unnamed = sum(1 for a in ds.annotations if a.annotator is None)
    if annotators is None:
        chosen = list(present)
    else:
        chosen = list(annotators)
        unknown = [a for a in chosen if a not in present]
        if unknown:
            raise ConsistencyError(
                f"annotator{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"{'are' if len(unknown) > 1 else 'is'} not in {name} (its annotators: "
                f"{', '.join(present) or 'none: every box has annotator=None'})")
        dupes = sorted({a for a in chosen if chosen.count(a) > 1})
        if dupes:
            raise ConsistencyError(f"annotators {', '.join(dupes)} named twice")
    if len(chosen) < minimum:
        has = (f"annotator {present[0]!r} only" if len(present) == 1 else
               "no annotator names (every box has annotator=None)" if not present else
               f"annotators {', '.join(present)}")
        picked = "" if annotators is None else f"; --annotators named {', '.join(chosen)}"
        raise ConsistencyError(
            f"{name} has {has}{picked}: comparing annotators needs boxes from at least "
            f"{minimum} annotators on the same images. Import each annotator's labels with its "
            "name (the COCO `annotator` field of each annotation), or make test data with "
            "`detops data synth --annotators A,B,C`")
    index = {n: i for i, n in enumerate(chosen)}
    rows = {img.id: i for i, img in enumerate(ds.images)}
    labelled = np.zeros((len(ds.images), len(chosen)), bool)
    if all_labelled:
        labelled[:] = True
    tagged = 0
    for i, img in enumerate(ds.images):
        who = img.tags.get("annotators") if img.tags else None
        if isinstance(who, list):
            tagged += 1
            labelled[i] = [n in who for n in chosen]
    anns = ds.annotations
    who = np.array([index.get(a.annotator, -1) for a in anns],  # type: ignore[arg-type]
                   np.int64)
    crowd_mask = np.array([a.iscrowd for a in anns], bool)
    keep = (who >= 0) & ~crowd_mask
    left_out = int(np.sum((who < 0) & np.array([a.annotator is not None for a in anns], bool)))
    crowd = int(np.sum((who >= 0) & crowd_mask))
    image_of = np.array([a.image_id for a in anns], np.int64)
    ids = np.array([img.id for img in ds.images], np.int64)
    if len(ids) and np.array_equal(ids, np.arange(len(ids))):
        img_row = image_of  # the common case: image ids are 0..I-1 in order
    else:
        img_row = np.array([rows[i] for i in image_of.tolist()], np.int64)
    boxes = np.fromiter(itertools.chain.from_iterable(a.box for a in anns), np.float64,
                        count=4 * len(anns)).reshape(-1, 4)
    L = Labels.build(chosen, ids, labelled, image=img_row[keep], annotator=who[keep],
                     box=boxes[keep],
                     category=np.array([a.category_id for a in anns], np.int64)[keep],
                     ann_id=np.array([a.id for a in anns], np.int64)[keep])
    notes: list[str] = []
    if unnamed:
        notes.append(f"{unnamed} boxes carry no annotator name and are left out")
    if left_out:
        notes.append(f"{left_out} boxes of annotators not compared "
                     f"({', '.join(a for a in present if a not in index)}) are left out")
    if crowd:
        notes.append(f"{crowd} crowd boxes are left out (a crowd region is not one object)")
    if tagged:
        notes.append(f"{tagged} images say who labelled them (tag 'annotators')")
    k = L.labelled.sum(1)
    compared = int((k >= 2).sum())
    if compared == 0:
        raise ConsistencyError(
            f"no image of {name} was labelled by two or more of {', '.join(chosen)}: "
            "comparing annotators needs images that several of them labelled")
    partial = np.flatnonzero((k >= 1) & (k < len(chosen)))
    if len(partial):
        i = int(partial[0])
        img = ds.images[i]
        missing = [n for n, lab in zip(chosen, L.labelled[i], strict=True) if not lab]
        how = ("tagged as not labelled by" if tagged else "with no box from")
        notes.append(
            f"{len(partial)} of {len(ds.images)} images were labelled by only some annotators "
            f"(e.g. image {img.id} {img.file}: {how} {', '.join(missing)}); each is compared "
            "among the annotators that labelled it"
            + ("" if tagged or all_labelled else
               ". An annotator with no box on an image is taken not to have labelled it; if "
               "every annotator looked at every image, pass --all-labelled (then no box means "
               "'saw nothing')"))
    unlabelled = int((k == 0).sum())
    if unlabelled:
        notes.append(f"{unlabelled} images have no boxes from any compared annotator")
    if compared < len(ds.images) - unlabelled:
        notes.append(f"{len(ds.images) - unlabelled - compared} images were labelled by one "
                     "annotator only and cannot be compared")
    return L, notes


def nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """Median over ``axis`` ignoring NaN (NaN where a slice is all NaN); faster than numpy's
    ``nanmedian`` on many short slices."""
    s = np.sort(np.moveaxis(a, axis, -1), axis=-1)  # NaN sorts last
    n = (~np.isnan(s)).sum(-1)
    lo = np.clip((n - 1) // 2, 0, None)[..., None]
    hi = np.clip(n // 2, 0, None)[..., None]
    with np.errstate(invalid="ignore"):
        out = (np.take_along_axis(s, lo, -1) + np.take_along_axis(s, hi, -1))[..., 0] / 2
    return np.where(n > 0, out, np.nan)


# -- IoU ----------------------------------------------------------------------------------------
def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (xyxy, same length)."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
             - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iou_grid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU matrix of xyxy boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ia = np.repeat(np.arange(len(a)), len(b))
    ib = np.tile(np.arange(len(b)), len(a))
    return iou_rows(a[ia], b[ib]).reshape(len(a), len(b))


# -- one pair of annotators ---------------------------------------------------------------------
@dataclass(frozen=True)
class PairMatch:
    """Matched rows of annotators ``a`` and ``b`` (rows of :class:`Labels`) and their IoU."""

    a: int
    b: int
    ia: np.ndarray
    ib: np.ndarray
    iou: np.ndarray
    hard_images: int = 0  # images solved by linear_sum_assignment


def _candidates(a_img: np.ndarray, a_box: np.ndarray, b_img: np.ndarray, b_box: np.ndarray,
                n_images: int, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (a, b) box pair in the same image with IoU >= thr (indexes local to a and b)."""
    cnt_b = np.bincount(b_img, minlength=n_images)
    start_b = np.cumsum(cnt_b) - cnt_b
    rep = cnt_b[a_img]
    ends = np.cumsum(rep)
    # one contiguous column per coordinate: gathering columns is cheaper than rows
    ax1, ay1, ax2, ay2 = (np.ascontiguousarray(a_box[:, k]) for k in range(4))
    bx1, by1, bx2, by2 = (np.ascontiguousarray(b_box[:, k]) for k in range(4))
    area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    out_a, out_b, out_iou = [], [], []
    lo = 0
    while lo < len(a_img):
        # the a rows whose candidates fit in one chunk (at least one row)
        base = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + _CHUNK, "right")))
        r = rep[lo:hi]
        ca = np.repeat(np.arange(lo, hi), r)
        first = np.cumsum(r) - r
        cb = start_b[a_img[ca]] + (np.arange(len(ca)) - np.repeat(first, r))
        # most pairs do not even overlap along x: drop them before touching y
        iw = np.minimum(ax2[ca], bx2[cb]) - np.maximum(ax1[ca], bx1[cb])
        ok = iw > 0
        ca, cb, iw = ca[ok], cb[ok], iw[ok]
        ih = np.minimum(ay2[ca], by2[cb]) - np.maximum(ay1[ca], by1[cb])
        ok = ih > 0
        ca, cb, inter = ca[ok], cb[ok], iw[ok] * ih[ok]
        union = area_a[ca] + area_b[cb] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        ok = iou >= thr
        out_a.append(ca[ok])
        out_b.append(cb[ok])
        out_iou.append(iou[ok])
        lo = hi
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_iou)


def match_boxes(a_img: np.ndarray, a_box: np.ndarray, b_img: np.ndarray, b_box: np.ndarray,
                n_images: int, thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Optimal one-to-one matching per image; ``a_img`` and ``b_img`` must be sorted.

    Returns local indexes into a and b, the IoU of each match, and how many images needed
    ``linear_sum_assignment``.
    """
    from scipy.optimize import linear_sum_assignment

    thr = min(float(thr), 1.0)
    ca, cb, iou = _candidates(a_img, a_box, b_img, b_box, n_images, thr)
    dup_a = np.bincount(ca, minlength=len(a_img)) > 1
    dup_b = np.bincount(cb, minlength=len(b_img)) > 1
    if not dup_a.any() and not dup_b.any():
        return ca, cb, iou, 0
    is_hard = np.zeros(n_images, bool)
    is_hard[a_img[dup_a]] = is_hard[b_img[dup_b]] = True
    hard = np.flatnonzero(is_hard)
    easy = ~is_hard[a_img[ca]]
    parts_a, parts_b, parts_iou = [ca[easy]], [cb[easy]], [iou[easy]]
    a_lo, a_hi = np.searchsorted(a_img, hard, "left"), np.searchsorted(a_img, hard, "right")
    b_lo, b_hi = np.searchsorted(b_img, hard, "left"), np.searchsorted(b_img, hard, "right")
    for k in range(len(hard)):
        ra, rb = np.arange(a_lo[k], a_hi[k]), np.arange(b_lo[k], b_hi[k])
        grid = iou_grid(a_box[ra], b_box[rb])
        grid[grid < thr] = 0.0
        r, c = linear_sum_assignment(grid, maximize=True)
        ok = (grid[r, c] >= thr) & (grid[r, c] > 0)
        parts_a.append(ra[r[ok]])
        parts_b.append(rb[c[ok]])
        parts_iou.append(grid[r[ok], c[ok]])
    ia, ib, io = np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_iou)
    order = np.argsort(ia, kind="stable")
    return ia[order], ib[order], io[order], len(hard)


def match_pair(L: Labels, a: int, b: int, iou: float) -> PairMatch:
    """Match annotator ``a``'s boxes with ``b``'s in every image (class-agnostic)."""
    ra, rb = L.rows_of(a), L.rows_of(b)
    ia, ib, io, hard = match_boxes(L.image[ra], L.box[ra], L.image[rb], L.box[rb],
                                   L.n_images, iou)
    return PairMatch(a, b, ia + ra.start, ib + rb.start, io, hard)


def match_all(L: Labels, iou: float) -> dict[tuple[int, int], PairMatch]:
    """:func:`match_pair` for every pair ``a < b`` of annotators."""
    M = len(L.names)
    return {(a, b): match_pair(L, a, b, iou) for a in range(M) for b in range(a + 1, M)}


# -- objects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objects:
    """Boxes grouped into objects: ``member[c, k]`` is the row (in :class:`Labels`) of
    annotator ``annotators[k]``'s box of object ``c``, or -1 if it drew none."""

    annotators: tuple[int, ...]
    image: np.ndarray  # (C,) image row
    member: np.ndarray  # (C, K) int64

    @property
    def present(self) -> np.ndarray:
        return self.member >= 0


def group_objects(L: Labels, matches: Mapping[tuple[int, int], PairMatch],
                  annotators: Sequence[int]) -> Objects:
    """Objects from the matches among ``annotators`` (other annotators' boxes are ignored)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    cols = tuple(int(m) for m in annotators)
    col_of = np.full(len(L.names), -1, np.int64)
    col_of[list(cols)] = np.arange(len(cols))
    rows = (np.concatenate([np.arange(L.bounds[m], L.bounds[m + 1]) for m in cols])
            if cols else np.zeros(0, np.int64))
    n = len(rows)
    node = np.full(len(L.image), -1, np.int64)
    node[rows] = np.arange(n)
    us, vs, ws = [], [], []
    for (a, b), m in matches.items():
        if col_of[a] >= 0 and col_of[b] >= 0:
            us.append(node[m.ia])
            vs.append(node[m.ib])
            ws.append(m.iou)
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    w = np.concatenate(ws) if ws else np.zeros(0)
    if n == 0:
        return Objects(cols, np.zeros(0, np.int64), np.zeros((0, len(cols)), np.int64))
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    col = col_of[L.annotator[rows]]
    counts = np.bincount(comp * len(cols) + col, minlength=n_comp * len(cols))
    bad = np.unique(np.flatnonzero(counts > 1) // len(cols))
    if len(bad):
        comp = _split(comp, bad, u, v, w, col, n_comp)
    # number objects by image, then by their first row, so the order is stable
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    used = np.flatnonzero(first < n)
    img_of = L.image[rows[first[used]]]
    order = used[np.lexsort((first[used], img_of))]
    new = np.full(comp.max() + 1, -1, np.int64)
    new[order] = np.arange(len(order))
    c = new[comp]
    member = np.full((len(order), len(cols)), -1, np.int64)
    member[c, col] = rows
    return Objects(cols, L.image[rows[first[order]]], member)


def _split(comp: np.ndarray, bad: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray,
           col: np.ndarray, n_comp: int) -> np.ndarray:
    """Re-group components that hold two boxes of one annotator: join matched boxes strongest
    IoU first, never putting two boxes of one annotator together."""
    comp = comp.copy()
    in_bad = np.isin(comp[u], bad)
    nodes = np.flatnonzero(np.isin(comp, bad))
    parent = {int(x): int(x) for x in nodes}
    cols = {int(x): {int(col[x])} for x in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ub, vb = u[in_bad], v[in_bad]
    for e in np.argsort(-w[in_bad], kind="stable"):
        x, y = find(int(ub[e])), find(int(vb[e]))
        if x != y and not cols[x] & cols[y]:
            parent[y] = x
            cols[x] |= cols.pop(y)
    next_id = n_comp
    fresh: dict[int, int] = {}
    for node in nodes.tolist():
        r = find(node)
        if r not in fresh:
            fresh[r] = next_id
            next_id += 1
        comp[node] = fresh[r]
    return comp
