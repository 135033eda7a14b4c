"""Annotator agreement: matching, typed disagreements, alpha, recovered rates, conventions."""

from __future__ import annotations

import base64
import io
import re

import krippendorff
import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from detops.data._agreement import Labels, group_objects, iou_grid, match_all, match_pair
from detops.data.consistency import (
    check_consistency,
    format_report,
    krippendorff_alpha,
    summary_lines,
    write_html,
)
from detops.data.dataset import Category, Dataset
from detops.data.synth import AnnotatorSpec
from detops.errors import ConsistencyError

CLASSES = ["star", "square", "circle", "cross"]


def tiny(boxes: dict[str, list[tuple[tuple[float, float, float, float], str]]],
         n_images: int = 1, **tags: object) -> Dataset:
    """One or more images holding the same labels: ``{annotator: [(box, class), ...]}``."""
    ds = Dataset(categories=[Category(i, c) for i, c in enumerate(CLASSES)])
    for i in range(n_images):
        img = ds.add_image(f"{i}.png", 400, 400, tags=dict(tags))
        for who, items in boxes.items():
            for box, cls in items:
                ds.add_annotation(img.id, box, CLASSES.index(cls), annotator=who)
    return ds


# -- Krippendorff's alpha against the krippendorff package ------------------------------------


def counts_of(data: np.ndarray, k: int) -> np.ndarray:
    """coders x units reliability data (NaN = no value) -> units x values counts."""
    out = np.zeros((data.shape[1], k))
    for c, u in zip(*np.nonzero(~np.isnan(data)), strict=True):
        out[u, int(data[c, u])] += 1
    return out


@pytest.mark.parametrize("seed", range(8))
def test_alpha_equals_the_krippendorff_package(seed):
    rng = np.random.default_rng(seed)
    coders, units, k = int(rng.integers(2, 6)), int(rng.integers(5, 60)), int(rng.integers(2, 6))
    truth = rng.integers(0, k, units)
    data = np.where(rng.random((coders, units)) < 0.7, truth, rng.integers(0, k, (coders, units)))
    data = data.astype(float)
    data[rng.random(data.shape) < 0.25] = np.nan  # missing values
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                  value_domain=list(range(k)))
    assert krippendorff_alpha(counts_of(data, k)) == pytest.approx(expected, abs=1e-9)


def test_alpha_of_krippendorffs_worked_example():
    # "Computing Krippendorff's Alpha-Reliability" (2011), 4 observers x 12 units: 0.743
    nan = np.nan
    data = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                     [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]) - 1
    assert krippendorff_alpha(counts_of(data, 5)) == pytest.approx(0.743, abs=5e-4)


def test_alpha_is_none_when_undefined():
    assert krippendorff_alpha(np.array([[2, 0], [3, 0]])) is None  # one value throughout
    assert krippendorff_alpha(np.array([[1, 0], [0, 1]])) is None  # no pairable unit


# -- matching: optimal assignment, against scipy image by image --------------------------------


def random_labels(seed: int, n_images: int = 60) -> Labels:
    rng = np.random.default_rng(seed)
    img, who, boxes = [], [], []
    for i in range(n_images):
        centres = rng.uniform(0, 200, (int(rng.integers(0, 9)), 2))
        for m in range(2):
            for c in centres:
                if rng.random() < 0.15:
                    continue  # missed by this annotator
                wh = rng.uniform(10, 40, 2)
                shift = rng.normal(0, 6, 2)
                boxes.append([*(c + shift), *(c + shift + wh)])
                img.append(i)
                who.append(m)
            for _ in range(int(rng.integers(0, 2))):  # a stray box
                c = rng.uniform(0, 200, 2)
                boxes.append([*c, *(c + 25)])
                img.append(i)
                who.append(m)
    return Labels.build(("A", "B"), np.arange(n_images), np.ones((n_images, 2), bool),
                        image=np.array(img), annotator=np.array(who),
                        box=np.array(boxes, float), category=np.zeros(len(img), np.int64))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5])
