"""Rollout gates: does the candidate behave like live? Judged on what the model predicts.

A canary step advances only when every gate passes. Each gate compares a window of the
candidate's served requests with a window of live's (both read from the prediction log in the
store, so every replica's traffic counts) and returns ``pass``, ``fail`` or
``insufficient_data`` with the values it measured and the thresholds it used, so a decision can
be audited afterwards. Too little data is never a pass, and neither is a report in which no gate
judged (every gate disabled, or only a skipped agreement gate).

=====================  ==================================================  ==================
gate                   fails when                                          default
=====================  ==================================================  ==================
``error_rate``         candidate 5xx rate > live rate + max_increase       0.01
``latency_p95``        candidate p95 > live p95 x max_ratio AND the        1.5x, +10 ms,
                       difference > min_increase_ms AND the candidate is   p < 0.01
                       slower as a whole (one-sided Mann-Whitney U; at
                       least 20 samples a side)
``no_detection_rate``  share of images with no box > live + max_increase   0.10
``mean_confidence``    mean score < live mean - max_drop                   0.10
``boxes_per_image``    mean boxes per image off by more than max_ratio     1.5x and 0.5 boxes
                       (either way) AND by more than min_abs_diff
``class_mix``          total variation distance > max_tvd AND the          0.2, p < 0.01
                       chi-square test of the two mixes has p < alpha
``agreement``          shadow comparisons: mean IoU-matched F1@0.5 of      0.7
                       candidate vs live < min_f1 (skipped without enough
                       shadow data: it is reported, never counted as pass)
=====================  ==================================================  ==================

Every gate needs ``min_samples`` (default 30) on each side; the gates file (``--gates
gates.yaml``) may change any threshold, disable a gate (``enabled: false``) or set its own
``min_samples``; unknown keys are errors that name the key.

>>> cfg = GatesConfig.from_mapping({"latency_p95": {"max_ratio": 2.0}})
>>> cfg.latency_p95.max_ratio, cfg.error_rate.max_increase
(2.0, 0.01)
>>> live = Window.from_records([{"status": 200, "latency_ms": 5.0, "n_boxes": 1,
...     "mean_score": 0.9, "class_counts": {"car": 1}}] * 40)
>>> slow = Window.from_records([{"status": 200, "latency_ms": 50.0, "n_boxes": 1,
...     "mean_score": 0.9, "class_counts": {"car": 1}}] * 40)
>>> report = evaluate(cfg, live=live, candidate=slow)
>>> report.verdict, report.failed
('fail', ['latency_p95'])
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detops.errors import GatesConfigError

Status = Literal["pass", "fail", "insufficient_data", "skipped"]

GATE_NAMES = (
    "error_rate",
    "latency_p95",
    "no_detection_rate",
    "mean_confidence",
    "boxes_per_image",
    "class_mix",
    "agreement",
)

__all__ = [
    "GATE_NAMES",
    "GateResult",
    "GatesConfig",
    "GatesReport",
    "Window",
    "evaluate",
    "load_agreement",
    "load_gates",
    "load_window",
]


# -- configuration ---------------------------------------------------------------------------


class _Gate(BaseModel):
    # no NaN or Infinity: a threshold is a number (turn a gate off with enabled: false)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    min_samples: int | None = Field(None, ge=1, description="default: the top-level min_samples")


class ErrorRateGate(_Gate):
    max_increase: float = Field(0.01, ge=0, le=1)


class LatencyGate(_Gate):
    max_ratio: float = Field(1.5, ge=1)
    min_increase_ms: float = Field(10.0, ge=0)
    alpha: float = Field(
        0.01, gt=0, le=1, description="Mann-Whitney U: candidate latencies larger, p below this"
    )


class NoDetectionGate(_Gate):
    max_increase: float = Field(0.10, ge=0, le=1)


class ConfidenceGate(_Gate):
    max_drop: float = Field(0.10, ge=0, le=1)


class BoxesGate(_Gate):
    max_ratio: float = Field(1.5, ge=1)
    min_abs_diff: float = Field(0.5, ge=0)


class ClassMixGate(_Gate):
    max_tvd: float = Field(0.2, ge=0, le=1)
    alpha: float = Field(0.01, gt=0, le=1)


class AgreementGate(_Gate):
    min_f1: float = Field(0.7, ge=0, le=1)


class GatesConfig(BaseModel):
    """The gates file: thresholds per gate (see the module docstring for the defaults)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_samples: int = Field(30, ge=1, description="requests needed on each side, per gate")
    live_window_s: float = Field(
        0.0,
        ge=0,
        description="live requests this long before the step began also count; 0: only live "
        "requests served during the step (same time, same load: latencies compare fairly)",
    )
    error_rate: ErrorRateGate = ErrorRateGate()
    latency_p95: LatencyGate = LatencyGate()
    no_detection_rate: NoDetectionGate = NoDetectionGate()
    mean_confidence: ConfidenceGate = ConfidenceGate()
    boxes_per_image: BoxesGate = BoxesGate()
    class_mix: ClassMixGate = ClassMixGate()
    agreement: AgreementGate = AgreementGate()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str = "gates") -> GatesConfig:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise GatesConfigError(
                f"{source}: expected a mapping of gate settings, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    parent = e["loc"][:-1]
                    known = _known_keys(parent)
                    problems.append(f"unknown key '{where}' (known: {', '.join(known)})")
                else:
                    problems.append(f"{where}: {e['msg']}")
            raise GatesConfigError(f"{source}: " + "; ".join(problems)) from None

    def gate(self, name: str) -> _Gate:
        return getattr(self, name)  # type: ignore[no-any-return]

    def samples_for(self, name: str) -> int:
        g = self.gate(name)
        return g.min_samples if g.min_samples is not None else self.min_samples


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = GatesConfig
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_gates(path: str | Path | None) -> GatesConfig:
    """Read a gates YAML file (None: the defaults)."""
    if path is None:
        return GatesConfig()
    import yaml

    p = Path(path)
    if not p.is_file():
        raise GatesConfigError(f"{p}: no such gates file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GatesConfigError(f"{p}: not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise GatesConfigError(f"{p}: not valid YAML: {exc}") from exc
    return GatesConfig.from_mapping(data or {}, source=str(p))


# -- windows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What a version's served requests looked like over a time window."""

    n: int  # requests answered (200) or failed by the server (5xx); client errors left out
    errors: int  # 5xx
    latencies_ms: np.ndarray  # of answered requests
    boxes: np.ndarray  # boxes per answered request
    mean_scores: np.ndarray  # mean score per answered request with at least one box
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_ok(self) -> int:
        return int(self.boxes.size)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Window:
        n = errors = 0
        lat: list[float] = []
        boxes: list[int] = []
        scores: list[float] = []
        counts: dict[str, int] = {}
        for r in records:
            status = int(r.get("status") or 0)
            if status >= 500:
                n += 1
                errors += 1
                continue
            if status != 200:
                continue
            n += 1
            if r.get("latency_ms") is not None:
                lat.append(float(r["latency_ms"]))
            nb = int(r.get("n_boxes") or 0)
            boxes.append(nb)
            if nb and r.get("mean_score") is not None:
                scores.append(float(r["mean_score"]))
            for label, c in (r.get("class_counts") or {}).items():
                counts[str(label)] = counts.get(str(label), 0) + int(c)
        return cls(
            n,
            errors,
            np.asarray(lat, np.float64),
            np.asarray(boxes, np.float64),
            np.asarray(scores, np.float64),
            counts,
        )

    def summary(self) -> dict[str, Any]:
        return {"requests": self.n, "errors": self.errors, "answered": self.n_ok}


# a window is at most the newest this many requests of each side: plenty for the tests here,
# and judging stays cheap (the controller runs in the server process) however busy the step
MAX_ROWS = 5_000


def load_window(
    ws: Any,
    model_name: str,
    version: int,
    *,
    since: dt.datetime,
    routes: Iterable[str] | None = None,
    exclude_routes: Iterable[str] = ("shadow",),
) -> Window:
    """The prediction-log window of ``model_name@v{version}`` from ``since``.

    Request and error counts cover the whole window; latencies, boxes, scores and classes come
    from its newest ``MAX_ROWS`` requests.
    """
    from sqlalchemy import case, func, or_, select

    from detops.store.schema import predictions as p

    where = [p.c.at >= since, p.c.model_name == model_name, p.c.model_version == version]
    if routes is not None:
        where.append(p.c.route.in_(list(routes)))
    excluded = list(exclude_routes)
    if excluded:
        where.append(p.c.route.not_in(excluded))
    counted = or_(p.c.status == 200, p.c.status >= 500)  # client errors are not the model's
    totals = select(func.count(), func.sum(case((p.c.status >= 500, 1), else_=0))).where(
        *where, counted
    )
    q = (
        select(p.c.status, p.c.latency_ms, p.c.n_boxes, p.c.mean_score, p.c.class_counts)
        .where(*where)
        .order_by(p.c.id.desc())
        .limit(MAX_ROWS)
    )
    with ws.db.read() as conn:
        n, errors = conn.execute(totals).one()
        rows = [r._asdict() for r in conn.execute(q)]
    w = Window.from_records(rows)
    return replace(w, n=int(n or 0), errors=int(errors or 0))


def load_agreement(
    ws: Any, model_name: str, candidate_version: int, *, live_version: int | None = None
) -> np.ndarray:
    """F1 of every error-free shadow comparison of the candidate (newest first)."""
    from sqlalchemy import select

    from detops.store.schema import shadow_comparisons as s

    q = select(s.c.f1).where(
        s.c.model_name == model_name,
        s.c.candidate_version == candidate_version,
        s.c.f1.is_not(None),
    )
    if live_version is not None:
        q = q.where(s.c.live_version == live_version)
    q = q.order_by(s.c.id.desc()).limit(MAX_ROWS)
    with ws.db.read() as conn:
        return np.asarray([r.f1 for r in conn.execute(q)], np.float64)


# -- judging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    gate: str
    status: Status
    measured: dict[str, Any]
    thresholds: dict[str, Any]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "measured": self.measured,
            "thresholds": self.thresholds,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GatesReport:
    verdict: Literal["pass", "fail", "insufficient_data"]
    results: list[GateResult]
    candidate: dict[str, Any]
    live: dict[str, Any]

    @property
    def failed(self) -> list[str]:
        return [r.gate for r in self.results if r.status == "fail"]

    @property
    def insufficient(self) -> list[str]:
        return [r.gate for r in self.results if r.status == "insufficient_data"]

    @property
    def reason(self) -> str:
        """One line: the failed gates with their values, else the gates short of data."""
        if self.failed:
            return "; ".join(r.reason for r in self.results if r.status == "fail")
        if self.insufficient:
            return "insufficient data: " + "; ".join(
                r.reason for r in self.results if r.status == "insufficient_data"
            )
        if self.verdict == "insufficient_data":
            return (
                "insufficient data: no gate judged the candidate ("
                + ("; ".join(r.reason for r in self.results) or "every gate is disabled")
                + ")"
            )
        return "all gates passed"

    @property
    def measured(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "live": self.live,
            "gates": {r.gate: {"status": r.status, **r.measured} for r in self.results},
        }

    @property
    def thresholds(self) -> dict[str, Any]:
        return {r.gate: r.thresholds for r in self.results}


def _r(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded; None for a missing or non-finite value (events and answers are JSON,
    which has no NaN or Infinity; PostgreSQL's JSON columns refuse them)."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def _short(gate: str, need: int, **have: int) -> GateResult | None:
    lacking = {k: v for k, v in have.items() if v < need}
    if not lacking:
        return None
    what = ", ".join(f"{k} {v}/{need}" for k, v in lacking.items())
    return GateResult(
        gate, "insufficient_data", dict(have), {"min_samples": need}, f"{gate}: {what} samples"
    )


def _error_rate(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g, need = cfg.error_rate, cfg.samples_for("error_rate")
    short = _short("error_rate", need, candidate=cand.n, live=live.n)
    if short:
        return short
    lr, cr = live.errors / live.n, cand.errors / cand.n
    measured = {"candidate": _r(cr), "live": _r(lr), "candidate_errors": cand.errors}
    th = {"max_increase": g.max_increase}
    bad = cr > lr + g.max_increase
    why = (
        f"error_rate: candidate {cr:.1%} ({cand.errors}/{cand.n}) vs live {lr:.1%} "
        f"(max +{g.max_increase:.1%})"
    )
    return GateResult("error_rate", "fail" if bad else "pass", measured, th, why)


MIN_P95_SAMPLES = 20  # the 95th percentile of fewer samples is their maximum


def _latency(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g = cfg.latency_p95
    need = max(cfg.samples_for("latency_p95"), MIN_P95_SAMPLES)
    short = _short(
        "latency_p95", need, candidate=cand.latencies_ms.size, live=live.latencies_ms.size
    )
    if short:
        return short
    lp = float(np.percentile(live.latencies_ms, 95))
    cp = float(np.percentile(cand.latencies_ms, 95))
    ratio = cp / lp if lp > 0 else math.inf
    # a few stragglers move a small sample's p95 a lot: the candidate must also be slower as
    # a whole (one-sided Mann-Whitney U), not just in its tail
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(cand.latencies_ms, live.latencies_ms, alternative="greater").pvalue)
    measured = {
        "candidate_ms": _r(cp, 2),
        "live_ms": _r(lp, 2),
        "ratio": _r(ratio, 3),
        "p_value": _r(p, 6),
    }
    th = {"max_ratio": g.max_ratio, "min_increase_ms": g.min_increase_ms, "alpha": g.alpha}
    bad = ratio > g.max_ratio and cp - lp > g.min_increase_ms and p < g.alpha
    why = (
        f"latency_p95: candidate {cp:.1f} ms vs live {lp:.1f} ms = {ratio:.2f}x "
        f"(max {g.max_ratio:g}x and +{g.min_increase_ms:g} ms), Mann-Whitney p={p:.2g}"
    )
    return GateResult("latency_p95", "fail" if bad else "pass", measured, th, why)


def _no_detection(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g, need = cfg.no_detection_rate, cfg.samples_for("no_detection_rate")
    short = _short("no_detection_rate", need, candidate=cand.n_ok, live=live.n_ok)
    if short:
        return short
    lr = float((live.boxes == 0).mean())
    cr = float((cand.boxes == 0).mean())
    measured = {"candidate": _r(cr), "live": _r(lr)}
    th = {"max_increase": g.max_increase}
    bad = cr > lr + g.max_increase
    why = f"no_detection_rate: candidate {cr:.1%} vs live {lr:.1%} (max +{g.max_increase:.1%})"
    return GateResult("no_detection_rate", "fail" if bad else "pass", measured, th, why)


def _confidence(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g, need = cfg.mean_confidence, cfg.samples_for("mean_confidence")
    short = _short(
        "mean_confidence", need, candidate=cand.mean_scores.size, live=live.mean_scores.size
    )
    if short:
        return short
    lm, cm = float(live.mean_scores.mean()), float(cand.mean_scores.mean())
    measured = {"candidate": _r(cm), "live": _r(lm)}
    th = {"max_drop": g.max_drop}
    bad = lm - cm > g.max_drop
    why = f"mean_confidence: candidate {cm:.3f} vs live {lm:.3f} (max drop {g.max_drop:g})"
    return GateResult("mean_confidence", "fail" if bad else "pass", measured, th, why)


def _boxes(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g, need = cfg.boxes_per_image, cfg.samples_for("boxes_per_image")
    short = _short("boxes_per_image", need, candidate=cand.n_ok, live=live.n_ok)
    if short:
        return short
    lm, cm = float(live.boxes.mean()), float(cand.boxes.mean())
    ratio = cm / lm if lm > 0 else (math.inf if cm > 0 else 1.0)
    measured = {"candidate": _r(cm, 3), "live": _r(lm, 3), "ratio": _r(ratio, 3)}
    th = {"max_ratio": g.max_ratio, "min_abs_diff": g.min_abs_diff}
    off = ratio > g.max_ratio or ratio < 1 / g.max_ratio
    bad = off and abs(cm - lm) > g.min_abs_diff
    why = (
        f"boxes_per_image: candidate {cm:.2f} vs live {lm:.2f} "
        f"(max {g.max_ratio:g}x either way and {g.min_abs_diff:g} boxes)"
    )
    return GateResult("boxes_per_image", "fail" if bad else "pass", measured, th, why)


def class_mix_test(live: Mapping[str, int], cand: Mapping[str, int]) -> tuple[float, float]:
    """Total variation distance of two class mixes and the chi-square test's p-value.

    >>> tvd, p = class_mix_test({"car": 50, "dog": 50}, {"car": 90, "dog": 10})
    >>> round(tvd, 2), p < 1e-6
    (0.4, True)
    """
    labels = sorted(set(live) | set(cand))
    a = np.array([live.get(k, 0) for k in labels], np.float64)
    b = np.array([cand.get(k, 0) for k in labels], np.float64)
    if a.sum() == 0 or b.sum() == 0:
        return math.nan, math.nan
    tvd = 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())
    keep = (a + b) > 0
    if keep.sum() < 2:
        return tvd, 1.0
    from scipy.stats import chi2_contingency

    p = float(chi2_contingency(np.stack([a[keep], b[keep]]), correction=False).pvalue)
    return tvd, p


def _class_mix(cfg: GatesConfig, live: Window, cand: Window) -> GateResult:
    g, need = cfg.class_mix, cfg.samples_for("class_mix")
    nl, nc = sum(live.class_counts.values()), sum(cand.class_counts.values())
    # boxes of one image are not independent: count images with boxes, not boxes
    short = _short("class_mix", need, candidate=cand.mean_scores.size, live=live.mean_scores.size)
    if short:
        return short
    if nl == 0 or nc == 0:  # boxes without classes logged: nothing to compare, never a pass
        return GateResult(
            "class_mix",
            "insufficient_data",
            {"candidate_boxes": nc, "live_boxes": nl},
            {"min_samples": need},
            f"class_mix: no class counts logged (candidate {nc} boxes, live {nl} boxes)",
        )
    tvd, p = class_mix_test(live.class_counts, cand.class_counts)
    measured = {"tvd": _r(tvd), "p_value": _r(p, 6), "candidate_boxes": nc, "live_boxes": nl}
    th = {"max_tvd": g.max_tvd, "alpha": g.alpha}
    bad = tvd > g.max_tvd and p < g.alpha
    why = f"class_mix: total variation {tvd:.3f} (max {g.max_tvd:g}), chi-square p={p:.2g}"
    return GateResult("class_mix", "fail" if bad else "pass", measured, th, why)


def _agreement(cfg: GatesConfig, f1: np.ndarray | None) -> GateResult:
    g, need = cfg.agreement, cfg.samples_for("agreement")
    n = 0 if f1 is None else int(f1.size)
    th = {"min_f1": g.min_f1, "min_samples": need}
    if f1 is None or n < need:
        return GateResult(
            "agreement",
            "skipped",
            {"shadow_comparisons": n},
            th,
            f"agreement: {n} shadow comparisons (needs {need}); run `detops deploy shadow` first "
            "to judge agreement with live",
        )
    mean = float(f1.mean())
    bad = mean < g.min_f1
    why = (
        f"agreement: mean F1@0.5 with live {mean:.3f} over {n} shadowed requests (min {g.min_f1:g})"
    )
    return GateResult(
        "agreement",
        "fail" if bad else "pass",
        {"mean_f1": _r(mean), "shadow_comparisons": n},
        th,
        why,
    )


def evaluate(
    cfg: GatesConfig,
    *,
    live: Window,
    candidate: Window,
    agreement: np.ndarray | None = None,
) -> GatesReport:
    """Judge ``candidate`` against ``live`` with every enabled gate."""
    results: list[GateResult] = []
    checks = {
        "error_rate": lambda: _error_rate(cfg, live, candidate),
        "latency_p95": lambda: _latency(cfg, live, candidate),
        "no_detection_rate": lambda: _no_detection(cfg, live, candidate),
        "mean_confidence": lambda: _confidence(cfg, live, candidate),
        "boxes_per_image": lambda: _boxes(cfg, live, candidate),
        "class_mix": lambda: _class_mix(cfg, live, candidate),
        "agreement": lambda: _agreement(cfg, agreement),
    }
    for name in GATE_NAMES:
        if cfg.gate(name).enabled:
            results.append(checks[name]())
    statuses = {r.status for r in results}
    # a pass needs at least one gate that judged: every gate disabled, or only a skipped
    # agreement gate, is too little evidence (it never passes silently)
    verdict: Literal["pass", "fail", "insufficient_data"] = (
        "fail"
        if "fail" in statuses
        else "insufficient_data"
        if "insufficient_data" in statuses or "pass" not in statuses
        else "pass"
    )
    return GatesReport(verdict, results, candidate.summary(), live.summary())
