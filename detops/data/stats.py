"""What is in a dataset, in numbers and one picture: classes, boxes, sizes, light.

:func:`compute_stats` returns a JSON-serialisable dict, :func:`format_stats` a short text
summary, :func:`plot_stats` a one-figure PNG.

Conventions, stated once:

* Size buckets use the **box area** ``w*h`` (COCO uses its ``area`` field, the segmentation
  area, which we do not carry): small ``area < 32**2``, medium ``32**2 <= area < 96**2``,
  large ``area >= 96**2``. Each box lands in exactly one bucket (COCOeval's ranges are closed
  at both ends, so there a box of exactly 32x32 counts as small *and* medium).
* Brightness is the mean gray level (0-255, ITU-R 601 luma) of an image; contrast is the RMS
  contrast, the standard deviation of its gray levels. Both are measured on a view of about
  64 px (JPEG DCT-scaled decode, otherwise a box-filter reduce), which keeps the mean and
  slightly lowers the contrast of fine texture.
* Image sizes are the declared ``width x height`` of the records (``validate`` checks them).
* Missing and unreadable files are counted (``counts.unreadable``), never raised.

>>> from detops.data.dataset import Dataset, Category
>>> ds = Dataset(categories=[Category(0, "circle")])
>>> img = ds.add_image("/nonexistent/a.png", 64, 48)
>>> _ = ds.add_annotation(img.id, (0, 0, 40, 40), 0)
>>> s = compute_stats(ds, workers=1)
>>> s["counts"]["unreadable"], s["classes"], s["size_buckets"]["medium"]
(1, {'circle': 1}, 1)
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image

from detops.data._pool import map_ordered
from detops.data.dataset import Dataset

__all__ = ["compute_stats", "format_stats", "plot_stats", "SMALL_AREA", "LARGE_AREA"]

SMALL_AREA = 32**2  # area < SMALL_AREA: small
LARGE_AREA = 96**2  # area >= LARGE_AREA: large; in between: medium
_VIEW = 64  # px, the side of the downscaled view for brightness/contrast
_PCTS = (0, 5, 25, 50, 75, 95, 100)
_BRIGHTNESS_EDGES = list(range(0, 257, 8))  # 32 bins over 0..255
_CONTRAST_EDGES = list(range(0, 129, 4))  # 32 bins; the std of 0..255 values is at most 127.5


# -- per image (runs in worker threads) -----------------------------------------------------
def _gray_view(path: str) -> tuple[float, float] | str:
    """(mean, std) of the gray levels of a ~64 px view, or "missing" / "unreadable"."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # libjpeg decodes straight to luma at 1/2..1/8 scale: a fraction of the work.
                im.draft("L", (_VIEW, _VIEW))
            gray = im.convert("L")
    except FileNotFoundError:
        return "missing"
    except Exception:  # truncated, corrupt, not an image: counted by the caller
        return "unreadable"
    factor = min(gray.size) // _VIEW
    if factor > 1:
        gray = gray.reduce(factor)
    a = np.asarray(gray, dtype=np.float64)
    if a.size == 0:
        return "unreadable"
    return float(a.mean()), float(a.std())


# -- summaries ------------------------------------------------------------------------------
def _r(v: float) -> float:
    return round(float(v), 3)


def _dist(
    values: Sequence[float] | np.ndarray, edges: Sequence[float] | None = None
) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"n": int(a.size)}
    if a.size:
        out["mean"] = _r(a.mean())
        out["percentiles"] = {f"p{p}": _r(v) for p, v in zip(_PCTS, np.percentile(a, _PCTS),
                                                              strict=True)}
    else:
        out["mean"] = None
        out["percentiles"] = {f"p{p}": None for p in _PCTS}
    if edges is not None:
        counts, _ = np.histogram(a, bins=np.asarray(edges, dtype=np.float64))
        out["histogram"] = {"edges": list(edges), "counts": [int(c) for c in counts]}
    return out


def _count_hist(per_image: list[int]) -> dict[str, Any]:
    """Histogram of small integers: bin k is ``[edges[k], edges[k+1])``."""
    a = np.asarray(per_image, dtype=np.int64)
    top = int(a.max()) if a.size else 0
    step = max(1, math.ceil((top + 1) / 30))  # at most ~30 bars
    edges = list(range(0, top + step + 1, step))
    counts, _ = np.histogram(a, bins=np.asarray(edges))
    return {
        "histogram": {"edges": edges, "counts": [int(c) for c in counts]},
        "mean": _r(a.mean()) if a.size else None,
        "median": _r(np.median(a)) if a.size else None,
        "max": top,
    }


