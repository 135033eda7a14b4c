"""Immutable, content-addressed dataset versions ``NAME@vN``.

A version's identity is the sha256 of a canonical manifest: categories, and for each image its
content hash, size and tags with its annotations (file names and splits are not part of the
identity). Adding identical content again returns the existing version. Image bytes go to the
artifact store once; the manifest is an artifact too, and one row in ``dataset_versions``
records the version, in one transaction: an add that fails records nothing and removes the
blobs it had written.

Splits are a pure function of an image's content hash and the configured ratios, so an image
keeps its split when others are added.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import delete, func, insert, select

from detops.config import SplitSettings
from detops.data.dataset import Annotation, Category, Dataset, ImageRecord
from detops.errors import DatasetNotFound, FormatError, StoreError
from detops.refs import Ref, check_name, parse_ref
from detops.store.artifacts import sha256_file
from detops.store.db import utcnow
from detops.store.schema import dataset_versions, file_cache
from detops.workspace import Workspace

MANIFEST_FORMAT = "detops-dataset/1"
Progress = Callable[[int, int], None]


# -- splits -------------------------------------------------------------------------------------
def split_for(sha256: str, ratios: SplitSettings) -> str:
    """``train`` / ``val`` / ``test`` from the image's content hash (stable as data grows).

    >>> split_for("0" * 64, SplitSettings()), split_for("f" * 64, SplitSettings())
    ('train', 'val')
    """
    # 52 bits: exact in a float and always < 1, so a ratio of 0 is never hit
    u = int(sha256[:13], 16) / 16.0**13
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.val:
        return "val"
    return "test"


# -- scanning source files (hash + header), cached on path + size + mtime -------------------------
@dataclass(frozen=True, slots=True)
class FileInfo:
    sha256: str
    width: int
    height: int
    format: str | None


def _scan_one(path: Path) -> tuple[FileInfo | None, str | None, os.stat_result | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, "image file does not exist", None
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
    except Exception as exc:  # PIL raises many kinds for unreadable headers
        return None, f"cannot read image header ({type(exc).__name__}: {exc})", st
    return FileInfo(sha256_file(path), width, height, fmt), None, st


def scan_files(
    ws: Workspace, paths: list[Path], *, workers: int = 0, progress: Progress | None = None
) -> tuple[list[FileInfo | None], list[str | None]]:
    """Hash and read the header of each file, in parallel; unchanged files come from the cache."""
    keys = [str(p.resolve()) for p in paths]
    cached: dict[str, Any] = {}
    with ws.db.read() as conn:
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            for row in conn.execute(select(file_cache).where(file_cache.c.path.in_(chunk))):
                cached[row.path] = row
    infos: list[FileInfo | None] = [None] * len(paths)
    problems: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    for i, (p, key) in enumerate(zip(paths, keys, strict=True)):
        hit = cached.get(key)
        if hit is not None:
            try:
                st = p.stat()
            except FileNotFoundError:
                problems[i] = "image file does not exist"
                continue
            if st.st_size == hit.size and st.st_mtime_ns == hit.mtime_ns:
                infos[i] = FileInfo(hit.sha256, hit.width, hit.height, hit.format)
                continue
        todo.append(i)
    done = len(paths) - len(todo)
    if progress:
        progress(done, len(paths))
    fresh: list[dict[str, Any]] = []
    n_workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        scanned = pool.map(_scan_one, [paths[i] for i in todo], chunksize=16)
        for i, (info, problem, stat) in zip(todo, scanned, strict=True):
            infos[i], problems[i] = info, problem
            if info is not None and stat is not None:
                fresh.append(
                    dict(
                        path=keys[i],
                        size=stat.st_size,
                        mtime_ns=stat.st_mtime_ns,
                        sha256=info.sha256,
                        width=info.width,
                        height=info.height,
                        format=info.format,
                    )
                )
            done += 1
            if progress and (done % 256 == 0 or done == len(paths)):
                progress(done, len(paths))
    if fresh:
        with ws.db.write() as conn:
            for start in range(0, len(fresh), 500):
                rows = fresh[start : start + 500]
                conn.execute(
                    delete(file_cache).where(file_cache.c.path.in_([r["path"] for r in rows]))
                )
                conn.execute(insert(file_cache), rows)
    return infos, problems


# -- manifest --------------------------------------------------------------------------------------
def _round(v: float) -> float:
    return float(round(v, 4))


def manifest_of(ds: Dataset) -> dict[str, Any]:
    """The stored manifest of a dataset whose images all carry ``sha256``."""
    by_image = ds.annotations_by_image()
    images = []
    for img in ds.images:
        anns = sorted(
            (
                {
                    "box": [_round(v) for v in a.box],
                    "category": a.category_id,
                    "annotator": a.annotator,
                    "iscrowd": bool(a.iscrowd),
                    "attributes": a.attributes,
                }
                for a in by_image.get(img.id, [])
            ),
            key=lambda d: json.dumps(d, sort_keys=True),
        )
        images.append(
            {
                "sha256": img.sha256,
                "file": img.file,
                "width": img.width,
                "height": img.height,
                "tags": img.tags,
                "split": img.split,
                "annotations": anns,
            }
        )
    images.sort(
        key=lambda d: (d["sha256"], json.dumps(d["annotations"], sort_keys=True), d["file"])
    )
    return {
        "format": MANIFEST_FORMAT,
        "categories": [{"name": c.name, "supercategory": c.supercategory} for c in ds.categories],
        "images": images,
        "info": ds.info,
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Hash of the identity part of a manifest: content, not file names or splits."""
    identity = {
        "categories": manifest["categories"],
        "images": [
            {k: im[k] for k in ("sha256", "width", "height", "tags", "annotations")}
            for im in manifest["images"]
        ],
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def dataset_from_manifest(manifest: dict[str, Any], locate: Callable[[str], str]) -> Dataset:
    ds = Dataset(info=dict(manifest.get("info") or {}))
    ds.categories = [
        Category(i, c["name"], c.get("supercategory")) for i, c in enumerate(manifest["categories"])
    ]
    for im in manifest["images"]:
        img = ImageRecord(
            id=len(ds.images),
            file=im["file"],
            width=im["width"],
            height=im["height"],
            sha256=im["sha256"],
            tags=dict(im.get("tags") or {}),
            split=im.get("split"),
            location=locate(im["sha256"]),
        )
        ds.images.append(img)
        for a in im["annotations"]:
            ds.annotations.append(
                Annotation(
                    len(ds.annotations),
                    img.id,
                    tuple(a["box"]),
                    a["category"],  # type: ignore[arg-type]
                    a.get("annotator"),
                    bool(a.get("iscrowd")),
                    dict(a.get("attributes") or {}),
                )
            )
    return ds


# -- sanitising on import ---------------------------------------------------------------
def sanitize(ds: Dataset) -> None:
    """Clip boxes to their image and drop boxes that are empty or not finite, recording each."""
    kept: list[Annotation] = []
    images = ds.image_by_id()
    for a in ds.annotations:
        img = images[a.image_id]
        record = f"annotation {a.id} (image {img.file})"
        if not all(math.isfinite(v) for v in a.box):
            ds.loss.add("box_dropped", img.file, record, f"box {list(a.box)} is not finite")
            continue
        x1, y1, x2, y2 = a.box
        c = (
            min(max(x1, 0.0), img.width),
            min(max(y1, 0.0), img.height),
            min(max(x2, 0.0), img.width),
            min(max(y2, 0.0), img.height),
        )
        if c != a.box:
            ds.loss.add(
                "box_clipped",
                img.file,
                record,
                f"box {[round(v, 3) for v in a.box]} clipped to the image "
                f"({img.width}x{img.height}): {[round(v, 3) for v in c]}",
            )
            a.box = c
        if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
            ds.loss.add(
                "box_dropped", img.file, record, f"box {[round(v, 3) for v in c]} has no area"
            )
            continue
        kept.append(a)
    ds.annotations = kept


# -- the registry of dataset versions -------------------------------------------------------------
@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    digest: str
    manifest: str
    n_images: int
    n_annotations: int
    n_categories: int
    source: str | None
    source_format: str | None
    loss_report: dict[str, Any] | None
    created_at: Any
    created: bool = False  # True when this call made it; False when identical content existed

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "images": self.n_images,
            "annotations": self.n_annotations,
            "categories": self.n_categories,
            "source": self.source,
            "source_format": self.source_format,
            "created_at": str(self.created_at),
            "loss": (self.loss_report or {}).get("counts", {}),
        }


