"""How much would AP / MR^-2 / Recall move if the val set were drawn again? Bootstrap over images.

A CrowdHuman evaluation's TP flags are per image (Caltech matching never crosses images), so
a val set drawn again with replacement (Efron's bootstrap) is scored by concatenating the
chosen images' scored detections and TP flags and running the same curve code; no matching
is redone. The spread of the resampled metrics is the val-sampling noise of ONE model: part
of it (the images that are hard for every model) is shared by all models evaluated on the
same images, so it bounds from above, not estimates, what the val set adds to the spread
between training seeds. ``split_halves`` gives what does estimate that: every seed scored on
the same random halves of the val set (the report's split-half estimate, tools/bench_report).

Shapes: N images, S scored detections, B bootstrap samples, H halvings.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence

import numpy as np

from .crowdhuman import CrowdHumanResult, _curve_metrics

__all__ = ["bootstrap_metrics", "subset_metrics", "split_halves"]

_METRICS = ("AP", "mMR", "Recall")


def _metrics_of(per_image: dict, images: np.ndarray) -> Dict[str, float]:
    """AP / mMR / Recall of the val set made of ``images`` (indices, repeats allowed)."""
    image_of = per_image["image"]
    # Detections of image i are the contiguous block [start[i], end[i]) (image-major order).
    n = per_image["valid_gt"].shape[0]
    start = np.searchsorted(image_of, np.arange(n), side="left")
    end = np.searchsorted(image_of, np.arange(n), side="right")
    lengths = (end - start)[images]
    offsets = np.repeat(start[images] - np.cumsum(lengths) + lengths, lengths)
    picked = np.arange(int(lengths.sum())) + offsets
    metrics, _, _ = _curve_metrics(per_image["score"][picked], per_image["tp"][picked],
                                   int(per_image["valid_gt"][images].sum()), len(images))
    return {k: float(metrics[k]) for k in _METRICS}


def subset_metrics(result: CrowdHumanResult, images: Sequence[int]) -> Dict[str, float]:
    """AP / mMR / Recall of the same detections scored on the images ``images`` only (e.g. the
    first 200 of a 1000-image val set), without re-matching."""
    return _metrics_of(_per_image(result), np.asarray(images, dtype=np.int64))


def bootstrap_metrics(result: CrowdHumanResult, *, num_samples: int = 500,
                      seed: int = 0, num_images: Optional[int] = None) -> Dict[str, dict]:
    """Resample the evaluated images with replacement ``num_samples`` times.

    Args:
        result: an ``evaluate_crowdhuman`` result (it carries ``per_image``).
        num_samples: B.
        seed: of the resampling (numpy ``default_rng``).
        num_images: size of each resampled val set (default N): the spread a val set of that
            size would have, e.g. 200 drawn from a 1000-image evaluation.

    Returns:
        ``{metric: {"mean", "std", "p05", "p95"}}`` over the B samples, for AP, mMR, Recall
        (fractions; std with ddof=1).
    """
    per_image = _per_image(result)
    n = per_image["valid_gt"].shape[0]
    size = n if num_images is None else int(num_images)
    if num_samples < 2 or size < 1:
        raise ValueError(f"bootstrap_metrics: need num_samples >= 2 and num_images >= 1, got "
                         f"{num_samples} and {size}")
    rng = np.random.default_rng(seed)
    samples = {k: np.empty(num_samples) for k in _METRICS}
    with warnings.catch_warnings():
        # A resampled set without detections (or without GT) has NaN metrics: not news.
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(num_samples):
            values = _metrics_of(per_image, rng.integers(0, n, size))
            for k in _METRICS:
                samples[k][b] = values[k]
        return {k: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)),
                    "p05": float(np.nanpercentile(v, 5)), "p95": float(np.nanpercentile(v, 95))}
                for k, v in samples.items()}


def split_halves(result: CrowdHumanResult, *, num_splits: int = 20,
                 seed: int = 0) -> Dict[str, list]:
    """AP / mMR / Recall on both halves of ``num_splits`` random halvings of the val images.

    The halvings depend only on N and ``seed``, so models scored on the same val set are
    scored on the same halves: the spread between models on a half against the spread on the
    whole set tells how much of it the val set's size makes (var(N/2) - var(N) estimates the
    val set's share at N, when that share goes as 1/size).

    Returns:
        ``{metric: [[half 0, half 1], ...]}`` (H x 2 fractions) plus ``"images": N``.
    """
    per_image = _per_image(result)
    n = per_image["valid_gt"].shape[0]
    if n < 2 or num_splits < 1:
        raise ValueError(f"split_halves: need >= 2 images and num_splits >= 1, got {n} and "
                         f"{num_splits}")
    rng = np.random.default_rng([seed, n])
    out: Dict[str, list] = {k: [] for k in _METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a half without GT or detections
        for _ in range(num_splits):
            order = rng.permutation(n)
            halves = [_metrics_of(per_image, np.sort(order[:n // 2])),
                      _metrics_of(per_image, np.sort(order[n // 2:2 * (n // 2)]))]
            for k in _METRICS:
                out[k].append([h[k] for h in halves])
    return dict(out, images=n)


def _per_image(result: CrowdHumanResult) -> dict:
    if getattr(result, "per_image", None) is None:
        raise ValueError("this CrowdHumanResult carries no per_image data (it was not made by "
                         "evaluate_crowdhuman)")
    return result.per_image


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``python -m crowdloss.evaluation.bootstrap --gt GT --dt DT``: the metrics on all images
    and on the first ``--first`` n, and the bootstrap spread of val sets of N and of n images."""
    import argparse
    import json

    from .crowdhuman import evaluate_crowdhuman

    parser = argparse.ArgumentParser(prog="python -m crowdloss.evaluation.bootstrap",
                                     description=main.__doc__)
    parser.add_argument("--gt", required=True, help="GT odgt")
    parser.add_argument("--dt", required=True, help="results odgt")
    parser.add_argument("--box-key", default="fbox")
    parser.add_argument("--first", type=int, default=None, metavar="n",
                        help="also score the first n images, and bootstrap val sets of n")
    parser.add_argument("--samples", type=int, default=500, help="bootstrap samples (500)")
    args = parser.parse_args(argv)
    result = evaluate_crowdhuman(args.gt, args.dt, box_key=args.box_key)
    n = result.counts["images"]
    out = {"images": n, "metrics": {k: result.metrics[k] for k in _METRICS},
           f"bootstrap_{n}": bootstrap_metrics(result, num_samples=args.samples)}
    if args.first:
        out[f"first_{args.first}"] = subset_metrics(result, range(args.first))
        out[f"bootstrap_{args.first}"] = bootstrap_metrics(
            result, num_samples=args.samples, num_images=args.first)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
