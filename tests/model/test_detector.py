"""The default detector: shapes, targets, decode, and the training loop (tiny models, 64 px)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detops.data.synth import SceneConfig, synthesize
from detops.model.detector import (
    Detector,
    DetectorConfig,
    DetectorGraph,
    box_iou_pairs,
    boxes_to_ltrb,
    build_targets,
    decode,
    detector_loss,
    ltrb_to_boxes,
)
from detops.model.train import TrainConfig, load_checkpoint, train

TINY = {"widths": (8, 16, 16, 16), "depths": (0, 1, 0, 0), "stem": 8, "neck": 8, "head": 8}
SCENE = SceneConfig(width=64, height=64, min_size=10, max_size=28, max_objects=3,
                    distractors=1, classes=("circle", "square"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    ds = synthesize(tmp_path_factory.mktemp("synth"), n=24, seed=3, config=SCENE, workers=1,
                    image_format="png")
    return ds.subset(range(16)), ds.subset(range(16, 24))


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch=8, imgsz=64, lr=5e-3, warmup_steps=1, model=TINY, workers=2,
                eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


# -- model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nc", "size", "batch"),
    [
        (1, 64, 1),  # one class, smallest useful input
        (5, 96, 2),  # non-square feature count per stage
        (3, 320, 1),  # the default input size
    ],
)
def test_forward_shapes(nc: int, size: int, batch: int) -> None:
    model = Detector(DetectorConfig(num_classes=nc, **TINY)).eval()
    heat, ltrb = model(torch.randn(batch, 3, size, size))
    assert heat.shape == (batch, nc, size // 4, size // 4)
    assert ltrb.shape == (batch, 5, size // 4, size // 4)  # distances + the IoU logit
    assert (ltrb[:, :4] >= 0).all()
    dets = DetectorGraph(model, top_k=20)(torch.randn(batch, 3, size, size))
    assert dets.shape == (batch, 20, 6)
    assert ((dets[..., 5] >= 0) & (dets[..., 5] < nc)).all()
    assert (dets[..., 5] == dets[..., 5].round()).all()
    assert (dets[..., 4][:, :-1] >= dets[..., 4][:, 1:]).all()  # sorted by score


@pytest.mark.parametrize("block", ["dw", "dense"])
def test_both_block_kinds_build_the_same_outputs_and_read_back(block: str) -> None:
    cfg = DetectorConfig(num_classes=3, block=block, **TINY)
    model = Detector(cfg).eval()
    convs = [m for m in model.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert bool(depthwise) == (block == "dw")  # dense: no grouped convolution anywhere
    heat, ltrb = model(torch.randn(2, 3, 64, 64))
    assert heat.shape == (2, 3, 16, 16) and ltrb.shape == (2, 5, 16, 16)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "block"}  # written before the field
    assert DetectorConfig.from_dict(old).block == "dw"


def test_the_box_tower_feeds_ltrb_and_older_checkpoints_read_back_without_one() -> None:
    cfg = DetectorConfig(num_classes=2, **TINY)
    model = Detector(cfg).eval()
    assert cfg.box_blocks == 1 and len(model.box_tower) == 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        heat, ltrb = model(x)
        heat_raw, ltrb_raw = model.raw_heads(x)
        # the tower is on the ltrb path: the 1x1 ltrb conv on the trunk alone differs
        bypass = model.ltrb(model.features(x))
    assert torch.equal(heat, heat_raw)
    assert torch.allclose(ltrb[:, :4], torch.relu(ltrb_raw[:, :4]) * cfg.ltrb_scale)
    assert torch.equal(ltrb[:, 4], ltrb_raw[:, 4])  # the IoU logit passes through
    assert not torch.allclose(ltrb_raw, bypass)
    old = {k: v for k, v in cfg.to_dict().items() if k != "box_blocks"}  # before the field
    old_cfg = DetectorConfig.from_dict(old)
    assert old_cfg.box_blocks == 0
    old_model = Detector(old_cfg)
    assert not any(k.startswith("box_tower") for k in old_model.state_dict())
    keys = {k for k in model.state_dict() if not k.startswith("box_tower")}
    assert keys == set(old_model.state_dict())


def test_an_unknown_block_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="DetectorConfig.block: expected 'dw' or 'dense', got 'x'"):
        Detector(DetectorConfig(num_classes=1, block="x", **TINY))


def test_quality_channel_off_and_older_checkpoints_have_four_box_channels() -> None:
    off = Detector(DetectorConfig(num_classes=2, quality=0.0, **TINY)).eval()
    _, ltrb = off(torch.randn(1, 3, 64, 64))
    assert ltrb.shape[1] == 4 and off.ltrb.out_channels == 4
    cfg = DetectorConfig(num_classes=2, **TINY)
    assert cfg.quality == 0.5
    old = {k: v for k, v in cfg.to_dict().items() if k != "quality"}  # before the field
    assert DetectorConfig.from_dict(old).quality == 0.0
    assert Detector(DetectorConfig.from_dict(old)).ltrb.out_channels == 4


def _one_peak_maps(iou_logits: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two equal heat peaks of class 0 at cells (4, 4) and (10, 10) of a 16x16 map, boxes 8 px
    around each, and the given IoU logits there (-4 elsewhere)."""
    heat = torch.full((1, 2, 16, 16), -9.0)
    ltrb = torch.full((1, 5, 16, 16), -4.0)
    ltrb[:, :4] = 4.0
    for (y, x), q in zip(((4, 4), (10, 10)), iou_logits, strict=True):
        heat[0, 0, y, x] = 1.0
        ltrb[0, 4, y, x] = q
    return heat, ltrb


