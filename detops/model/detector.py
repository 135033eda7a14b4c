"""The default detector: a small anchor-free, stride-4 centre-point network (TTFNet-style).

Heavy module (imports torch): only training and export import it; serving reads the ONNX graph.

Architecture: a depthwise-separable backbone down to stride 32, an FPN-like top-down path back
to stride 4 (``neck_wide`` channels down to stride 8, ``neck`` at stride 4), and two heads on the
stride-4 map:

- ``heat`` (``num_classes`` channels, after ``heat_blocks`` depthwise-separable 3x3 blocks that
  widen its receptive field): logits of a per-class centre heatmap (sigmoid; bias
  initialised to -2.19 so every cell starts at p=0.1);
- ``ltrb`` (4 channels, after ``box_blocks`` blocks of its own): distances from the cell's
  point ``((x + .5) * stride, (y + .5) * stride)`` to the box's left, top, right and bottom
  edges, in input pixels (``relu(conv) * ltrb_scale``); with ``quality`` > 0 a fifth channel
  on the same conv, a logit of the IoU the cell's box will have with its object.

Targets (:func:`build_targets`): each box puts an elliptical Gaussian (sigma = ``alpha`` * box
size / 6) on its class channel, peaked at the cell ``floor(centre / stride)``; regression is
supervised on the cells inside the box shrunk by ``beta`` around that peak, weighted by the
Gaussian and normalised per box (times ``log(area)``), with a GIoU loss; the IoU logit on the
same cells and weights with binary cross-entropy against the IoU of the cell's predicted box
(detached: the quality target does not move the box). A cell claimed by two boxes regresses the
smaller one.

Decoding (:func:`decode`), identical in training-time validation and inside the exported ONNX
graph: 3x3 max-pool peak extraction on the sigmoid heatmap, top-K over classes x positions,
gather ltrb at the peaks, turn into ``xyxy`` input pixels: ``[B, K, 6] = (x1, y1, x2, y2,
score, class)`` with ``class`` a float; the score is the heat, or with the IoU channel
``heat ** (1 - quality) * sigmoid(iou) ** quality``.

>>> import torch
>>> model = Detector(DetectorConfig(num_classes=3))
>>> heat, ltrb = model(torch.zeros(1, 3, 64, 64))
>>> tuple(heat.shape), tuple(ltrb.shape)
((1, 3, 16, 16), (1, 5, 16, 16))
>>> tuple(DetectorGraph(model, top_k=10)(torch.zeros(2, 3, 64, 64)).shape)
(2, 10, 6)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Detector",
    "DetectorConfig",
    "DetectorGraph",
    "Targets",
    "build_targets",
    "decode",
    "detector_loss",
    "spec_dict",
]

# Pixel preparation shared with the runtime spec: (pixel / 255 - MEAN) / STD, RGB.
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
HEAT_BIAS = -2.19  # sigmoid(-2.19) ~= 0.1: focal-loss prior


@dataclass(frozen=True)
class DetectorConfig:
    """Shape of the network; everything needed to rebuild it from a checkpoint."""

    num_classes: int
    # Small objects (12-20 px) were the gap: half of them got the wrong class from a stride-4
    # stage of 24 channels and one block. 32 channels and two blocks there (stem 24) gave +0.12
    # val mAP@0.5 after 8 epochs (0.762 vs 0.642, bench/train_bench.py --epochs 8 --workers 1,
    # side by side); a training step costs 3% more in an interleaved micro-benchmark, ONNX
    # Runtime ~25% more per image. A wider stride-4 stage (48) did worse per epoch; a wider
    # neck (48) +0.02 for 28% more per step.
    # The defaults below are the dense-block network (``block="dense"``); the depthwise one was
    # widths (32, 64, 128, 192), depths (2, 2, 3, 2).
    widths: tuple[int, ...] = (32, 48, 96, 128)  # stride 4, 8, 16, 32 backbone channels
    depths: tuple[int, ...] = (1, 1, 2, 1)  # extra stride-1 blocks per stage
    stem: int = 24
    neck: int = 32  # FPN channels at stride 4
    head: int = 32
    # FPN channels at strides 8..32 (``None``: ``neck``) and depthwise-separable 3x3 blocks on
    # the heat branch. Measured in bench/train_bench.py on a quiet machine, 10-minute budget,
    # with the earlier 24-channel stride-4 stage: 64 / 2 -> val mAP@0.5 0.873, mAP 0.686 (507k
    # params, 3.6 ms/image in ORT); None / 0 -> 0.810 / 0.629 (483k params, 3.8 ms/image).
    neck_wide: int | None = 64
    heat_blocks: int = 2
    # blocks on the ltrb branch (0: the 1x1 ltrb conv reads the shared trunk). One block (+59M
    # of 554M multiply-adds at 320) in bench/train_bench.py --n 8000, 10-minute budget: val
    # mAP@0.5 / mAP 0.960 / 0.804 against 0.959 / 0.797 without, the same number of epochs
    box_blocks: int = 1
    # a fifth channel on the box head: a logit of the IoU its box will have with the object
    # (trained on the Gaussian-weighted cells against the detached IoU of the predicted box);
    # a detection's score is heat ** (1 - quality) * sigmoid(iou logit) ** quality, so that
    # boxes that will sit tighter rank higher (0: no quality channel, score = heat). The
    # model's loss was localisation: val AP fell from 0.87 at IoU 0.8 to 0.52 at 0.85 and 0.14
    # at 0.9. bench/train_bench.py, 10-minute budget, 8 epochs each: val mAP@0.5 / mAP 0.962 /
    # 0.810 (seed 0) and 0.965 / 0.815 (seed 1) against 0.957-0.960 / 0.796-0.804 without;
    # the seed-0 model scored by heat alone still reads 0.962 / 0.809, so most of the gain is
    # what the IoU target teaches the box tower, not the re-ranking.
    quality: float = 0.5
    ltrb_scale: float = 16.0  # pixels per unit of the ltrb head (TTFNet wh_offset_base)
    stride: int = 4
    # BN + ReLU after each block's depthwise conv (False: depthwise straight into pointwise,
    # one BN and one ReLU a block). Training is bound by these elementwise passes, not by the
    # convolutions: without them a training step was ~20% cheaper (interleaved, 1 thread) and,
    # in bench/train_bench.py --budget 300 back to back, an epoch took 68 s instead of 80 s,
    # val mAP@0.5 / mAP reached 0.767 / 0.574 instead of 0.756 / 0.560, and ORT ran 4.77
    # instead of 5.78 ms per image.
    dw_act: bool = False
    # "dense": one dense 3x3 conv + BN a block (ReLU after the residual); "dw": depthwise-
    # separable blocks. Under bf16 on these CPUs (oneDNN/AMX) a dense 3x3 is matrix work and a
    # depthwise one a memory-bound pass: forward + backward of 8 images at 320 (one thread)
    # cost 17.3 ms per image for this 641k-parameter dense network against 26-28 ms for the
    # 515k-parameter depthwise one (widths 32/64/128/192, depths 2/2/3/2). 10 minutes in
    # bench/train_bench.py: val mAP@0.5 / mAP 0.938 / 0.762 and 0.940 / 0.762 (12 epochs, two
    # runs) against 0.914-0.922 / 0.726-0.741 (10 epochs); ONNX Runtime 4.9-6.5 ms per image.
    block: str = "dense"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        for k in ("widths", "depths"):
            if k in d:
                d[k] = tuple(d[k])
        # checkpoints written before these fields existed had neither (same weights, same graph)
        d.setdefault("neck_wide", None)
        d.setdefault("heat_blocks", 0)
        d.setdefault("box_blocks", 0)
        d.setdefault("quality", 0.0)
        d.setdefault("dw_act", True)
        d.setdefault("block", "dw")
        return cls(**d)


def _cbr(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DWBlock(nn.Module):
    """Depthwise 3x3 (stride s) + pointwise 1x1, each with BN + ReLU (``act=False``: BN + ReLU
    only after the pointwise); residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.dw = (_cbr(cin, cin, 3, stride, groups=cin) if act
                   else nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False))
        self.pw = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw(self.dw(x))
        return F.relu(y + x if self.residual else y)


