"""Shape geometry and the scene painter behind ``detops.data.synth``.

Geometry lives in *edge* coordinates: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so a box
``(x1, y1, x2, y2)`` is exactly what ``Dataset`` stores. Every shape is a list of polygons (the
first is the outline, later ones are holes), which makes the label box the min/max of the outline
vertices: exact to what is drawn, whatever the rotation, and independent of image encoding.

Vertices go to ``ImageDraw`` unchanged: PIL fills every pixel cell the polygon touches, so the
rendered mask's extent is the label box rounded outwards (never more than 1 px from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Polygon = np.ndarray  # (K, 2) float64, x then y

# Gaussian noise is cut from a fixed bank of normals at a random offset: one slice instead of
# 300k fresh draws per image (5 ms of a ~15 ms budget). Windows of one bank overlap between
# images, which no detector can exploit, and the bank is the same in every process.
_BANK_SIZE = 1 << 21
_bank: np.ndarray | None = None


def gaussian(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Float32 gaussian noise of standard deviation ``sigma``."""
    global _bank
    n = math.prod(shape)
    if n > _BANK_SIZE // 2:
        return rng.standard_normal(size=shape, dtype=np.float32) * np.float32(sigma)
    if _bank is None:
        _bank = np.random.default_rng(0x5EED).standard_normal(_BANK_SIZE, dtype=np.float32)
    off = int(rng.integers(0, _BANK_SIZE - n + 1))
    return _bank[off:off + n].reshape(shape) * np.float32(sigma)


def _regular(k: int, phase: float = 0.0) -> Polygon:
    t = phase + 2.0 * math.pi * np.arange(k) / k
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> Polygon:
    outer = _regular(points, -math.pi / 2)
    inner_pts = inner * _regular(points, -math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.33) -> Polygon:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
         (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )


def _arrow() -> Polygon:
    return np.array(
        [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
        dtype=float,
    )


# Unit shapes centred on 0 within radius ~1: outline first, holes after.
SHAPES: dict[str, list[Polygon]] = {
    "circle": [_regular(48)],
    "square": [_regular(4, math.pi / 4)],
    "triangle": [_regular(3, -math.pi / 2)],
    "star": [_star()],
    "cross": [_cross()],
    "hexagon": [_regular(6)],
    "ring": [_regular(48), 0.55 * _regular(48)],
    "arrow": [_arrow()],
}


@dataclass(slots=True)
class Placed:
    """A shape placed in an image: polygons in edge coordinates and its exact box."""

    shape: str
    polygons: list[Polygon]
    box: tuple[float, float, float, float]
    labeled: bool = True
    color: tuple[int, int, int] = (0, 0, 0)
    visible: float = 1.0  # fraction of its pixels not covered by later objects or occluders
    extra: dict[str, float] = field(default_factory=dict)


def place(shape: str, size: float, angle: float, cx: float, cy: float) -> list[Polygon]:
    """Rotate ``shape`` by ``angle``, scale so its box's longer side is ``size``, centre it."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    polys = [p @ rot.T for p in SHAPES[shape]]
    outline = polys[0]
    ext = outline.max(axis=0) - outline.min(axis=0)
    k = size / float(ext.max())
    mid = (outline.max(axis=0) + outline.min(axis=0)) / 2.0
    return [(p - mid) * k + (cx, cy) for p in polys]


def box_of(polygons: list[Polygon], width: int, height: int) -> tuple[float, float, float, float]:
    """The tight box of the outline polygon, clipped to the image."""
    lo = polygons[0].min(axis=0)
    hi = polygons[0].max(axis=0)
    return (
        round(float(np.clip(lo[0], 0, width)), 3),
        round(float(np.clip(lo[1], 0, height)), 3),
        round(float(np.clip(hi[0], 0, width)), 3),
        round(float(np.clip(hi[1], 0, height)), 3),
    )


def mask_crop(polygons: list[Polygon], ox: int, oy: int, w: int, h: int) -> Image.Image:
    """An ``L`` mask of size ``(w, h)`` whose top-left pixel is image pixel ``(ox, oy)``."""
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for i, p in enumerate(polygons):
        pts = [(float(x) - ox, float(y) - oy) for x, y in p]
        d.polygon(pts, fill=0 if i else 255)
    return m


def render_mask(polygons: list[Polygon], width: int, height: int) -> np.ndarray:
    """The shape alone on a blank ``(height, width)`` canvas, as a bool array (for tests)."""
    return np.asarray(mask_crop(polygons, 0, 0, width, height)) > 0


def _crop_window(box: tuple[float, float, float, float], width: int, height: int
                 ) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    ox, oy = max(0, int(math.floor(x1)) - 1), max(0, int(math.floor(y1)) - 1)
    ex, ey = min(width, int(math.ceil(x2)) + 1), min(height, int(math.ceil(y2)) + 1)
    return ox, oy, max(1, ex - ox), max(1, ey - oy)


# -- painting ------------------------------------------------------------------------------


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-frequency colour noise + a linear gradient + fine grain, float32 (H, W, 3)."""
    base = rng.uniform(60, 190, size=3)
    gx, gy = rng.integers(3, 8, size=2)
    blobs = rng.normal(0.0, rng.uniform(12, 35), size=(int(gy), int(gx), 3))
    # One uint8 RGB resize instead of three float ones; the base colour rides in the offset.
    small = np.clip(blobs + base, 0, 255).astype(np.uint8)
    low = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    theta = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(10, 45)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32) * np.float32(amp * math.cos(theta))
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32) * np.float32(amp * math.sin(theta))
    plane = gaussian(rng, (height, width), rng.uniform(3, 9))  # grain, the same in R, G and B
    plane += xs[None, :]
    plane += ys[:, None]
    out = np.asarray(low, dtype=np.float32)
    out += plane[..., None]
    return out


