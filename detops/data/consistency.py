"""Is the data labelled consistently? Agreement between annotators, and conventions in words.

:func:`check_consistency` compares every annotator with every other on the images both
labelled, and says what differs:

**Matching.** In each image, one annotator's boxes are paired with another's by an optimal
assignment on IoU (maximum total IoU over pairs with IoU >= ``iou``, 0.5 by default),
ignoring the class; the class is compared afterwards.

**Disagreements**, per pair of annotators, each typed:

* ``missing_box`` — a box one annotator drew and the other did not (no partner at ``iou``);
* ``class_mismatch`` — a matched pair with different classes;
* ``localisation`` — a matched pair whose IoU is under ``strict_iou`` (0.75).

A matched pair can be both a class mismatch and badly localised; each is counted.

**Agreement coefficient**: Krippendorff's alpha for nominal data. The units are *objects*:
matched boxes joined across all annotators (at most one box per annotator). Every annotator
who labelled the image gives the object a value: its class, or the category **"no box"** when
it drew none; an annotator who did not label the image gives no value. So a missing box counts
as a disagreement, like a different class. ``alpha_boxes_only`` is the same coefficient with
"no box" treated as a missing value instead (Krippendorff's own rule for missing data): class
agreement on the objects drawn by two or more annotators, with missing boxes reported apart
as ``missing_box``. Per class, alpha is the binary coefficient of "is it this class?" over all
objects ("no box" and other classes are "no"). Rule of thumb (Krippendorff): >= 0.800
reliable, >= 0.667 tentative, below that unreliable.

**Per-annotator rates** (leave-one-out: each annotator against the others):

* ``miss`` — of the objects every other annotator who labelled the image drew, the share this
  annotator has no box for (also by COCO size bucket of the others' box);
* ``loose`` / ``tight`` / ``jitter`` — on objects where two or more others drew boxes that
  agree with each other (every edge within the tolerance of their per-edge median), this
  annotator's box compared with that median: *loose* when no edge is inside it and some edge is
  outside by more than the tolerance, *tight* the reverse, *jitter* when edges are off in both
  directions. The tolerance is ``edge_tolerance`` (3%) of the box's width or height, and at
  least 0.5 px. Needs three or more annotators; with two, the pairwise numbers say the same
  without saying who. A jittered box whose four edges all happen to move outwards cannot be
  told from a loose box (nor all inwards from a tight one);
* ``size_ratio`` — geometric mean of this annotator's box area over that median's;
* ``confusion`` — ``"star>square"``: of the objects the others all labelled ``star``, the
  share this annotator labelled ``square``;
* ``extra`` — of this annotator's boxes on images every other annotator labelled, the share
  none of them drew.

**Conventions** are systematic differences, stated in words with the numbers behind them.
One is reported for annotator X when X differs from *every* other annotator in the same
direction by at least the minimum effect (3 percentage points for a rate, 5% for the size
ratio), and the confidence interval of each difference — Newcombe's for rates, Welch's for
mean log size ratios, Bonferroni-corrected over all the differences tested — is clear of it.
Noise that all annotators share therefore produces none. With two annotators the statements
are pairwise ("B's boxes are 12% larger than A's").

>>> from detops.data.dataset import Category, Dataset
>>> ds = Dataset(categories=[Category(0, "star"), Category(1, "square")])
>>> for i in range(4):
...     img = ds.add_image(f"{i}.png", 100, 100)
...     for who in "AB":
...         _ = ds.add_annotation(img.id, (10, 10, 50, 50), i % 2, annotator=who)
>>> report = check_consistency(ds)
>>> report.agreement["alpha"], report.conventions
(1.0, [])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detops.data._agreement import (
    Labels,
    Objects,
    PairMatch,
    group_objects,
    labels_from_dataset,
    match_all,
    nanmedian,
)
from detops.data.dataset import Dataset
from detops.errors import ConsistencyError

__all__ = [
    "ConsistencyReport",
    "check_consistency",
    "format_report",
    "krippendorff_alpha",
    "summary_lines",
    "write_html",
]

DISAGREEMENTS = ("missing_box", "class_mismatch", "localisation")
SIZES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
MIN_PX = 0.5  # an edge tolerance never below half a pixel
RELIABLE, TENTATIVE = 0.800, 0.667


# -- statistics ---------------------------------------------------------------------------------
def krippendorff_alpha(counts: np.ndarray) -> float | None:
    """Krippendorff's alpha for nominal data from a units x values count matrix.

    ``counts[u, v]`` is how many coders gave unit ``u`` the value ``v``; units with fewer than
    two values are not pairable and drop out. ``None`` when alpha is undefined (no pairable
    unit, or a single value throughout).

    >>> krippendorff_alpha(np.array([[2, 0], [0, 2], [1, 1]]))  # 1 - (1/3) / 0.6
    0.4444444444
    """
    counts = np.asarray(counts, np.float64)
    m = counts.sum(1)
    keep = m >= 2
    counts, m = counts[keep], m[keep]
    if not len(m):
        return None
    w = counts / (m - 1)[:, None]
    o = w.T @ counts - np.diag(w.sum(0))  # the coincidence matrix
    n_c = o.sum(1)
    n = float(n_c.sum())
    if n <= 1:
        return None
    d_o = (n - float(np.trace(o))) / n
    d_e = (n * n - float((n_c**2).sum())) / (n * (n - 1))
    if d_e <= 0:
        return None
    return round(1.0 - d_o / d_e, 10)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - level / 2))


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _rate(k: int, n: int, z: float = 1.959964) -> dict[str, Any]:
    lo, hi = _wilson(k, n, z)
    return {"rate": k / n if n else None, "k": int(k), "n": int(n),
            "ci95": [round(lo, 4), round(hi, 4)]}


def _newcombe(k1: int, n1: int, k2: int, n2: int, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson(k1, n1, z)
    l2, u2 = _wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 +
                                                                         (p2 - l2) ** 2)


def _mean_ci(x: np.ndarray, level: float = 0.05) -> dict[str, Any]:
    from scipy.stats import t

    n = len(x)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    h = float(t.ppf(1 - level / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - h, mean + h], "n": n}


def _welch(x: np.ndarray, y: np.ndarray, z: float) -> tuple[float, float] | None:
    if len(x) < 2 or len(y) < 2:
        return None
    d = float(x.mean() - y.mean())
    se = math.sqrt(float(x.var(ddof=1)) / len(x) + float(y.var(ddof=1)) / len(y))
    return d - z * se, d + z * se


# -- box geometry -------------------------------------------------------------------------------
def _offsets(box: np.ndarray, ref: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Edge offsets of ``box`` from ``ref`` as fractions of ref's width / height (x1, y1, x2,
    y2), and the per-edge tolerance in the same unit."""
    w = np.maximum(ref[:, 2] - ref[:, 0], 1e-9)
    h = np.maximum(ref[:, 3] - ref[:, 1], 1e-9)
    size = np.stack([w, h, w, h], 1)
    return (box - ref) / size, np.maximum(tol, MIN_PX / size)