@pytest.mark.parametrize("quality", [0.25, 0.5, 0.75])
def test_decode_scores_peaks_by_heat_and_predicted_iou(quality: float) -> None:
    heat, ltrb = _one_peak_maps((-2.0, 2.0))
    dets = decode(heat, ltrb, 4, top_k=2, quality=quality)[0]
    h, q_lo, q_hi = torch.sigmoid(torch.tensor([1.0, -2.0, 2.0])).tolist()
    # the peak whose box is predicted tighter ranks first, each scored heat^(1-a) * iou^a
    assert dets[0, :4].tolist() == [38.0, 38.0, 46.0, 46.0]
    assert dets[1, :4].tolist() == [14.0, 14.0, 22.0, 22.0]
    torch.testing.assert_close(dets[:, 4], torch.tensor(
        [h ** (1 - quality) * q_hi ** quality, h ** (1 - quality) * q_lo ** quality]))
    # quality 0 (or a four-channel box head) scores by heat alone, whatever the logit says
    plain = decode(heat, ltrb, 4, top_k=2, quality=0.0)[0]
    torch.testing.assert_close(plain[:, 4], torch.tensor([h, h]))
    torch.testing.assert_close(decode(heat, ltrb[:, :4], 4, top_k=2, quality=quality)[0], plain)