def random_color(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 70.0
                 ) -> tuple[int, int, int]:
    """A random colour at least ``min_dist`` (RGB distance) from ``avoid`` where possible."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.integers(0, 256, size=3)
        d = float(np.linalg.norm(c - avoid))
        if d >= min_dist:
            return int(c[0]), int(c[1]), int(c[2])
        if d > best_d:
            best, best_d = c, d
    assert best is not None
    return int(best[0]), int(best[1]), int(best[2])


def shaded_fill(rng: np.random.Generator, color: tuple[int, int, int], w: int, h: int
                ) -> Image.Image:
    """A ``(w, h)`` RGB patch of ``color`` with a random linear shading, so fills are not flat."""
    theta = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(5, 40)
    xs = (np.arange(w, dtype=np.float32) / max(1, w - 1) - 0.5) * np.float32(amp * math.cos(theta))
    ys = (np.arange(h, dtype=np.float32) / max(1, h - 1) - 0.5) * np.float32(amp * math.sin(theta))
    arr = (xs[None, :] + ys[:, None])[..., None] + np.asarray(color, dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def paint_object(img: Image.Image, ids: np.ndarray, idx: int, obj: Placed,
                 rng: np.random.Generator) -> int:
    """Paint ``obj`` into ``img``, write ``idx`` into the owner map ``ids`` where it shows, and
    return its area in pixels."""
    ox, oy, w, h = _crop_window(obj.box, img.width, img.height)
    m = mask_crop(obj.polygons, ox, oy, w, h)
    img.paste(shaded_fill(rng, obj.color, w, h), (ox, oy), m)
    inside = np.asarray(m) > 0
    ids[oy:oy + h, ox:ox + w][inside] = idx
    return int(inside.sum())


def paint_occluder(img: Image.Image, ids: np.ndarray, bg: np.ndarray, target: Placed,
                   rng: np.random.Generator) -> None:
    """Cover part of ``target`` with an unlabeled patch: a background cut-out or a colour blob."""
    x1, y1, x2, y2 = target.box
    size = max(x2 - x1, y2 - y1) * rng.uniform(0.3, 0.55)
    outline = target.polygons[0]
    vx, vy = outline[rng.integers(len(outline))]
    # Centre the patch between the object's centre and one of its vertices so it bites an edge.
    t = rng.uniform(0.45, 0.9)
    cx = (x1 + x2) / 2 * (1 - t) + vx * t
    cy = (y1 + y2) / 2 * (1 - t) + vy * t
    k = int(rng.integers(4, 8))
    ang = np.sort(rng.uniform(0, 2 * math.pi, size=k))
    rad = size / 2 * rng.uniform(0.6, 1.0, size=k)
    poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
    box = box_of([poly], img.width, img.height)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return
    ox, oy, w, h = _crop_window(box, img.width, img.height)
    m = mask_crop([poly], ox, oy, w, h)
    if rng.random() < 0.5:
        # A patch of background from elsewhere: the object seems to vanish behind the scene.
        sx = int(rng.integers(0, max(1, img.width - w)))
        sy = int(rng.integers(0, max(1, img.height - h)))
        patch = np.clip(bg[sy:sy + h, sx:sx + w], 0, 255).astype(np.uint8)
        fill = Image.fromarray(patch)
    else:
        r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
        fill = shaded_fill(rng, (r, g, b), w, h)
    img.paste(fill, (ox, oy), m)
    ids[oy:oy + h, ox:ox + w][np.asarray(m) > 0] = -1


def paint_distractors(img: Image.Image, count: int, rng: np.random.Generator) -> None:
    """Unlabeled strokes: straight lines and arcs of random colour and width."""
    d = ImageDraw.Draw(img)
    W, H = img.width, img.height
    for _ in range(count):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            x0, x1 = rng.uniform(0, W, size=2)
            y0, y1 = rng.uniform(0, H, size=2)
            d.line([(float(x0), float(y0)), (float(x1), float(y1))], fill=color, width=width)
        else:
            r = float(rng.uniform(10, max(W, H) / 2))
            cx, cy = float(rng.uniform(0, W)), float(rng.uniform(0, H))
            start = float(rng.uniform(0, 360))
            d.arc([cx - r, cy - r, cx + r, cy + r], start, start + float(rng.uniform(30, 200)),
                  fill=color, width=width)


def finish(img: Image.Image, *, brightness: float, contrast: float, noise: float, blur: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Camera effects: blur, then contrast about mid-grey and brightness shift, then noise.

    Returns the uint8 image and its mean R, G, B.
    """
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    arr = np.asarray(img, dtype=np.float32)
    arr *= np.float32(contrast)
    # +0.5 so the final truncation to uint8 rounds
    arr += np.float32(128.0 + brightness - 128.0 * contrast + 0.5)
    if noise > 0:
        arr += gaussian(rng, arr.shape, noise)
    np.clip(arr, 0, 255, out=arr)
    flat = arr.reshape(-1, 3)
    # a ones-vector product: numpy's column mean over (N, 3) is ten times slower
    means = (np.ones(len(flat), dtype=np.float32) @ flat) / len(flat) - 0.5
    return arr.astype(np.uint8), means
