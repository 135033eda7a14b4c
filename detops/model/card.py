"""Model cards: one markdown and one HTML page per model version.

Classes, metrics with bootstrap confidence intervals, per-class AP, errors, the PR curve,
latency measured on this machine through the serving runtime, and the data lineage.
"""

from __future__ import annotations

import base64
import html
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from detops.workspace import Workspace


def measure_latency(runtime: Any, *, size: tuple[int, int] | None = None, runs: int = 30,
                    batch: int = 1) -> dict[str, Any]:
    """p50 / p95 milliseconds per image of preprocess + inference + postprocess on this CPU."""
    w = size[0] if size else runtime.spec.input_width
    h = size[1] if size else runtime.spec.input_height
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
    runtime.predict(images)  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        runtime.predict(images)
        times.append((time.perf_counter() - t) * 1000 / batch)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "batch": batch, "image": f"{w}x{h}", "runs": runs}


def _ci(ev: dict[str, Any], key: str) -> str:
    ci = (ev.get("ci") or {}).get(key)
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "-"


def card_data(ws: Workspace, ref: str) -> dict[str, Any]:
    from detops.data.baseline import hlp_beside
    from detops.model.registry import get_model, load_runtime

    mv = get_model(ws, ref)
    runtime = load_runtime(ws, mv)
    ev = mv.evaluation or {}
    return {"model": mv, "latency": measure_latency(runtime),
            "cpu": platform.processor() or platform.machine(),
            "hlp": hlp_beside(ws, ev.get("dataset"), ev.get("split"))}


def render_markdown(d: dict[str, Any], pr_png: str | None) -> str:
    mv = d["model"]
    ev = mv.evaluation or {}
    c = ev.get("coco") or {}
    lines = [f"# Model card: {mv.ref}", ""]
    if mv.description:
        lines += [mv.description, ""]
    lines += [
        f"- aliases: {', '.join(mv.aliases) or '-'}",
        f"- ONNX sha256: `{mv.onnx}`",
        f"- classes ({len(mv.spec['class_names'])}): {', '.join(mv.spec['class_names'])}",
        f"- input: {mv.spec['input_width']}x{mv.spec['input_height']} ({mv.spec['resize']}), "
        f"adapter `{mv.spec['adapter']}`, deployed score threshold {mv.spec['score_threshold']}",
        "",
        "## Metrics",
        "",
        f"Evaluated on {ev.get('dataset', '-')} split `{ev.get('split', '-')}` "
        f"({ev.get('images', '-')} images, ground truth by annotator "
        f"{ev.get('annotator') or '-'}), through the ONNX runtime that serves it. "
        f"Engine: {ev.get('engine', '-')}.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for k in ("AP50", "AP", "AP75", "APs", "APm", "APl", "AR100"):
        if k in c:
            lines.append(f"| {k} | {c[k]:.3f} | {_ci(ev, k)} |")
    t = ev.get("at_threshold")
    if t:
        lines += ["", f"At score >= {t['score_threshold']} (IoU 0.5): precision "
                  f"{t['precision']:.3f}, recall {t['recall']:.3f}, F1 {t['f1']:.3f}."]
    if d.get("hlp"):
        from detops.data.baseline import beside_note, beside_rows

        lines += ["", "## Beside human-level performance", "",
                  "| metric | model | HLP | HLP 95% CI | model - HLP |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in beside_rows(ev, d["hlp"])]
        lines += ["", beside_note(ev, d["hlp"])]
    if ev.get("per_class"):
        lines += ["", "| class | AP50 | AP |", "|---|---|---|"]
        lines += [f"| {n} | {v['AP50']:.3f} | {v['AP']:.3f} |" for n, v in ev["per_class"].items()]
    if ev.get("errors"):
        e = ev["errors"]
        lines += ["", "Errors (TIDE-style; count, AP50 gained if that type alone were fixed):", ""]
        lines += [f"- {k}: {n} (" + ("n/a" if e["delta_ap50"].get(k) is None else
                  f"{e['delta_ap50'][k]:+.3f}") + ")" for k, n in e["counts"].items()]
    if pr_png:
        lines += ["", "## Precision-recall", "", f"![PR curve]({pr_png})"]
    lat = d["latency"]
    lines += ["", "## Latency on this machine", "",
              f"{lat['p50_ms']:.2f} ms p50, {lat['p95_ms']:.2f} ms p95 per {lat['image']} image "
              f"(decode excluded; preprocess + ONNX Runtime + post-process, batch {lat['batch']}, "
              f"{d['cpu']})."]
    lines += ["", "## Lineage", ""]
    lines += [f"- {k}: {v}" for k, v in mv.lineage.items()]
    return "\n".join(lines) + "\n"


def render_html(markdown_text: str, pr_bytes: bytes | None) -> str:
    """A self-contained page (figure inlined); a small markdown subset is enough here."""
    body: list[str] = []
    in_table = in_list = False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(x.strip()) for x in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{x}</th>" for x in cells) + "</tr>")
                continue
            body.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{html.escape(line[2:]).replace('`', '')}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("![") and pr_bytes:
            src = "data:image/png;base64," + base64.b64encode(pr_bytes).decode()
            body.append(f'<img alt="PR curve" src="{src}" style="max-width:720px">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;"
             "text-align:right}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>model card</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_model_card(ws: Workspace, ref: str, out: Path | None = None) -> list[Path]:
    d = card_data(ws, ref)
    mv = d["model"]
    folder = out or ws.root / "reports" / f"{mv.name}-v{mv.version}"
    folder.mkdir(parents=True, exist_ok=True)
    pr_bytes = None
    if mv.run_id:
        from detops.model.tracking import get_run

        digest = get_run(ws, mv.run_id).artifacts.get("pr_curve")
        if digest:
            pr_bytes = ws.artifacts.get_bytes(digest)
            (folder / "pr_curve.png").write_bytes(pr_bytes)
    md = render_markdown(d, "pr_curve.png" if pr_bytes else None)
    (folder / "card.md").write_text(md, encoding="utf-8")
    (folder / "card.html").write_text(render_html(md, pr_bytes), encoding="utf-8")
    return [folder / "card.md", folder / "card.html"]
