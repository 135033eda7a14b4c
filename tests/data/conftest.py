"""Factories for the label-consistency tests: seeded synthetic scenes with simulated annotators."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from detops.data.dataset import Dataset
from detops.data.synth import AnnotatorSpec, SceneConfig, synthesize

# small images render fast; objects up to half the side, as crowded as the default scenes
SMALL = SceneConfig(width=160, height=160, max_size=80, distractors=2)

# the injected inconsistencies the consistency report must recover
INJECTED = (
    AnnotatorSpec("A", jitter=0.3),
    AnnotatorSpec("B", loose=0.3),
    AnnotatorSpec("C", miss=0.15, confuse=("star", "square", 0.5)),
)


class Scenes:
    """A synthesised dataset, its folder and the ``injected.json`` written beside it."""

    def __init__(self, ds: Dataset, root: Path) -> None:
        self.ds = ds
        self.root = root
        self.injected: dict[str, Any] = json.loads((root / "injected.json").read_text())

    def rates(self, annotator: str) -> dict[str, float]:
        return dict(self.injected["annotators"][annotator]["rates"])


@pytest.fixture(scope="session")
def make_scenes(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Scenes]:
    """``make_scenes(annotators, n=250, seed=0, config=SMALL)`` -> :class:`Scenes`, cached.

    Callers get a fresh Dataset object each time (tests may change it); the files are shared.
    """
    cache: dict[str, tuple[Path, Dataset]] = {}

    def make(annotators: Sequence[AnnotatorSpec] = INJECTED, n: int = 250, seed: int = 0,
             config: SceneConfig = SMALL) -> Scenes:
        key = repr((tuple(annotators), n, seed, config))
        if key not in cache:
            root = tmp_path_factory.mktemp("scenes")
            cache[key] = (root, synthesize(root, n, seed, config, list(annotators), workers=1))
        root, ds = cache[key]
        return Scenes(ds.subset([img.id for img in ds.images]), root)

    return make
