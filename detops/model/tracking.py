"""Tracked training runs: code + hyperparameters + data, metrics per epoch, artifacts.

A run is recorded when it starts (status ``running``), updated after each epoch and finished
with its evaluation, artifacts and duration; a crash marks it ``failed`` with the error.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from detops.errors import RunNotFound
from detops.store.db import utcnow
from detops.store.schema import runs
from detops.workspace import Workspace


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(where: Path | None = None) -> dict[str, Any]:
    """Git SHA and dirty flag of the repository around ``where`` (and of detops), and versions."""
    from importlib.metadata import PackageNotFoundError, version

    def repo(path: Path) -> dict[str, Any] | None:
        sha = _git(["rev-parse", "HEAD"], path)
        if sha is None:
            return None
        status = _git(["status", "--porcelain", "--untracked-files=no"], path)
        top = _git(["rev-parse", "--show-toplevel"], path)
        return {"repo": top, "sha": sha, "dirty": bool(status)}

    try:
        pkg = version("detops")
    except PackageNotFoundError:  # running from a source tree
        pkg = "unknown"
    return {
        "package_version": pkg,
        "detops_git": repo(Path(__file__).resolve().parent),
        "project_git": repo(where or Path.cwd()),
    }


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    for mod in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class Run:
    id: str
    status: str
    dataset: str | None
    dataset_digest: str | None
    params: dict[str, Any]
    code: dict[str, Any]
    environment: dict[str, Any]
    metrics: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    artifacts: dict[str, str]
    error: str | None
    started_at: Any
    finished_at: Any
    duration_s: float | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["started_at"] = str(self.started_at)
        d["finished_at"] = None if self.finished_at is None else str(self.finished_at)
        return d


def _row(r: Any) -> Run:
    return Run(
        r.id,
        r.status,
        r.dataset,
        r.dataset_digest,
        r.params,
        r.code,
        r.environment,
        r.metrics or [],
        r.evaluation,
        r.artifacts or {},
        r.error,
        r.started_at,
        r.finished_at,
        r.duration_s,
    )


class RunRecorder:
    """Writes one run to the store as it progresses."""

    def __init__(
        self,
        ws: Workspace,
        *,
        dataset: str,
        dataset_digest: str,
        params: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        self.ws = ws
        self.id = run_id or uuid.uuid4().hex[:12]
        self.metrics: list[dict[str, Any]] = []
        self.artifacts: dict[str, str] = {}
        self._t0 = utcnow()
        with ws.db.write() as conn:
            conn.execute(
                insert(runs).values(
                    id=self.id,
                    status="running",
                    dataset=dataset,
                    dataset_digest=dataset_digest,
                    params=params,
                    code=code_version(ws.root),
                    environment=environment(),
                    metrics=[],
                    artifacts={},
                    started_at=self._t0,
                )
            )

    @classmethod
    def reopen(cls, ws: Workspace, run_id: str) -> RunRecorder:
        """Continue a run (``--resume``): same id, metrics so far kept, status running again."""
        run = get_run(ws, run_id)
        self = cls.__new__(cls)
        self.ws, self.id = ws, run.id
        self.metrics, self.artifacts = list(run.metrics), dict(run.artifacts)
        started = run.started_at
        self._t0 = started if started.tzinfo else started.replace(tzinfo=dt.UTC)
        with ws.db.write() as conn:
            conn.execute(update(runs).where(runs.c.id == run.id).values(status="running",
                                                                           error=None))
        return self

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        # a resumed run replays from its checkpoint: replace epochs it logs again
        epoch = metrics.get("epoch")
        self.metrics = [m for m in self.metrics if m.get("epoch") != epoch or epoch is None]
        self.metrics.append(metrics)
        with self.ws.db.write() as conn:
            conn.execute(update(runs).where(runs.c.id == self.id).values(metrics=self.metrics))

    def add_artifact(self, role: str, path: Path) -> str:
        digest = self.ws.artifacts.put_file(path)
        self.artifacts[role] = digest
        return digest

    def finish(
        self,
        evaluation: dict[str, Any] | None,
        *,
        status: str = "finished",
        error: str | None = None,
    ) -> Run:
        end = utcnow()
        with self.ws.db.write() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == self.id)
                .values(
                    status=status,
                    evaluation=evaluation,
                    artifacts=self.artifacts,
                    error=error,
                    finished_at=end,
                    duration_s=(end - self._t0).total_seconds(),
                    metrics=self.metrics,
                )
            )
        return get_run(self.ws, self.id)


def get_run(ws: Workspace, run_id: str) -> Run:
    with ws.db.read() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            rows = [r for r in conn.execute(select(runs)) if r.id.startswith(run_id)]
            if len(rows) == 1:
                row = rows[0]
    if row is None:
        raise RunNotFound(f"run {run_id!r} not found (see `detops runs list`)")
    return _row(row)


def list_runs(ws: Workspace) -> list[Run]:
    with ws.db.read() as conn:
        return [_row(r) for r in conn.execute(select(runs).order_by(runs.c.started_at))]
