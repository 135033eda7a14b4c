"""The Data stage: datasets, formats, versions, validation, statistics, synthetic scenes,
label consistency across annotators, consensus, the human-level baseline, label-error candidates.

>>> from detops.data import Dataset, load_coco  # the way in; modules load on first use
"""

from __future__ import annotations

from detops._lazy import attach

_EXPORTS = {
    "Dataset": "detops.data.dataset",
    "ImageRecord": "detops.data.dataset",
    "Annotation": "detops.data.dataset",
    "Category": "detops.data.dataset",
    "LossReport": "detops.data.dataset",
    "load": "detops.data.formats",
    "save": "detops.data.formats",
    "detect_format": "detops.data.formats",
    "load_coco": "detops.data.formats",
    "save_coco": "detops.data.formats",
    "load_yolo": "detops.data.formats",
    "save_yolo": "detops.data.formats",
    "load_voc": "detops.data.formats",
    "save_voc": "detops.data.formats",
    "validate": "detops.data.validate",
    "ValidationReport": "detops.data.validate",
    "Finding": "detops.data.validate",
    "compute_stats": "detops.data.stats",
    "plot_stats": "detops.data.stats",
    "format_stats": "detops.data.stats",
    "synthesize": "detops.data.synth",
    "parse_annotators": "detops.data.synth",
    "SceneConfig": "detops.data.synth",
    "AnnotatorSpec": "detops.data.synth",
    "add_dataset": "detops.data.versions",
    "load_version": "detops.data.versions",
    "get_version": "detops.data.versions",
    "list_versions": "detops.data.versions",
    "diff_versions": "detops.data.versions",
    "split_for": "detops.data.versions",
    "check_consistency": "detops.data.consistency",
    "build_consensus": "detops.data.consensus",
    "human_level": "detops.data.baseline",
    "find_label_errors": "detops.data.label_errors",
}

__getattr__, __dir__, __all__ = attach(__name__, globals(), _EXPORTS)