def _size_hist2d(w: np.ndarray, h: np.ndarray) -> dict[str, Any]:
    # Half-octave bins from 1 px: box sizes span orders of magnitude, so log scale reads best.
    top = max(2.0, float(w.max()) if w.size else 2.0, float(h.max()) if h.size else 2.0)
    edges = 2.0 ** np.arange(0, math.ceil(math.log2(top)) + 0.5, 0.5)
    if edges.size < 2:
        edges = np.array([1.0, 2.0])
    lo, hi = edges[0], edges[-1]
    counts, _, _ = np.histogram2d(np.clip(w, lo, hi), np.clip(h, lo, hi), bins=[edges, edges])
    return {
        "edges": [_r(e) for e in edges],
        "counts": [[int(c) for c in row] for row in counts],  # [width bin][height bin]
        "note": "box width (rows) x height (columns), half-octave bins, clipped to the edges",
    }


def compute_stats(
    ds: Dataset,
    *,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Counts and distributions of ``ds`` as a JSON-serialisable dict (see the module docstring).

    Image files are decoded at reduced size on ``workers`` threads (0 = one per CPU);
    ``progress(done, total)`` is called from the calling thread as images finish.
    """
    names = ds.category_names
    n_cat = len(names)
    anns_by_image = ds.annotations_by_image()
    image_ids = {img.id for img in ds.images}

    views = map_ordered(lambda img: _gray_view(str(ds.image_path(img))), list(ds.images),
                        workers=workers, progress=progress)
    measured = [v for v in views if not isinstance(v, str)]
    brightness = [v[0] for v in measured]
    contrast = [v[1] for v in measured]

    def class_name(cid: int) -> str | None:
        return names[cid] if 0 <= cid < n_cat else None

    classes: Counter[str] = Counter({n: 0 for n in names})
    unknown = 0
    for a in ds.annotations:
        name = class_name(a.category_id)
        if name is None:
            unknown += 1
        else:
            classes[name] += 1

    boxes = np.array([a.box for a in ds.annotations], dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    b = boxes[finite]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    area = np.clip(bw, 0, None) * np.clip(bh, 0, None)
    positive = (bw > 0) & (bh > 0)

    per_image = [len(anns_by_image.get(img.id, [])) for img in ds.images]
    sizes = Counter((img.width, img.height) for img in ds.images)

    stats: dict[str, Any] = {
        "name": str(ds.info.get("name") or "dataset"),
        "counts": {
            "images": len(ds.images),
            "annotations": len(ds.annotations),
            "categories": n_cat,
            "annotators": len(ds.annotators),
            "images_without_labels": sum(1 for n in per_image if n == 0),
            "unreadable": len(views) - len(measured),  # includes missing
            "missing": sum(1 for v in views if v == "missing"),
            "unknown_category": unknown,
            "orphan_annotations": sum(1 for a in ds.annotations if a.image_id not in image_ids),
            "non_finite_boxes": int((~finite).sum()),
            "crowd": sum(1 for a in ds.annotations if a.iscrowd),
        },
        "classes": dict(sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "boxes_per_image": _count_hist(per_image),
        "size_buckets": {
            "small": int((area < SMALL_AREA).sum()),
            "medium": int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum()),
            "large": int((area >= LARGE_AREA).sum()),
            "definition": (f"box area w*h in px (COCO uses its segmentation 'area' field): "
                           f"small < {SMALL_AREA}, medium < {LARGE_AREA}, large >= {LARGE_AREA}"),
        },
        "box_width": _dist(bw),
        "box_height": _dist(bh),
        "box_aspect": _dist(bw[positive] / bh[positive]),  # width / height
        "box_size_hist2d": _size_hist2d(bw[positive], bh[positive]),
        "image_sizes": [
            {"width": w, "height": h, "count": c}
            for (w, h), c in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "brightness": _dist(brightness, _BRIGHTNESS_EDGES),
        "contrast": _dist(contrast, _CONTRAST_EDGES),
    }

    if any(img.split is not None for img in ds.images):
        splits: dict[str, dict[str, Any]] = {}
        for img in sorted(ds.images, key=lambda i: (i.split is None, i.split or "")):
            s = splits.setdefault(img.split or "unassigned",
                                  {"images": 0, "annotations": 0, "classes": Counter()})
            s["images"] += 1
            for a in anns_by_image.get(img.id, []):
                s["annotations"] += 1
                s["classes"][class_name(a.category_id) or "unknown"] += 1
        for s in splits.values():
            s["classes"] = dict(sorted(s["classes"].items(), key=lambda kv: (-kv[1], kv[0])))
        stats["splits"] = splits

    if ds.annotators:
        per: dict[str, dict[str, Any]] = defaultdict(lambda: {"annotations": 0, "images": set()})
        for a in ds.annotations:
            key = a.annotator if a.annotator is not None else "unattributed"
            per[key]["annotations"] += 1
            per[key]["images"].add(a.image_id)
        stats["annotators"] = {
            k: {"annotations": v["annotations"], "images": len(v["images"])}
            for k, v in sorted(per.items())
        }
    return stats


# -- text -----------------------------------------------------------------------------------
def format_stats(stats: dict[str, Any], *, max_classes: int = 15) -> str:
    """A short plain-text summary of :func:`compute_stats` output."""
    c = stats["counts"]
    lines = [
        f"{stats['name']}: {c['images']} images, {c['annotations']} boxes, "
        f"{c['categories']} classes, {c['annotators']} annotators",
    ]
    problems = [f"{c[k]} {k.replace('_', ' ')}" for k in
                ("unreadable", "missing", "images_without_labels", "unknown_category",
                 "orphan_annotations", "non_finite_boxes") if c.get(k)]
    if problems:
        lines.append("  note: " + ", ".join(problems))
    classes = list(stats["classes"].items())
    if classes:
        width = max(len(n) for n, _ in classes[:max_classes])
        total = max(1, sum(n for _, n in classes))
        lines.append("classes:")
        for name, n in classes[:max_classes]:
            lines.append(f"  {name:<{width}}  {n:>7}  {100 * n / total:5.1f}%")
        if len(classes) > max_classes:
            rest = sum(n for _, n in classes[max_classes:])
            lines.append(f"  ... {len(classes) - max_classes} more classes, {rest} boxes")
    bpi = stats["boxes_per_image"]
    if bpi["mean"] is not None:
        lines.append(f"boxes per image: mean {bpi['mean']:g}, median {bpi['median']:g}, "
                     f"max {bpi['max']}")
    sb = stats["size_buckets"]
    lines.append(f"box sizes (by box area): small {sb['small']}, medium {sb['medium']}, "
                 f"large {sb['large']}")
    for key, label in (("box_width", "box width px"), ("box_height", "box height px"),
                       ("box_aspect", "box aspect w/h"), ("brightness", "brightness 0-255"),
                       ("contrast", "contrast (RMS)")):
        p = stats[key]["percentiles"]
        if p["p50"] is not None:
            lines.append(f"{label}: p5 {p['p5']:g}, median {p['p50']:g}, p95 {p['p95']:g}")
    sizes = stats["image_sizes"]
    if sizes:
        shown = ", ".join(f"{s['width']}x{s['height']} ({s['count']})" for s in sizes[:3])
        more = f", +{len(sizes) - 3} more" if len(sizes) > 3 else ""
        lines.append(f"image sizes: {shown}{more}")
    for key in ("splits", "annotators"):
        if key in stats:
            parts = ", ".join(f"{k} {v['images']} img/{v['annotations']} boxes"
                              for k, v in stats[key].items())
            lines.append(f"{key}: {parts}")
    return "\n".join(lines)


# -- picture --------------------------------------------------------------------------------
def plot_stats(stats: dict[str, Any], path: str | PathLike[str], *, max_classes: int = 20) -> None:
    """Write one PNG (2x3 panels) summarising :func:`compute_stats` output to ``path``."""
    # A bare Figure renders with the Agg canvas without touching pyplot or the process-wide
    # backend, so importing detops (or calling this from a GUI app) changes nothing.
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    c = stats["counts"]
    fig = Figure(figsize=(16, 9.5), dpi=100, layout="constrained")
    title = (f"{stats['name']} — {c['images']:,} images, {c['annotations']:,} boxes, "
             f"{c['categories']} classes")
    if c.get("unreadable"):
        title += f", {c['unreadable']} unreadable"
    fig.suptitle(title, fontsize=17, fontweight="bold")
    axes = fig.subplots(2, 3)
    for ax in axes.flat:
        # Counts: no "2.5 images" ticks.
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)

    # Classes: the most common at the top; long tails folded into one bar.
    ax = axes[0, 0]
    items = list(stats["classes"].items())
    if len(items) > max_classes:
        rest = items[max_classes - 1:]
        items = items[:max_classes - 1] + [(f"{len(rest)} other classes",
                                            sum(n for _, n in rest))]
    if items:
        labels = [n if len(n) <= 22 else n[:21] + "…" for n, _ in items][::-1]
        values = [v for _, v in items][::-1]
        bars = ax.barh(range(len(values)), values, color="#4C72B0")
        ax.set_yticks(range(len(values)), labels, fontsize=max(7, 12 - len(values) // 5))
        ax.bar_label(bars, [f"{v:,}" for v in values], padding=3, fontsize=9)
        ax.set_xlim(0, max(values + [1]) * 1.18)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_title("Boxes per class", fontsize=13)
    ax.set_xlabel("boxes", fontsize=12)
    ax.grid(axis="y", visible=False)

    ax = axes[0, 1]
    bpi = stats["boxes_per_image"]
    edges = bpi["histogram"]["edges"]
    widths = [hi - lo for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], bpi["histogram"]["counts"], width=widths, align="edge",
           color="#55A868", edgecolor="white")
    if bpi["mean"] is not None:
        ax.axvline(bpi["mean"], color="black", ls="--", lw=1.2, label=f"mean {bpi['mean']:g}")
        ax.legend(fontsize=10)
    ax.set_title("Boxes per image", fontsize=13)
    ax.set_xlabel("boxes in the image", fontsize=12)
    ax.set_ylabel("images", fontsize=12)

    ax = axes[0, 2]
    sb = stats["size_buckets"]
    names = ["small", "medium", "large"]
    vals = [sb[n] for n in names]
    total = max(1, sum(vals))
    bars = ax.bar(["small\n< 32²", "medium\n32²–96²", "large\n≥ 96²"], vals,
                  color=["#C44E52", "#DD8452", "#8172B3"])
    ax.bar_label(bars, [f"{v:,} ({100 * v / total:.0f}%)" for v in vals], padding=3, fontsize=10)
    ax.set_ylim(0, max(vals + [1]) * 1.15)
    ax.set_title("Box size (COCO buckets, by box area px²)", fontsize=13)
    ax.set_ylabel("boxes", fontsize=12)
    ax.grid(axis="x", visible=False)

    ax = axes[1, 0]
    h2 = stats["box_size_hist2d"]
    e = np.asarray(h2["edges"], dtype=float)
    counts = np.asarray(h2["counts"], dtype=float)
    if counts.sum() > 0:
        mesh = ax.pcolormesh(e, e, np.ma.masked_equal(counts.T, 0), cmap="viridis",
                             norm=LogNorm(vmin=1, vmax=max(1.0, counts.max())))
        cbar = fig.colorbar(mesh, ax=ax, label="boxes")
        cbar.minorticks_off()
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        xs = np.geomspace(e[0], e[-1], 50)
        for a_, lbl in ((SMALL_AREA, "area 32²"), (LARGE_AREA, "area 96²")):
            ax.plot(xs, a_ / xs, color="crimson", lw=1.2, ls="--")
            ax.annotate(lbl, (math.sqrt(a_), math.sqrt(a_)), color="crimson", fontsize=9,
                        ha="left", va="bottom",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})
        # Zoom on the occupied bins; label ticks in plain pixels rather than powers of two.
        wi, hi_ = np.nonzero(counts)
        ax.set_xlim(e[wi.min()], e[wi.max() + 1])
        ax.set_ylim(e[hi_.min()], e[hi_.max() + 1])
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.minorticks_off()  # unlabelled minor ticks on log axes cost seconds to lay out
    ax.set_title("Box width vs height", fontsize=13)
    ax.set_xlabel("width (px)", fontsize=12)
    ax.set_ylabel("height (px)", fontsize=12)

    for ax, key, color, label in ((axes[1, 1], "brightness", "#937860", "mean gray level (0–255)"),
                                  (axes[1, 2], "contrast", "#DA8BC3",
                                   "RMS contrast (std of gray levels)")):
        d = stats[key]
        edges = d["histogram"]["edges"]
        ax.bar(edges[:-1], d["histogram"]["counts"], width=edges[1] - edges[0], align="edge",
               color=color, edgecolor="white")
        p = d["percentiles"]
        if p["p50"] is not None:
            ax.axvline(p["p50"], color="black", ls="--", lw=1.2, label=f"median {p['p50']:.1f}")
            ax.legend(fontsize=10)
        # Brightness keeps its absolute 0-255 scale; contrast zooms on the occupied range.
        occupied = [i for i, n in enumerate(d["histogram"]["counts"]) if n]
        right = edges[-1] if key == "brightness" or not occupied else min(
            edges[-1], max(32, edges[occupied[-1] + 1] * 1.15))
        ax.set_xlim(edges[0], right)
        ax.set_title(f"Image {key} ({d['n']:,} images)", fontsize=13)
        ax.set_xlabel(label, fontsize=12)
        ax.set_ylabel("images", fontsize=12)

    fig.savefig(path, format="png")