def test_matching_is_the_optimal_assignment_in_every_image(seed, thr):
    L = random_labels(seed)
    m = match_pair(L, 0, 1, thr)
    assert len(set(m.ia.tolist())) == len(m.ia) and len(set(m.ib.tolist())) == len(m.ib)
    assert np.all(L.image[m.ia] == L.image[m.ib]) and np.all(m.iou >= thr)
    for i in range(L.n_images):
        a = np.flatnonzero((L.image == i) & (L.annotator == 0))
        b = np.flatnonzero((L.image == i) & (L.annotator == 1))
        grid = iou_grid(L.box[a], L.box[b])
        grid[grid < thr] = 0
        r, c = linear_sum_assignment(grid, maximize=True)
        ok = grid[r, c] > 0
        mine = np.isin(m.ia, a)
        assert mine.sum() == ok.sum(), f"image {i}"
        assert m.iou[mine].sum() == pytest.approx(grid[r, c][ok].sum(), abs=1e-9)
    if thr == 0.1:
        assert m.hard_images > 0  # the crowded path was exercised


def test_a_chain_of_matches_never_puts_two_boxes_of_one_annotator_in_an_object():
    # A1-B1 (IoU .667), B1-C1 (.6) and C1-A2 (.739) match pairwise: one chain A1-B1-C1-A2.
    # Joined strongest first without repeating an annotator: {A2, C1} and {A1, B1}.
    xs = {"A": [(0, 100), (60, 160)], "B": [(20, 120)], "C": [(45, 145)]}
    img, who, boxes = [], [], []
    for m, spans in enumerate(xs.values()):
        for x1, x2 in spans:
            img.append(0)
            who.append(m)
            boxes.append([x1, 0, x2, 50])
    L = Labels.build(tuple(xs), np.array([0]), np.ones((1, 3), bool), image=np.array(img),
                     annotator=np.array(who), box=np.array(boxes, float),
                     category=np.zeros(4, np.int64))
    obj = group_objects(L, match_all(L, 0.5), (0, 1, 2))
    groups = sorted(tuple(int(v) for v in row) for row in obj.member)
    assert groups == [(0, 2, -1), (1, -1, 3)]  # rows: A1=0, A2=1, B1=2, C1=3


# -- disagreements, typed exactly --------------------------------------------------------------


def test_each_disagreement_type_is_counted_where_it_happens():
    ds = tiny({
        "A": [((0, 0, 100, 100), "star"), ((200, 0, 300, 100), "square"),
              ((0, 200, 100, 300), "circle"), ((200, 200, 250, 250), "cross")],
        "B": [((0, 0, 100, 100), "square"),  # class_mismatch
              ((210, 0, 310, 100), "square"),  # IoU 0.818: agrees
              ((20, 200, 120, 300), "circle")],  # IoU 0.667 < 0.75: localisation
    })  # A's cross: missing_box (A only)
    r = check_consistency(ds)
    (p,) = r.pairs
    assert (p["matched"], p["missing_box"], p["class_mismatch"], p["localisation"]) == (
        3, {"A only": 1, "B only": 0}, 1, 1)
    assert p["box_f1"] == pytest.approx(6 / 7)
    assert r.agreement["disagreements"] == {"missing_box": 1, "class_mismatch": 1,
                                            "localisation": 1}
    events = sorted((e["type"], e.get("iou")) for e in r.images[0]["events"])
    assert events == [("class_mismatch", 1.0), ("localisation", 0.667), ("missing_box", None)]
    # alpha over the four objects, "no box" as a value, against the package
    data = np.array([[0, 1, 2, 3], [1, 1, 2, 4]], float)  # 4 = "no box"
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                  value_domain=list(range(5)))
    assert r.agreement["alpha"] == pytest.approx(expected)
    # without "no box": the cross has one value only and drops out
    expected_boxes = krippendorff.alpha(reliability_data=data[:, :3],
                                        level_of_measurement="nominal", value_domain=[0, 1, 2])
    assert r.agreement["alpha_boxes_only"] == pytest.approx(expected_boxes)
    assert r.classes["cross"]["missing_box"] == 1 and r.classes["star"]["class_mismatch"] == 1


def test_most_inconsistent_images_come_first_and_agreeing_ones_are_not_listed():
    ds = Dataset(categories=[Category(i, c) for i, c in enumerate(CLASSES)])
    layout = [(0, 0, 50, 50), (100, 0, 150, 50), (0, 100, 50, 150), (100, 100, 150, 150)]
    for i, n_bad in enumerate([0, 3, 1, 0, 2]):
        img = ds.add_image(f"{i}.png", 200, 200)
        for k, box in enumerate(layout):
            ds.add_annotation(img.id, box, 0, annotator="A")
            ds.add_annotation(img.id, box, 1 if k < n_bad else 0, annotator="B")
    r = check_consistency(ds)
    assert [(e["image_id"], e["class_mismatch"]) for e in r.images] == [(1, 3), (4, 2), (2, 1)]


