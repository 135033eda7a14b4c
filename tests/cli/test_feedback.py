"""``detops data add-feedback``: submitted reviews become a dataset version for retraining."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from detops.data.versions import load_version
from detops.serve.review import ReviewQueue
from detops.store.schema import dataset_versions, review_feedback, review_items
from detops.workspace import Workspace, init_workspace
from tests.serve.conftest import image_bytes

CLASSES = ["person", "car", "dog"]
# review id -> (reviewer, corrected boxes)
ANSWERS = {
    "r0": ("ann", [{"box": [1.0, 2.0, 30.0, 40.0], "label": "car"}]),
    "r1": ("ann", []),  # nothing there: an image without boxes is a lesson too
    "r2": ("bo", [{"box": [10.0, 10.0, 50.0, 55.0], "label": "dog"},
                  {"box": [0.0, 0.0, 8.0, 9.5], "label": "person"}]),
    "r3": None,  # still pending: not exported
}  # fmt: skip
DAY = dt.timedelta(days=1)
T0 = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)


@pytest.fixture()
def reviewed(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A workspace whose review queue holds four items, three of them answered on days 0-2."""
    root = init_workspace(tmp_path / "ws")
    ws = Workspace(root)
    q = ReviewQueue(ws, retention_days=3650)
    q.start()
    images = {}
    for i, rid in enumerate(ANSWERS):
        images[rid] = image_bytes(80, 60, seed=i)
        item = {
            "id": rid, "request_id": f"req-{i}", "at": dt.datetime.now(dt.UTC),
            "model_name": "det", "model_version": 1, "level": "ai_assistance",
            "reason": "ai_assistance", "detections": [], "classes": CLASSES,
            "width": 80, "height": 60, "format": "jpeg",
        }  # fmt: skip
        assert q.offer(item, images[rid])
    q.close()  # writes what is queued
    for i, (rid, answer) in enumerate(ANSWERS.items()):
        if answer is not None:
            q.submit(rid, answer[1], answer[0])
            with ws.db.write() as conn:
                conn.execute(
                    update(review_feedback)
                    .where(review_feedback.c.review_id == rid)
                    .values(submitted_at=T0 + i * DAY)
                )
    ws.close()
    return root, images


def test_feedback_becomes_a_dataset_version(detops, reviewed):
    root, images = reviewed
    out = json.loads(detops("data", "add-feedback", "fb", "-w", str(root), "--json").stdout)
    assert (out["ref"], out["created"], out["images"], out["annotations"]) == ("fb@v1", True, 3, 3)
    assert out["feedback"]["reviewers"] == ["ann", "bo"]
    ws = Workspace(root)
    ds = load_version(ws, "fb@v1")
    assert ds.category_names == CLASSES
    by_review = {img.tags["review_id"]: img for img in ds.images}
    assert set(by_review) == {"r0", "r1", "r2"}
    for rid, img in by_review.items():
        # the plain image bytes as sent, not the review queue's stored blob
        data = Path(ds.image_path(img)).read_bytes()
        assert data == images[rid] and img.sha256 == hashlib.sha256(data).hexdigest()
        assert img.tags["request_id"] == f"req-{rid[1:]}" and img.tags["model"] == "det@v1"
        got = sorted(
            (ds.category_names[a.category_id], list(a.box), a.annotator)
            for a in ds.annotations_of(img.id)
        )
        reviewer, boxes = ANSWERS[rid]
        assert got == sorted((b["label"], b["box"], reviewer) for b in boxes)
    # the same feedback again is the same version
    again = json.loads(detops("data", "add-feedback", "fb", "-w", str(root), "--json").stdout)
    assert (again["ref"], again["created"]) == ("fb@v1", False)
    assert not list((root / ".detops").glob("feedback-*"))  # temporary images removed
    ws.close()


def test_since_takes_only_later_reviews(detops, reviewed):
    root, _ = reviewed
    out = detops("data", "add-feedback", "fb", "-w", str(root), "--since", "2024-05-02").stdout
    assert out.startswith("registered fb@v1  (2 reviewed images, 2 boxes by ann, bo;")
    ws = Workspace(root)
    assert {img.tags["review_id"] for img in load_version(ws, "fb@v1").images} == {"r1", "r2"}
    # a time with an offset means that instant: 13:30+02:00 is 11:30 UTC, before r1 (12:00 UTC)
    out = json.loads(detops("data", "add-feedback", "fb2", "-w", str(root), "--since",
                            "2024-05-02T13:30+02:00", "--json").stdout)  # fmt: skip
    assert out["feedback"]["reviews"] == 2
    assert {img.tags["review_id"] for img in load_version(ws, "fb2@v1").images} == {"r1", "r2"}
    ws.close()
    bad = detops("data", "add-feedback", "fb", "-w", str(root), "--since", "soon", check=False)
    assert bad.returncode == 2 and "--since 'soon': expected an ISO date" in bad.stderr
    none = detops("data", "add-feedback", "fb", "-w", str(root), "--since", "1d", check=False)
    assert none.returncode == 2
    assert "no submitted review feedback since" in none.stderr


def test_reviews_whose_image_expired_are_skipped_and_said(detops, reviewed):
    root, _ = reviewed
    ws = Workspace(root)
    with ws.db.write() as conn:
        conn.execute(
            update(review_items)
            .where(review_items.c.id == "r0")
            .values(expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        )
    ws.close()
    # no server ran the purge: exporting does it, an image past its retention never leaves
    out = detops("data", "add-feedback", "fb", "-w", str(root)).stdout
    assert "registered fb@v1  (2 reviewed images, 2 boxes by ann, bo;" in out
    assert "skipped 1 reviews whose image the retention" in out


def test_a_failure_registers_nothing(reviewed, monkeypatch):
    from typer.testing import CliRunner

    from detops.cli import app
    from detops.store.artifacts import LocalArtifactStore

    root, _ = reviewed
    before = sorted(p.relative_to(root) for p in (root / ".detops").rglob("*") if p.is_file())
    real = LocalArtifactStore.put_file
    calls = []

    def failing(self, path, digest=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, path, digest)

    monkeypatch.setattr(LocalArtifactStore, "put_file", failing)
    result = CliRunner().invoke(app, ["data", "add-feedback", "fb", "-w", str(root)])
    assert isinstance(result.exception, OSError) and len(calls) == 2
    ws = Workspace(root)
    with ws.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(dataset_versions)).scalar() == 0
    ws.close()
    after = sorted(p.relative_to(root) for p in (root / ".detops").rglob("*") if p.is_file())
    # no blob, no temporary image left behind (the database files may only have grown)
    assert [p for p in after if "artifacts" in p.parts or "feedback-" in str(p)] == [
        p for p in before if "artifacts" in p.parts
    ]
