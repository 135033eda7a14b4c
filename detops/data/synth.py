"""Synthetic detection scenes with drift knobs and simulated, imperfect annotators.

``synthesize`` paints ``n`` images of coloured shapes on textured, noisy backgrounds and returns
a :class:`~detops.data.dataset.Dataset` whose boxes are exact to the drawn geometry. Knobs in
:class:`SceneConfig` move the image statistics a drift monitor watches (brightness, contrast,
noise, blur, object scale, class mix, occlusion, a never-labelled class); :class:`AnnotatorSpec`
makes labellers disagree in controlled, recorded ways (jittered, loose, confused or missed boxes).

Everything is a function of ``seed``: image ``i`` draws from ``SeedSequence([seed, i])`` and each
annotator from ``SeedSequence([seed, i, crc32(name), spec.seed, ...])``, so the bytes written do
not depend on ``workers`` or on which other annotators are present.

>>> import tempfile
>>> ds = synthesize(tempfile.mkdtemp(), n=2, seed=0, workers=1)
>>> ds.category_names
['circle', 'square', 'triangle', 'star', 'cross']
>>> all(0 <= a.box[0] < a.box[2] <= 320 for a in ds.annotations)
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detops.data import _shapes
from detops.data.dataset import Category, Dataset
from detops.errors import ConfigError

__all__ = [
    "SHAPES",
    "AnnotatorSpec",
    "SceneConfig",
    "parse_annotators",
    "synthesize",
]

SHAPES: tuple[str, ...] = tuple(_shapes.SHAPES)
DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# mean luminance (0..255) below / above which an image is tagged dark / bright
DARK_BELOW, BRIGHT_ABOVE = 80.0, 176.0

Box = tuple[float, float, float, float]


def _rate(owner: str, name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ConfigError(f"{owner}: {name}={value!r} must be a rate between 0 and 1")
    return v


@dataclass(frozen=True)
class SceneConfig:
    """What a synthetic scene looks like; every field is a drift knob.

    Sizes are the longer side of an object's box in pixels, drawn log-uniformly from
    ``[min_size, max_size] * scale`` (capped at the image's shorter side). ``brightness`` is an
    additive shift in grey levels and ``contrast`` a multiplier about mid-grey, each jittered per
    image by ``brightness_jitter`` (uniform, +-levels) and ``contrast_jitter`` (uniform, +-
    fraction). ``noise`` is the sigma of gaussian sensor noise, ``blur`` a gaussian radius.
    ``occlusion`` is the chance that an object gets an unlabeled patch over part of it;
    ``unseen_class`` the chance that an image also shows one unlabeled object of a shape from
    ``unseen_classes``. ``max_overlap`` caps the IoU between any two objects' boxes.
    """

    width: int = 320
    height: int = 320
    classes: tuple[str, ...] = DEFAULT_CLASSES
    min_size: float = 12.0
    max_size: float = 120.0
    scale: float = 1.0
    min_objects: int = 1
    max_objects: int = 10
    class_mix: Mapping[str, float] | None = None  # weights by class name; None = uniform
    brightness: float = 0.0
    brightness_jitter: float = 20.0
    contrast: float = 1.0
    contrast_jitter: float = 0.2
    noise: float = 6.0
    blur: float = 0.0
    occlusion: float = 0.15
    unseen_class: float = 0.0
    unseen_classes: tuple[str, ...] = ("ring", "arrow")
    max_overlap: float = 0.3
    distractors: int = 6  # up to this many unlabeled strokes (lines, arcs) per image

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "unseen_classes", tuple(self.unseen_classes))
        if self.class_mix is not None:
            object.__setattr__(self, "class_mix", dict(self.class_mix))
        where = "SceneConfig"
        if self.width < 16 or self.height < 16:
            raise ConfigError(f"{where}: image {self.width}x{self.height} is too small (>= 16)")
        if not self.classes:
            raise ConfigError(f"{where}: classes is empty; name at least one of {SHAPES}")
        for group, names in (("classes", self.classes), ("unseen_classes", self.unseen_classes)):
            for c in names:
                if c not in _shapes.SHAPES:
                    raise ConfigError(f"{where}: {group} has unknown shape {c!r}; "
                                      f"known shapes are {', '.join(SHAPES)}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{where}: {group} {names} has a duplicate")
        clash = set(self.classes) & set(self.unseen_classes)
        if clash and self.unseen_class > 0:
            raise ConfigError(f"{where}: unseen_classes {sorted(clash)} are also in classes; "
                              "an unseen class must not be labelled")
        if self.unseen_class > 0 and not self.unseen_classes:
            raise ConfigError(f"{where}: unseen_class={self.unseen_class} needs unseen_classes")
        if not 2 <= self.min_size <= self.max_size:
            raise ConfigError(f"{where}: need 2 <= min_size ({self.min_size}) "
                              f"<= max_size ({self.max_size})")
        if self.scale <= 0:
            raise ConfigError(f"{where}: scale={self.scale} must be positive")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"{where}: need 0 <= min_objects ({self.min_objects}) "
                              f"<= max_objects ({self.max_objects})")
        if self.class_mix is not None:
            for k, w in self.class_mix.items():
                if k not in self.classes:
                    raise ConfigError(f"{where}: class_mix names {k!r}, which is not in "
                                      f"classes {list(self.classes)}")
                if not w >= 0:
                    raise ConfigError(f"{where}: class_mix[{k!r}]={w} must be >= 0")
            if sum(self.class_mix.values()) <= 0:
                raise ConfigError(f"{where}: class_mix weights sum to 0")
        for name in ("occlusion", "unseen_class"):
            _rate(where, name, getattr(self, name))
        if not 0 < self.max_overlap <= 1:
            raise ConfigError(f"{where}: max_overlap={self.max_overlap} must be in (0, 1]")
        if self.contrast <= 0 or not 0 <= self.contrast_jitter < 1:
            raise ConfigError(f"{where}: need contrast > 0 and 0 <= contrast_jitter < 1")
        if self.noise < 0 or self.blur < 0 or self.brightness_jitter < 0 or self.distractors < 0:
            raise ConfigError(f"{where}: noise, blur, brightness_jitter and distractors "
                              "must be >= 0")

    @property
    def weights(self) -> np.ndarray:
        """Class probabilities in ``classes`` order."""
        if self.class_mix is None:
            return np.full(len(self.classes), 1.0 / len(self.classes))
        w = np.array([float(self.class_mix.get(c, 0.0)) for c in self.classes])
        return w / w.sum()

    @property
    def size_range(self) -> tuple[float, float]:
        """The ``(min, max)`` longer box side actually drawn, after ``scale`` and the image cap."""
        cap = float(min(self.width, self.height))
        hi = min(self.max_size * self.scale, cap)
        return min(self.min_size * self.scale, hi), hi

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"], d["unseen_classes"] = list(self.classes), list(self.unseen_classes)
        return d


# -- annotators ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorSpec:
    """A simulated labeller and the rate of each mistake it makes.

    Per true object: it is missed with probability ``miss``; a kept box is jittered (each edge
    moves 5-15% of the box size) with probability ``jitter`` or else drawn loose (10-25% wider
    and taller than tight) with probability ``loose``; a kept box of class ``confuse[0]`` is
    labelled ``confuse[1]`` with probability ``confuse[2]``. ``seed`` offsets this annotator's
    random stream, so two annotators with the same name and rates can still disagree.
    """

    name: str
    jitter: float = 0.0
    loose: float = 0.0
    confuse: tuple[str, str, float] | None = None
    miss: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        where = f"annotator {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"annotator name {self.name!r} must match {_NAME.pattern}")
        for k in ("jitter", "loose", "miss"):
            _rate(where, k, getattr(self, k))
        if self.jitter + self.loose > 1:
            raise ConfigError(f"{where}: jitter+loose={self.jitter + self.loose:g} exceeds 1; "
                              "a box is either jittered or loose, not both")
        if self.confuse is not None:
            if len(self.confuse) != 3:
                raise ConfigError(f"{where}: confuse must be (from_class, to_class, rate)")
            src, dst, rate = self.confuse
            if src == dst:
                raise ConfigError(f"{where}: confuse {src}>{dst} maps a class to itself")
            object.__setattr__(self, "confuse", (str(src), str(dst), _rate(where, "confuse",
                                                                            rate)))

    def check_classes(self, classes: Sequence[str]) -> None:
        if self.confuse is not None:
            for c in self.confuse[:2]:
                if c not in classes:
                    raise ConfigError(f"annotator {self.name!r}: confuse names class {c!r}, "
                                      f"which is not in classes {list(classes)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["confuse"] = None if self.confuse is None else list(self.confuse)
        return d


_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_CONFUSE = re.compile(r"(?P<src>[^>@]+)>(?P<dst>[^>@]+)@(?P<rate>.+)")


def parse_annotators(names: str | Sequence[str], specs: str | None = None, *,
                     classes: Sequence[str] | None = None) -> list[AnnotatorSpec]:
    """Annotators from CLI strings.

    ``names`` is a comma-separated list; each annotator is perfect unless ``specs`` says
    otherwise. ``specs`` is ``;``-separated entries ``NAME:KEY=VALUE[,KEY=VALUE...]`` with keys
    ``jitter``, ``loose``, ``miss`` (rates in [0, 1]), ``confuse=FROM>TO@RATE`` and ``seed``
    (an integer offset). Given ``classes``, the class names in ``confuse`` are checked too.

    >>> a, b, c = parse_annotators("A,B,C", "B:loose=0.3;C:miss=0.1,confuse=star>square@0.5")
    >>> b.loose, c.miss, c.confuse
    (0.3, 0.1, ('star', 'square', 0.5))
    """
    listed = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if not listed or any(not n for n in listed):
        raise ConfigError(f"annotator list {names!r}: expected comma-separated names like "
                          "'A,B,C' (empty name found)")
    for n in listed:
        if not _NAME.fullmatch(n):
            raise ConfigError(f"annotator list {names!r}: name {n!r} must match {_NAME.pattern}")
    dupes = sorted({n for n in listed if listed.count(n) > 1})
    if dupes:
        raise ConfigError(f"annotator list {names!r}: {', '.join(dupes)} listed twice")
    kwargs: dict[str, dict[str, Any]] = {n: {} for n in listed}
    for entry in (specs or "").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, body = entry.partition(":")
        name = name.strip()
        if not sep or not body.strip():
            raise ConfigError(f"annotator spec {entry!r}: expected NAME:KEY=VALUE[,KEY=VALUE], "
                              "e.g. 'B:loose=0.3'")
        if name not in kwargs:
            raise ConfigError(f"annotator spec {entry!r}: {name!r} is not in the annotator "
                              f"list {','.join(listed)}")
        for token in body.split(","):
            kwargs[name].update(_parse_token(name, token.strip()))
    out = [AnnotatorSpec(n, **kwargs[n]) for n in listed]
    if classes is not None:
        for a in out:
            a.check_classes(classes)
    return out


def _parse_token(name: str, token: str) -> dict[str, Any]:
    key, sep, value = token.partition("=")
    key, value = key.strip(), value.strip()
    where = f"annotator {name!r}: token {token!r}"
    if not sep or not value:
        raise ConfigError(f"{where}: expected KEY=VALUE with KEY one of jitter, loose, miss, "
                          "confuse, seed")
    if key in ("jitter", "loose", "miss"):
        try:
            return {key: float(value)}
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    if key == "seed":
        try:
            return {"seed": int(value)}
        except ValueError:
            raise ConfigError(f"{where}: seed {value!r} is not an integer") from None
    if key == "confuse":
        m = _CONFUSE.fullmatch(value)
        if not m:
            raise ConfigError(f"{where}: expected confuse=FROM>TO@RATE, e.g. star>square@0.5")
        try:
            rate = float(m["rate"])
        except ValueError:
            raise ConfigError(f"{where}: rate {m['rate']!r} is not a number") from None
        return {"confuse": (m["src"].strip(), m["dst"].strip(), rate)}
    raise ConfigError(f"{where}: unknown key {key!r}; use jitter, loose, miss, confuse or seed")


def _annotate(spec: AnnotatorSpec, seed: int, index: int, truths: list[dict[str, Any]],
              classes: Sequence[str], width: int, height: int) -> dict[str, Any]:
    """One annotator's labels for one image: kept boxes with what was injected, and misses."""
    ss = np.random.SeedSequence([seed, index, zlib.crc32(spec.name.encode()), spec.seed, 0xA11])
    rng = np.random.default_rng(ss)
    # A fixed number of draws per object, so changing one rate does not reshuffle the others.
    u = rng.random(size=(len(truths), 12))
    boxes, missed = [], []
    for k, t in enumerate(truths):
        r = u[k]
        if r[0] < spec.miss:
            missed.append(k)
            continue
        x1, y1, x2, y2 = t["box"]
        w, h = x2 - x1, y2 - y1
        kind = []
        if r[1] < spec.jitter:
            sign = np.where(r[2:6] < 0.5, -1.0, 1.0)
            mag = 0.05 + 0.10 * r[6:10]
            x1, x2 = x1 + sign[0] * mag[0] * w, x2 + sign[2] * mag[2] * w
            y1, y2 = y1 + sign[1] * mag[1] * h, y2 + sign[3] * mag[3] * h
            kind.append("jitter")
        elif r[1] < spec.jitter + spec.loose:
            fw, fh = 0.10 + 0.15 * r[2], 0.10 + 0.15 * r[3]
            x1, x2 = x1 - r[4] * fw * w, x2 + (1 - r[4]) * fw * w
            y1, y2 = y1 - r[5] * fh * h, y2 + (1 - r[5]) * fh * h
            kind.append("loose")
        cls = t["category_id"]
        if spec.confuse is not None and classes[cls] == spec.confuse[0] and r[11] < spec.confuse[2]:
            cls = classes.index(spec.confuse[1])
            kind.append("confused")
        box = (round(float(np.clip(x1, 0, width)), 3), round(float(np.clip(y1, 0, height)), 3),
               round(float(np.clip(x2, 0, width)), 3), round(float(np.clip(y2, 0, height)), 3))
        boxes.append({"truth": k, "box": box, "category_id": cls,
                      "injected": "+".join(kind) or "none"})
    return {"boxes": boxes, "missed": missed}


# -- one image -----------------------------------------------------------------------------


def _iou(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _layout(cfg: SceneConfig, rng: np.random.Generator) -> list[_shapes.Placed]:
    """Choose shapes, sizes, angles and positions; larger objects first so small ones stay
    on top and are never hidden entirely."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cls = rng.choice(len(cfg.classes), size=n, p=cfg.weights)
    wanted = [(cfg.classes[c], True) for c in cls]
    if cfg.unseen_class > 0 and rng.random() < cfg.unseen_class:
        wanted.append((cfg.unseen_classes[int(rng.integers(len(cfg.unseen_classes)))], False))
    lo, hi = cfg.size_range
    sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), size=len(wanted)))
    order = np.argsort(-sizes, kind="stable")
    placed: list[_shapes.Placed] = []
    W, H = cfg.width, cfg.height
    for i in order:
        shape, labeled = wanted[i]
        size = float(sizes[i])
        for attempt in range(40):
            if attempt >= 20:  # crowded: try smaller, never below the configured minimum
                size = max(lo, size * 0.93)
            angle = 0.0 if shape == "circle" else float(rng.uniform(0, 2 * math.pi))
            polys = _shapes.place(shape, size, angle, 0.0, 0.0)
            ext = polys[0].max(axis=0) - polys[0].min(axis=0)
            cx = float(rng.uniform(ext[0] / 2, W - ext[0] / 2))
            cy = float(rng.uniform(ext[1] / 2, H - ext[1] / 2))
            polys = [p + (cx, cy) for p in polys]
            box = _shapes.box_of(polys, W, H)
            if all(_iou(box, o.box) <= cfg.max_overlap for o in placed):
                placed.append(_shapes.Placed(shape, polys, box, labeled))
                break
    return placed


def _plan(index: int, seed: int, cfg: SceneConfig
          ) -> tuple[np.random.Generator, float, float, list[_shapes.Placed]]:
    """Image ``index``'s random stream, brightness, contrast and object geometry."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    brightness = cfg.brightness + float(rng.uniform(-1, 1)) * cfg.brightness_jitter
    contrast = cfg.contrast * (1 + float(rng.uniform(-1, 1)) * cfg.contrast_jitter)
    return rng, brightness, contrast, _layout(cfg, rng)


def _render(index: int, seed: int, cfg: SceneConfig, annotators: Sequence[AnnotatorSpec],
            images_dir: str, fmt: str) -> dict[str, Any]:
    rng, brightness, contrast, objects = _plan(index, seed, cfg)
    W, H = cfg.width, cfg.height

    bg = _shapes.background(rng, W, H)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    n_strokes = int(rng.integers(cfg.distractors // 2, cfg.distractors + 1))
    below = int(rng.integers(0, n_strokes + 1))
    _shapes.paint_distractors(img, below, rng)
    ids = np.full((H, W), -1, dtype=np.int16)
    areas = []
    for k, obj in enumerate(objects):
        x1, y1, x2, y2 = obj.box
        step = max(1, int(min(x2 - x1, y2 - y1)) // 8)  # a sparse grid is enough for a mean
        local = bg[int(y1):max(int(y1) + 1, int(y2)):step, int(x1):max(int(x1) + 1, int(x2)):step]
        obj.color = _shapes.random_color(rng, local.mean(axis=(0, 1)))
        areas.append(_shapes.paint_object(img, ids, k, obj, rng))
    n_occluded = 0
    for obj in objects:
        if obj.labeled and rng.random() < cfg.occlusion:
            _shapes.paint_occluder(img, ids, bg, obj, rng)
            n_occluded += 1
    _shapes.paint_distractors(img, n_strokes - below, rng)
    shown = np.bincount(ids.ravel() + 1, minlength=len(objects) + 1)[1:]
    for k, obj in enumerate(objects):
        obj.visible = round(int(shown[k]) / max(1, areas[k]), 4)
    arr, rgb_mean = _shapes.finish(img, brightness=brightness, contrast=contrast,
                                   noise=cfg.noise, blur=cfg.blur, rng=rng)
    lum = float(rgb_mean @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    file = f"{index:06d}.{fmt}"
    Path(images_dir, file).write_bytes(data)

    truths = [{"category_id": cfg.classes.index(o.shape), "box": o.box, "visible": o.visible}
              for o in objects if o.labeled]
    unseen = [{"shape": o.shape, "box": o.box} for o in objects if not o.labeled]
    tags = {
        "brightness": round(brightness, 3),
        "contrast": round(contrast, 4),
        "noise": cfg.noise,
        "blur": cfg.blur,
        "scale": cfg.scale,
        "mean_luminance": round(lum, 2),
        "brightness_bin": ("dark" if lum < DARK_BELOW
                           else "bright" if lum > BRIGHT_ABOVE else "normal"),
        "n_objects": len(truths),
        "n_occluded": n_occluded,
        "unseen": [u["shape"] for u in unseen],
        "has_unseen": bool(unseen),
    }
    labels = {a.name: _annotate(a, seed, index, truths, cfg.classes, W, H) for a in annotators}
    return {"index": index, "file": f"images/{file}", "sha256": hashlib.sha256(data).hexdigest(),
            "tags": tags, "truths": truths, "unseen": unseen, "labels": labels}


def _render_chunk(indices: range, seed: int, cfg: SceneConfig,
                  annotators: Sequence[AnnotatorSpec], images_dir: str, fmt: str
                  ) -> list[dict[str, Any]]:
    return [_render(i, seed, cfg, annotators, images_dir, fmt) for i in indices]


# -- the dataset ---------------------------------------------------------------------------


@dataclass
class _Tally:
    truths: int = 0
    kept: int = 0
    eligible: int = 0  # kept boxes whose true class is the confuse source
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("missed", "none", "jitter", "loose", "confused"), 0))
    missed_ids: list[int] = field(default_factory=list)


def synthesize(out_dir: str | os.PathLike[str], n: int, seed: int,
               config: SceneConfig = SceneConfig(),
               annotators: Sequence[AnnotatorSpec] | None = None, *,
               image_format: str = "jpg", workers: int = 0,
               progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Write ``n`` scenes to ``out_dir/images/`` plus ``out_dir/injected.json``; return labels.

    Without ``annotators`` there is one exact annotation per object (``annotator=None``). With
    them, every annotator labels every image and each annotation carries ``annotator``,
    ``attributes["truth_id"]`` (the true object, see ``injected.json``), ``["injected"]``
    (``"none"``, ``"jitter"``, ``"loose"``, ``"confused"`` or e.g. ``"loose+confused"``) and
    ``["visible"]`` (fraction of the object's pixels left uncovered). Image tags hold the
    per-image knob values and ``brightness_bin``. ``image_format`` is ``"jpg"`` (quality 92)
    or ``"png"``; ``workers=0`` uses every CPU, ``1`` renders in this process. Existing files
    with the same names are overwritten.
    """
    fmt = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}.get(image_format.lower())
    if fmt is None:
        raise ConfigError(f"image_format {image_format!r}: use 'jpg' or 'png'")
    if n < 0:
        raise ConfigError(f"n={n}: the number of images must be >= 0")
    if workers < 0:
        raise ConfigError(f"workers={workers}: use 0 for every CPU or a positive count")
    specs = list(annotators or [])
    seen: set[str] = set()
    for a in specs:
        a.check_classes(config.classes)
        if a.name in seen:
            raise ConfigError(f"annotator {a.name!r} is given twice")
        seen.add(a.name)

    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if not workers:  # the CPUs this process may run on, which a container can restrict
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    results: list[dict[str, Any]] = []
    if workers == 1 or n <= 4:
        for i in range(n):
            results.append(_render(i, seed, config, specs, str(images_dir), fmt))
            if progress is not None:
                progress(i + 1, n)
    else:
        chunk = max(1, min(32, math.ceil(n / (workers * 4))))
        chunks = [range(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        # spawn, not fork: a forked child of a threaded parent (a server, a notebook) can hang.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
            futs = [pool.submit(_render_chunk, c, seed, config, specs, str(images_dir), fmt)
                    for c in chunks]
            done = 0
            for f in as_completed(futs):
                done += len(f.result())
                if progress is not None:
                    progress(done, n)
        for f in futs:
            results.extend(f.result())
    return _assemble(root, results, seed, config, specs)


def _assemble(root: Path, results: list[dict[str, Any]], seed: int, cfg: SceneConfig,
              specs: list[AnnotatorSpec]) -> Dataset:
    ds = Dataset(categories=[Category(i, c) for i, c in enumerate(cfg.classes)], root=root)
    ds.info["synth"] = {"seed": seed, "n": len(results), "config": cfg.to_dict(),
                        "annotators": [a.to_dict() for a in specs], "injected": "injected.json"}
    truth_rows: list[dict[str, Any]] = []
    unseen_rows: list[dict[str, Any]] = []
    tallies = {a.name: _Tally() for a in specs}
    for r in results:
        img = ds.add_image(r["file"], cfg.width, cfg.height, sha256=r["sha256"], tags=r["tags"])
        first = len(truth_rows)
        for k, t in enumerate(r["truths"]):
            truth_rows.append({"id": first + k, "image_id": img.id, "file": img.file,
                               "category_id": t["category_id"],
                               "category": cfg.classes[t["category_id"]],
                               "box": list(t["box"]), "visible": t["visible"]})
        unseen_rows.extend({"image_id": img.id, **u, "box": list(u["box"])} for u in r["unseen"])
        if not specs:
            for k, t in enumerate(r["truths"]):
                ds.add_annotation(img.id, t["box"], t["category_id"], attributes={
                    "truth_id": first + k, "injected": "none", "visible": t["visible"]})
        for a in specs:
            lab, tally = r["labels"][a.name], tallies[a.name]
            tally.truths += len(r["truths"])
            tally.missed_ids.extend(first + k for k in lab["missed"])
            for b in lab["boxes"]:
                t = r["truths"][b["truth"]]
                tally.kept += 1
                if a.confuse is not None and cfg.classes[t["category_id"]] == a.confuse[0]:
                    tally.eligible += 1
                for kind in b["injected"].split("+"):
                    tally.counts[kind] += 1
                ds.add_annotation(img.id, b["box"], b["category_id"], annotator=a.name,
                                  attributes={"truth_id": first + b["truth"],
                                              "injected": b["injected"],
                                              "visible": t["visible"]})
    summary: dict[str, Any] = {}
    for a in specs:
        t = tallies[a.name]
        t.counts["missed"] = len(t.missed_ids)
        summary[a.name] = {
            "spec": a.to_dict(),
            "truth_boxes": t.truths,
            "kept_boxes": t.kept,
            "counts": t.counts,
            # miss is a share of true objects; jitter and loose of kept boxes; confused of kept
            # boxes whose true class is the confused one.
            "rates": {
                "miss": t.counts["missed"] / t.truths if t.truths else 0.0,
                "jitter": t.counts["jitter"] / t.kept if t.kept else 0.0,
                "loose": t.counts["loose"] / t.kept if t.kept else 0.0,
                "confused": t.counts["confused"] / t.eligible if t.eligible else 0.0,
            },
            "missed_truth_ids": t.missed_ids,
        }
    injected = {"seed": seed, "n": len(results), "config": cfg.to_dict(),
                "categories": list(cfg.classes), "annotators": summary,
                "truth": truth_rows, "unseen": unseen_rows}
    (root / "injected.json").write_text(json.dumps(injected, separators=(",", ":")) + "\n")
    return ds
