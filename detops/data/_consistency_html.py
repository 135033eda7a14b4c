"""The consistency report as one self-contained HTML page (images inlined as base64 JPEG).

Each of the most inconsistent images is drawn with every annotator's boxes in its own colour
and class names beside them, next to the list of disagreements found there.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from detops.data.consistency import _pct
from detops.data.dataset import Dataset, ImageRecord

# tab10: distinct on photos and on the synthetic scenes alike
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
MAX_SIDE = 560


def draw_image(ds: Dataset, img_rec: ImageRecord, entry: dict[str, Any],
               colours: dict[str, str]) -> bytes:
    """JPEG bytes of the image with each annotator's boxes in its colour."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(ds.image_path(img_rec)) as im:
            canvas = im.convert("RGB")
        missing = False
    except (OSError, ValueError):
        canvas = Image.new("RGB", (img_rec.width, img_rec.height), (200, 200, 200))
        missing = True
    scale = min(1.0, MAX_SIDE / max(canvas.size)) if max(canvas.size) > MAX_SIDE else (
        min(2.0, 320 / max(canvas.size)))
    if scale != 1.0:
        canvas = canvas.resize((max(1, round(canvas.width * scale)),
                                max(1, round(canvas.height * scale))))
    draw = ImageDraw.Draw(canvas)
    if missing:
        draw.text((6, 6), "image file not found", fill=(0, 0, 0))
    order = list(colours)
    for b in entry["boxes"]:
        x1, y1, x2, y2 = (v * scale for v in b["box"])
        col = colours[b["annotator"]]
        draw.rectangle((x1, y1, x2, y2), outline=col, width=3)
        # one label row per annotator, so labels of coinciding boxes do not overprint
        row = order.index(b["annotator"])
        ty = y1 - 11 * (row + 1) if y1 >= 11 * (row + 1) else y2 + 1 + 11 * row
        draw.text((x1 + 1, ty), f"{b['annotator']}:{b['class']}", fill=col)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_html(report: Any, ds: Dataset, *, max_images: int = 12) -> str:
    colours = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(report.annotators)}
    a = report.agreement
    parts = [f"<h1>Label consistency: {html.escape(str(report.dataset or 'dataset'))}</h1>",
             f"<p class='verdict'>{html.escape(report.verdict)}</p>",
             "<p>Annotators: " + " ".join(
                 f"<span class='key' style='border-color:{c};color:{c}'>{html.escape(n)}</span>"
                 for n, c in colours.items()) + "</p>"]
    parts.append("<h2>Conventions</h2>")
    if report.conventions:
        parts.append("<ul>" + "".join(f"<li>{html.escape(c['statement'])}</li>"
                                      for c in report.conventions) + "</ul>")
    else:
        parts.append("<p>None: no annotator differs systematically from the others.</p>")
    parts.append("<h2>Agreement</h2>")
    parts.append(_table(
        ["alpha (missing = 'no box')", "alpha (drawn boxes only)", "objects",
         "objects all agree", "images compared", "boxes", "missing_box", "class_mismatch",
         "localisation"],
        [[a["alpha"], a["alpha_boxes_only"], a["objects"], a["objects_all_agree"],
          a["images_compared"], a["boxes"], *a["disagreements"].values()]]))
    parts.append("<h2>Pairs of annotators</h2>")
    parts.append(_table(
        ["pair", "images", "matched", "missing (each side)", "class_mismatch", "localisation",
         "box F1", "mean IoU", "area ratio (2nd / 1st)"],
        [[" - ".join(p["annotators"]), p["images"], p["matched"],
          ", ".join(f"{k} {v}" for k, v in p["missing_box"].items()), p["class_mismatch"],
          p["localisation"], p["box_f1"], p["mean_iou"], p["size_ratio"]["ratio"]]
         for p in report.pairs]))
    parts.append("<h2>Classes</h2>")
    parts.append(_table(
        ["class", "alpha", "alpha (boxes only)", "objects", "missing_box", "class_mismatch",
         "localisation", "boxes per annotator"],
        [[c, v["alpha"], v["alpha_boxes_only"], v["objects"], v["missing_box"],
          v["class_mismatch"], v["localisation"],
          ", ".join(f"{k} {n}" for k, n in v["boxes"].items())]
         for c, v in report.classes.items()]))
    parts.append("<h2>Annotators against the others</h2>")
    rows = []
    for X, r in report.annotator_rates.items():
        conf = ", ".join(f"{k} {_pct(v['rate'])}" for k, v in
                         sorted(r["confusion"].items(), key=lambda kv: -kv[1]["k"])[:3])
        size = r.get("size_ratio", {}).get("ratio") if "size_ratio" in r else None
        rows.append([X, _pct(r["miss"]["rate"]), *(_pct(r[k]["rate"]) if k in r else "n/a"
                                                  for k in ("loose", "tight", "jitter",
                                                            "extra")),
                     size, conf or "-"])
    parts.append(_table(["annotator", "miss", "loose", "tight", "jitter", "extra",
                         "area ratio", "confusions"], rows))
    if report.images:
        parts.append(f"<h2>Most inconsistent images (top {min(max_images, len(report.images))})"
                     "</h2>")
        by_id = ds.image_by_id()
        for e in report.images[:max_images]:
            jpg = base64.b64encode(draw_image(ds, by_id[e["image_id"]], e, colours)).decode()
            events = "".join(f"<li>{html.escape(_event(ev))}</li>" for ev in e["events"][:30])
            more = len(e["events"]) - 30
            if more > 0:
                events += f"<li>... {more} more</li>"
            parts.append(
                "<div class='img'><img alt='image " + html.escape(str(e["image_id"])) +
                f"' src='data:image/jpeg;base64,{jpg}'><div><h3>{html.escape(e['file'])} "
                f"(id {e['image_id']})</h3><p>{e['disagreements']} disagreements over "
                f"{e['objects']} objects: missing_box {e['missing_box']}, class_mismatch "
                f"{e['class_mismatch']}, localisation {e['localisation']}; labelled by "
                f"{html.escape(', '.join(e['labelled_by']))}</p><ul>{events}</ul></div></div>")
    parts.append("<h2>Definitions</h2><ul>" + "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in report.definitions.items()) + "</ul>")
    s = report.settings
    parts.append("<p>Settings: " + html.escape(", ".join(f"{k}={v}" for k, v in s.items()))
                 + f"; computed in {report.seconds:.2f}s.</p>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                    for n in report.notes) + "</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:"
             "left}.verdict{font-size:1.2em;font-weight:600}.key{border:2px solid;padding:0 6px;"
             "margin-right:6px;font-weight:600}.img{display:flex;gap:1em;margin:1em 0;"
             "border-top:1px solid #ddd;padding-top:1em}.img img{flex:none;align-self:flex-start}"
             ".img ul{font-size:.9em}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>label consistency</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _event(ev: dict[str, Any]) -> str:
    if ev["type"] == "missing_box":
        return (f"missing_box: {ev['drawn_by']} drew a {ev['class']} at {ev['box']}, "
                f"{ev['not_by']} did not")
    a, b = ev["annotators"]
    c1, c2 = ev["classes"]
    if ev["type"] == "class_mismatch":
        return f"class_mismatch: {a} says {c1}, {b} says {c2} (IoU {ev['iou']})"
    return f"localisation: {a} and {b} overlap at IoU {ev['iou']} ({c1})"


def write_html(report: Any, ds: Dataset, path: str | Path, *, max_images: int = 12) -> Path:
    """Write the report page to ``path`` and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, ds, max_images=max_images), encoding="utf-8")
    return out
