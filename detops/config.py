"""detops.yaml schema and the one precedence: CLI flag > ``DETOPS_*`` env > detops.yaml > default.

Every setting has a dotted key (``store.url``, ``data.split.val``) and an environment name made
from it (``DETOPS_STORE_URL``, ``DETOPS_DATA_SPLIT_VAL``). :func:`resolve` returns the values with
where each one came from, which ``detops config show`` prints.

>>> cfg = resolve(None, env={"DETOPS_DATA_WORKERS": "3"})
>>> cfg.settings.data.workers, cfg.sources["data.workers"]
(3, 'env DETOPS_DATA_WORKERS')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detops.errors import ConfigError

CONFIG_FILE = "detops.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreSettings(_Section):
    url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata store; default SQLite in .detops/"
    )
    artifacts: str = Field(
        ".detops/artifacts", description="artifact folder, relative to the workspace"
    )


class SplitSettings(_Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must add up to 1 (train+val+test = {total:g})")
        return self


class DataSettings(_Section):
    split: SplitSettings = SplitSettings()
    workers: int = Field(0, ge=0, description="threads for hashing and decoding; 0 = one per core")
    voc_one_based: bool = Field(
        True, description="Pascal VOC corners are 1-based (the original devkit); false = 0-based"
    )


AutomationLevel = Literal["human_only", "shadow", "ai_assistance", "partial", "full"]


class ReviewBand(_Section):
    low: float = Field(0.3, ge=0, le=1, description="lowest score that asks for review")
    high: float = Field(0.6, ge=0, le=1, description="scores from here up are confident")

    @model_validator(mode="after")
    def _ordered(self) -> ReviewBand:
        if self.low > self.high:
            raise ValueError(
                f"review band low={self.low:g} is above high={self.high:g}; expected low <= high"
            )
        return self


class ServeSettings(_Section):
    model: str | None = Field(None, description="NAME@ALIAS the server follows")
    deployment: str | None = Field(
        None, description="deployment to serve (its live version, candidate and rollout)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="server processes")
    max_batch_size: int = Field(8, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    batch_policy: Literal["auto", "wait", "greedy", "off"] = Field(
        "auto",
        description="auto: measured at warm-up; wait: fill batches up to max_queue_delay_ms; "
        "greedy: batch only what is already queued; off: one image per run",
    )
    max_queue: int = Field(64, ge=1, description="queued requests per model before 503")
    lanes: int = Field(
        0,
        ge=0,
        description="ONNX Runtime runs per model version at once; 0 = one per core unless "
        "measured at warm-up at least 5% slower than one run on every core, else 1",
    )
    timeout_ms: float = Field(10_000, gt=0, description="per-request deadline")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = one per core")
    # "alone" by default: bench/serve_bench.py measured c=1 p50 7.83-7.87 ms against 8.27-9.19
    # with spinning off, and in a second run 6.86-7.08 against 8.46-8.53 (2 cores); under load
    # the non-spinning twin serves
    allow_spinning: bool | Literal["alone"] = Field(
        "alone",
        description="ONNX Runtime threads spin while waiting for work: lower latency, more CPU; "
        "alone: only in runs of a request that has the server to itself (under load a second, "
        "non-spinning session serves)",
    )
    body_limit_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(40_000_000, gt=0, description="checked from the header")
    token: str | None = Field(None, description="bearer token for admin endpoints")
    require_token_for_detect: bool = False
    alias_poll_s: float = Field(2.0, gt=0, description="how often the followed alias is checked")
    log_queue: int = Field(10_000, ge=1, description="prediction records held before dropping")
    log_batch: int = Field(256, ge=1)
    log_flush_ms: float = Field(500, gt=0)
    sample_rate: float = Field(0.0, ge=0, le=1, description="share of images kept (privacy: 0)")
    sample_retention_days: float = Field(7.0, gt=0)
    automation: AutomationLevel = Field(
        "full",
        description="human_only | shadow | ai_assistance | partial | full: who decides, and "
        "which requests enter the human review queue",
    )
    review_band: ReviewBand = Field(
        ReviewBand(), description="partial automation: scores in [low, high) ask for review"
    )
    review_retention_days: float = Field(30.0, gt=0, description="images kept for review")
    review_queue: int = Field(256, ge=1, description="review items held before dropping")
    review_queue_mb: float = Field(256.0, gt=0, description="image bytes held before dropping")


class RolloutSettings(_Section):
    poll_s: float = Field(
        0.25, gt=0, description="how often a replica checks its deployment's revision"
    )
    tick_s: float = Field(0.5, gt=0, description="how often the controller judges the gates")
    lease_ttl_s: float = Field(
        3.0, gt=0, description="a controller that stops renewing is replaced after this"
    )
    shadow_concurrency: int = Field(1, ge=1, description="shadow requests run at once")
    shadow_queue: int = Field(8, ge=0, description="shadow requests waiting before shedding")
    shadow_threads: int = Field(
        1, ge=0, description="ONNX Runtime threads of a shadow candidate; 0 = one per core"
    )
    keep_warm_s: float = Field(
        300.0, ge=0, description="the previous version stays loaded this long after a switch"
    )


class Settings(_Section):
    store: StoreSettings = StoreSettings()
    data: DataSettings = DataSettings()
    serve: ServeSettings = ServeSettings()
    rollout: RolloutSettings = RolloutSettings()


DEFAULT_YAML = """\
# detops workspace settings. Precedence: CLI flag > DETOPS_* env > this file > default.
# `detops config show` prints every resolved value and where it came from.