def test_quality_loss_targets_the_detached_iou_of_each_cells_box() -> None:
    box = (10.0, 12.0, 42.0, 40.0)
    tg = build_targets([torch.tensor([box])], [torch.tensor([1])], 2, (64, 64), stride=4)
    mask = tg.weight > 0
    ltrb = boxes_to_ltrb(tg.boxes, 4).clamp(min=0)
    ltrb = ltrb + torch.linspace(-2.0, 3.0, 64 * 4).reshape(1, 4, 8, 8).repeat_interleave(
        2, 2).repeat_interleave(2, 3)  # each cell's box off by its own amount
    ltrb = ltrb.clamp(min=0)
    pred = ltrb_to_boxes(ltrb, 4).permute(0, 2, 3, 1)[mask]
    iou = box_iou_pairs(pred, tg.boxes.permute(0, 2, 3, 1)[mask])
    assert 0 < iou.min() < 0.9 and iou.max() > 0.5  # the cells' IoUs differ
    logit = torch.zeros(1, 1, 16, 16)
    logit[0, 0][mask[0]] = torch.logit(iou)
    heat = torch.zeros(1, 2, 16, 16, requires_grad=True)
    box5 = torch.cat([ltrb, logit], 1).requires_grad_(True)
    total, parts = detector_loss(heat, box5, tg, 4, box_weight=5.0, quality_weight=1.0)
    total.backward()
    # BCE against the IoU is minimal at logit(IoU): no gradient on the quality channel there
    assert box5.grad is not None
    assert box5.grad[0, 4].abs().max().item() < 1e-5
    # and the quality term does not push the boxes (its IoU target is detached)
    box4 = ltrb.clone().requires_grad_(True)
    total4, parts4 = detector_loss(heat.detach(), box4, tg, 4, box_weight=5.0)
    total4.backward()
    assert box4.grad is not None
    torch.testing.assert_close(box5.grad[:, :4], box4.grad)
    assert "quality" in parts and "quality" not in parts4
    # away from logit(IoU) the channel is pulled towards it
    logit[0, 0][mask[0]] = 0.0
    box5 = torch.cat([ltrb, logit], 1).requires_grad_(True)
    detector_loss(heat.detach(), box5, tg, 4)[0].backward()
    g = box5.grad[0, 4][mask[0]]
    assert torch.equal(torch.sign(g), torch.sign(0.5 - iou))


@pytest.mark.parametrize("quality", [-0.1, 1.0, float("nan")])
def test_a_quality_exponent_outside_0_1_is_refused(quality: float) -> None:
    with pytest.raises(ValueError, match=r"DetectorConfig.quality: expected 0 <= quality < 1"):
        Detector(DetectorConfig(num_classes=1, quality=quality, **TINY))


def test_heat_bias_starts_at_focal_prior() -> None:
    model = Detector(DetectorConfig(num_classes=2, **TINY)).eval()
    heat, _ = model(torch.zeros(1, 3, 64, 64))
    assert torch.sigmoid(heat).mean().item() == pytest.approx(0.1, abs=0.02)


# -- targets -------------------------------------------------------------------------------------

BOXES = [
    # (box xyxy, class): centre on a cell corner, off-centre, small, large, at the border
    ((10.0, 10.0, 30.0, 30.0), 0),
    ((37.0, 5.0, 61.0, 19.0), 1),
    ((2.0, 40.0, 9.0, 47.0), 2),
    ((0.0, 0.0, 64.0, 64.0), 0),
    ((50.0, 50.0, 64.0, 64.0), 1),
]


