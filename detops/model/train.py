"""Training loop for the default detector, as a library function (the CLI draws progress).

Heavy module (imports torch). ``train(train_ds, val_ds, config, out_dir=...)`` decodes every
image once into one uint8 tensor in memory, trains with AdamW + warmup + cosine LR, validates
an exponential moving average of the weights with the exact decode the ONNX graph runs and
COCO-evaluates it (:func:`detops.evaluate.evaluate_coco`), writes ``last.pt`` every epoch and
``best.pt`` on the best validation AP, and can resume exactly from ``last.pt``.

Precision: where the CPU has bf16 units (AMX / AVX512-BF16), forward and backward run on a
bfloat16 copy of the network while AdamW updates fp32 master weights (copied back after every
step); this was 16% faster per step than fp32 weights under bf16 autocast (383 vs 323 ms for a
batch of 16, 2 cores), and both are ~2x faster than fp32.

Annotators: a dataset may carry several annotators' boxes for the same objects. Training and
validation use ONE of them: ``TrainConfig.annotator``, by default the first name in
alphabetical order (``Dataset.annotators``); annotations without an annotator are used when the
dataset has no annotator names at all.

Reproducibility on CPU: the model init comes from ``torch.manual_seed(seed)``; epoch ``e``'s
data order and augmentations from ``SeedSequence([seed, e])``, so a run resumed from
``last.pt`` at an epoch boundary sees exactly the data an uninterrupted run sees. CPU kernels
used here are deterministic for a fixed thread count; different ``torch.get_num_threads()``
values may change the last bits of reductions.

Parallelism: the batch is split between ``replicas`` copies of the network, each running on
its own thread with one intra-op thread (torch releases the GIL inside kernels and autograd);
their gradients are averaged in a fixed order into the master weights, so the result does not
depend on which thread finishes first. This network's convolutions are too small to split
well across intra-op threads: two replicas ran a batch of 16 in 228 ms where one network on
two intra-op threads took 343 ms (1.5x).

Time budget: with ``time_budget_s`` the number of steps is re-planned after each epoch to what
fits in the time left (at the slower of the mean step, earlier evaluations included, and this
epoch's step), so the last epoch may be partial; the cosine schedule is stretched over the
planned steps and the plan is stored in the checkpoint. Planning whole epochs instead left up
to one epoch of the budget unused (117 of 600 s with 6,800 training scenes) or ran the last
epochs at the floor learning rate when the plan grew. When the budget runs out mid-epoch the
epoch is cut short, evaluated and saved. The final evaluation is kept inside the budget: the
plan and the mid-epoch cut leave room for it, as long as the last evaluation took.
A budgeted run depends on timing, so it is not bit-reproducible; without a budget it is.

Progressive resizing: the first 3/4 of the planned steps (``warm_fraction``) train on a copy of
the training images resized once to ``warm_imgsz`` (antialiased; 256 px for 320), whose steps
cost ~0.7x; the rest, and every validation, run at ``imgsz``. The phase follows the plan, so a
budgeted run re-planned after an epoch switches at 3/4 of the new plan.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from detops.data.dataset import Dataset
from detops.errors import ConfigError
from detops.evaluate.matching import best_f1_threshold  # re-exported for callers
from detops.model.detector import (
    MEAN,
    STD,
    Detector,
    DetectorConfig,
    build_targets,
    decode,
    detector_loss,
)
from detops.model.workflow import ground_truth

__all__ = [
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "best_f1_threshold",
    "evaluate_model",
    "load_checkpoint",
    "load_images",
    "predict_coco",
    "train",
]

ProgressFn = Callable[[int, int, int, float, float], None]


@dataclass
class TrainConfig:
    """Training settings; the defaults are the recipe measured in ``bench/train_bench.py``."""

    epochs: int = 60
    # bench/train_bench.py, 10-minute budget, the dense default detector: lr 4e-3 reached val
    # mAP@0.5 / mAP 0.949 / 0.774 and 0.947 / 0.773 (two runs); 6e-3 0.934-0.940 / 0.756-0.762
    # (four runs); 3e-3 0.933 / 0.752; 1e-2 trailed from the start (val mAP 0.30 against 0.56
    # after four epochs)
    lr: float = 4e-3
    weight_decay: float = 1e-4
    batch: int = 16
    imgsz: int = 320
    seed: int = 0
    workers: int = 0  # CPU threads; 0 = os.cpu_count()
    # data-parallel replicas, each on its own thread with one intra-op thread (0 = one per
    # worker thread when the batch divides evenly; 1 = one network using ``workers`` intra-op
    # threads). On 2 cores two replicas ran 1.5x the images per second of one network on two
    # intra-op threads: this network's kernels are too small to split well.
    replicas: int = 0
    time_budget_s: float | None = None
    patience: int | None = None  # stop after this many evaluations without a better val AP
    amp: Literal["auto", "bf16", "fp32"] = "auto"
    # exponential moving average of the weights, used for validation, ``best.pt`` and export
    # (0 = off); the decay ramps up as ``ema * (1 - exp(-step / ema_ramp))``
    ema: float = 0.995
    ema_ramp: float = 100.0
    # epochs; the last epoch (and, with a budget, the one the budget ends) is always evaluated.
    # Each evaluation is charged to the time budget, so not every epoch by default.
    eval_every: int = 4
    annotator: str | None = None
    warmup_steps: int = 50
    box_weight: float = 5.0
    quality_weight: float = 1.0  # the IoU channel's loss (with DetectorConfig.quality > 0)
    # augmentation
    hflip: float = 0.5
    brightness: float = 0.12  # +- fraction of full range
    contrast: float = 0.2  # +- fraction
    scale_jitter: float = 0.0  # +- fraction (0 with translate 0: flip without resampling)
    translate: float = 0.0  # +- fraction of the image size
    # progressive resizing: the first ``warm_fraction`` of the planned steps train on the
    # images resized to ``warm_imgsz`` (cheaper per image); validation stays at ``imgsz``.
    # None: 0.8 x imgsz rounded down to a multiple of 32 (256 for 320) when imgsz >= 160,
    # else off; 0: off. Measured in bench/train_bench.py (10-minute budget, back to back with
    # the same run at 320 throughout): 256 px epochs took 46-55 s instead of 65-75 s, and val
    # mAP@0.5 / mAP reached 0.910 / 0.725 instead of 0.891 / 0.705 with warm_fraction 0.5, and
    # 0.922 / 0.741 and 0.914 / 0.726 (two runs) with 0.75: more, cheaper epochs at 256 win.
    warm_imgsz: int | None = None
    warm_fraction: float = 0.75
    # model shape
    model: dict[str, Any] = field(default_factory=dict)  # DetectorConfig overrides
    eval_score_threshold: float = 0.01
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or self.imgsz % 32 != 0:
            raise ConfigError(
                f"TrainConfig: need epochs >= 1, batch >= 1 and imgsz a multiple of 32 "
                f"(got epochs={self.epochs}, batch={self.batch}, imgsz={self.imgsz})"
            )
        if self.warm_imgsz is None:
            auto = int(self.imgsz * 0.8) // 32 * 32
            self.warm_imgsz = auto if self.imgsz >= 160 else 0
        if self.warm_imgsz and not (
            self.warm_imgsz % 32 == 0 and 0 < self.warm_imgsz < self.imgsz
            and 0.0 < self.warm_fraction < 1.0
        ):
            raise ConfigError(
                f"TrainConfig: warm_imgsz={self.warm_imgsz} needs a multiple of 32 below imgsz "
                f"({self.imgsz}) and 0 < warm_fraction < 1 (got {self.warm_fraction})"
            )
        if self.amp not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"TrainConfig: amp={self.amp!r}; use 'auto', 'bf16' or 'fp32'")
        if not (self.box_weight >= 0 and self.quality_weight >= 0):
            raise ConfigError(
                f"TrainConfig: need box_weight >= 0 and quality_weight >= 0 "
                f"(got box_weight={self.box_weight}, quality_weight={self.quality_weight})"
            )
        if not 0.0 <= self.ema < 1.0 or self.ema_ramp <= 0:
            raise ConfigError(
                f"TrainConfig: need 0 <= ema < 1 and ema_ramp > 0 "
                f"(got ema={self.ema}, ema_ramp={self.ema_ramp})"
            )


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    lr: float
    seconds: float
    ap: float | None = None  # val mAP@[.5:.95]
    ap50: float | None = None


@dataclass
class TrainResult:
    epochs: list[EpochMetrics]
    best_path: Path
    last_path: Path
    best_ap: float
    best_epoch: int
    stopped: str  # "epochs", "time_budget", "patience"
    amp: str
    class_names: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_path"], d["last_path"] = str(self.best_path), str(self.last_path)
        return d


# -- data ---------------------------------------------------------------------------------------


def _pick_annotator(ds: Dataset, name: str | None) -> str | None:
    names = ds.annotators
    if name is not None:
        if name not in names:
            raise ConfigError(f"annotator {name!r} is not in the dataset (has {names or 'none'})")
        return name
    return names[0] if names else None


@dataclass
class _Images:
    pixels: torch.Tensor  # [N, 3, S, S] uint8
    boxes: list[torch.Tensor]  # [M, 4] float32 xyxy, network-input pixels
    labels: list[torch.Tensor]  # [M] int64
    scale: np.ndarray  # [N, 2] original / input (x, y)


def load_images(ds: Dataset, imgsz: int, annotator: str | None, threads: int = 2) -> _Images:
    """Decode every image once (stretch-resized to ``imgsz``) with its boxes in input pixels."""
    by_image = ds.annotations_by_image()

    def one(i: int) -> np.ndarray:
        rec = ds.images[i]
        with Image.open(ds.image_path(rec)) as src:
            im = src.convert("RGB")
        if im.size != (imgsz, imgsz):
            im = im.resize((imgsz, imgsz), Image.Resampling.BILINEAR)
        return np.array(im)

    pixels = torch.empty(len(ds.images), 3, imgsz, imgsz, dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, arr in enumerate(pool.map(one, range(len(ds.images)))):
            pixels[i] = torch.from_numpy(arr).permute(2, 0, 1)
    boxes, labels, scales = [], [], []
    for rec in ds.images:
        sx, sy = imgsz / rec.width, imgsz / rec.height
        anns = [
            a for a in by_image.get(rec.id, [])
            if a.annotator == annotator and not a.iscrowd
        ]
        b = torch.tensor([a.box for a in anns], dtype=torch.float32).reshape(-1, 4)
        b *= torch.tensor([sx, sy, sx, sy])
        boxes.append(b)
        labels.append(torch.tensor([a.category_id for a in anns], dtype=torch.int64))
        scales.append((1 / sx, 1 / sy))
    return _Images(pixels, boxes, labels, np.asarray(scales, np.float64).reshape(-1, 2))


def resized(images: _Images, size: int, chunk: int = 256) -> _Images:
    """``images`` resized to ``size`` x ``size`` (antialiased bilinear), boxes scaled alike."""
    n, _, h, w = images.pixels.shape
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(0, n, chunk):
        x = images.pixels[i:i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    k = torch.tensor([size / w, size / h, size / w, size / h])
    scale = images.scale * np.array([w / size, h / size])
    return _Images(out, [b * k for b in images.boxes], list(images.labels), scale)


_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(STD).view(1, 3, 1, 1) * 255


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> the network input ``(p / 255 - mean) / std``."""
    return (pixels.float() - _MEAN) / _STD


