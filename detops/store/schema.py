"""Tables of the metadata store and the versioned migrations that create them.

Portable SQLAlchemy Core only (no SQLite-only types or statements), so that the same schema
runs on PostgreSQL. A migration is appended, never edited: the store records the highest
version applied and :func:`detops.store.db.migrate` applies the rest, in order, under a lock.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# Hash / header cache for source files: a file whose path, size and mtime are unchanged is not
# read again when it is re-added.
file_cache = Table(
    "file_cache",
    metadata,
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    Column("format", String(16)),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("manifest", String(64), nullable=False),  # artifact digest of the manifest JSON
    Column("n_images", Integer, nullable=False),
    Column("n_annotations", Integer, nullable=False),
    Column("n_categories", Integer, nullable=False),
    Column("source", Text),
    Column("source_format", String(16)),
    Column("loss_report", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name", "version", name="uq_dataset_name_version"),
    UniqueConstraint("name", "digest", name="uq_dataset_name_digest"),
)

# Reserved for later stages; created now so that the first migration is the whole data stage.
key_values = Table(
    "key_values",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", JSON),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False),  # running | finished | failed
    Column("dataset", String(220)),  # NAME@vN
    Column("dataset_digest", String(64)),
    Column("params", JSON, nullable=False),
    Column("code", JSON, nullable=False),  # git sha, dirty flag, package version
    Column("environment", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),  # list of per-epoch dicts
    Column("evaluation", JSON),  # final evaluation
    Column("artifacts", JSON, nullable=False),  # role -> artifact digest
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("duration_s", Float),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("onnx", String(64), nullable=False),  # artifact digest of the ONNX graph
    Column("spec", JSON, nullable=False),
    Column("run_id", String(32)),
    Column("lineage", JSON, nullable=False),
    Column("evaluation", JSON),
    Column("description", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name", "version", name="uq_model_name_version"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("actor", String(200)),
    Column("at", DateTime(timezone=True), nullable=False),
)


predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_name", String(200)),
    Column("model_version", Integer),
    Column("route", String(32)),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float),
    Column("timings", JSON),
    Column("width", Integer),
    Column("height", Integer),
    Column("bytes", Integer),
    Column("format", String(16)),
    Column("brightness", Float),
    Column("contrast", Float),
    Column("sharpness", Float),
    Column("n_boxes", Integer),
    Column("max_score", Float),
    Column("mean_score", Float),
    Column("class_counts", JSON),
    Column("error", Text),
)

image_samples = Table(
    "image_samples",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("artifact", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


# -- deployments: rollouts, their decisions, controller leases, shadow comparisons (migration 4) --
# One row per deployment; every change bumps ``revision`` (replicas poll it) and adds an event.
deployments = Table(
    "deployments",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("alias", String(64)),  # moved with promotions and rollbacks (None: created from vN)
    Column("live_version", Integer, nullable=False),
    Column("candidate_version", Integer),
    Column("previous_version", Integer),  # live before the last promotion: the rollback target
    Column("strategy", String(16), nullable=False),  # none | shadow | canary | bluegreen
    Column("state", String(24), nullable=False),
    Column("step", Integer, nullable=False),  # index into steps
    Column("steps", JSON, nullable=False),  # canary shares, percent
    Column("step_config", JSON, nullable=False),  # min requests / seconds, sample, colours ...
    Column("gates", JSON, nullable=False),  # validated gates config
    Column("automation", String(32)),  # None: the server's serve.automation
    Column("revision", Integer, nullable=False),
    Column("step_started_at", DateTime(timezone=True)),
    Column("switched_at", DateTime(timezone=True)),  # last promotion / rollback switch
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

deployment_events = Table(
    "deployment_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment", String(200), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(24), nullable=False),  # create | shadow | canary | promote | ...
    Column("decision", String(24)),  # controller: advance | hold | promote | rollback
    Column("reason", Text),
    Column("from_state", String(24)),
    Column("to_state", String(24), nullable=False),
    Column("live_version", Integer),
    Column("candidate_version", Integer),
    Column("step", Integer),
    Column("measured", JSON),
    Column("thresholds", JSON),
    Column("actor", String(200), nullable=False),  # human:<who> | controller:<replica> | api
    Column("revision", Integer, nullable=False),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# One row per shadowed request: the candidate's answer compared with live's.
shadow_comparisons = Table(
    "shadow_comparisons",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("deployment", String(200)),
    Column("model_name", String(200), nullable=False),
    Column("live_version", Integer, nullable=False),
    Column("candidate_version", Integer, nullable=False),
    Column("f1", Float),  # IoU-matched (0.5, same class) F1 of candidate vs live; None on error
    Column("n_live", Integer),
    Column("n_candidate", Integer),
    Column("n_matched", Integer),
    Column("live_mean_score", Float),
    Column("candidate_mean_score", Float),
    Column("class_tvd", Float),  # total variation distance of the two class mixes
    Column("live_latency_ms", Float),
    Column("candidate_latency_ms", Float),
    Column("error", Text),
)
Index(
    "ix_shadow_candidate", shadow_comparisons.c.model_name, shadow_comparisons.c.candidate_version
)


# -- human review queue (migration 5) ------------------------------------------------------------
# One row per request queued for review; its image is an artifact until the retention ends.
review_items = Table(
    "review_items",
    metadata,
    Column("id", String(32), primary_key=True),  # review id (the request id may be reused)
    Column("request_id", String(64), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_name", String(200)),
    Column("model_version", Integer),
    Column("level", String(16), nullable=False),  # automation level when it was queued
    Column("reason", String(32), nullable=False),  # human_only | ai_assistance | low_confidence
    Column("detections", JSON, nullable=False),  # the model's boxes: [{box, score, label, ...}]
    Column("classes", JSON, nullable=False),  # class names of that model version, in id order
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", String(16)),
    Column("artifact", String(64)),  # null once the retention purged the image
    Column("state", String(16), nullable=False, index=True),  # pending | done | expired
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

review_feedback = Table(
    "review_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("review_id", String(32), nullable=False, unique=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("boxes", JSON, nullable=False),  # [{box: [x1, y1, x2, y2], label: name}]
    Column("reviewer", String(200), nullable=False),
    Column("submitted_at", DateTime(timezone=True), nullable=False, index=True),
    Column("changed", Boolean, nullable=False),  # differs from the model's boxes
)


def _m1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[file_cache, dataset_versions, key_values])


def _m2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[runs, model_versions, model_aliases, alias_events])


def _m3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[predictions, image_samples])


def _m4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[deployments, deployment_events, leases, shadow_comparisons])


def _m5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[review_items, review_feedback])


# -- baselines: human-level performance of a dataset version (migration 6) -----------------------
# One row per computation; the newest row of (dataset, kind) is the dataset's baseline.
baselines = Table(
    "baselines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(220), nullable=False, index=True),  # NAME@vN
    Column("dataset_digest", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # hlp
    Column("params", JSON, nullable=False),
    Column("result", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def _m6(conn: Connection) -> None:
    metadata.create_all(conn, tables=[baselines])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "data stage: file cache, dataset versions, key/values", _m1),
    (2, "modelling stage: runs, model versions, aliases and their history", _m2),
    (3, "deployment stage: prediction log and sampled images", _m3),
    (4, "rollouts: deployments, their events, controller leases, shadow comparisons", _m4),
    (5, "degrees of automation: human review queue and feedback", _m5),
    (6, "data stage, part 2: baselines (human-level performance)", _m6),
]
