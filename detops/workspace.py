"""A workspace: a folder with ``detops.yaml`` and ``.detops/`` (metadata store + artifacts).

Found from ``--workspace``, else ``DETOPS_HOME``, else the current folder upwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from detops.config import CONFIG_FILE, DEFAULT_YAML, ResolvedConfig, resolve
from detops.errors import WorkspaceError, WorkspaceNotFound
from detops.store.artifacts import LocalArtifactStore
from detops.store.db import MetadataStore

STATE_DIR = ".detops"


def init_workspace(path: str | os.PathLike[str]) -> Path:
    """Create ``detops.yaml`` (commented defaults) and ``.detops/``; keep what already exists."""
    root = Path(path).resolve()
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root} exists and is not a folder")
    (root / STATE_DIR / "artifacts").mkdir(parents=True, exist_ok=True)
    cfg = root / CONFIG_FILE
    if not cfg.exists():
        tmp = cfg.with_suffix(".yaml.tmp")
        tmp.write_text(DEFAULT_YAML, encoding="utf-8")
        os.replace(tmp, cfg)
    return root


def find_workspace(
    explicit: str | os.PathLike[str] | None = None, start: Path | None = None
) -> Path:
    if explicit is None:
        explicit = os.environ.get("DETOPS_HOME") or None
    if explicit is not None:
        root = Path(explicit).resolve()
        if not (root / CONFIG_FILE).is_file():
            raise WorkspaceNotFound(
                f"{root} is not a detops workspace (no {CONFIG_FILE}); run `detops init {root}`"
            )
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise WorkspaceNotFound(
        f"no detops workspace in {here} or any folder above it; run `detops init` here, "
        "or pass --workspace DIR / set DETOPS_HOME"
    )


class Workspace:
    """Settings, metadata store and artifact store of one workspace (opened lazily)."""

    def __init__(
        self, root: str | os.PathLike[str], flags: Mapping[str, Any] | None = None
    ) -> None:
        self.root = Path(root).resolve()
        self.config: ResolvedConfig = resolve(self.root / CONFIG_FILE, flags=flags)
        self.settings = self.config.settings

    @classmethod
    def find(
        cls, explicit: str | os.PathLike[str] | None = None, flags: Mapping[str, Any] | None = None
    ) -> Workspace:
        return cls(find_workspace(explicit), flags=flags)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def store_url(self) -> str:
        return self.settings.store.url or f"sqlite:///{self.state_dir / 'detops.db'}"

    @cached_property
    def db(self) -> MetadataStore:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return MetadataStore(self.store_url)

    @cached_property
    def artifacts(self) -> LocalArtifactStore:
        path = Path(self.settings.store.artifacts)
        return LocalArtifactStore(path if path.is_absolute() else self.root / path)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