# -- injected inconsistencies are recovered ----------------------------------------------------


RECOVERED = [
    # (annotator, rate in the report, rate in injected.json)
    ("A", "jitter", "jitter"),
    ("B", "loose", "loose"),
    ("C", "miss", "miss"),
    ("C", "confusion:star>square", "confused"),
]


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def injected_report(make_scenes, request):
    scenes = make_scenes(seed=request.param)
    return scenes, check_consistency(scenes.ds, all_labelled=True)


@pytest.mark.parametrize(("annotator", "ours", "theirs"), RECOVERED)
def test_report_recovers_each_injected_rate_within_20_percent(injected_report, annotator, ours,
                                                              theirs):
    scenes, report = injected_report
    rates = report.annotator_rates[annotator]
    got = (rates["confusion"][ours.split(":")[1]]["rate"] if ours.startswith("confusion")
           else rates[ours]["rate"])
    want = scenes.rates(annotator)[theirs]
    assert want > 0.1
    assert abs(got / want - 1) <= 0.20, f"{annotator} {ours}: {got:.3f} vs injected {want:.3f}"


def test_rates_not_injected_stay_near_zero(injected_report):
    _, report = injected_report
    injected = {("A", "jitter"), ("B", "loose"), ("C", "miss")}
    for who, rates in report.annotator_rates.items():
        for kind in ("miss", "loose", "tight", "jitter", "extra"):
            if (who, kind) not in injected:
                # a jittered box whose four edges all move out (1 in 16) looks loose
                assert rates[kind]["rate"] < 0.03, (who, kind, rates[kind])
        if who != "C":
            assert all(v["rate"] < 0.03 for v in rates["confusion"].values()), who


def test_conventions_name_exactly_what_was_injected(injected_report):
    _, report = injected_report
    found = sorted((c["kind"], c["annotator"]) for c in report.conventions)
    assert found == [("confusion", "C"), ("jitter", "A"), ("loose", "B"), ("miss", "C")]
    conf = next(c for c in report.conventions if c["kind"] == "confusion")
    assert (conf["from"], conf["to"]) == ("star", "square")
    assert re.search(r"C labels `square` where the others label `star` in \d+ of \d+",
                     conf["statement"])
    loose = next(c for c in report.conventions if c["kind"] == "loose")
    assert loose["evidence"]["size_ratio"]["ratio"] > 1.05
    assert 0.5 < report.agreement["alpha"] < 0.98
    assert summary_lines(report)[0].startswith("annotators A, B, C: agreement alpha")
    assert "conventions:" in format_report(report)


def test_size_ratio_is_what_the_loose_boxes_add_to_the_true_ones(injected_report):
    # the oracle: geometric mean of B's box area over the true box of the same object
    scenes, report = injected_report
    truth = {t["id"]: np.array(t["box"]) for t in scenes.injected["truth"]}

    def area(b):
        return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)

    logs = [np.log(area(a.box) / area(truth[a.attributes["truth_id"]]))
            for a in scenes.ds.annotations if a.annotator == "B"]
    want = float(np.exp(np.mean(logs)))
    assert want > 1.05
    assert report.annotator_rates["B"]["size_ratio"]["ratio"] == pytest.approx(want, rel=0.02)


def test_no_injected_inconsistency_means_agreement_and_no_convention(make_scenes):
    perfect = [AnnotatorSpec("A"), AnnotatorSpec("B"), AnnotatorSpec("C")]
    report = check_consistency(make_scenes(perfect, n=80).ds)
    assert report.agreement["alpha"] >= 0.98
    assert report.agreement["alpha_boxes_only"] >= 0.98
    assert report.conventions == []
    assert report.agreement["disagreements"] == dict.fromkeys(
        ("missing_box", "class_mismatch", "localisation"), 0)
    assert report.images == []
    assert "no systematic differences" in report.verdict


def test_noise_all_annotators_share_is_not_a_convention(make_scenes):
    same = [AnnotatorSpec(n, jitter=0.15, loose=0.1, miss=0.08,
                          confuse=("star", "square", 0.1)) for n in "ABC"]
    report = check_consistency(make_scenes(same).ds, all_labelled=True)
    assert report.agreement["alpha"] < 0.95  # they do disagree ...
    assert report.conventions == []  # ... but none of them differently from the others
    for rates in report.annotator_rates.values():
        assert rates["miss"]["rate"] == pytest.approx(0.08, abs=0.03)