store:
  # SQLAlchemy URL of the metadata store. Unset = SQLite at .detops/detops.db.
  # Env: DETOPS_STORE_URL (e.g. postgresql+psycopg://user@host/detops)
  # url: null
  # Content-addressed artifact folder, relative to this file.
  artifacts: .detops/artifacts

data:
  # Deterministic split from each image's content hash; ratios add up to 1.
  split:
    train: 0.8
    val: 0.2
    test: 0.0
  # Threads for hashing and decoding images; 0 = one per core.
  workers: 0
  # Pascal VOC corners: true = 1-based as in the original devkit (x1 = xmin - 1).
  voc_one_based: true

serve:
  # The model alias the server follows (hot swap when it moves), e.g. det@production.
  # model: det@production
  # Or serve a deployment (`detops deploy ...`): live version, candidate, rollout state.
  # deployment: null
  host: 127.0.0.1
  port: 8000
  workers: 1
  # Dynamic batching per model version.
  max_batch_size: 8
  max_queue_delay_ms: 2.0
  # auto measures batch-1 vs batch-N cost at warm-up and batches only when that pays (GPU);
  # on CPUs, where a batch of 8 costs 8 images, it turns batching off.
  batch_policy: auto     # auto | wait | greedy | off
  max_queue: 64          # queued requests before 503 + Retry-After
  lanes: 0               # runs at once per model version; 0 = one per core unless measured slower
  timeout_ms: 10000      # per-request deadline
  intra_op_threads: 0    # ONNX Runtime threads; 0 = one per core
  allow_spinning: alone  # false | true | alone (spin only for a request that is alone)
  body_limit_mb: 20
  max_pixels: 40000000   # checked from the image header, before decoding
  # Bearer token for anything that changes state (env DETOPS_SERVE_TOKEN keeps it out of files).
  # token: null
  require_token_for_detect: false
  alias_poll_s: 2.0
  # Prediction log: written asynchronously in batches; the request path never waits on it.
  log_queue: 10000
  log_batch: 256
  log_flush_ms: 500
  # Keep a share of request images in the artifact store (off by default for privacy).
  sample_rate: 0.0
  sample_retention_days: 7
  # Degrees of automation: human_only (the model runs hidden, people label every image),
  # shadow, ai_assistance (detections are suggestions, every image is reviewed), partial
  # (images with a detection scoring in [review_band.low, review_band.high) are reviewed),
  # full (nothing is reviewed). Review: http://HOST:PORT/review with the token.
  automation: full
  review_band:
    low: 0.3
    high: 0.6
  review_retention_days: 30  # images kept for review are deleted after this
  review_queue: 256          # items waiting to be written before new ones are dropped
  review_queue_mb: 256       # ... and their image bytes

rollout:
  # Replicas serving a deployment (`detops serve --deployment NAME`) poll its revision this
  # often; a rollback reaches every replica within about this time.
  poll_s: 0.25
  tick_s: 0.5            # the controller judges the canary gates this often
  lease_ttl_s: 3.0       # one controller at a time; another replica takes over after this
  # Shadow work has its own budget and is shed first when live is busy.
  shadow_concurrency: 1
  shadow_queue: 8
  shadow_threads: 1      # ONNX Runtime threads of a shadow candidate (a niced thread)
  keep_warm_s: 300       # the previous version stays loaded this long after a switch
"""


def _flatten(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def env_name(key: str) -> str:
    return "DETOPS_" + key.replace(".", "_").upper()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get_dotted(tree: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


@dataclass(frozen=True)
class ResolvedConfig:
    settings: Settings
    sources: dict[str, str]
    file: Path | None

    def rows(self) -> list[tuple[str, Any, str]]:
        flat = _flatten(self.settings)
        return [(k, flat[k], self.sources[k]) for k in sorted(flat)]


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def resolve(
    config_file: Path | None,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Resolve settings from defaults, detops.yaml, ``DETOPS_*`` env and CLI flags."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_tree = load_yaml(config_file) if config_file and config_file.exists() else {}
    keys = list(_flatten(Settings()))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in keys:
        sources[key] = "default"
        found, value = _get_dotted(file_tree, key)
        if found:
            _set_dotted(merged, key, value)
            sources[key] = f"{CONFIG_FILE}"
        if env_name(key) in env:
            _set_dotted(merged, key, env[env_name(key)])
            sources[key] = f"env {env_name(key)}"
        if key in flags:
            _set_dotted(merged, key, flags[key])
            sources[key] = "flag"
    # Sections in the file we do not know are an error (typos should not pass silently).
    for section, value in file_tree.items():
        if section not in Settings.model_fields:
            raise ConfigError(
                f"{config_file}: unknown section '{section}' "
                f"(known: {', '.join(Settings.model_fields)})"
            )
        if isinstance(value, dict):
            for sub in value:
                if f"{section}.{sub}" not in keys and not any(
                    k.startswith(f"{section}.{sub}.") for k in keys
                ):
                    raise ConfigError(f"{config_file}: unknown setting '{section}.{sub}'")
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    return ResolvedConfig(settings=settings, sources=sources, file=config_file)
