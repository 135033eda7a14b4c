"""The model registry: ``NAME@vN`` versions of ONNX graph + spec, aliases, lineage.

A version is immutable: its ONNX bytes live in the artifact store under their sha256 and are
verified whenever they are loaded (a tampered file refuses to load, naming it). Aliases
(``production``, ``staging``, any name) point at one version; moving one is a single
transaction that also records who moved it, from where to where. Only ONNX is ever loaded for
inference: no pickles, no torch checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from detops.errors import ModelNotFound
from detops.refs import Ref, check_name, parse_ref
from detops.store.db import utcnow
from detops.store.schema import alias_events, model_aliases, model_versions
from detops.workspace import Workspace


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    onnx: str
    spec: dict[str, Any]
    run_id: str | None
    lineage: dict[str, Any]
    evaluation: dict[str, Any] | None
    description: str | None
    created_at: Any
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "onnx_sha256": self.onnx,
            "aliases": list(self.aliases),
            "run_id": self.run_id,
            "lineage": self.lineage,
            "evaluation": self.evaluation,
            "spec": self.spec,
            "description": self.description,
            "created_at": str(self.created_at),
        }


def _row(r: Any, aliases: tuple[str, ...] = ()) -> ModelVersion:
    return ModelVersion(
        r.name,
        r.version,
        r.onnx,
        r.spec,
        r.run_id,
        r.lineage,
        r.evaluation,
        r.description,
        r.created_at,
        aliases,
    )


def register_model(
    ws: Workspace,
    name: str,
    onnx: bytes | str | os.PathLike[str],
    spec: Any,
    *,
    run_id: str | None = None,
    lineage: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    description: str | None = None,
) -> ModelVersion:
    """Check ``spec`` against the graph, store the ONNX bytes and record ``NAME@vN``."""
    import onnx as onnx_lib

    from detops.model.spec import ModelSpec

    check_name(name, "model name")
    data = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
    model_spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
    try:
        graph = onnx_lib.load_from_string(data)
        # protobuf parses many non-ONNX byte strings (e.g. an empty file) into an empty message
        if graph.ir_version == 0 or not graph.HasField("graph"):
            raise ValueError("no ONNX model in the file (no IR version or no graph)")
    except Exception as exc:
        from detops.errors import ModelError

        where = "<bytes>" if isinstance(onnx, bytes) else str(onnx)
        raise ModelError(f"{where} is not a readable ONNX model: {exc}") from exc
    model_spec.check_graph(graph)
    digest = ws.artifacts.put_bytes(data)
    spec_dict = model_spec.model_dump(mode="json")
    with ws.db.write() as conn:
        latest = conn.execute(
            select(func.max(model_versions.c.version)).where(model_versions.c.name == name)
        ).scalar()
        values = dict(
            name=name,
            version=int(latest or 0) + 1,
            onnx=digest,
            spec=spec_dict,
            run_id=run_id,
            lineage=lineage or {},
            evaluation=evaluation,
            description=description,
            created_at=utcnow(),
        )
        conn.execute(insert(model_versions).values(**values))
    return ModelVersion(**values)  # type: ignore[arg-type]


def _aliases_of(conn: Any, name: str, version: int) -> tuple[str, ...]:
    rows = conn.execute(
        select(model_aliases.c.alias).where(
            model_aliases.c.name == name, model_aliases.c.version == version
        )
    )
    return tuple(sorted(r.alias for r in rows))


def get_model(ws: Workspace, ref: str | Ref) -> ModelVersion:
    """Resolve ``NAME@vN``, ``NAME@ALIAS`` or ``NAME`` (the latest version)."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    with ws.db.read() as conn:
        version = r.version
        if r.alias is not None:
            version = conn.execute(
                select(model_aliases.c.version).where(
                    model_aliases.c.name == r.name, model_aliases.c.alias == r.alias
                )
            ).scalar()
            if version is None:
                known = [
                    a
                    for (a,) in conn.execute(
                        select(model_aliases.c.alias).where(model_aliases.c.name == r.name)
                    )
                ]
                raise ModelNotFound(
                    f"model {r}: no alias {r.alias!r}"
                    + (
                        f" (aliases: {', '.join(sorted(known))})"
                        if known
                        else f"; set one with `detops models alias {r.name}@vN {r.alias}`"
                    )
                )
        q = select(model_versions).where(model_versions.c.name == r.name)
        q = (
            q.where(model_versions.c.version == version)
            if version is not None
            else q.order_by(model_versions.c.version.desc()).limit(1)
        )
        row = conn.execute(q).first()
        if row is None:
            names = sorted({n for (n,) in conn.execute(select(model_versions.c.name))})
            hint = f"known models: {', '.join(names)}" if names else "no models registered yet"
            raise ModelNotFound(f"model {r} not found ({hint})")
        return _row(row, _aliases_of(conn, row.name, row.version))


