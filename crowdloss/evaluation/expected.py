"""``TEST.EXPECTED_RESULTS``: is a run's evaluation inside the band it is expected in?

An entry ``[dataset, task, metric, expected, tolerance]`` (the dataset may be omitted when
``DATASETS.TEST`` holds one) is inside when ``|result - expected| <= tolerance``. A benchmark
fills it with the mean of several seeds and a band around it, so a later run (another machine,
a refactor) says at once whether it still reproduces. A metric the evaluation did not produce,
or a NaN, is outside. ``TEST.EXPECTED_RESULTS_MISMATCH`` says what an outside entry does:
"warn" (a warning line per entry) or "error" (``ExpectedResultsError``: exit status 1).

``pods_train`` checks after its final evaluation, ``pods_test`` after evaluating its last
(newest) checkpoint. Entry format and validation: ``crowdloss.config.validate``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, NamedTuple, Optional

from crowdloss.config.access import cfg_get
from crowdloss.config.validate import Expectation, parse_expected_results

__all__ = ["ExpectedResultsError", "ExpectationCheck", "check_expected_results",
           "verify_expected_results"]

logger = logging.getLogger(__name__)


class ExpectedResultsError(RuntimeError):
    """A result outside its expected band while ``TEST.EXPECTED_RESULTS_MISMATCH`` is "error"."""


class ExpectationCheck(NamedTuple):
    """One entry checked: ``actual`` is None when the results lack the metric."""
    expectation: Expectation
    actual: Optional[float]

    @property
    def inside(self) -> bool:
        e = self.expectation
        return (self.actual is not None and not math.isnan(self.actual)
                and abs(self.actual - e.expected) <= e.tolerance)

    def describe(self) -> str:
        """``synthcrowd_val/crowdhuman/AP = 0.6012: inside 0.6200 +- 0.0300 (0.0188 below)``."""
        e = self.expectation
        band = f"{e.expected:.4f} +- {e.tolerance:.4f}"
        if self.actual is None:
            return f"{e.name}: OUTSIDE {band}: the evaluation has no such metric"
        if math.isnan(self.actual):
            return f"{e.name} = nan: OUTSIDE {band}"
        delta = self.actual - e.expected
        side = f"{abs(delta):.4f} {'above' if delta > 0 else 'below'}" if delta else "exactly"
        if self.inside:
            used = f", {abs(delta) / e.tolerance:.0%} of the tolerance" if e.tolerance else ""
            return f"{e.name} = {self.actual:.4f}: inside {band} ({side}{used})"
        return (f"{e.name} = {self.actual:.4f}: OUTSIDE {band} ({side}, "
                f"{abs(delta) - e.tolerance:.4f} beyond the tolerance)")


def _lookup(results: Dict[str, Any], e: Expectation) -> Optional[float]:
    try:
        value = results[e.dataset][e.task][e.metric]
    except (KeyError, TypeError):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_expected_results(expectations: List[Expectation],
                           results: Dict[str, Any]) -> List[ExpectationCheck]:
    """Each expectation against ``results`` (``{dataset: {task: {metric: value}}}``)."""
    return [ExpectationCheck(e, _lookup(results, e)) for e in expectations]


def verify_expected_results(cfg, results: Dict[str, Any]) -> List[ExpectationCheck]:
    """Check ``cfg.TEST.EXPECTED_RESULTS`` against ``results``; log one line per entry.

    Call it on the main process (other ranks have no results). Returns the checks ([] when
    nothing is expected).

    Raises:
        ExpectedResultsError: an entry is outside and ``TEST.EXPECTED_RESULTS_MISMATCH`` is
            "error" (after every entry has been logged).
    """
    entries = cfg_get(cfg, "TEST.EXPECTED_RESULTS")
    if not entries:
        return []
    mode = cfg_get(cfg, "TEST.EXPECTED_RESULTS_MISMATCH")
    expectations = parse_expected_results(entries, list(cfg_get(cfg, "DATASETS.TEST")))
    if not results and cfg_get(cfg, "TEST.EVAL_PERIOD") < 0:
        # The experiment leaves scoring to pods_test, which checks the band: nothing amiss.
        logger.info("TEST.EXPECTED_RESULTS: this run does not evaluate (TEST.EVAL_PERIOD < 0); "
                    "pods_test checks them")
        return []
    if not results:
        message = ("TEST.EXPECTED_RESULTS is set but this run evaluated nothing (nothing left "
                   "to train, or no test set): not checked")
        if mode == "error":
            raise ExpectedResultsError(message)
        logger.warning(message)
        return []
    checks = check_expected_results(expectations, results)
    outside = [c for c in checks if not c.inside]
    logger.log(logging.WARNING if outside else logging.INFO,
               "Expected results: %d of %d inside their band", len(checks) - len(outside),
               len(checks))
    for c in checks:
        logger.log(logging.INFO if c.inside else logging.WARNING, "  %s", c.describe())
    if outside and mode == "error":
        error = ExpectedResultsError(
            f"{len(outside)} of {len(checks)} TEST.EXPECTED_RESULTS outside their band "
            f"(TEST.EXPECTED_RESULTS_MISMATCH is 'error'): "
            + "; ".join(c.describe() for c in outside))
        logger.error("%s", error)
        raise error
    return checks
