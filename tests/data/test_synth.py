"""Synthetic scenes: determinism, exact boxes, knobs that move what they claim, annotators."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from detops.data import _shapes
from detops.data.dataset import Dataset
from detops.data.synth import (
    SHAPES,
    AnnotatorSpec,
    SceneConfig,
    _plan,
    parse_annotators,
    synthesize,
)
from detops.errors import ConfigError, DetopsError

# -- factories -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_scenes(tmp_path_factory: pytest.TempPathFactory):
    """``make_scenes(n, seed, config=..., annotators=..., **kw)`` -> Dataset, cached per args."""
    cache: dict[str, Dataset] = {}

    def make(n: int = 12, seed: int = 0, config: SceneConfig = SceneConfig(),
             annotators: list[AnnotatorSpec] | None = None, **kw: object) -> Dataset:
        key = repr((n, seed, config, annotators, sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("synth")
            cache[key] = synthesize(out, n, seed, config, annotators, workers=1, **kw)
        return cache[key]

    return make


def pixels(ds: Dataset) -> np.ndarray:
    out = []
    for img in ds.images:
        with Image.open(ds.image_path(img)) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.float32))
    return np.stack(out)


def labels(ds: Dataset) -> list[tuple]:
    return [(a.image_id, a.box, a.category_id, a.annotator, sorted(a.attributes.items()))
            for a in ds.annotations]


def high_freq(imgs: np.ndarray) -> float:
    """Mean absolute horizontal + vertical first difference: grows with noise, falls with blur."""
    g = imgs.mean(axis=-1)
    return float(np.abs(np.diff(g, axis=1)).mean() + np.abs(np.diff(g, axis=2)).mean())


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_labels(tmp_path: Path) -> None:
    ann = [AnnotatorSpec("A", jitter=0.5), AnnotatorSpec("B", loose=0.3, miss=0.2)]
    a = synthesize(tmp_path / "a", 6, 7, annotators=ann, workers=1)
    b = synthesize(tmp_path / "b", 6, 7, annotators=ann, workers=1)
    assert [i.sha256 for i in a.images] == [i.sha256 for i in b.images]
    assert labels(a) == labels(b)
    assert [i.tags for i in a.images] == [i.tags for i in b.images]
    read = lambda d: (tmp_path / d / "injected.json").read_bytes()  # noqa: E731
    assert read("a") == read("b")


def test_different_seed_differs(make_scenes) -> None:
    a, b = make_scenes(6, seed=0), make_scenes(6, seed=1)
    assert not {i.sha256 for i in a.images} & {i.sha256 for i in b.images}
    assert labels(a) != labels(b)


def test_worker_count_does_not_change_output(tmp_path: Path) -> None:
    ann = [AnnotatorSpec("A", jitter=0.4, confuse=("star", "cross", 0.5))]
    one = synthesize(tmp_path / "one", 10, 3, annotators=ann, workers=1)
    two = synthesize(tmp_path / "two", 10, 3, annotators=ann, workers=2)
    assert [i.sha256 for i in one.images] == [i.sha256 for i in two.images]
    assert labels(one) == labels(two)
    for f in sorted((tmp_path / "one/images").iterdir()):
        assert f.read_bytes() == (tmp_path / "two/images" / f.name).read_bytes()


def test_annotator_stream_is_independent_of_other_annotators(make_scenes) -> None:
    b = AnnotatorSpec("B", jitter=0.5, miss=0.2)
    alone = make_scenes(8, annotators=[b])
    with_a = make_scenes(8, annotators=[AnnotatorSpec("A", loose=0.7), b])
    assert labels(alone) == [x for x in labels(with_a) if x[3] == "B"]


# -- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_box_is_tight_to_rendered_shape(shape: str) -> None:
    rng = np.random.default_rng(zlib.crc32(shape.encode()))
    for _ in range(40):
        size = float(np.exp(rng.uniform(math.log(6), math.log(150))))
        polys = _shapes.place(shape, size, float(rng.uniform(0, 2 * math.pi)), 0.0, 0.0)
        ext = polys[0].max(axis=0) - polys[0].min(axis=0)  # fully inside, as synthesize places
        centre = rng.uniform(ext / 2, 200 - ext / 2)
        polys = [p + centre for p in polys]
        box = _shapes.box_of(polys, 200, 200)
        mask = _shapes.render_mask(polys, 200, 200)
        ys, xs = np.nonzero(mask)
        extent = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # pixel edges
        # PIL fills every pixel the shape touches: the extent is the box rounded outwards
        assert np.abs(np.subtract(extent, box)).max() <= 1.0, (shape, size, box, extent)


def test_dataset_boxes_are_the_drawn_geometry(make_scenes) -> None:
    cfg = SceneConfig()
    ds = make_scenes(12)
    by_image = ds.annotations_by_image()
    for img in ds.images:
        _, _, _, objects = _plan(img.id, 0, cfg)
        drawn = [o for o in objects if o.labeled]
        assert [a.box for a in by_image[img.id]] == [o.box for o in drawn]
        for a, o in zip(by_image[img.id], drawn, strict=True):
            ys, xs = np.nonzero(_shapes.render_mask(o.polygons, img.width, img.height))
            extent = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.abs(np.subtract(extent, a.box)).max() <= 1.0
            assert ds.categories[a.category_id].name == o.shape


@pytest.mark.parametrize(
    "config",
    [
        SceneConfig(),  # defaults: 1-10 objects of 12-120 px in 320x320
        SceneConfig(width=200, height=120, min_objects=3, max_objects=4),  # non-square, narrow
        SceneConfig(scale=0.5, min_objects=8, max_objects=8),  # scaled down, fixed count
        SceneConfig(min_size=60, max_size=400, max_objects=3),  # max_size capped at image side
    ],
)
def test_counts_sizes_and_boxes_inside_image(make_scenes, config: SceneConfig) -> None:
    ds = make_scenes(15, seed=2, config=config)
    lo, hi = config.size_range
    counts = Counter(a.image_id for a in ds.annotations)
    for img in ds.images:
        assert config.min_objects <= counts[img.id] <= config.max_objects
        assert img.tags["n_objects"] == counts[img.id]
        with Image.open(ds.image_path(img)) as im:
            assert (img.width, img.height) == im.size
    for a in ds.annotations:
        x1, y1, x2, y2 = a.box
        assert 0 <= x1 < x2 <= config.width and 0 <= y1 < y2 <= config.height
        assert lo - 0.01 <= max(x2 - x1, y2 - y1) <= hi + 0.01


def test_max_overlap_caps_pairwise_iou(make_scenes) -> None:
    cfg = SceneConfig(max_overlap=0.1, min_objects=6, max_objects=10)
    ds = make_scenes(10, config=cfg)
    for anns in ds.annotations_by_image().values():
        for a, b in itertools.combinations(anns, 2):
            iw = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
            ih = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
            inter = max(0, iw) * max(0, ih)
            assert inter / (a.area + b.area - inter) <= 0.1 + 1e-6


# -- knobs move their statistic ------------------------------------------------------------


def test_brightness_knob_raises_mean_pixel_and_bins(make_scenes) -> None:
    base = pixels(make_scenes(10, config=SceneConfig()))
    bright = make_scenes(10, config=SceneConfig(brightness=60))
    assert pixels(bright).mean() > base.mean() + 40
    dark = make_scenes(10, config=SceneConfig(brightness=-100))
    assert Counter(i.tags["brightness_bin"] for i in dark.images)["dark"] >= 8
    assert Counter(i.tags["brightness_bin"] for i in bright.images)["dark"] == 0


def test_contrast_knob_spreads_pixel_values(make_scenes) -> None:
    flat = pixels(make_scenes(10, config=SceneConfig(contrast=0.5, contrast_jitter=0)))
    steep = pixels(make_scenes(10, config=SceneConfig(contrast=1.5, contrast_jitter=0)))
    assert steep.std() > 2 * flat.std()


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (SceneConfig(noise=0), SceneConfig(noise=20)),  # sensor noise adds pixel-level energy
        # blur smooths the scene; it acts before sensor noise, so switch that off to see it
        (SceneConfig(blur=2.0, noise=0), SceneConfig(blur=0.0, noise=0)),
    ],
)
def test_noise_and_blur_move_high_frequency_energy(make_scenes, low, high) -> None:
    assert high_freq(pixels(make_scenes(8, config=high))) > 1.5 * high_freq(
        pixels(make_scenes(8, config=low)))


def test_class_mix_matches_weights_by_chisquare(make_scenes) -> None:
    mix = {"circle": 6, "square": 3, "triangle": 1, "star": 1, "cross": 1}
    cfg = SceneConfig(class_mix=mix, min_objects=4, max_objects=8)
    ds = make_scenes(60, seed=5, config=cfg)
    observed = np.bincount([a.category_id for a in ds.annotations], minlength=5)
    n = observed.sum()
    assert n > 300
    expected = cfg.weights * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert stats.chisquare(observed, np.full(5, n / 5)).pvalue < 1e-6  # it is not uniform


def test_scale_knob_shrinks_objects(make_scenes) -> None:
    def mean_side(cfg: SceneConfig) -> float:
        return float(np.mean([max(a.box[2] - a.box[0], a.box[3] - a.box[1])
                              for a in make_scenes(12, config=cfg).annotations]))

    assert mean_side(SceneConfig(scale=0.5)) < 0.7 * mean_side(SceneConfig())


@pytest.mark.parametrize(
    ("rate", "expect_all", "expect_none"),
    [
        (0.0, False, True),  # off: no image shows an unseen shape
        (1.0, True, False),  # always: every image shows one, never labelled
    ],
)
def test_unseen_class_is_drawn_tagged_and_unlabelled(make_scenes, rate, expect_all,
                                                     expect_none) -> None:
    ds = make_scenes(10, config=SceneConfig(unseen_class=rate))
    flags = [i.tags["has_unseen"] for i in ds.images]
    assert all(flags) is expect_all and (not any(flags)) is expect_none
    for img in ds.images:
        assert set(img.tags["unseen"]) <= {"ring", "arrow"}
    assert {"ring", "arrow"}.isdisjoint(ds.category_names)
    injected = json.loads((ds.root / "injected.json").read_text())
    assert len(injected["unseen"]) == sum(len(i.tags["unseen"]) for i in ds.images)


def test_occlusion_knob_covers_objects(make_scenes) -> None:
    none = make_scenes(12, config=SceneConfig(occlusion=0.0))
    full = make_scenes(12, config=SceneConfig(occlusion=1.0))
    assert sum(i.tags["n_occluded"] for i in none.images) == 0
    assert all(i.tags["n_occluded"] == i.tags["n_objects"] for i in full.images)
    vis_none = np.mean([a.attributes["visible"] for a in none.annotations])
    vis_full = np.mean([a.attributes["visible"] for a in full.annotations])
    assert vis_full < vis_none - 0.05
    # occluders bite, they do not swallow: most of each object stays visible
    assert np.median([a.attributes["visible"] for a in full.annotations]) > 0.5


# -- annotators ----------------------------------------------------------------------------

ANNOTATORS = [
    AnnotatorSpec("perfect"),
    AnnotatorSpec("jittery", jitter=0.3),
    AnnotatorSpec("loose", loose=0.25, jitter=0.1),
    AnnotatorSpec("sloppy", miss=0.15, confuse=("star", "square", 0.5)),
]


@pytest.fixture(scope="module")
def annotated(make_scenes) -> Dataset:
    return make_scenes(60, seed=11, annotators=ANNOTATORS,
                       config=SceneConfig(min_objects=3, max_objects=8))


def test_every_annotator_labels_every_image(annotated: Dataset) -> None:
    assert annotated.annotators == sorted(a.name for a in ANNOTATORS)
    seen = {(a.image_id, a.annotator) for a in annotated.annotations}
    for img in annotated.images:
        for spec in ANNOTATORS:
            if spec.miss == 0:
                assert (img.id, spec.name) in seen


def test_perfect_annotator_reproduces_truth(annotated: Dataset, make_scenes) -> None:
    truth = make_scenes(60, seed=11, config=SceneConfig(min_objects=3, max_objects=8))
    perfect = [a for a in annotated.annotations if a.annotator == "perfect"]
    assert [(a.image_id, a.box, a.category_id) for a in perfect] == [
        (a.image_id, a.box, a.category_id) for a in truth.annotations]
    assert {a.attributes["injected"] for a in perfect} == {"none"}
    assert [a.attributes["truth_id"] for a in perfect] == list(range(len(truth.annotations)))


@pytest.mark.parametrize(
    ("annotator", "kind", "rate"),
    [
        ("jittery", "jitter", 0.3),  # box jitter on 30% of kept boxes
        ("loose", "loose", 0.25),  # loose boxes on 25%
        ("loose", "jitter", 0.1),  # ... and, exclusively, jitter on 10%
        ("sloppy", "missed", 0.15),  # 15% of true objects never labelled
        ("sloppy", "confused", 0.5),  # half the stars called squares
        ("perfect", "jitter", 0.0),  # a perfect annotator injects nothing
    ],
)
def test_injection_rates_are_recovered(annotated: Dataset, annotator: str, kind: str,
                                       rate: float) -> None:
    injected = json.loads((annotated.root / "injected.json").read_text())
    truth = {t["id"]: t for t in injected["truth"]}
    mine = [a for a in annotated.annotations if a.annotator == annotator]
    hit = [a for a in mine if kind in a.attributes["injected"].split("+")]
    if kind == "missed":
        labelled = {a.attributes["truth_id"] for a in mine}
        k, n = len(truth) - len(labelled), len(truth)
    elif kind == "confused":
        k = len(hit)
        n = sum(1 for a in mine if truth[a.attributes["truth_id"]]["category"] == "star")
    else:
        k, n = len(hit), len(mine)
    assert n > 50  # enough boxes for the binomial test to bite
    if rate == 0:
        assert k == 0
    else:
        assert stats.binomtest(k, n, rate).pvalue > 1e-3, (k, n, rate)
    summary = injected["annotators"][annotator]
    assert summary["counts"][kind] == k
    assert summary["rates"][{"missed": "miss"}.get(kind, kind)] == pytest.approx(k / n)


def test_injected_boxes_have_the_documented_shape(annotated: Dataset) -> None:
    injected = json.loads((annotated.root / "injected.json").read_text())
    truth = {t["id"]: t for t in injected["truth"]}
    for a in annotated.annotations:
        t = truth[a.attributes["truth_id"]]
        tx1, ty1, tx2, ty2 = t["box"]
        w, h = tx2 - tx1, ty2 - ty1
        x1, y1, x2, y2 = a.box
        kinds = a.attributes["injected"].split("+")
        assert a.image_id == t["image_id"]
        if "confused" in kinds:
            assert (t["category"], annotated.categories[a.category_id].name) == ("star", "square")
        else:
            assert a.category_id == t["category_id"]
        if "jitter" in kinds:
            moves = np.abs([(x1 - tx1) / w, (y1 - ty1) / h, (x2 - tx2) / w, (y2 - ty2) / h])
            clipped = x1 == 0 or y1 == 0 or x2 == 320 or y2 == 320
            assert clipped or (np.all(moves >= 0.05 - 1e-3) and np.all(moves <= 0.15 + 1e-3))
        elif "loose" in kinds:
            assert x1 <= tx1 and y1 <= ty1 and x2 >= tx2 and y2 >= ty2
            assert (x2 - x1) / w <= 1.25 + 1e-3 and (y2 - y1) / h <= 1.25 + 1e-3
            if 0 < x1 and x2 < 320:
                assert (x2 - x1) / w >= 1.10 - 1e-3
        else:
            assert a.box == tuple(t["box"])


# -- parsing and validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "specs", "expected"),
    [
        # plain names: perfect annotators
        ("A,B", None, [AnnotatorSpec("A"), AnnotatorSpec("B")]),
        # the documented example
        ("A,B,C", "B:loose=0.3;C:miss=0.1,confuse=star>square@0.5",
         [AnnotatorSpec("A"), AnnotatorSpec("B", loose=0.3),
          AnnotatorSpec("C", miss=0.1, confuse=("star", "square", 0.5))]),
        # whitespace and a trailing ';' are forgiven, seed offsets parse
        (" x , y ", " y : jitter=0.2 , seed=3 ;", [AnnotatorSpec("x"),
                                                    AnnotatorSpec("y", jitter=0.2, seed=3)]),
        # a list of names works as well as a string
        (["A"], "A:jitter=1", [AnnotatorSpec("A", jitter=1.0)]),
    ],
)
def test_parse_annotators(names, specs, expected) -> None:
    assert parse_annotators(names, specs) == expected


@pytest.mark.parametrize(
    ("names", "specs", "message"),
    [
        ("A,,B", None, "empty name"),  # a doubled comma
        ("A,A", None, "A listed twice"),  # duplicates would collide in annotator= fields
        ("A b", None, "name 'A b'"),  # spaces are not allowed in names
        ("A", "B:loose=0.1", "'B' is not in the annotator list A"),  # spec for an unknown name
        ("A", "A", "expected NAME:KEY=VALUE"),  # no colon
        ("A", "A:loose", "expected KEY=VALUE"),  # no value
        ("A", "A:lose=0.1", "unknown key 'lose'"),  # a typo in the key
        ("A", "A:loose=lots", "'lots' is not a number"),  # not a float
        ("A", "A:miss=1.5", "miss=1.5 must be a rate between 0 and 1"),  # out of range
        ("A", "A:jitter=0.7,loose=0.6", "jitter+loose=1.3 exceeds 1"),  # exclusive box errors
        ("A", "A:confuse=star-square@0.5", "expected confuse=FROM>TO@RATE"),  # wrong separator
        ("A", "A:confuse=star>square@x", "rate 'x' is not a number"),
        ("A", "A:confuse=star>star@0.5", "maps a class to itself"),
        ("A", "A:seed=1.5", "seed '1.5' is not an integer"),
    ],
)
def test_parse_annotators_rejects_bad_strings(names, specs, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_annotators(names, specs)
    assert message in str(err.value)
    assert isinstance(err.value, DetopsError)


def test_confused_class_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="confuse names class 'ring'"):
        parse_annotators("A", "A:confuse=star>ring@0.5", classes=SceneConfig().classes)
    with pytest.raises(ConfigError, match="confuse names class 'ring'"):
        synthesize(tmp_path, 1, 0, annotators=[AnnotatorSpec("A", confuse=("star", "ring", 1))])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ("circle", "blob")}, "unknown shape 'blob'"),  # not a drawable shape
        ({"classes": ()}, "classes is empty"),
        ({"classes": ("ring", "star"), "unseen_class": 0.5}, "also in classes"),  # leak
        ({"min_size": 50, "max_size": 20}, "min_size (50) <= max_size (20)"),
        ({"min_objects": 5, "max_objects": 2}, "min_objects (5) <= max_objects (2)"),
        ({"class_mix": {"hexagon": 1.0}}, "class_mix names 'hexagon'"),  # not in classes
        ({"class_mix": {"circle": 0.0}}, "weights sum to 0"),
        ({"occlusion": 2.0}, "occlusion=2.0 must be a rate"),
        ({"max_overlap": 0.0}, "max_overlap=0.0"),
        ({"noise": -1.0}, "must be >= 0"),
    ],
)
def test_scene_config_rejects_bad_values(kwargs, message) -> None:
    with pytest.raises(ConfigError) as err:
        SceneConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "suffix", "pil_format"),
    [
        ("jpg", ".jpg", "JPEG"),  # the default: fast to encode
        ("png", ".png", "PNG"),  # lossless
        ("JPEG", ".jpg", "JPEG"),  # aliases and case are forgiven
    ],
)
def test_image_formats(tmp_path: Path, fmt: str, suffix: str, pil_format: str) -> None:
    ds = synthesize(tmp_path, 2, 0, image_format=fmt, workers=1)
    for img in ds.images:
        assert img.file.endswith(suffix)
        with Image.open(ds.image_path(img)) as im:
            assert im.format == pil_format and im.size == (320, 320) and im.mode == "RGB"


def test_bad_arguments_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image_format 'gif'"):
        synthesize(tmp_path, 1, 0, image_format="gif")
    with pytest.raises(ConfigError, match="given twice"):
        synthesize(tmp_path, 1, 0, annotators=[AnnotatorSpec("A"), AnnotatorSpec("A")])