def list_models(ws: Workspace, name: str | None = None) -> list[ModelVersion]:
    q = select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
    if name is not None:
        q = q.where(model_versions.c.name == name)
    with ws.db.read() as conn:
        return [_row(r, _aliases_of(conn, r.name, r.version)) for r in conn.execute(q)]


def set_alias(
    ws: Workspace, ref: str, alias: str, *, actor: str | None = None
) -> tuple[int | None, int]:
    """Point ``NAME@alias`` at the version ``ref`` names; returns (previous, new) versions."""
    target = get_model(ws, ref)
    parsed = parse_ref(f"{target.name}@{alias}")
    if parsed.alias is None:
        from detops.errors import InvalidReference

        raise InvalidReference(
            f"{alias!r} cannot be an alias (use letters, digits, '_' or '-', "
            "starting with a letter, and not vN)"
        )
    now = utcnow()
    actor = actor or os.environ.get("USER") or "unknown"
    with ws.db.write() as conn:
        previous = conn.execute(
            select(model_aliases.c.version).where(
                model_aliases.c.name == target.name, model_aliases.c.alias == alias
            )
        ).scalar()
        if previous is None:
            conn.execute(
                insert(model_aliases).values(
                    name=target.name, alias=alias, version=target.version, updated_at=now
                )
            )
        else:
            conn.execute(
                update(model_aliases)
                .where(
                    model_aliases.c.name == target.name,
                    model_aliases.c.alias == alias,
                )
                .values(version=target.version, updated_at=now)
            )
        conn.execute(
            insert(alias_events).values(
                name=target.name,
                alias=alias,
                from_version=previous,
                to_version=target.version,
                actor=actor,
                at=now,
            )
        )
    return previous, target.version


def alias_history(ws: Workspace, name: str) -> list[dict[str, Any]]:
    with ws.db.read() as conn:
        rows = conn.execute(
            select(alias_events).where(alias_events.c.name == name).order_by(alias_events.c.id)
        )
        return [
            {
                "alias": r.alias,
                "from": r.from_version,
                "to": r.to_version,
                "actor": r.actor,
                "at": str(r.at),
            }
            for r in rows
        ]


def onnx_path(ws: Workspace, mv: ModelVersion) -> Path:
    """The verified path of a version's ONNX file; a tampered file raises ArtifactCorrupt."""
    ws.artifacts.verify(mv.onnx)
    return ws.artifacts.path(mv.onnx)


def load_runtime(ws: Workspace, ref: str | ModelVersion, **runtime_options: Any) -> Any:
    """A :class:`detops.model.runtime.Runtime` for a registered version, hash-checked."""
    from detops.model.runtime import Runtime
    from detops.model.spec import ModelSpec

    mv = ref if isinstance(ref, ModelVersion) else get_model(ws, ref)
    path = ws.artifacts.path(mv.onnx)
    return Runtime(
        path, ModelSpec.model_validate(mv.spec), expected_sha256=mv.onnx, **runtime_options
    )