@pytest.mark.parametrize(("box", "cls"), BOXES)
def test_heatmap_peak_at_box_centre_over_stride(box: tuple, cls: int) -> None:
    tg = build_targets([torch.tensor([box])], [torch.tensor([cls])], 3, (64, 64), stride=4)
    heat = tg.heat[0]
    c, y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert (c, y, x) == (cls, min(int(cy // 4), 15), min(int(cx // 4), 15))
    assert heat.max().item() == 1.0
    assert heat[[k for k in range(3) if k != cls]].max().item() == 0.0  # other classes empty
    assert tg.num_boxes == 1


@pytest.mark.parametrize(("box", "cls"), BOXES)
def test_ltrb_target_decodes_back_to_the_box(box: tuple, cls: int) -> None:
    tg = build_targets([torch.tensor([box])], [torch.tensor([cls])], 3, (64, 64), stride=4)
    mask = tg.weight[0] > 0
    assert mask.any()
    # every supervised cell's target is the box; ltrb from it decodes back to the box
    assert torch.equal(tg.boxes[0][:, mask].T, torch.tensor([box]).expand(int(mask.sum()), 4))
    ltrb = boxes_to_ltrb(tg.boxes, 4)
    back = ltrb_to_boxes(ltrb, 4)[0][:, mask].T
    torch.testing.assert_close(back, torch.tensor([box]).expand_as(back))
    # and through the graph's decode, from a heatmap of the targets
    logits = torch.logit(tg.heat.clamp(1e-4, 1 - 1e-4))
    dets = decode(logits, ltrb.clamp(min=0), 4, top_k=1)[0, 0]
    torch.testing.assert_close(dets[:4], torch.tensor(box), atol=1e-4, rtol=0)
    assert dets[5].item() == cls


def test_overlapping_boxes_regress_the_smaller() -> None:
    big, small = (0.0, 0.0, 60.0, 60.0), (20.0, 20.0, 40.0, 40.0)
    tg = build_targets([torch.tensor([big, small])], [torch.tensor([0, 1])], 2, (64, 64))
    # the shared centre cell (7, 7) belongs to the smaller box
    assert tg.boxes[0, :, 7, 7].tolist() == list(small)
    assert tg.heat[0, 0, 7, 7] == 1.0 and tg.heat[0, 1, 7, 7] == 1.0
    # each box's weights sum to log(area)
    w = tg.weight[0]
    owned_small = (tg.boxes[0, 2] == 40.0) & (w > 0)
    assert w[owned_small].sum().item() == pytest.approx(math.log(400.0), rel=1e-5)


def test_no_boxes_gives_empty_targets() -> None:
    tg = build_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 2, (64, 64))
    assert tg.heat.sum() == 0 and tg.weight.sum() == 0 and tg.num_boxes == 0


# -- training ------------------------------------------------------------------------------------


def _losses(history) -> list[float]:
    return [m.loss for m in history]


@pytest.mark.parametrize(("replicas", "amp"), [(1, "fp32"), (1, "auto"), (2, "auto")])
def test_training_decreases_loss_and_writes_checkpoints(
    tiny_data, tmp_path: Path, replicas: int, amp: str
) -> None:
    train_ds, val_ds = tiny_data
    calls = []
    r = train(train_ds, val_ds, tiny_config(epochs=12, lr=1e-2, replicas=replicas, amp=amp),
              out_dir=tmp_path, progress=lambda *a: calls.append(a))
    losses = _losses(r.epochs)
    assert losses[-1] < losses[0] * 0.9, losses  # 24 steps of a tiny model
    assert len(calls) == 12 * 2 and calls[-1][:3] == (11, 2, 2)  # (epoch, step, total_steps)
    assert calls[-1][4] == pytest.approx(0.0, abs=1e-6)  # eta at the end
    assert r.best_path.exists() and r.last_path.exists()
    assert all(m.ap is not None and 0 <= m.ap <= 1 for m in r.epochs)
    model, state = load_checkpoint(r.best_path)
    assert state["epoch"] == r.best_epoch and state["class_names"] == ["circle", "square"]
    assert model.config.num_classes == 2
    # the checkpoint's weights are fp32 (whatever ran forward and backward), the exported
    # ones are the moving average, and the raw training weights are kept for --resume
    last = torch.load(r.last_path, weights_only=False)
    assert all(v.dtype == torch.float32 for v in last["model"].values() if v.is_floating_point())
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mean_grads_and_buffers_of_replicas(dtype: torch.dtype) -> None:
    from detops.model.train import _mean_buffers, _mean_grads

    torch.manual_seed(0)
    master = Detector(DetectorConfig(num_classes=2, **TINY))
    reps = [Detector(DetectorConfig(num_classes=2, **TINY)).to(dtype) for _ in range(2)]
    for r in reps:
        for p in r.parameters():
            p.grad = torch.randn_like(p)
        for b in r.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b))
    # a parameter no replica's loss reached, and one only the second replica's did
    none_i, half_i = 0, 3
    for r in reps:
        list(r.parameters())[none_i].grad = None
    list(reps[0].parameters())[half_i].grad = None
    want = [None if a.grad is None and b.grad is None
            else sum(g.grad.float() for g in (a, b) if g.grad is not None) / 2
            for a, b in zip(reps[0].parameters(), reps[1].parameters(), strict=True)]
    _mean_grads(master, reps)
    _mean_buffers(master, reps)
    for i, (p, w) in enumerate(zip(master.parameters(), want, strict=True)):
        if w is None:
            assert p.grad is None and i == none_i
            continue
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, w)
    for m, a, b in zip(master.buffers(), reps[0].buffers(), reps[1].buffers(), strict=True):
        if m.is_floating_point():
            torch.testing.assert_close(m, (a.float() + b.float()) / 2)