def _classify(box: np.ndarray, ref: np.ndarray, tol: float) -> dict[str, np.ndarray]:
    d, t = _offsets(box, ref, tol)
    out = d * np.array([-1.0, -1.0, 1.0, 1.0])  # > 0: the edge lies outside ref
    off = (np.abs(d) > t).any(1)
    loose = off & (out >= -t).all(1) & (out > t).any(1)
    tight = off & (out <= t).all(1) & (out < -t).any(1)
    return {"off": off, "loose": loose, "tight": tight, "jitter": off & ~loose & ~tight,
            "offset": np.abs(d).mean(1)}


def _area(b: np.ndarray) -> np.ndarray:
    return np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)


# -- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsistencyReport:
    """What :func:`check_consistency` found; :meth:`to_dict` is the ``--json`` document."""

    dataset: str | None
    annotators: tuple[str, ...]
    settings: dict[str, Any]
    agreement: dict[str, Any]
    pairs: list[dict[str, Any]]
    classes: dict[str, dict[str, Any]]
    annotator_rates: dict[str, dict[str, Any]]
    conventions: list[dict[str, Any]]
    images: list[dict[str, Any]]
    notes: list[str]
    seconds: float = 0.0
    definitions: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        a = self.agreement.get("alpha")
        if a is None:
            level = "undefined"
        else:
            level = ("reliable" if a >= RELIABLE else "tentative" if a >= TENTATIVE
                     else "unreliable")
        n = len(self.conventions)
        conv = ("no systematic differences between annotators" if n == 0 else
                f"{n} convention{'s differ' if n > 1 else ' differs'} between annotators")
        alpha = "n/a" if a is None else f"{a:.3f}"
        return f"agreement alpha {alpha} ({level}); {conv}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["annotators"] = list(self.annotators)
        return d


def check_consistency(
    ds: Dataset,
    *,
    annotators: Sequence[str] | None = None,
    iou: float = 0.5,
    strict_iou: float = 0.75,
    edge_tolerance: float = 0.03,
    all_labelled: bool = False,
    top: int = 20,
    min_effect: float = 0.03,
    min_size_change: float = 0.05,
    level: float = 0.05,
) -> ConsistencyReport:
    """Compare the annotators of ``ds`` (see the module docstring for every definition).

    ``annotators`` picks whom to compare (default: all). ``all_labelled`` says every annotator
    looked at every image (no box then means "saw nothing"); by default an annotator labelled
    the images it drew on, or those whose tag ``annotators`` names it. ``top`` is how many of
    the most inconsistent images the report lists with their boxes. ``level`` is the
    family-wise error rate of the conventions.
    """
    if not 0 < iou <= 1 or not 0 < strict_iou <= 1:
        raise ConsistencyError(f"iou={iou}, strict_iou={strict_iou}: both must be in (0, 1]")
    if not 0 <= edge_tolerance < 1:
        raise ConsistencyError(f"edge_tolerance={edge_tolerance}: a fraction in [0, 1)")
    t0 = time.perf_counter()
    L, notes = labels_from_dataset(ds, annotators, all_labelled=all_labelled)
    matches = match_all(L, iou)
    hard = sum(m.hard_images for m in matches.values())
    if hard:
        notes.append(f"{hard} image-pairs had a box with two candidate partners and were "
                     "matched by linear_sum_assignment")
    objects = group_objects(L, matches, range(len(L.names)))
    names = ds.category_names
    pairs, events = _pairs(L, matches, strict_iou, edge_tolerance, names)
    agreement, classes = _agreement(L, objects, names, pairs, events)
    rates, samples = _rates(L, objects, names, edge_tolerance)
    conventions = _conventions(L, pairs, rates, samples, names, min_effect, min_size_change,
                               level, edge_tolerance)
    for p in pairs:  # the arrays kept for the conventions are not part of the report
        for k in [k for k in p if k.startswith("_")]:
            del p[k]
    images = _rank_images(ds, L, matches, events, objects, strict_iou, names, top)
    settings = {"iou": iou, "strict_iou": strict_iou, "edge_tolerance": edge_tolerance,
                "all_labelled": all_labelled, "min_effect": min_effect,
                "min_size_change": min_size_change, "level": level,
                "matching": "optimal assignment on IoU per image, class-agnostic"}
    return ConsistencyReport(
        dataset=ds.info.get("name"),
        annotators=L.names,
        settings=settings,
        agreement=agreement,
        pairs=pairs,
        classes=classes,
        annotator_rates=rates,
        conventions=conventions,
        images=images,
        notes=notes,
        seconds=round(time.perf_counter() - t0, 3),
        definitions=DEFINITIONS,
    )