def test_two_annotators_get_pairwise_statements(make_scenes):
    specs = [AnnotatorSpec("A"), AnnotatorSpec("B", loose=0.4, confuse=("star", "square", 0.5))]
    report = check_consistency(make_scenes(specs, n=150).ds)
    kinds = sorted((c["kind"], c["annotator"]) for c in report.conventions)
    assert kinds == [("confusion", "B"), ("size", "B")]
    size = next(c for c in report.conventions if c["kind"] == "size")
    assert re.match(r"B's boxes are \d+% larger than A's on average", size["statement"])
    assert "loose" not in report.annotator_rates["B"]  # geometry is not attributable
    assert "two annotators" in report.annotator_rates["B"]["basis"]
    (pair,) = report.pairs
    assert pair["size_ratio"]["ratio"] > 1.05


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("boxes", "kwargs", "message"), [
    # one annotator: says who is there and what is needed
    ({"A": [((0, 0, 9, 9), "star")]}, {}, r"has annotator 'A' only.*at least 2 annotators"),
    # no annotator names at all
    ({None: [((0, 0, 9, 9), "star")]}, {}, r"no annotator names.*at least 2"),
    # an unknown name among --annotators
    ({"A": [((0, 0, 9, 9), "star")], "B": [((0, 0, 9, 9), "star")]},
     {"annotators": ["A", "Z"]}, r"annotator 'Z' is not in .*its annotators: A, B"),
    # only one chosen
    ({"A": [((0, 0, 9, 9), "star")], "B": [((0, 0, 9, 9), "star")]},
     {"annotators": ["A"]}, r"--annotators named A: .*at least 2"),
])
def test_bad_input_says_what_is_needed_and_what_was_found(boxes, kwargs, message):
    with pytest.raises(ConsistencyError, match=message):
        check_consistency(tiny(boxes), **kwargs)


def test_annotators_on_different_images_cannot_be_compared():
    ds = Dataset(categories=[Category(0, "star")])
    for who in "AB":
        img = ds.add_image(f"{who}.png", 64, 64)
        ds.add_annotation(img.id, (1, 1, 20, 20), 0, annotator=who)
    with pytest.raises(ConsistencyError, match="no image .* labelled by two or more of A, B"):
        check_consistency(ds)


def test_images_labelled_by_only_some_annotators_are_compared_among_those():
    ds = tiny({"A": [((0, 0, 50, 50), "star")], "B": [((0, 0, 50, 50), "star")],
               "C": [((0, 0, 50, 50), "star")]}, n_images=3)
    ds.annotations = [a for a in ds.annotations if not (a.image_id == 2 and a.annotator == "C")]
    r = check_consistency(ds)
    assert r.annotator_rates["C"]["miss"]["rate"] == 0.0  # C did not label image 2
    note = next(n for n in r.notes if "only some annotators" in n)
    assert "1 of 3 images" in note and "C" in note and "--all-labelled" in note
    # told that every annotator saw every image, C's empty image is a miss
    r_all = check_consistency(ds, all_labelled=True)
    assert r_all.annotator_rates["C"]["miss"]["k"] == 1
    # who labelled an image can also be tagged
    for img in ds.images:
        img.tags["annotators"] = ["A", "B", "C"]
    assert check_consistency(ds).annotator_rates["C"]["miss"]["k"] == 1


# -- the HTML report -----------------------------------------------------------------------------


def test_html_report_embeds_the_inconsistent_images_with_each_annotator_in_its_colour(tmp_path):
    ds = tiny({"A": [((20, 20, 120, 120), "star")], "B": [((200, 200, 300, 300), "square")]},
              n_images=2)
    for img in ds.images:  # real image files, so they are drawn
        Image.new("RGB", (400, 400), (255, 255, 255)).save(tmp_path / img.file)
    ds.root = tmp_path
    r = check_consistency(ds)
    out = write_html(r, ds, tmp_path / "r.html")
    page = out.read_text()
    jpegs = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    assert len(jpegs) == len(r.images) == 2
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(jpegs[0]))).convert("RGB"), float)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # A blue, B orange
        assert (np.abs(im - colour).sum(-1) < 90).sum() > 200, colour
    assert "missing_box: A drew a star" in page and r.verdict in page
