"""Evaluation: CrowdHuman (AP, MR^-2, Recall, JI), COCO via pycocotools (with oLRP), per-class
(VOC) AP, result files, plots.

The metric modules (``crowdhuman``, ``ji``, ``results_io``, ``voc``) need numpy and scipy
only; the torch-side plumbing (``evaluator``, ``class_ap``) and ``coco`` are imported on first
attribute access, so
``python -m crowdloss.evaluation.crowdhuman`` starts without importing torch.
"""
import importlib

_LAZY = {
    "DatasetEvaluator": "evaluator", "DatasetEvaluators": "evaluator",
    "CrowdHumanEvaluator": "evaluator", "COCOEvaluator": "evaluator",
    "build_evaluator": "evaluator", "inference_on_dataset": "inference",
    "print_csv_format": "inference",
    "evaluate_crowdhuman": "crowdhuman", "CrowdHumanResult": "crowdhuman",
    "format_results": "crowdhuman",
    "evaluate_coco": "coco",
    "olrp_from_cocoeval": "lrp", "OLRPResult": "lrp",
    "verify_expected_results": "expected", "check_expected_results": "expected",
    "ExpectedResultsError": "expected",
    "VOCEvaluator": "class_ap", "PerClassAPEvaluator": "class_ap",
    "evaluate_ap": "voc", "APResult": "voc",
    "register_evaluator_type": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