def _row_to_version(row: Any, created: bool = False) -> DatasetVersion:
    return DatasetVersion(
        row.name,
        row.version,
        row.digest,
        row.manifest,
        row.n_images,
        row.n_annotations,
        row.n_categories,
        row.source,
        row.source_format,
        row.loss_report,
        row.created_at,
        created,
    )


def add_dataset(
    ws: Workspace,
    name: str,
    ds: Dataset,
    *,
    source: str | None = None,
    source_format: str | None = None,
    keep_splits: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> DatasetVersion:
    """Register ``ds`` as the next version of ``name`` (or return the identical existing one)."""
    check_name(name, "dataset name")
    paths = [ds.image_path(img) for img in ds.images]
    infos, problems = scan_files(
        ws,
        paths,
        workers=ws.settings.data.workers if workers is None else workers,
        progress=progress,
    )
    for img, info, problem in zip(ds.images, infos, problems, strict=True):
        if info is None:
            raise FormatError(ds.image_path(img), f"image {img.id} ({img.file})", problem or "?")
        if (img.width, img.height) != (info.width, info.height):
            ds.loss.add(
                "size_corrected",
                img.file,
                f"image {img.id}",
                f"declared {img.width}x{img.height}, file is {info.width}x{info.height}; "
                "the file's size is kept",
            )
            img.width, img.height = info.width, info.height
        img.sha256 = info.sha256
        if not keep_splits or img.split is None:
            img.split = split_for(info.sha256, ws.settings.data.split)
    for a in ds.annotations:
        if not 0 <= a.category_id < len(ds.categories):
            raise FormatError(
                source or "dataset",
                f"annotation {a.id}",
                f"category id {a.category_id} is not one of the {len(ds.categories)} categories",
            )
    sanitize(ds)
    manifest = manifest_of(ds)
    digest = manifest_digest(manifest)
    existing = find_by_digest(ws, name, digest)
    if existing is not None:
        return existing

    art = ws.artifacts
    written: list[str] = []
    try:
        for img, path in zip(ds.images, paths, strict=True):
            assert img.sha256 is not None
            if not art.exists(img.sha256):
                art.put_file(path, img.sha256)
                written.append(img.sha256)
        body = json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")
        manifest_id = art.put_bytes(body)
        written.append(manifest_id)
        loss = ds.loss.to_dict()
        with ws.db.write() as conn:
            # Someone may have added the same content while we copied.
            row = conn.execute(
                select(dataset_versions).where(
                    dataset_versions.c.name == name, dataset_versions.c.digest == digest
                )
            ).first()
            if row is not None:
                written.clear()  # the blobs are now referenced by that version
                return _row_to_version(row)
            latest = conn.execute(
                select(func.max(dataset_versions.c.version)).where(dataset_versions.c.name == name)
            ).scalar()
            values = dict(
                name=name,
                version=int(latest or 0) + 1,
                digest=digest,
                manifest=manifest_id,
                n_images=len(ds.images),
                n_annotations=len(ds.annotations),
                n_categories=len(ds.categories),
                source=source,
                source_format=source_format,
                loss_report=loss,
                created_at=utcnow(),
            )
            conn.execute(insert(dataset_versions).values(**values))
        written.clear()
        return DatasetVersion(**values, created=True)  # type: ignore[arg-type]
    finally:
        # Failure: remove blobs this call created so nothing unrecorded is left behind.
        for digest_ in written:
            art.remove(digest_)


def find_by_digest(ws: Workspace, name: str, digest: str) -> DatasetVersion | None:
    with ws.db.read() as conn:
        row = conn.execute(
            select(dataset_versions).where(
                dataset_versions.c.name == name, dataset_versions.c.digest == digest
            )
        ).first()
    return None if row is None else _row_to_version(row)


def list_versions(ws: Workspace, name: str | None = None) -> list[DatasetVersion]:
    q = select(dataset_versions).order_by(dataset_versions.c.name, dataset_versions.c.version)
    if name is not None:
        q = q.where(dataset_versions.c.name == name)
    with ws.db.read() as conn:
        return [_row_to_version(r) for r in conn.execute(q)]


def get_version(ws: Workspace, ref: str | Ref) -> DatasetVersion:
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.alias is not None:
        raise DatasetNotFound(f"{r}: datasets are addressed as NAME@vN or NAME (latest)")
    q = select(dataset_versions).where(dataset_versions.c.name == r.name)
    if r.version is not None:
        q = q.where(dataset_versions.c.version == r.version)
    else:
        q = q.order_by(dataset_versions.c.version.desc()).limit(1)
    with ws.db.read() as conn:
        row = conn.execute(q).first()
        if row is None:
            known = [
                f"{n}@v{v}"
                for n, v in conn.execute(
                    select(dataset_versions.c.name, func.max(dataset_versions.c.version)).group_by(
                        dataset_versions.c.name
                    )
                )
            ]
    if row is None:
        hint = (
            f"known: {', '.join(known)}"
            if known
            else "no datasets yet; add one with `detops data add`"
        )
        raise DatasetNotFound(f"dataset {r} not found ({hint})")
    return _row_to_version(row)


def load_version(ws: Workspace, ref: str | Ref | DatasetVersion) -> Dataset:
    dv = ref if isinstance(ref, DatasetVersion) else get_version(ws, ref)
    try:
        manifest = json.loads(ws.artifacts.get_bytes(dv.manifest))
    except Exception as exc:
        raise StoreError(f"{dv.ref}: manifest {dv.manifest[:12]} cannot be read: {exc}") from exc
    ds = dataset_from_manifest(manifest, lambda d: str(ws.artifacts.path(d)))
    ds.info.setdefault("name", dv.ref)
    return ds


# -- diff ------------------------------------------------------------------------------------------
def diff_versions(a: Dataset, b: Dataset) -> dict[str, Any]:
    """Images added / removed (by content hash) and label changes per image kept."""

    def index(ds: Dataset) -> dict[str, tuple[ImageRecord, list[tuple[Any, ...]]]]:
        names = ds.category_names
        by = ds.annotations_by_image()
        out = {}
        for img in ds.images:
            labels = sorted(
                (names[x.category_id], *(_round(v) for v in x.box), x.annotator or "")
                for x in by.get(img.id, [])
            )
            out[img.sha256 or img.file] = (img, labels)
        return out

    ia, ib = index(a), index(b)
    added = sorted(set(ib) - set(ia))
    removed = sorted(set(ia) - set(ib))
    changed = []
    for key in sorted(set(ia) & set(ib)):
        la, lb = ia[key][1], ib[key][1]
        if la != lb:
            sa, sb = _multiset(la), _multiset(lb)
            changed.append(
                {
                    "image": ib[key][0].file,
                    "sha256": key,
                    "labels_added": _expand(sb - sa),
                    "labels_removed": _expand(sa - sb),
                }
            )
    return {
        "images_added": [ib[k][0].file for k in added],
        "images_removed": [ia[k][0].file for k in removed],
        "images_changed": changed,
        "categories_added": sorted(set(b.category_names) - set(a.category_names)),
        "categories_removed": sorted(set(a.category_names) - set(b.category_names)),
        "summary": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "unchanged": len(set(ia) & set(ib)) - len(changed),
        },
    }


def _multiset(items: Iterable[tuple[Any, ...]]) -> Any:
    from collections import Counter

    return Counter(items)


def _expand(counter: Any) -> list[dict[str, Any]]:
    out = []
    for (label, x1, y1, x2, y2, annotator), n in sorted(counter.items()):
        for _ in range(n):
            out.append({"label": label, "box": [x1, y1, x2, y2], "annotator": annotator or None})
    return out
