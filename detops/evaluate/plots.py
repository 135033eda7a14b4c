"""Pictures of evaluation results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detops.evaluate.coco import CocoResult

_MAX_LABELLED = 12


def plot_pr_curves(result: CocoResult, path: str | Path) -> Path:
    """Write a PNG of the precision-recall curves at IoU 0.5; return its path.

    One thin line per class with ground truth, the mean over classes as a thick black line
    (its area is AP50). The legend lists classes by AP50, best first, with AP50 and AP
    (0.5:0.95); past a dozen classes only the best and worst six are named and the rest are
    drawn grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    curves = result.pr_curves
    per_class = result.per_class
    names = sorted(curves, key=lambda c: -per_class[c]["AP50"])
    if len(names) > _MAX_LABELLED:
        half = _MAX_LABELLED // 2
        named = set(names[:half] + names[-half:])
    else:
        named = set(names)
    rec = result.recall_thresholds
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    colour_i = 0
    for name in reversed(names):  # best drawn last, on top
        p = curves[name]["iou50"]
        ap = per_class[name]
        if name in named:
            ax.plot(
                rec,
                p,
                lw=1.4,
                color=cmap(colour_i % 20),
                alpha=0.9,
                label=f"{name}  AP50 {ap['AP50']:.3f}  AP {ap['AP']:.3f}",
            )
            colour_i += 1
        else:
            grey = len(names) - len(named)
            first = not any(line.get_color() == "0.75" for line in ax.lines)
            label = f"{grey} other classes (between)" if first else None
            ax.plot(rec, p, lw=0.8, color="0.75", alpha=0.8, label=label)
    if names:
        mean = np.mean([curves[c]["iou50"] for c in names], axis=0)
        ax.plot(
            rec,
            mean,
            lw=3.2,
            color="black",
            label=f"mean of {len(names)} classes  AP50 {result.stats['AP50']:.3f}"
            f"  AP {result.stats['AP']:.3f}",
        )
    else:
        ax.text(0.5, 0.5, "no class has ground truth", ha="center", va="center")
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # mean first, then classes best to worst
        order = [len(handles) - 1] + list(range(len(handles) - 2, -1, -1))
        ax.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=8,
            frameon=False,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall at IoU 0.5 (COCO 101-point, area all, 100 dets/image)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