class DenseBlock(nn.Module):
    """Dense 3x3 + BN, plus the input, then ReLU (same width in and out)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x) + x)


def _block(c: DetectorConfig, width: int) -> nn.Module:
    if c.block == "dense":
        return DenseBlock(width)
    if c.block == "dw":
        return DWBlock(width, width, act=c.dw_act)
    raise ValueError(f"DetectorConfig.block: expected 'dw' or 'dense', got {c.block!r}")


class Detector(nn.Module):
    """Backbone + FPN + heads; ``forward`` returns ``(heat_logits, box)`` at stride 4 (box:
    ltrb pixels, plus the IoU logit as a fifth channel with ``config.quality``)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        if config.stride != 4:
            raise ValueError("Detector: only stride 4 is implemented")
        if not 0.0 <= config.quality < 1.0:  # at 1 the score would ignore the class heat
            raise ValueError(f"DetectorConfig.quality: expected 0 <= quality < 1 (the IoU's "
                             f"exponent in the score), got {config.quality!r}")
        self.config = config
        c = config
        # a 4x4 stride-4 patch stem straight to widths[0] was 27% cheaper per forward +
        # backward but, 10 minutes side by side on one core each, reached val mAP@0.5 0.806 /
        # mAP 0.585 against this stem's 0.800 / 0.608 (less exact boxes)
        self.stem = _cbr(3, c.stem, 3, 2)  # stride 2
        stages = []
        cin = c.stem
        for w, d in zip(c.widths, c.depths, strict=True):
            # a dense strided 3x3 downsamples: on CPU a strided depthwise conv's backward is
            # several times slower than a dense conv's under bf16 (oneDNN/AMX)
            blocks = [_cbr(cin, w, 3, 2)] + [_block(c, w) for _ in range(d)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        # top-down path: 1x1 laterals; below stride 4 a DW block smooths each sum; at stride 4
        # (the costliest resolution: 80x80 for 320 px) no BN, one ReLU and one dense 3x3
        nw = c.neck_wide or c.neck
        self.lateral = nn.ModuleList(
            nn.Conv2d(w, c.neck if i == 0 else nw, 1) for i, w in enumerate(c.widths)
        )
        self.smooth = nn.ModuleList(_block(c, nw) for _ in c.widths[1:-1])
        # the stride-8 sum is projected to the stride-4 width before upsampling (cheaper)
        self.reduce = nn.Conv2d(nw, c.neck, 1) if nw != c.neck else nn.Identity()
        self.trunk = nn.Conv2d(c.neck, c.head, 3, 1, 1)
        self.heat_tower = nn.Sequential(
            *(_block(c, c.head) for _ in range(c.heat_blocks))
        )
        self.box_tower = nn.Sequential(*(_block(c, c.head) for _ in range(c.box_blocks)))
        self.heat = nn.Conv2d(c.head, c.num_classes, 1)
        self.ltrb = nn.Conv2d(c.head, 5 if c.quality > 0 else 4, 1)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.heat.weight, std=0.01)
        nn.init.constant_(self.heat.bias, HEAT_BIAS)  # type: ignore[arg-type]
        nn.init.normal_(self.ltrb.weight, std=0.01)
        nn.init.constant_(self.ltrb.bias, 1.0)  # type: ignore[arg-type]
        if self.ltrb.out_channels == 5:
            nn.init.constant_(self.ltrb.bias[4], 0.0)  # type: ignore[index]

    def features(self, x: Tensor) -> Tensor:
        """The stride-4 map both heads read (after the shared 3x3 trunk)."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            if i == 0:
                y = self.reduce(y)
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lateral[i](feats[i])
            y = self.smooth[i - 1](y) if i > 0 else F.relu(y)
        return F.relu(self.trunk(y))

    def raw_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(heat_logits, ltrb_raw)``: both heads' convolution outputs (ltrb before ReLU and
        scale), the tensors the export's parity check compares."""
        y = self.features(x)
        return self.heat(self.heat_tower(y)), self.ltrb(self.box_tower(y))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(heat_logits [B, nc, H, W], box [B, 4 or 5, H, W])``: box channels 0-3 are the
        ltrb distances in input pixels, channel 4 (with ``config.quality``) the IoU logit."""
        heat, raw = self.raw_heads(x)
        if self.ltrb.out_channels == 4:
            return heat, F.relu(raw) * self.config.ltrb_scale
        return heat, torch.cat([F.relu(raw[:, :4]) * self.config.ltrb_scale, raw[:, 4:]], 1)


def decode(
    heat_logits: Tensor, ltrb: Tensor, stride: int, top_k: int = 100, quality: float = 0.0
) -> Tensor:
    """Top-K detections ``[B, K, 6] = (x1, y1, x2, y2, score, class)`` in input pixels.

    Peaks are the heat's 3x3 maxima; with a fifth ``ltrb`` channel (an IoU logit) and
    ``quality`` > 0 a peak's score is ``heat ** (1 - quality) * sigmoid(iou) ** quality``.
    The same function runs in validation and is traced into the ONNX graph, so the two agree.
    """
    b, nc, h, w = heat_logits.shape
    heat = torch.sigmoid(heat_logits.float())
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    is_peak = (peaks == heat).to(heat.dtype)
    # while tracing, a shape test would be a tensor: DetectorGraph passes config.quality, > 0
    # only for a network built with the fifth channel
    if quality > 0 and (torch.jit.is_tracing() or ltrb.shape[1] == 5):
        iou = torch.sigmoid(ltrb[:, 4:5].float())
        heat = heat.clamp(min=1e-12) ** (1 - quality) * iou ** quality
    heat = heat * is_peak
    # while tracing, shapes are tensors: K is taken as given (export_onnx checks it fits)
    k = top_k if torch.jit.is_tracing() else min(top_k, nc * h * w)
    scores, idx = torch.topk(heat.reshape(b, nc * h * w), k, dim=1)
    cls = torch.div(idx, h * w, rounding_mode="floor")
    pos = idx - cls * (h * w)
    ys = torch.div(pos, w, rounding_mode="floor")
    xs = pos - ys * w
    d = torch.gather(ltrb[:, :4].float().reshape(b, 4, h * w), 2, pos.unsqueeze(1).expand(b, 4, k))
    px = (xs.to(heat.dtype) + 0.5) * stride
    py = (ys.to(heat.dtype) + 0.5) * stride
    boxes = torch.stack([px - d[:, 0], py - d[:, 1], px + d[:, 2], py + d[:, 3]], dim=2)
    return torch.cat([boxes, scores.unsqueeze(2), cls.to(heat.dtype).unsqueeze(2)], dim=2)


class DetectorGraph(nn.Module):
    """What gets exported: normalised images ``[B, 3, H, W]`` -> ``detections [B, K, 6]``."""

    def __init__(self, model: Detector, top_k: int = 100) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, images: Tensor) -> Tensor:
        heat, ltrb = self.model(images)
        c = self.model.config  # quality > 0 is what gave the box head its fifth channel
        return decode(heat, ltrb, c.stride, self.top_k, c.quality)


# -- targets and loss ---------------------------------------------------------------------------


@dataclass
class Targets:
    """Dense training targets for a batch on the stride-4 grid."""

    heat: Tensor  # [B, nc, H, W] Gaussian peaks in 0..1 (exactly 1 at each box's centre cell)
    boxes: Tensor  # [B, 4, H, W] xyxy input pixels of the box each cell regresses
    weight: Tensor  # [B, H, W] regression weight (0 where no box)
    num_boxes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def build_targets(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    num_classes: int,
    size: tuple[int, int],
    stride: int = 4,
    alpha: float = 0.54,
    beta: float = 0.54,
) -> Targets:
    """Heatmap / box / weight targets for images of ``size = (H, W)`` input pixels.

    ``boxes[i]`` is ``[M, 4]`` xyxy input pixels, ``labels[i]`` ``[M]`` class ids.
    """
    hin, win = size
    h, w = hin // stride, win // stride
    bsz = len(boxes)
    heat = torch.zeros(bsz, num_classes, h, w)
    tboxes = torch.zeros(bsz, 4, h, w)
    weight = torch.zeros(bsz, h, w)
    gy = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    gx = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    counts = [int(bx.shape[0]) for bx in boxes]
    m = max(counts, default=0)
    n_total = sum(counts)
    if m == 0:
        return Targets(heat=heat, boxes=tboxes, weight=weight, num_boxes=0)
    # one padded [B, M] batch: a padded slot has valid=False and claims nothing
    bx = torch.zeros(bsz, m, 4)
    lb = torch.zeros(bsz, m, dtype=torch.long)
    for i, (b_, l_) in enumerate(zip(boxes, labels, strict=True)):
        bx[i, : counts[i]] = b_.float().reshape(-1, 4)
        lb[i, : counts[i]] = l_.long()
    valid = (torch.arange(m).view(1, m) < torch.tensor(counts).view(bsz, 1)).view(bsz, m, 1, 1)
    bw = (bx[..., 2] - bx[..., 0]).clamp(min=1.0)
    bh = (bx[..., 3] - bx[..., 1]).clamp(min=1.0)
    # peak cell = floor(centre / stride), clamped into the grid
    cx = ((bx[..., 0] + bx[..., 2]) / 2 / stride).floor().clamp(0, w - 1).view(bsz, m, 1, 1)
    cy = ((bx[..., 1] + bx[..., 3]) / 2 / stride).floor().clamp(0, h - 1).view(bsz, m, 1, 1)
    fw, fh = (bw / stride).view(bsz, m, 1, 1), (bh / stride).view(bsz, m, 1, 1)
    dx2, dy2 = (gx - cx) ** 2, (gy - cy) ** 2  # [B, M, 1, w], [B, M, h, 1]
    # Gaussians are separable: exp on [B, M, h] + [B, M, w], one outer product
    sx, sy = (alpha * fw / 6).clamp(min=0.25), (alpha * fh / 6).clamp(min=0.25)
    g = torch.exp(-dx2 / (2 * sx**2)) * (torch.exp(-dy2 / (2 * sy**2)) * valid)  # [B,M,h,w]
    for c in range(num_classes):
        sel = (lb == c).view(bsz, m, 1, 1)
        heat[:, c] = (g * sel).amax(1)
    # regression region: the box shrunk by beta around the peak; Gaussian with beta
    rx, ry = beta * fw / 2, beta * fh / 2
    inside = ((gx - cx).abs() <= rx) & ((gy - cy).abs() <= ry)
    inside = (inside | ((gx == cx) & (gy == cy))) & valid  # the peak cell always regresses
    sxr, syr = (beta * fw / 6).clamp(min=0.25), (beta * fh / 6).clamp(min=0.25)
    gr = torch.exp(-dx2 / (2 * sxr**2)) * torch.exp(-dy2 / (2 * syr**2))
    # a cell claimed by several boxes regresses the smallest (ties: the first listed)
    key = (bw * bh).view(bsz, m, 1, 1) + torch.arange(m).view(1, m, 1, 1) * 1e-3
    masked = torch.where(inside, key, torch.full_like(key, 1e30))
    own = inside & (masked == masked.amin(1, keepdim=True))  # [B, M, h, w], one owner a cell
    gr = gr * own
    norm = gr.sum((2, 3), keepdim=True).clamp(min=1e-6)
    area = (bw * bh).view(bsz, m, 1, 1)
    weight = (gr / norm * torch.log(area.clamp(min=2.0))).sum(1)
    tboxes = torch.einsum("bmhw,bmc->bchw", own.float(), bx)
    return Targets(heat=heat, boxes=tboxes, weight=weight, num_boxes=n_total)


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CornerNet's penalty-reduced focal loss, summed (divide by the number of boxes)."""
    logits = logits.float()
    pos = target.eq(1.0)
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = logp.exp()
    pos_loss = -((1 - p) ** alpha) * logp * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * log1mp * (~pos)
    return pos_loss.sum() + neg_loss.sum()


