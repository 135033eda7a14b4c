"""Content-addressed artifact storage.

Every blob is stored once under its sha256; writes go to a temporary file in the same folder
and are renamed into place, so a reader never sees half a file and a crash leaves no blob.

>>> store = MemoryArtifactStore()
>>> digest = store.put_bytes(b"hello")
>>> store.put_bytes(b"hello") == digest, store.get_bytes(digest)
(True, b'hello')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from detops.errors import ArtifactCorrupt, ArtifactNotFound

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (hashlib releases the GIL, so threads hash in parallel)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore(ABC):
    """Blobs addressed by their sha256 hex digest."""

    @abstractmethod
    def put_bytes(self, data: bytes) -> str: ...

    @abstractmethod
    def put_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        """Store a file's bytes; ``digest`` skips re-hashing when the caller already knows it."""

    @abstractmethod
    def get_bytes(self, digest: str) -> bytes: ...

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def path(self, digest: str) -> Path:
        """A local path to read the blob from (materialised if needed)."""

    def verify(self, digest: str) -> None:
        """Raise :class:`ArtifactCorrupt` if the stored bytes no longer hash to ``digest``."""
        actual = sha256_file(self.path(digest))
        if actual != digest:
            raise ArtifactCorrupt(
                f"artifact {digest[:12]} at {self.path(digest)} is corrupt: its bytes hash to "
                f"{actual[:12]}; restore it or re-add the source"
            )


class LocalArtifactStore(ArtifactStore):
    """Blobs under ``root/ab/cdef...`` (two-level fan-out keeps folders small)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def _commit(self, tmp: Path, digest: str) -> str:
        final = self.path(digest)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        return digest

    def _tmp(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        os.close(fd)
        return Path(name)

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        if self.exists(digest):
            return digest
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            return self._commit(tmp, digest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        if digest is not None and self.exists(digest):
            return digest
        tmp = self._tmp()
        try:
            h = hashlib.sha256()
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
            actual = h.hexdigest()
            if digest is not None and actual != digest:
                raise ArtifactCorrupt(f"{path} changed while it was being stored (hash differs)")
            return self._commit(tmp, actual)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {digest} is not in {self.root}") from None

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


class MemoryArtifactStore(ArtifactStore):
    """In-memory store for tests; ``path`` materialises into a temporary folder."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._dir: Path | None = None

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        self._blobs.setdefault(digest, bytes(data))
        return digest

    def put_file(self, path: str | os.PathLike[str], digest: str | None = None) -> str:
        return self.put_bytes(Path(path).read_bytes())

    def get_bytes(self, digest: str) -> bytes:
        try:
            return self._blobs[digest]
        except KeyError:
            raise ArtifactNotFound(f"artifact {digest} is not in memory") from None

    def exists(self, digest: str) -> bool:
        return digest in self._blobs

    def path(self, digest: str) -> Path:
        data = self.get_bytes(digest)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="detops-mem-"))
        p = self._dir / digest
        if not p.exists():
            p.write_bytes(data)
        return p

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