def test_ema_follows_the_weights_with_its_decay() -> None:
    from detops.model.train import _Ema

    torch.manual_seed(0)
    model = Detector(DetectorConfig(num_classes=2, **TINY))
    ema = _Ema(model, decay=0.9, ramp=2.0)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, [model])
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    for e, s0, p in zip(ema.model.parameters(), start, model.parameters(), strict=True):
        torch.testing.assert_close(e, d * s0 + (1 - d) * p)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [({"replicas": 3, "batch": 8}, "does not split into 3 replicas"),
     ({"ema": 1.0}, "0 <= ema < 1"), ({"ema_ramp": 0}, "ema_ramp > 0"),
     ({"quality_weight": -1.0}, "quality_weight=-1.0"),
     ({"box_weight": float("nan")}, "box_weight=nan")],
)
def test_bad_parallel_and_ema_settings_are_refused(tiny_data, tmp_path: Path, kw, needle):
    from detops.errors import ConfigError

    train_ds, val_ds = tiny_data
    with pytest.raises(ConfigError, match=needle):
        train(train_ds, val_ds, tiny_config(**kw), out_dir=tmp_path)


@pytest.mark.parametrize(
    "kw",
    [{"warm_imgsz": 48}, {"warm_imgsz": 64, "warm_fraction": 0.5},
     {"warm_imgsz": 32, "warm_fraction": 1.0}],
)
def test_bad_progressive_resizing_settings_are_refused(kw):
    from detops.errors import ConfigError

    with pytest.raises(ConfigError, match=f"warm_imgsz={kw['warm_imgsz']}"):
        tiny_config(**kw)


def test_progressive_resizing_defaults_to_four_fifths_of_the_size_on_a_32_grid():
    assert TrainConfig().warm_imgsz == 256  # imgsz 320
    assert TrainConfig(imgsz=640).warm_imgsz == 512
    assert TrainConfig(imgsz=128).warm_imgsz == 0  # too small to be worth it: off
    assert TrainConfig(warm_imgsz=0).warm_imgsz == 0


def test_resized_images_keep_colours_and_scale_boxes() -> None:
    from detops.model.train import _Images, resized

    pixels = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    pixels[0, :, :, :32] = 200  # left half bright
    pixels[1] = 77
    imgs = _Images(pixels, [torch.tensor([[8.0, 16.0, 40.0, 48.0]]), torch.zeros(0, 4)],
                   [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)],
                   np.array([[2.0, 2.0], [1.0, 1.0]]))
    small = resized(imgs, 32)
    assert small.pixels.shape == (2, 3, 32, 32) and small.pixels.dtype == torch.uint8
    assert (small.pixels[1] == 77).all()
    assert (small.pixels[0, :, :, :15] == 200).all() and (small.pixels[0, :, :, 17:] == 0).all()
    assert small.boxes[0].tolist() == [[4.0, 8.0, 20.0, 24.0]] and small.boxes[1].shape == (0, 4)
    # original pixels per input pixel double: predictions still map back to the original image
    np.testing.assert_allclose(small.scale, [[4.0, 4.0], [2.0, 2.0]])


def test_progressive_resizing_trains_the_first_steps_small(tiny_data, tmp_path: Path,
                                                           monkeypatch) -> None:
    from detops.model import train as train_mod

    sizes: list[tuple[int, int]] = []
    real = train_mod.build_targets

    def recording(boxes, labels, nc, size, stride=4, **kw):
        sizes.append(tuple(size))
        assert all(float(b.max()) <= size[1] for b in boxes if b.numel())  # boxes scaled too
        return real(boxes, labels, nc, size, stride, **kw)

    monkeypatch.setattr(train_mod, "build_targets", recording)
    train_ds, val_ds = tiny_data
    r = train(train_ds, val_ds, tiny_config(epochs=4, eval_every=4, replicas=1, warm_imgsz=32,
                                            warm_fraction=0.5), out_dir=tmp_path)
    # 8 steps (2 per epoch): the first half on 32 px images, the rest on 64 px
    assert sizes == [(32, 32)] * 4 + [(64, 64)] * 4
    assert r.epochs[-1].ap is not None