def ltrb_to_boxes(ltrb: Tensor, stride: int) -> Tensor:
    """``[B, 4, H, W]`` distances -> ``[B, 4, H, W]`` xyxy boxes around each cell's point."""
    _, _, h, w = ltrb.shape
    py = (torch.arange(h, dtype=ltrb.dtype, device=ltrb.device).view(1, h, 1) + 0.5) * stride
    px = (torch.arange(w, dtype=ltrb.dtype, device=ltrb.device).view(1, 1, w) + 0.5) * stride
    return torch.stack(
        [px - ltrb[:, 0], py - ltrb[:, 1], px + ltrb[:, 2], py + ltrb[:, 3]], dim=1
    )


def boxes_to_ltrb(boxes: Tensor, stride: int) -> Tensor:
    """Inverse of :func:`ltrb_to_boxes` (distances may be negative outside the box)."""
    _, _, h, w = boxes.shape
    py = (torch.arange(h, dtype=boxes.dtype).view(1, h, 1) + 0.5) * stride
    px = (torch.arange(w, dtype=boxes.dtype).view(1, 1, w) + 0.5) * stride
    return torch.stack(
        [px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=1
    )


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - GIoU for ``[N, 4]`` xyxy boxes."""
    px1, py1, px2, py2 = pred.unbind(1)
    tx1, ty1, tx2, ty2 = target.unbind(1)
    pa = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)
    ta = (tx2 - tx1).clamp(min=0) * (ty2 - ty1).clamp(min=0)
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = pa + ta - inter + 1e-6
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    enclose = cw * ch + 1e-6
    return 1 - (inter / union - (enclose - union) / enclose)


def box_iou_pairs(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of each ``[N, 4]`` xyxy box with its own target."""
    iw = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0]))
    ih = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1]))
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    pa = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    ta = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    return inter / (pa + ta - inter + 1e-6)


