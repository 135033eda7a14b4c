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
    Column,
    Connection,
    DateTime,
    Float,
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


def _m1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[file_cache, dataset_versions, key_values])


def _m2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[runs, model_versions, model_aliases, alias_events])


def _m3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[predictions, image_samples])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "data stage: file cache, dataset versions, key/values", _m1),
    (2, "modelling stage: runs, model versions, aliases and their history", _m2),
    (3, "deployment stage: prediction log and sampled images", _m3),
]