def test_same_seed_same_losses_and_weights(tiny_data, tmp_path: Path) -> None:
    train_ds, val_ds = tiny_data
    a = train(train_ds, val_ds, tiny_config(epochs=2, eval_every=10), out_dir=tmp_path / "a")
    b = train(train_ds, val_ds, tiny_config(epochs=2, eval_every=10), out_dir=tmp_path / "b")
    c = train(train_ds, val_ds, tiny_config(epochs=2, eval_every=10, seed=1),
              out_dir=tmp_path / "c")
    assert _losses(a.epochs) == _losses(b.epochs)
    assert _losses(a.epochs) != _losses(c.epochs)
    wa, wb = torch.load(a.last_path)["model"], torch.load(b.last_path)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class _Interrupt(Exception):
    pass


def test_resume_continues_to_the_uninterrupted_result(tiny_data, tmp_path: Path) -> None:
    train_ds, val_ds = tiny_data
    cfg = tiny_config(epochs=3)
    full = train(train_ds, val_ds, cfg, out_dir=tmp_path / "full")

    def stop_in_epoch_2(epoch: int, step: int, *_: object) -> None:
        if epoch == 2 and step == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(train_ds, val_ds, cfg, out_dir=tmp_path / "cut", progress=stop_in_epoch_2)
    assert torch.load(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train(train_ds, val_ds, cfg, out_dir=tmp_path / "cut", resume=True)
    assert [m.epoch for m in resumed.epochs] == [0, 1, 2]
    assert _losses(resumed.epochs) == _losses(full.epochs)
    assert [m.ap for m in resumed.epochs] == [m.ap for m in full.epochs]
    wf, wr = torch.load(full.last_path)["model"], torch.load(resumed.last_path)["model"]
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_one_annotator_is_used(tmp_path: Path) -> None:
    from detops.data.dataset import Category, Dataset
    from detops.model.train import load_images

    ds = Dataset(categories=[Category(0, "a")], root=tmp_path)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    img = ds.add_image("x.png", 64, 64)
    ds.add_annotation(img.id, (1, 1, 9, 9), 0, annotator="zoe")
    ds.add_annotation(img.id, (2, 2, 10, 10), 0, annotator="amy")
    got = load_images(ds, 64, "amy")
    assert got.boxes[0].tolist() == [[2.0, 2.0, 10.0, 10.0]]
    from detops.model.train import _pick_annotator

    assert _pick_annotator(ds, None) == "amy"  # first alphabetically


@pytest.mark.parametrize(
    ("hflip", "scale_jitter", "translate", "tol"),
    [
        (1.0, 0.0, 0.0, 0.0),  # flip only: an exact mirror
        (0.0, 0.2, 0.1, 1.5),  # scale + translate: bilinear resampling, within a pixel or so
        (1.0, 0.2, 0.1, 1.5),  # all together
    ],
)
def test_augment_moves_boxes_with_pixels(
    hflip: float, scale_jitter: float, translate: float, tol: float
) -> None:
    from detops.model.train import MEAN, STD, _augment

    cfg = tiny_config(hflip=hflip, scale_jitter=scale_jitter, translate=translate,
                      brightness=0.0, contrast=0.0)
    box = torch.tensor([[12.0, 20.0, 40.0, 36.0]])
    pixels = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    pixels[:, :, 20:36, 12:40] = 255
    x, boxes, _ = _augment(pixels, [box] * 4, [torch.tensor([0])] * 4, cfg,
                           torch.Generator().manual_seed(0))
    rgb = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    for i in range(4):
        ys, xs = torch.nonzero(rgb[i, 0] > 0.5, as_tuple=True)
        seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert len(boxes[i]) == 1
        assert (boxes[i][0] - seen).abs().max().item() <= tol, (boxes[i][0], seen)


@pytest.mark.parametrize("hflip", [0.0, 0.5])
def test_augment_photometric_jitter_is_the_documented_formula(hflip: float) -> None:
    # oracle: clamp((p / 255 - m) * c + m + b, 0, 1), normalised, with m the image's mean,
    # b and c drawn from the generator as documented, written out the plain way
    from detops.model.train import MEAN, STD, _augment

    cfg = tiny_config(hflip=hflip, brightness=0.3, contrast=0.6)
    g = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (6, 3, 24, 20), dtype=torch.uint8, generator=g)
    x, _, _ = _augment(pixels, [torch.zeros(0, 4)] * 6, [torch.zeros(0)] * 6, cfg,
                       torch.Generator().manual_seed(11))
    u = torch.rand(6, 6, generator=torch.Generator().manual_seed(11))
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    assert x.shape == (6, 3, 24, 20) and x.dtype == torch.float32
    for i in range(6):
        p = pixels[i].double() / 255
        if u[i, 0] < hflip:
            p = p.flip(2)
        m = p.mean()
        bright = (2 * u[i, 4].item() - 1) * 0.3
        c = 1 + (2 * u[i, 5].item() - 1) * 0.6
        want = (((p - m) * c + m + bright).clamp(0, 1) - mean.double()) / std.double()
        assert torch.allclose(x[i].double(), want, atol=1e-5), i