def detector_loss(
    heat_logits: Tensor, ltrb: Tensor, targets: Targets, stride: int = 4, box_weight: float = 5.0,
    quality_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Focal heatmap loss / number of boxes + ``box_weight`` x Gaussian-weighted GIoU, and with
    a fifth ``ltrb`` channel ``quality_weight`` x its Gaussian-weighted binary cross-entropy
    against the IoU each cell's (detached) box has with its target."""
    n = max(targets.num_boxes, 1)
    hm = focal_loss(heat_logits, targets.heat) / n
    mask = targets.weight > 0
    qual = None
    if mask.any():
        pred = ltrb_to_boxes(ltrb[:, :4].float(), stride).permute(0, 2, 3, 1)[mask]
        tgt = targets.boxes.permute(0, 2, 3, 1)[mask]
        wts = targets.weight[mask]
        box = (giou_loss(pred, tgt) * wts).sum() / (wts.sum() + 1e-4)
        if ltrb.shape[1] == 5:
            iou = box_iou_pairs(pred.detach(), tgt)
            logit = ltrb[:, 4].float()[mask]
            bce = F.binary_cross_entropy_with_logits(logit, iou, reduction="none")
            qual = (bce * wts).sum() / (wts.sum() + 1e-4)
    else:
        box = ltrb.sum() * 0.0
    total = hm + box_weight * box
    parts = {"heat": float(hm.detach()), "box": float(box.detach())}
    if qual is not None:
        total = total + quality_weight * qual
        parts["quality"] = float(qual.detach())
    return total, parts


# -- spec ---------------------------------------------------------------------------------------


def spec_dict(
    class_names: Sequence[str],
    *,
    imgsz: int = 320,
    score_threshold: float = 0.3,
    nms_iou: float = 0.5,
    max_detections: int = 100,
) -> dict[str, Any]:
    """The runtime :class:`~detops.model.spec.ModelSpec` fields for an exported detector."""
    return {
        "class_names": list(class_names),
        "input_width": imgsz,
        "input_height": imgsz,
        "resize": "stretch",
        "scale": 1 / 255,
        "mean": list(MEAN),
        "std": list(STD),
        "channel_order": "rgb",
        "adapter": "detops",
        "adapter_options": {"output": "detections"},
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "max_detections": max_detections,
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