DEFINITIONS = {
    "matching": "per image, optimal assignment (max total IoU) of two annotators' boxes with "
                "IoU >= iou, ignoring the class",
    "missing_box": "a box one annotator drew and the other did not (no partner at iou)",
    "class_mismatch": "a matched pair with different classes",
    "localisation": "a matched pair with IoU < strict_iou",
    "alpha": "Krippendorff's alpha (nominal) over objects; each annotator who labelled the "
             "image gives the object's class or 'no box'; annotators who did not label the "
             "image give no value",
    "alpha_boxes_only": "the same with 'no box' as a missing value: class agreement only; "
                        "missing boxes are reported apart",
    "class alpha": "binary alpha of 'is it this class?' over all objects",
    "rates": "leave-one-out: each annotator against the boxes of the others",
    "conventions": "an annotator differing from every other annotator in the same direction by "
                   "at least the minimum effect, with Bonferroni-corrected confidence intervals "
                   "clear of it",
}


# -- pairs --------------------------------------------------------------------------------------
def _pairs(L: Labels, matches: dict[tuple[int, int], PairMatch], strict: float, tol: float,
           names: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per pair of annotators: counts, rates, size ratio and confusions; plus the events
    (image row and class per disagreement) for the per-class and per-image views."""
    out = []
    ev_img: dict[str, list[np.ndarray]] = {k: [] for k in DISAGREEMENTS}
    ev_cls: dict[str, list[np.ndarray]] = {k: [] for k in DISAGREEMENTS}
    for (a, b), m in matches.items():
        ra, rb = L.rows_of(a), L.rows_of(b)
        both = L.labelled[:, a] & L.labelled[:, b]
        matched = np.zeros(len(L.image), bool)
        matched[m.ia] = matched[m.ib] = True
        cmp_a = np.arange(ra.start, ra.stop)[both[L.image[ra]]]
        cmp_b = np.arange(rb.start, rb.stop)[both[L.image[rb]]]
        only_a = cmp_a[~matched[cmp_a]]
        only_b = cmp_b[~matched[cmp_b]]
        ca, cb = L.category[m.ia], L.category[m.ib]
        mism = ca != cb
        loc = m.iou < strict
        missing = np.concatenate([only_a, only_b])
        ev_img["missing_box"].append(L.image[missing])
        ev_cls["missing_box"].append(L.category[missing])
        # one image event per disagreement; a class event for each class it involves
        ev_img["class_mismatch"].append(L.image[m.ia[mism]])
        ev_cls["class_mismatch"].append(np.concatenate([ca[mism], cb[mism]]))
        ev_img["localisation"].append(L.image[m.ia[loc]])
        ev_cls["localisation"].append(np.concatenate([ca[loc], cb[loc & mism]]))
        n_a, n_b, k = len(cmp_a), len(cmp_b), len(m.ia)
        log_ratio = np.log(np.maximum(_area(L.box[m.ib]), 1e-9) /
                           np.maximum(_area(L.box[m.ia]), 1e-9))
        geo_b = _classify(L.box[m.ib], L.box[m.ia], tol)  # b's box against a's
        size = _mean_ci(log_ratio)
        conf: dict[tuple[int, int], int] = {}
        for x, y in zip(ca[mism].tolist(), cb[mism].tolist(), strict=True):
            conf[(x, y)] = conf.get((x, y), 0) + 1
        A, B = L.names[a], L.names[b]
        out.append({
            "annotators": [A, B],
            "images": int(both.sum()),
            "boxes": {A: n_a, B: n_b},
            "matched": k,
            "missing_box": {f"{A} only": len(only_a), f"{B} only": len(only_b)},
            "class_mismatch": int(mism.sum()),
            "localisation": int(loc.sum()),
            "box_f1": 2 * k / (n_a + n_b) if n_a + n_b else None,
            "class_agreement": 1 - float(mism.mean()) if k else None,
            "mean_iou": float(m.iou.mean()) if k else None,
            "size_ratio": {
                "what": f"geometric mean of {B}'s box area / {A}'s over matched boxes",
                "ratio": None if size["mean"] is None else math.exp(size["mean"]),
                "ci95": None if size["ci95"] is None else [math.exp(v) for v in size["ci95"]],
                "n": size["n"]},
            "edges": {
                f"{B} looser": int(geo_b["loose"].sum()), f"{A} looser": int(geo_b["tight"].sum()),
                "edges differ both ways": int(geo_b["jitter"].sum()), "n": k,
                "mean_edge_offset": float(geo_b["offset"].mean()) if k else None},
            "confusions": [{f"{A}": names[x], f"{B}": names[y], "count": c}
                           for (x, y), c in sorted(conf.items(), key=lambda kv: -kv[1])],
            "_log_ratio": log_ratio,
            "_geo": geo_b,
            "_cats": (ca, cb),
        })
    events = {"image": {k: np.concatenate(v) if v else np.zeros(0, np.int64)
                        for k, v in ev_img.items()},
              "class": {k: np.concatenate(v) if v else np.zeros(0, np.int64)
                        for k, v in ev_cls.items()}}
    return out, events


# -- agreement over objects ---------------------------------------------------------------------
def _agreement(L: Labels, obj: Objects, names: list[str], pairs: list[dict[str, Any]],
               events: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    K = len(names)
    pres = obj.present
    lab = L.labelled[obj.image]
    cat = np.where(pres, L.category[obj.member], -1)
    value = np.where(pres, cat, np.where(lab, K, -1))  # K = "no box"
    C, M = value.shape
    unit = np.repeat(np.arange(C), M)
    v = value.ravel()
    ok = v >= 0
    counts = np.bincount(unit[ok] * (K + 1) + v[ok], minlength=C * (K + 1)).reshape(C, K + 1)
    alpha = krippendorff_alpha(counts)
    alpha_boxes = krippendorff_alpha(counts[:, :K])
    n_values = counts.sum(1)
    agreement = {
        "alpha": alpha,
        "alpha_boxes_only": alpha_boxes,
        "level": (None if alpha is None else "reliable" if alpha >= RELIABLE else
                  "tentative" if alpha >= TENTATIVE else "unreliable"),
        "objects": int(C),
        "objects_compared": int((n_values >= 2).sum()),
        "objects_all_agree": int(((counts.max(1) == n_values) & (n_values >= 2)).sum()),
        "images_compared": int((L.labelled.sum(1) >= 2).sum()),
        "boxes": int(len(L.image)),
        "disagreements": {k: int(len(events["image"][k])) for k in DISAGREEMENTS},
    }
    classes: dict[str, dict[str, Any]] = {}
    for c, cname in enumerate(names):
        yes = counts[:, c]
        no = n_values - yes
        boxes_c = {L.names[m]: int(np.sum((L.annotator == m) & (L.category == c)))
                   for m in range(len(L.names))}
        drawn = counts[:, :K].sum(1)
        classes[cname] = {
            "boxes": boxes_c,
            "alpha": krippendorff_alpha(np.stack([yes, no], 1)),
            "alpha_boxes_only": krippendorff_alpha(np.stack([yes, drawn - yes], 1)),
            "objects": int((yes > 0).sum()),
            **{k: int((events["class"][k] == c).sum()) for k in DISAGREEMENTS},
        }
    return agreement, classes


# -- per-annotator rates (leave-one-out) --------------------------------------------------------
def _rates(L: Labels, obj: Objects, names: list[str], tol: float
           ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    M = len(L.names)
    pres = obj.present
    lab = L.labelled[obj.image]
    mem = np.where(pres, obj.member, 0)
    cat = np.where(pres, L.category[mem], -1)
    boxes = np.where(pres[..., None], L.box[mem], np.nan)
    rates: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, Any]] = {}
    for j, X in enumerate(L.names):
        others = [k for k in range(M) if k != j]
        o_pres, o_lab = pres[:, others], lab[:, others]
        n_op = o_pres.sum(1)
        r: dict[str, Any] = {}
        s: dict[str, Any] = {}
        # miss: objects every other annotator who labelled the image drew
        elig = lab[:, j] & (n_op >= 1) & ~(o_lab & ~o_pres).any(1)
        missed = elig & ~pres[:, j]
        r["miss"] = _rate(int(missed.sum()), int(elig.sum()))
        s["miss"] = (int(missed.sum()), int(elig.sum()))
        ref_area = np.full(len(elig), np.nan)
        if elig.any():
            ref_area[elig] = nanmedian(_area(boxes[elig][:, others]), 1)
        by_size = {}
        for sname, lo, hi in SIZES:
            e = elig & (ref_area >= lo) & (ref_area < hi)
            by_size[sname] = _rate(int((e & missed).sum()), int(e.sum()))
            s[f"miss_{sname}"] = (int((e & missed).sum()), int(e.sum()))
        r["miss"]["by_size"] = by_size
        # extra: boxes none of the others drew, on images all of them labelled
        if M >= 3:
            e = pres[:, j] & o_lab.all(1)
            k = e & (n_op == 0)
            r["extra"] = _rate(int(k.sum()), int(e.sum()))
            s["extra"] = (int(k.sum()), int(e.sum()))
        # geometry against the per-edge median of two or more others who agree
        if M >= 3:
            g = pres[:, j] & (n_op >= 2)
            idx = np.flatnonzero(g)
            ob = boxes[idx][:, others]  # (n, M-1, 4)
            ref = nanmedian(ob, 1)
            agree = np.ones(len(idx), bool)
            for k in range(len(others)):
                has = ~np.isnan(ob[:, k, 0])
                d, t = _offsets(np.where(has[:, None], ob[:, k], ref), ref, tol)
                agree &= (np.abs(d) <= t).all(1)
            idx, ref = idx[agree], ref[agree]
            mine = L.box[obj.member[idx, j]]
            geo = _classify(mine, ref, tol)
            n = len(idx)
            for kind in ("loose", "tight", "jitter"):
                r[kind] = _rate(int(geo[kind].sum()), n)
                s[kind] = (int(geo[kind].sum()), n)
            log_ratio = np.log(np.maximum(_area(mine), 1e-9) / np.maximum(_area(ref), 1e-9))
            size = _mean_ci(log_ratio)
            r["size_ratio"] = {
                "ratio": None if size["mean"] is None else math.exp(size["mean"]),
                "ci95": None if size["ci95"] is None else [math.exp(v) for v in size["ci95"]],
                "n": n}
            r["mean_edge_offset"] = float(geo["offset"][geo["off"]].mean()) if geo[
                "off"].any() else 0.0
            s["log_ratio"] = log_ratio
        # confusion: objects the others labelled unanimously
        need = 2 if M >= 3 else 1
        lo_c = np.where(o_pres, cat[:, others], np.iinfo(np.int64).max).min(1)
        hi_c = np.where(o_pres, cat[:, others], -1).max(1)
        e = pres[:, j] & (n_op >= need) & (lo_c == hi_c)
        ref_c, my_c = hi_c[e], cat[e, j]
        K = len(names)
        table = np.bincount(ref_c * K + my_c, minlength=K * K).reshape(K, K)
        conf = {}
        for y in range(K):
            n = int(table[y].sum())
            for x in range(K):
                if x != y and table[y, x]:
                    conf[f"{names[y]}>{names[x]}"] = _rate(int(table[y, x]), n)
        r["confusion"] = conf
        s["confusion"] = table
        r["basis"] = ("the other annotators (leave-one-out)" if M >= 3 else
                      f"annotator {L.names[others[0]]} (with two annotators, box geometry "
                      "cannot be attributed to either: see the pair)")
        rates[X] = r
        samples[X] = s
    return rates, samples


# -- conventions --------------------------------------------------------------------------------
@dataclass
class _Test:
    kind: str
    who: str
    direction: str  # "above" | "below"
    key: str
    diffs: list[tuple[str, tuple[float, float] | None]] = field(default_factory=list)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _conventions(L: Labels, pairs: list[dict[str, Any]], rates: dict[str, dict[str, Any]],
                 samples: dict[str, dict[str, Any]], classes: list[str], min_effect: float,
                 min_size: float, level: float, tol: float) -> list[dict[str, Any]]:
    M = len(L.names)
    if M == 2:
        return _pair_conventions(pairs[0], classes, min_effect, min_size, level, tol)
    names = L.names
    rate_keys = ["miss", "miss_small", "miss_medium", "miss_large", "extra", "loose", "tight",
                 "jitter"]
    conf_cells: set[tuple[int, int]] = set()
    for X in names:
        t = samples[X]["confusion"]
        for y, x in zip(*np.nonzero(t), strict=True):
            if x != y:
                conf_cells.add((int(y), int(x)))
    tests: list[_Test] = []
    for X in names:
        for key in rate_keys:
            for direction in ("above", "below"):
                tests.append(_Test("rate", X, direction, key))
        for direction in ("above", "below"):
            tests.append(_Test("size", X, direction, "log_ratio"))
        for cell in sorted(conf_cells):
            tests.append(_Test("confusion", X, "above", f"{cell[0]}>{cell[1]}"))
    n_comparisons = len(tests) * (M - 1)
    z = _z(level / max(1, n_comparisons))
    margin = math.log1p(min_size)
    found: list[_Test] = []
    for test in tests:
        X = test.who
        ok = True
        for Y in names:
            if Y == X:
                continue
            ci = _compare(test, samples[X], samples[Y], z)
            test.diffs.append((Y, ci))
            if ci is None:
                ok = False
                break
            m = margin if test.kind == "size" else min_effect
            if test.direction == "above" and not ci[0] > m:
                ok = False
            if test.direction == "below" and not ci[1] < -m:
                ok = False
            if not ok:
                break
        if ok:
            found.append(test)
    return _statements(found, rates, samples, classes, tol)


def _compare(test: _Test, sx: dict[str, Any], sy: dict[str, Any], z: float
             ) -> tuple[float, float] | None:
    if test.kind == "size":
        if "log_ratio" not in sx or "log_ratio" not in sy:
            return None
        return _welch(sx["log_ratio"], sy["log_ratio"], z)
    if test.kind == "confusion":
        y, x = (int(v) for v in test.key.split(">"))
        tx, ty = sx["confusion"], sy["confusion"]
        nx, ny = int(tx[y].sum()), int(ty[y].sum())
        if not nx or not ny:
            return None
        return _newcombe(int(tx[y, x]), nx, int(ty[y, x]), ny, z)
    if test.key not in sx or test.key not in sy:
        return None
    (kx, nx), (ky, ny) = sx[test.key], sy[test.key]
    if not nx or not ny:
        return None
    return _newcombe(kx, nx, ky, ny, z)


def _others(rates: dict[str, dict[str, Any]], X: str, get: Any) -> str:
    return ", ".join(f"{Y} {get(r)}" for Y, r in rates.items() if Y != X)


def _statements(found: list[_Test], rates: dict[str, dict[str, Any]],
                samples: dict[str, dict[str, Any]], classes: list[str], tol: float
                ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    keys = {(t.who, t.kind, t.key, t.direction) for t in found}
    for t in found:
        X, r = t.who, rates[t.who]
        ev: dict[str, Any] = {"differences_ci": {Y: None if ci is None else
                                                 [round(ci[0], 4), round(ci[1], 4)]
                                                 for Y, ci in t.diffs}}
        if t.kind == "rate" and t.key.startswith("miss"):
            if t.key != "miss" and (X, "rate", "miss", t.direction) in keys:
                continue  # the size buckets go into the overall statement
            bucket = t.key.partition("_")[2]
            rr = r["miss"] if not bucket else r["miss"]["by_size"][bucket]
            what = "objects" if not bucket else f"{bucket} objects"
            ev.update(rr)
            sizes = "; by size: " + ", ".join(
                f"{s} {_pct(v['rate'])} ({v['k']}/{v['n']})"
                for s, v in r["miss"]["by_size"].items() if v["n"])
            if t.direction == "above":
                text = (f"{X} has no box for {_pct(rr['rate'])} of the {what} the other "
                        f"annotators drew ({rr['k']} of {rr['n']}; "
                        + _others(rates, X, lambda q, b=bucket: _pct(_miss(q, b))) + ")"
                        + (sizes if not bucket else ""))
            else:
                text = (f"{X} draws {what} the others leave out: it misses "
                        f"{_pct(rr['rate'])} of the {what} the others drew, vs "
                        + _others(rates, X, lambda q, b=bucket: _pct(_miss(q, b))))
            out.append({"kind": "miss", "annotator": X, "direction": t.direction,
                        "size": bucket or "all", "statement": text, "evidence": ev})
        elif t.kind == "rate" and t.key in ("loose", "tight"):
            if t.direction == "below":
                continue  # "X is less often loose" is the others' convention, stated for them
            rr = r[t.key]
            sr = r["size_ratio"]
            ev.update(rr)
            ev["size_ratio"] = sr
            where = "contains theirs" if t.key == "loose" else "lies inside theirs"
            text = (f"{X} draws {'looser' if t.key == 'loose' else 'tighter'} boxes than the "
                    f"others: on {_pct(rr['rate'])} of objects ({rr['k']} of {rr['n']}) its box "
                    f"{where} with a margin (> {100 * tol:g}% of the size; "
                    + _others(rates, X, lambda q, k=t.key: _pct(q[k]["rate"])) + ")")
            if sr["ratio"] is not None:
                text += (f"; on average {X}'s boxes are {_change(sr['ratio'])} in area "
                         f"(geometric mean ratio {sr['ratio']:.3f})")
            out.append({"kind": t.key, "annotator": X, "direction": "above",
                        "statement": text, "evidence": ev})
        elif t.kind == "rate" and t.key == "jitter":
            rr = r["jitter"]
            ev.update(rr)
            if t.direction == "above":
                text = (f"{X} places box edges differently from the others (off by > "
                        f"{100 * tol:g}% of the size, in both directions) on {_pct(rr['rate'])} "
                        f"of objects ({rr['k']} of {rr['n']}; "
                        + _others(rates, X, lambda q: _pct(q["jitter"]["rate"]))
                        + f"); mean edge offset {_pct(r.get('mean_edge_offset'))} of the size")
            else:
                text = (f"{X} places box edges more consistently than the others: off on "
                        f"{_pct(rr['rate'])} of objects vs "
                        + _others(rates, X, lambda q: _pct(q["jitter"]["rate"])))
            out.append({"kind": "jitter", "annotator": X, "direction": t.direction,
                        "statement": text, "evidence": ev})
        elif t.kind == "rate" and t.key == "extra":
            if t.direction == "below":
                continue
            rr = r["extra"]
            ev.update(rr)
            text = (f"{X} draws boxes none of the others drew on {_pct(rr['rate'])} of its boxes "
                    f"({rr['k']} of {rr['n']}; "
                    + _others(rates, X, lambda q: _pct(q["extra"]["rate"])) + ")")
            out.append({"kind": "extra", "annotator": X, "direction": "above",
                        "statement": text, "evidence": ev})
        elif t.kind == "size":
            kind = "loose" if t.direction == "above" else "tight"
            if (X, "rate", kind, "above") in keys:
                continue  # already said with the loose / tight statement
            sr = r["size_ratio"]
            ev["size_ratio"] = sr
            text = (f"{X}'s boxes are {_change(sr['ratio'])} in area than the others' on "
                    f"average (geometric mean ratio {sr['ratio']:.3f}, 95% CI "
                    f"{sr['ci95'][0]:.3f}-{sr['ci95'][1]:.3f}, {sr['n']} objects; "
                    + _others(rates, X, lambda q: f"{q['size_ratio']['ratio']:.3f}") + ")")
            out.append({"kind": "size", "annotator": X, "direction": t.direction,
                        "statement": text, "evidence": ev})
        elif t.kind == "confusion":
            y, x = (int(v) for v in t.key.split(">"))
            table = samples[X]["confusion"]
            k, n = int(table[y, x]), int(table[y].sum())
            yn, xn = classes[y], classes[x]
            ev.update(_rate(k, n))
            others = ", ".join(f"{Y} {int(samples[Y]['confusion'][y, x])} of "
                               f"{int(samples[Y]['confusion'][y].sum())}"
                               for Y in rates if Y != X)
            text = (f"{X} labels `{xn}` where the others label `{yn}` in {k} of {n} objects "
                    f"({_pct(k / n)}; {others})")
            out.append({"kind": "confusion", "annotator": X, "direction": "above",
                        "from": yn, "to": xn, "statement": text, "evidence": ev})
    return out


def _miss(r: dict[str, Any], bucket: str) -> float | None:
    rate: float | None = (r["miss"] if not bucket else r["miss"]["by_size"][bucket])["rate"]
    return rate


def _change(ratio: float) -> str:
    return (f"{100 * (ratio - 1):.0f}% larger" if ratio >= 1 else
            f"{100 * (1 - ratio):.0f}% smaller")


def _pair_conventions(p: dict[str, Any], names: list[str], min_effect: float, min_size: float,
                      level: float, tol: float) -> list[dict[str, Any]]:
    """Two annotators: directional statements about the pair (who differs cannot be said)."""
    A, B = p["annotators"]
    ca, cb = p["_cats"]
    geo = p["_geo"]
    n = p["matched"]
    only = p["missing_box"]
    n_a, n_b = p["boxes"][A], p["boxes"][B]
    conf_cells = sorted({(int(x), int(y)) for x, y in zip(ca.tolist(), cb.tolist(), strict=True)
                         if x != y} | {(int(y), int(x)) for x, y in
                                       zip(ca.tolist(), cb.tolist(), strict=True) if x != y})
    n_tests = 2 + 1 + 2 * len(conf_cells)
    z = _z(level / max(1, n_tests))
    out: list[dict[str, Any]] = []
    # missing boxes, each direction: B has no box for A's boxes, and the reverse
    for X, Y, k_x, n_y, k_y, n_x in ((B, A, only[f"{A} only"], n_a, only[f"{B} only"], n_b),
                                     (A, B, only[f"{B} only"], n_b, only[f"{A} only"], n_a)):
        if n_y and n_x:
            ci = _newcombe(k_x, n_y, k_y, n_x, z)
            if ci[0] > min_effect:
                out.append({"kind": "miss", "annotator": X, "direction": "above", "size": "all",
                            "statement": f"{X} has no box for {_pct(k_x / n_y)} of {Y}'s boxes "
                                         f"({k_x} of {n_y}); {Y} has none for "
                                         f"{_pct(k_y / n_x)} of {X}'s",
                            "evidence": {**_rate(k_x, n_y), "reverse": _rate(k_y, n_x),
                                         "difference_ci": [round(v, 4) for v in ci]}})
    # box size / looseness: B against A
    if n >= 2:
        lr = p["_log_ratio"]
        mean = float(lr.mean())
        se = float(lr.std(ddof=1)) / math.sqrt(n)
        lo, hi = mean - z * se, mean + z * se
        kb, ka = int(geo["loose"].sum()), int(geo["tight"].sum())
        bigger, smaller = (B, A) if mean > 0 else (A, B)
        k_big, k_small = (kb, ka) if mean > 0 else (ka, kb)
        m = math.log1p(min_size)
        loose_ci = _newcombe(k_big, n, k_small, n, z)
        if lo > m or hi < -m or loose_ci[0] > min_effect:
            ratio = math.exp(abs(mean))
            out.append({
                "kind": "size", "annotator": bigger, "direction": "above",
                "statement": f"{bigger}'s boxes are {_change(ratio)} than {smaller}'s on average "
                             f"(geometric mean area ratio {ratio:.3f} over {n} matched boxes); "
                             f"{bigger}'s box contains {smaller}'s with a margin (> "
                             f"{100 * tol:g}% of the size) on {_pct(k_big / n)} of them, the "
                             f"reverse on {_pct(k_small / n)}",
                "evidence": {"ratio": ratio, "log_ratio_ci": [lo, hi], "n": n,
                             "looser": _rate(k_big, n), "reverse": _rate(k_small, n)}})
    # class confusions, each direction
    for y, x in conf_cells:
        k_b = int(((ca == y) & (cb == x)).sum())  # B says x where A says y
        n_ay = int((ca == y).sum())
        k_a = int(((cb == y) & (ca == x)).sum())  # A says x where B says y
        n_by = int((cb == y).sum())
        if not n_ay or not n_by:
            continue
        ci = _newcombe(k_b, n_ay, k_a, n_by, z)
        if ci[0] > min_effect:
            out.append({
                "kind": "confusion", "annotator": B, "direction": "above",
                "from": names[y], "to": names[x],
                "statement": f"{B} labels `{names[x]}` where {A} labels `{names[y]}` in {k_b} of "
                             f"{n_ay} matched boxes ({_pct(k_b / n_ay)}; the reverse: {k_a} of "
                             f"{n_by})",
                "evidence": {**_rate(k_b, n_ay), "reverse": _rate(k_a, n_by),
                             "difference_ci": [round(v, 4) for v in ci]}})
    return out


# -- images -------------------------------------------------------------------------------------
def _rank_images(ds: Dataset, L: Labels, matches: dict[tuple[int, int], PairMatch],
                 events: dict[str, Any], obj: Objects, strict: float, names: list[str],
                 top: int) -> list[dict[str, Any]]:
    n_img = L.n_images
    per = {k: np.bincount(events["image"][k], minlength=n_img) for k in DISAGREEMENTS}
    total = np.sum([per[k] for k in DISAGREEMENTS], axis=0)
    n_obj = np.bincount(obj.image, minlength=n_img)
    order = np.lexsort((-(total / np.maximum(n_obj, 1)), -total))
    order = order[total[order] > 0][:top]
    images = ds.image_by_id()
    out: list[dict[str, Any]] = []
    for i in order.tolist():
        img = images[int(L.image_ids[i])]
        boxes: list[dict[str, Any]] = []
        for k, who in enumerate(L.names):
            block = L.rows_of(k)
            lo, hi = np.searchsorted(L.image[block], [i, i + 1])
            boxes += [{"annotator": who, "annotation_id": int(L.ann_id[r]),
                       "box": [round(float(v), 2) for v in L.box[r]],
                       "class": names[int(L.category[r])]}
                      for r in range(block.start + int(lo), block.start + int(hi))]
        out.append({
            "image_id": img.id, "file": img.file, "sha256": img.sha256,
            "disagreements": int(total[i]), "objects": int(n_obj[i]),
            **{k: int(per[k][i]) for k in DISAGREEMENTS},
            "labelled_by": [n for n, lab in zip(L.names, L.labelled[i], strict=True) if lab],
            "boxes": boxes, "events": [],
        })
    index = {e["image_id"]: e for e in out}
    pick = np.zeros(n_img, bool)
    pick[order] = True
    for (a, b), m in matches.items():
        A, B = L.names[a], L.names[b]
        sel = pick[L.image[m.ia]]
        for r1, r2, v in zip(m.ia[sel].tolist(), m.ib[sel].tolist(), m.iou[sel].tolist(),
                             strict=True):
            e = index[int(L.image_ids[L.image[r1]])]
            c1, c2 = names[int(L.category[r1])], names[int(L.category[r2])]
            if c1 != c2:
                e["events"].append({"type": "class_mismatch", "annotators": [A, B],
                                    "classes": [c1, c2], "iou": round(v, 3)})
            if v < strict:
                e["events"].append({"type": "localisation", "annotators": [A, B],
                                    "classes": [c1, c2], "iou": round(v, 3)})
        for who, other, block, matched, col in ((A, B, L.rows_of(a), m.ia, b),
                                                (B, A, L.rows_of(b), m.ib, a)):
            r = np.arange(block.start, block.stop)
            is_matched = np.zeros(len(L.image), bool)
            is_matched[matched] = True
            r = r[pick[L.image[r]] & L.labelled[L.image[r], col] & ~is_matched[r]]
            for x in r.tolist():
                index[int(L.image_ids[L.image[x]])]["events"].append(
                    {"type": "missing_box", "drawn_by": who, "not_by": other,
                     "class": names[int(L.category[x])],
                     "box": [round(float(v), 2) for v in L.box[x]]})
    return out


# -- text -----------------------------------------------------------------------------------------
def write_html(report: ConsistencyReport, ds: Dataset, path: str | Path, *,
               max_images: int = 12) -> Path:
    """A self-contained HTML page: tables, conventions, and the most inconsistent images drawn
    with each annotator's boxes in its own colour (``ds`` supplies the image files)."""
    from detops.data._consistency_html import write_html as _write

    return _write(report, ds, path, max_images=max_images)


def summary_lines(report: ConsistencyReport, *, max_conventions: int = 5) -> list[str]:
    """A few lines for a terminal: the verdict, then each convention.

    >>> from detops.data.dataset import Category, Dataset
    >>> ds = Dataset(categories=[Category(0, "star")])
    >>> img = ds.add_image("a.png", 64, 64)
    >>> _ = [ds.add_annotation(img.id, (1, 1, 20, 20), 0, annotator=w) for w in "AB"]
    >>> summary_lines(check_consistency(ds))[0]
    'annotators A, B: agreement alpha n/a (undefined); no systematic differences between annotators'
    """
    lines = [f"annotators {', '.join(report.annotators)}: {report.verdict}"]
    for c in report.conventions[:max_conventions]:
        lines.append(f"  - {c['statement']}")
    if len(report.conventions) > max_conventions:
        lines.append(f"  ... and {len(report.conventions) - max_conventions} more")
    return lines


def format_report(report: ConsistencyReport) -> str:
    """The terminal rendering of a report (what ``detops data consistency`` prints)."""
    a = report.agreement
    s = report.settings
    lines = [f"{report.dataset or 'dataset'}: {report.verdict}",
             f"  {a['images_compared']} images compared, {a['boxes']} boxes, {a['objects']} "
             f"objects; matching at IoU {s['iou']}, localisation below IoU {s['strict_iou']}",
             f"  alpha {_fmt(a['alpha'])} (missing box = 'no box' category), "
             f"alpha over drawn boxes only {_fmt(a['alpha_boxes_only'])}",
             "  disagreements: " + ", ".join(f"{k} {v}" for k, v in a["disagreements"].items()),
             "", "pairs:"]
    for p in report.pairs:
        A, B = p["annotators"]
        sr = p["size_ratio"]["ratio"]
        lines.append(
            f"  {A}-{B}: {p['images']} images, matched {p['matched']}, "
            + ", ".join(f"{k} {v}" for k, v in p["missing_box"].items())
            + f", class_mismatch {p['class_mismatch']}, localisation {p['localisation']}, "
            f"box F1 {_fmt(p['box_f1'])}, mean IoU {_fmt(p['mean_iou'])}, "
            f"area {B}/{A} {_fmt(sr)}")
    lines += ["", "classes (alpha / alpha boxes only; missing, class mismatches, localisation):"]
    for c, v in report.classes.items():
        lines.append(f"  {c:<14} {_fmt(v['alpha'])} / {_fmt(v['alpha_boxes_only'])}; "
                     f"{v['missing_box']}, {v['class_mismatch']}, {v['localisation']}")
    lines += ["", "annotators (against the others):"]
    for X, r in report.annotator_rates.items():
        parts = [f"miss {_pct(r['miss']['rate'])}"]
        for k in ("loose", "tight", "jitter", "extra"):
            if k in r:
                parts.append(f"{k} {_pct(r[k]['rate'])}")
        if "size_ratio" in r and r["size_ratio"]["ratio"] is not None:
            parts.append(f"area x{r['size_ratio']['ratio']:.3f}")
        conf = sorted(r["confusion"].items(), key=lambda kv: -kv[1]["k"])[:3]
        parts += [f"{k} {_pct(v['rate'])}" for k, v in conf]
        lines.append(f"  {X}: " + ", ".join(parts))
    lines += ["", "conventions:" if report.conventions else "conventions: none"]
    lines += [f"  - {c['statement']}" for c in report.conventions]
    if report.images:
        lines += ["", "most inconsistent images:"]
        for e in report.images[:10]:
            lines.append(f"  {e['file']} (id {e['image_id']}): {e['disagreements']} "
                         f"disagreements over {e['objects']} objects (missing "
                         f"{e['missing_box']}, class {e['class_mismatch']}, localisation "
                         f"{e['localisation']})")
    if report.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in report.notes]
    lines.append(f"\n({report.seconds:.2f}s)")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