def test_the_budget_plan_ends_mid_epoch_on_the_floor_lr_and_is_evaluated(
    tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that moves only when a step ends: 5 s a step for eight epochs of two steps, then
    # 5.5 s. With a 99 s budget the plan after epoch 7 (80 s, 16 steps) is 3 more steps; the
    # slower epoch 8 keeps it at 19, so epoch 9 runs one step, is the last, and is evaluated
    # though eval_every would skip it; the cosine schedule reaches its floor at that step.
    import types

    import detops.model.train as train_module

    now = [0.0]
    steps: list[int] = []
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))

    def step_ends(epoch: int, *_: object) -> None:
        steps.append(epoch)
        now[0] += 5.0 if epoch < 8 else 5.5

    cfg = tiny_config(epochs=50, eval_every=100, time_budget_s=99)
    r = train(*tiny_data, cfg, out_dir=tmp_path, progress=step_ends)
    assert r.stopped == "time_budget" and len(r.epochs) == 10
    assert len(steps) == 19 and steps.count(9) == 1  # the last epoch: one of its two steps
    assert [m.ap is not None for m in r.epochs] == [False] * 9 + [True]
    assert r.epochs[-1].lr < 0.05 * cfg.lr  # annealed over the planned steps


def test_the_budget_plan_keeps_room_for_the_final_evaluation(
    tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 s a step, 8 s an evaluation (every epoch), 56 s budget: after epoch 2 (46 s) one more
    # step would fit but its evaluation would not, so the run ends there, inside the budget
    import types

    import detops.model.train as train_module

    now = [0.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    real_evaluate = train_module.evaluate_model

    def slow_evaluate(*args: object, **kw: object) -> dict[str, float]:
        now[0] += 8.0
        return real_evaluate(*args, **kw)

    monkeypatch.setattr(train_module, "evaluate_model", slow_evaluate)

    def step_ends(*_: object) -> None:
        now[0] += 5.0

    r = train(*tiny_data, tiny_config(epochs=50, eval_every=1, time_budget_s=56),
              out_dir=tmp_path, progress=step_ends)
    assert r.stopped == "time_budget" and len(r.epochs) == 3
    assert r.seconds <= 56 and r.epochs[-1].ap is not None
    # a resumed run plans with the same room: the evaluation's length is in the checkpoint
    assert torch.load(tmp_path / "last.pt", weights_only=False)["scheduler"]["eval_s"] == 8.0


def test_time_budget_stops_training(tiny_data, tmp_path: Path) -> None:
    train_ds, val_ds = tiny_data
    r = train(train_ds, val_ds, tiny_config(epochs=50, time_budget_s=0.5), out_dir=tmp_path)
    assert r.stopped == "time_budget" and len(r.epochs) < 50
    assert r.epochs[-1].ap is not None  # the last (possibly cut) epoch is evaluated
    assert r.best_path.exists()
