"""Detection evaluation: COCO-exact numbers, error analysis, slices, confidence intervals.

The twelve COCO numbers are pycocotools' (``COCOeval.stats``, checked against it in the tests),
computed by the hotcoco engine::

    from detops.evaluate import evaluate_coco
    result = evaluate_coco(gt_dict, predictions)
    result.stats["AP"], result.per_class["person"]["AP50"]
"""

from detops.evaluate.bootstrap import BootstrapCI, bootstrap_ci
from detops.evaluate.coco import STAT_KEYS, CocoResult, evaluate_coco, evaluate_slices
from detops.evaluate.errors_analysis import ERROR_TYPES, ErrorAnalysis, error_analysis
from detops.evaluate.matching import PRF, best_f1_threshold, precision_recall_f1
from detops.evaluate.plots import plot_pr_curves

__all__ = [
    "ERROR_TYPES",
    "PRF",
    "STAT_KEYS",
    "BootstrapCI",
    "CocoResult",
    "ErrorAnalysis",
    "best_f1_threshold",
    "bootstrap_ci",
    "error_analysis",
    "evaluate_coco",
    "evaluate_slices",
    "plot_pr_curves",
    "precision_recall_f1",
]