def _augment(
    pixels: torch.Tensor,
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    cfg: TrainConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Flip + scale/translate (one affine per image) and brightness/contrast jitter."""
    b, _, h, w = pixels.shape
    u = torch.rand(b, 6, generator=gen)
    flip = torch.where(u[:, 0] < cfg.hflip, -1.0, 1.0)
    s = 1.0 + (2 * u[:, 1] - 1) * cfg.scale_jitter
    dx = (2 * u[:, 2] - 1) * cfg.translate * 2  # normalised coords span 2
    dy = (2 * u[:, 3] - 1) * cfg.translate * 2
    if cfg.scale_jitter == 0 and cfg.translate == 0:
        # flip only: an exact pixel mirror, no resampling (much cheaper), converted to float
        # image by image on the way (one pass; fancy-indexed flips cost twice as much)
        x = torch.empty(b, 3, h, w)  # 0..255, NCHW
        for i, f in enumerate((flip < 0).tolist()):
            x[i].copy_(pixels[i].flip(2) if f else pixels[i])
    else:
        x = pixels.float()  # bilinear resampling is linear: 0..255 works as well as 0..1
        # forward map (normalised, align_corners=False): u_out = s * f * u_in + d
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = 1 / (s * flip)
        theta[:, 0, 2] = -dx / (s * flip)
        theta[:, 1, 1] = 1 / s
        theta[:, 1, 2] = -dy / s
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                          align_corners=False).contiguous()
    # brightness / contrast about the image's mean m, then the network's normalisation:
    # (clamp((p / 255 - m) * c + m + b, 0, 1) - mean) / std as one multiply-add and one clamp
    # per (image, channel) row of contiguous NCHW pixels, in place. The same arithmetic on a
    # channels-last tensor broadcasting [B, 3, 1, 1] took ~4x as long (11.4 vs 2.9 ms for 8
    # images at 256, one thread): the caller converts to channels-last once, with the dtype.
    bright = (2 * u[:, 4] - 1) * cfg.brightness
    contrast = 1.0 + (2 * u[:, 5] - 1) * cfg.contrast
    m = x.reshape(b, -1).mean(1) / 255.0
    mean, std = _MEAN.view(1, 3) / 255, _STD.view(1, 3) / 255
    c = contrast.view(b, 1)
    scale = (c / 255.0) / std  # [B, 3]
    shift = ((m * (1 - contrast) + bright).view(b, 1) - mean) / std
    rows = x.view(b * 3, h * w)  # x is a fresh contiguous tensor: safe to change in place
    rows.mul_(scale.reshape(-1, 1)).add_(shift.reshape(-1, 1))
    lo, hi = ((0 - mean) / std).flatten().tolist(), ((1 - mean) / std).flatten().tolist()
    planes = x.view(b, 3, h * w)
    for k in range(3):  # scalar bounds per channel: a tensor-bounds clamp is ~6x slower
        planes[:, k].clamp_(lo[k], hi[k])
    out_b, out_l = [], []
    for i in range(b):
        bx = boxes[i]
        if bx.numel() == 0:
            out_b.append(bx)
            out_l.append(labels[i])
            continue
        sf = float(s[i] * flip[i])
        xs = (bx[:, [0, 2]] * 2 / w - 1) * sf + float(dx[i])
        ys = (bx[:, [1, 3]] * 2 / h - 1) * float(s[i]) + float(dy[i])
        xs = (xs + 1) * w / 2
        ys = (ys + 1) * h / 2
        x1, x2 = xs.min(1).values, xs.max(1).values
        y1, y2 = ys[:, 0], ys[:, 1]
        full = (x2 - x1) * (y2 - y1)
        cx1, cy1, cx2, cy2 = x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)
        kept = (cx2 - cx1) * (cy2 - cy1)
        ok = (kept >= 0.5 * full) & (cx2 - cx1 >= 2) & (cy2 - cy1 >= 2)
        out_b.append(torch.stack([cx1, cy1, cx2, cy2], 1)[ok])
        out_l.append(labels[i][ok])
    return x, out_b, out_l


# -- evaluation ---------------------------------------------------------------------------------


def postprocess(
    dets: np.ndarray, score_threshold: float, nms_iou: float, max_detections: int = 100
) -> np.ndarray:
    """One image's ``[K, 6]`` graph rows -> kept rows (score threshold + per-class NMS)."""
    from detops.model.nms import nms

    rows = dets[dets[:, 4] >= score_threshold]
    keep = nms(rows[:, :4], rows[:, 4], nms_iou, labels=rows[:, 5].astype(np.int64),
               max_output=max_detections)
    return rows[keep]


@torch.no_grad()
def predict_rows(
    model: Detector, pixels: torch.Tensor, *, batch: int = 32, amp: bool = False
) -> np.ndarray:
    """Graph-equivalent ``[N, K, 6]`` detections for uint8 images ``[N, 3, S, S]``."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, pixels.shape[0], batch):
        x = normalize(pixels[i:i + batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            heat, ltrb = model(x)
        out.append(decode(heat.float(), ltrb.float(), model.config.stride,
                          quality=model.config.quality).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 100, 6), np.float32)


def predict_coco(
    model: Detector,
    ds: Dataset,
    images: _Images,
    *,
    amp: bool = False,
    score_threshold: float = 0.01,
    nms_iou: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results (``bbox`` xywh in original pixels) with the graph's decode + runtime NMS."""
    rows = predict_rows(model, images.pixels, amp=amp)
    preds = []
    for i, rec in enumerate(ds.images):
        kept = postprocess(rows[i], score_threshold, nms_iou)
        sx, sy = images.scale[i]
        for x1, y1, x2, y2, score, cls in kept.tolist():
            preds.append({
                "image_id": rec.id, "category_id": int(cls) + 1, "score": float(score),
                "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy],
            })
    return preds


def evaluate_model(
    model: Detector,
    ds: Dataset,
    images: _Images | None = None,
    *,
    annotator: str | None = None,
    imgsz: int = 320,
    amp: bool = False,
    score_threshold: float = 0.01,
    nms_iou: float = 0.5,
) -> dict[str, float]:
    """COCO stats (``AP``, ``AP50``, ...) of ``model`` on ``ds`` with the graph's decode + NMS."""
    from detops.evaluate import evaluate_coco

    if images is None:
        images = load_images(ds, imgsz, annotator)
    preds = predict_coco(model, ds, images, amp=amp, score_threshold=score_threshold,
                         nms_iou=nms_iou)
    return dict(evaluate_coco(ground_truth(ds, annotator), preds).stats)


# -- the loop -----------------------------------------------------------------------------------


@torch.no_grad()
def _copy_weights(dst: torch.nn.Module, src: torch.nn.Module, buffers: bool = True) -> None:
    """``dst``'s parameters (and floating buffers) <- ``src``'s, converting the dtype."""
    torch._foreach_copy_(list(dst.parameters()), list(src.parameters()))
    if buffers:
        _copy_buffers(dst, src)


@torch.no_grad()
def _copy_buffers(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    for b_dst, b_src in zip(dst.buffers(), src.buffers(), strict=True):
        b_dst.copy_(b_src)


def _float_buffers(works: Sequence[torch.nn.Module]) -> list[Tensor]:
    """The replicas' floating buffers (BatchNorm statistics), averaged, in fp32."""
    per = [[b.float() for b in w.buffers() if b.is_floating_point()] for w in works]
    if len(per) == 1:
        return per[0]
    return [torch.stack(bs).mean(0) for bs in zip(*per, strict=True)]


@torch.no_grad()
def _mean_buffers(model: torch.nn.Module, works: Sequence[torch.nn.Module]) -> None:
    mine = [b for b in model.buffers() if b.is_floating_point()]
    torch._foreach_copy_(mine, _float_buffers(works))


@torch.no_grad()
def _mean_grads(model: torch.nn.Module, works: Sequence[torch.nn.Module]) -> None:
    """The master weights' gradients <- the mean of the replicas' (in fp32)."""
    params = list(model.parameters())
    per = [[p.grad for p in w.parameters()] for w in works]
    # each parameter's gradients, the replicas' that exist: the replicas run one network on one
    # loss, so normally all or none; a mixed one is summed on its own below
    present = [[t for r in per if (t := r[i]) is not None] for i in range(len(params))]
    full = [i for i, ts in enumerate(present) if len(ts) == len(works)]
    # one foreach pass per replica over every full gradient (a Python loop over the ~60
    # tensors cost 2.8 ms a step, this 1.8 ms). .float() of an fp32 gradient is that tensor:
    # summing into replica 0's gradient is safe, every replica's gradients are reset before
    # its next backward
    mean = [present[i][0].float() for i in full]
    for r in range(1, len(works)):
        torch._foreach_add_(mean, [present[i][r] for i in full])
    torch._foreach_mul_(mean, 1.0 / len(works))
    for p in params:
        p.grad = None
    for i, m in zip(full, mean, strict=True):
        params[i].grad = m
    for i, ts in enumerate(present):
        if 0 < len(ts) < len(works):
            total = ts[0].float()  # a sum that keeps the parameter's memory format (the fused
            for t in ts[1:]:  # AdamW kernel reads gradients as flat arrays)
                total = total + t.float()
            params[i].grad = total / len(works)


class _Ema:
    """Exponential moving average of the master weights and BatchNorm statistics."""

    def __init__(self, model: Detector, decay: float, ramp: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0
        self._float = [b for b in self.model.buffers() if b.is_floating_point()]

    @torch.no_grad()
    def update(self, model: Detector, works: Sequence[torch.nn.Module]) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - d)
        torch._foreach_lerp_(self._float, _float_buffers(works), 1 - d)

    def load(self, state: dict[str, Any], updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates


def _fused_adamw() -> bool:
    """Whether this torch has the fused AdamW kernel on CPU (2.1 vs 4.1 ms a step for the
    default detector's 641k parameters against the foreach one)."""
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def bf16_supported() -> bool:
    """Whether bf16 autocast on this CPU runs (and is worth it: AVX512-BF16 / AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def _reserve(eval_s: float) -> float:
    """Seconds a time budget keeps free for the final evaluation and checkpoint, given how long
    the last evaluation took: a margin on top, because the next one can be slower on a busy
    machine (a 10-minute run once ended at 601 s with the bare figure)."""
    return 1.25 * eval_s + 0.5


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Detector, dict[str, Any]]:
    """Rebuild the model of a checkpoint written by :func:`train` (our own files only)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = Detector(DetectorConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def train(
    train_ds: Dataset,
    val_ds: Dataset,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike[str],
    progress: ProgressFn | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train the default detector; see the module docstring for annotators, seeds and budget.

    ``progress(epoch, step, total_steps, loss, eta_seconds)`` is called after every step and
    ``on_epoch(metrics)`` after every epoch.
    """
    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.workers or os.cpu_count() or 1
    n_rep = cfg.replicas or threads
    if n_rep > 1 and cfg.batch % n_rep != 0:
        if cfg.replicas:
            raise ConfigError(
                f"TrainConfig: batch {cfg.batch} does not split into {n_rep} replicas")
        n_rep = 1
    torch.set_num_threads(threads)  # replicas' threads set one each (per-thread setting)
    if train_ds.category_names != val_ds.category_names:
        raise ConfigError(
            f"train classes {train_ds.category_names} differ from val classes "
            f"{val_ds.category_names}; use one category list for both splits"
        )
    annotator = _pick_annotator(train_ds, cfg.annotator)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and bf16_supported())
    nc = len(train_ds.categories)
    model_cfg = DetectorConfig(num_classes=nc, **cfg.model)

    torch.manual_seed(cfg.seed)
    model = Detector(model_cfg)
    # channels-last: oneDNN's bf16 convolutions (and their backward) are faster on NHWC
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    # ``model`` holds the fp32 master weights; each replica in ``works`` (a bf16 copy, or the
    # model itself when there is one fp32 replica) runs forward / backward on its share
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    works = ([model] if n_rep == 1 and not use_bf16
             else [copy.deepcopy(model).to(dtype) for _ in range(n_rep)])
    separate = works[0] is not model
    pool = ThreadPoolExecutor(n_rep, initializer=torch.set_num_threads,
                              initargs=(1,)) if n_rep > 1 else None
    ema = _Ema(model, cfg.ema, cfg.ema_ramp) if cfg.ema > 0 else None
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    fused = _fused_adamw()
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, fused=True if fused else None, foreach=None if fused else True,
    )

    tr = load_images(train_ds, cfg.imgsz, annotator)
    va = load_images(val_ds, cfg.imgsz, annotator)
    warm = resized(tr, cfg.warm_imgsz) if cfg.warm_imgsz else None
    n = tr.pixels.shape[0]
    steps_per_epoch = max(1, n // cfg.batch)  # drop the last partial batch (BN, speed)

    history: list[EpochMetrics] = []
    planned = cfg.epochs
    planned_steps = cfg.epochs * steps_per_epoch
    start_epoch, step = 0, 0
    best_ap, best_epoch, since_best, elapsed0 = -1.0, -1, 0, 0.0
    eval_s = 0.0  # how long the last evaluation took: the plan keeps room for the final one
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("train_model", state["model"]))
        for w in works:
            if w is not model:
                _copy_weights(w, model)
        if ema is not None:
            ema.load(state["model"], state.get("ema_updates", 0))
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:  # the saved groups name their kernel: use this torch's
            group["fused"], group["foreach"] = (True if fused else None), (None if fused else True)
        sched = state["scheduler"]
        planned, step = sched["planned_epochs"], sched["step"]
        planned_steps = sched.get("planned_steps", planned * steps_per_epoch)
        eval_s = sched.get("eval_s", 0.0)
        start_epoch = state["epoch"] + 1
        history = [EpochMetrics(**m) for m in state["history"]]
        best_ap, best_epoch, since_best = state["best_ap"], state["best_epoch"], state["since_best"]
        elapsed0 = state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])

    def share(r: int, ids: np.ndarray, gen: torch.Generator, src: _Images) -> float:
        """Replica ``r``'s forward + backward on images ``ids`` of ``src``; returns its loss."""
        x, bxs, lbs = _augment(src.pixels[ids], [src.boxes[i] for i in ids],
                               [src.labels[i] for i in ids], cfg, gen)
        size = (src.pixels.shape[2], src.pixels.shape[3])
        with _threads(1):  # small per-box tensors: threads cost more than they save
            tg = build_targets(bxs, lbs, nc, size, model_cfg.stride)
        heat, ltrb = works[r](x.contiguous(memory_format=torch.channels_last).to(dtype))
        loss, _ = detector_loss(heat, ltrb, tg, model_cfg.stride, cfg.box_weight,
                                cfg.quality_weight)
        works[r].zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach())

    t_start = time.monotonic() - elapsed0
    stopped = "epochs"
    epoch = start_epoch
    while epoch < planned:
        t_epoch = time.monotonic()
        ss = np.random.SeedSequence([cfg.seed, epoch])
        order = np.random.Generator(np.random.PCG64(ss)).permutation(n)
        gens = [torch.Generator().manual_seed(int(v >> 1))
                for v in ss.generate_state(n_rep, np.uint64)]
        losses = []
        lr = cfg.lr
        cut_short = False
        for k in range(steps_per_epoch):
            if step >= planned_steps:
                break  # the plan ends inside this epoch
            if (cfg.time_budget_s is not None and k > 0
                    and time.monotonic() - t_start >= cfg.time_budget_s - _reserve(eval_s)):
                cut_short = True  # budget spent mid-epoch: stop here, evaluate, save
                break
            parts = np.array_split(order[k * cfg.batch:(k + 1) * cfg.batch], n_rep)
            lr = _lr_at(step, planned_steps, cfg.lr, cfg.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            if warm is not None and step >= cfg.warm_fraction * planned_steps:
                warm = None  # full size from here on (even if a later plan grows): free the copy
            src = tr if warm is None else warm
            part_losses = (list(pool.map(share, range(n_rep), parts, gens, [src] * n_rep))
                           if pool else [share(0, parts[0], gens[0], src)])
            if separate:
                _mean_grads(model, works)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            if torch.isfinite(gnorm):
                opt.step()
                if separate:
                    for w in works:
                        _copy_weights(w, model, buffers=False)
            else:  # a rare non-finite bf16 gradient: skip this update rather than poison weights
                opt.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(model, works)
            losses.append(float(np.mean(part_losses)))
            if progress is not None:
                spent = time.monotonic() - t_start
                done = step
                eta = spent / max(1, done - start_epoch * steps_per_epoch) * (
                    planned_steps - done) if done > start_epoch * steps_per_epoch else 0.0
                progress(epoch, k + 1, steps_per_epoch, losses[-1], eta)

        if cfg.time_budget_s is not None:
            # re-plan before deciding to evaluate, so that an epoch the new plan makes the last
            # is evaluated; plan with the slower of the mean step (earlier evaluations
            # included) and this epoch's (shared machines vary)
            now = time.monotonic()
            spent = now - t_start
            per_step = max(spent / max(step, 1), (now - t_epoch) / max(len(losses), 1), 1e-9)
            more = int(max(0.0, cfg.time_budget_s - _reserve(eval_s) - spent) // per_step)
            planned_steps = min(cfg.epochs * steps_per_epoch, step + more)
            planned = max(epoch + 1, -(-planned_steps // steps_per_epoch))
            if cut_short or planned_steps <= step:
                planned, planned_steps = epoch + 1, step  # the run ends now: evaluate it
        evaluate = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 >= planned
        ap = ap50 = None
        if separate:
            # BatchNorm running statistics live in the replicas: average them into the master
            # and give every replica the average (so that a resumed run is the same run)
            _mean_buffers(model, works)
            for w in works:
                _copy_buffers(w, model)
        final = ema.model if ema is not None else model  # the weights validated and exported
        if evaluate:
            t_eval = time.monotonic()
            stats = evaluate_model(final, val_ds, va, annotator=annotator, imgsz=cfg.imgsz,
                                   amp=use_bf16, score_threshold=cfg.eval_score_threshold,
                                   nms_iou=cfg.nms_iou)
            ap, ap50 = float(stats["AP"]), float(stats["AP50"])
            eval_s = time.monotonic() - t_eval
        seconds = time.monotonic() - t_epoch
        history.append(EpochMetrics(epoch, float(np.mean(losses)), lr, seconds, ap, ap50))
        if on_epoch is not None:
            on_epoch(history[-1])
        improved = ap is not None and ap > best_ap
        if ap is not None and improved:
            best_ap, best_epoch, since_best = ap, epoch, 0
        elif ap is not None:
            since_best += 1
        spent = time.monotonic() - t_start
        state = {
            "model": final.state_dict(),
            "model_config": model_cfg.to_dict(),
            "class_names": train_ds.category_names,
            "optimizer": opt.state_dict(),
            "scheduler": {"planned_epochs": planned, "planned_steps": planned_steps,
                          "step": step, "eval_s": eval_s},
            "epoch": epoch,
            "history": [asdict(m) for m in history],
            "best_ap": best_ap, "best_epoch": best_epoch, "since_best": since_best,
            "elapsed": spent,
            "rng": {"torch": torch.get_rng_state()},
            "train_config": asdict(cfg),
            "annotator": annotator,
        }
        if ema is not None:
            state["train_model"] = model.state_dict()  # resume continues from these
            state["ema_updates"] = ema.updates
        _save(last_path, state)
        if improved:
            _save(best_path, state)
        epoch += 1
        if cut_short or (cfg.time_budget_s is not None and spent >= cfg.time_budget_s
                         and epoch < planned):
            stopped = "time_budget"
            break
        if cfg.patience is not None and since_best >= cfg.patience:
            stopped = "patience"
            break
    if pool is not None:
        pool.shutdown()
    if stopped == "epochs" and epoch < cfg.epochs:
        stopped = "time_budget"  # the plan was shortened to fit the budget
    if not best_path.exists():
        _save(best_path, torch.load(last_path, map_location="cpu", weights_only=False))
    result = TrainResult(
        epochs=history, best_path=best_path, last_path=last_path, best_ap=best_ap,
        best_epoch=best_epoch, stopped=stopped, amp="bf16" if use_bf16 else "fp32",
        class_names=train_ds.category_names, seconds=time.monotonic() - t_start,
    )
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    return result
