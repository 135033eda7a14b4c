"""Conformance checks run against every ArtifactStore backend."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from detops.errors import ArtifactCorrupt, ArtifactNotFound
from detops.store.artifacts import LocalArtifactStore, MemoryArtifactStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalArtifactStore(tmp_path / "artifacts")
    else:
        s = MemoryArtifactStore()
        yield s
        s.close()


def test_put_bytes_is_content_addressed(store):
    digest = store.put_bytes(b"abc")
    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert store.get_bytes(digest) == b"abc"
    assert store.exists(digest)
    assert store.put_bytes(b"abc") == digest  # stored once


def test_put_file_matches_put_bytes(store, tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(3 << 20))  # bigger than one read chunk
    assert store.put_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert store.path(store.put_file(f)).read_bytes() == f.read_bytes()


def test_missing_artifact_names_the_digest(store):
    with pytest.raises(ArtifactNotFound, match="artifact 00ff"):
        store.get_bytes("00ff" + "0" * 60)


def test_local_store_keeps_one_copy_and_no_temp_files(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    for _ in range(3):
        store.put_bytes(b"same")
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert not any(p.name.startswith(".tmp-") for p in files)


def test_local_store_concurrent_writers_of_the_same_blob(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    data = os.urandom(1 << 20)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put_bytes(data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get_bytes(hashlib.sha256(data).hexdigest()) == data
    assert len([p for p in (tmp_path / "a").rglob("*") if p.is_file()]) == 1


def test_put_file_with_wrong_known_digest_fails_and_leaves_nothing(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    f = tmp_path / "f"
    f.write_bytes(b"content")
    with pytest.raises(ArtifactCorrupt, match="changed while it was being stored"):
        store.put_file(f, "ab" * 32)
    assert [p for p in (tmp_path / "a").rglob("*") if p.is_file()] == []


def test_verify_detects_tampering(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    digest = store.put_bytes(b"model bytes")
    store.verify(digest)
    Path(store.path(digest)).write_bytes(b"tampered")
    with pytest.raises(ArtifactCorrupt, match=digest[:12]):
        store.verify(digest)
