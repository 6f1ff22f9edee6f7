"""``python -m crowdloss.tools.repulsion_floor``: what Repulsion Loss (arXiv 1711.07752)
charges PERFECT boxes on a dataset::

    python -m crowdloss.tools.repulsion_floor datasets/synthcrowd/annotations/annotation_train.odgt
    python -m crowdloss.tools.repulsion_floor annotation_val.odgt --box-type vbox --json out.json

RepGT repels each positive's predicted box from the valid GT that overlaps its proposal most
(other than its own); RepBox repels boxes attracted to different GTs from each other. Neither
term is zero at a perfect detector when people overlap: a box sitting exactly on its GT still
covers part of its neighbour. This tool puts every prediction on its GT (each valid GT is one
positive whose proposal and predicted box are the GT itself) and evaluates both terms with the
losses' own functions (``crowdloss.modeling.losses.repulsion``), normalised as the losses are:

- RepGT: sum of smooth_ln(IoG(G_a, G_rep), sigma_gt) / number of positives (all of them, with
  or without a repulsion GT), the value ``loss_repgt`` / alpha would have at perfect boxes;
- RepBox: sum of smooth_ln(IoU(G_i, G_j), sigma_box) over ordered pairs / number of pairs with
  IoU > 0, ``loss_repbox`` / beta at perfect boxes.

A training run whose repulsion terms end BELOW these values cannot have its boxes on their GTs:
the terms were lowered by moving boxes off them. Ignore regions (``mask``, ``extra.ignore``)
are never positives or repulsion targets, as in the losses. The ROI head's positives are
proposals near a GT rather than the GT itself, so this is the floor of the ideal case, not a
prediction of a run's value.

Shape vocabulary: M valid GTs of one image.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, Optional, Sequence

import torch

from crowdloss.data.odgt import BOX_TYPES, load_odgt
from crowdloss.modeling.losses.repulsion import (aligned_iog, repbox_pair_sums,
                                                  repulsion_gt_targets, smooth_ln)
from crowdloss.ops import box_xywh_to_xyxy
from crowdloss.utils.io import atomic_write

__all__ = ["repulsion_floor", "main"]


def repulsion_floor(odgt: str, *, box_type: str = "fbox", sigma_gt: float = 1.0,
                    sigma_box: float = 0.0) -> Dict[str, float]:
    """RepGT and RepBox of perfect boxes on ``odgt`` (module docstring).

    Returns:
        ``images``, ``positives`` (valid GTs), ``with_target`` (fraction of positives that
        have a repulsion GT), ``repgt`` (mean over all positives), ``repgt_with_target`` (mean
        over those with one), ``iog_median`` / ``iog_p90`` (IoG with the repulsion GT), and
        ``repbox`` with ``repbox_pairs`` (ordered pairs of different GTs with IoU > 0).
    """
    repgt_sum, repbox_sum, pairs, positives = 0.0, 0.0, 0, 0
    iogs = []
    images = load_odgt(odgt, box_type=box_type)
    for img in images:
        boxes = box_xywh_to_xyxy(torch.as_tensor(img.boxes[img.valid]))
        m = boxes.shape[0]
        if m == 0:
            continue
        positives += m
        own = torch.arange(m)
        # Each GT is the positive, its proposal and its prediction at once.
        rep, has = repulsion_gt_targets(boxes, boxes, torch.zeros(m, dtype=torch.long), own)
        if bool(has.any()):
            iog = aligned_iog(boxes[has], boxes[rep[has]])
            iogs.append(iog)
            repgt_sum += float(smooth_ln(iog, sigma_gt).sum())
        s, c = repbox_pair_sums(boxes, own, sigma_box)
        repbox_sum += float(s)
        pairs += int(c)
    iog = torch.cat(iogs) if iogs else torch.zeros(0, dtype=torch.float64)
    n_target = int(iog.numel())
    quantile = (lambda q: float(torch.quantile(iog, q))) if n_target else (lambda q: 0.0)
    return {
        "images": len(images),
        "positives": positives,
        "with_target": n_target / max(positives, 1),
        "repgt": repgt_sum / max(positives, 1),
        "repgt_with_target": repgt_sum / max(n_target, 1),
        "iog_median": quantile(0.5),
        "iog_p90": quantile(0.9),
        "repbox": repbox_sum / (pairs + 1e-3),
        "repbox_pairs": pairs,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m crowdloss.tools.repulsion_floor",
        description="RepGT and RepBox (Repulsion Loss) at perfect boxes on an odgt file.")
    p.add_argument("odgt", help="CrowdHuman-format GT file")
    p.add_argument("--box-type", choices=BOX_TYPES, default="fbox")
    p.add_argument("--sigma-gt", type=float, default=1.0, help="RepGT's smooth_ln sigma (1.0)")
    p.add_argument("--sigma-box", type=float, default=0.0,
                   help="RepBox's smooth_ln sigma (0.0)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    r = repulsion_floor(args.odgt, box_type=args.box_type, sigma_gt=args.sigma_gt,
                        sigma_box=args.sigma_box)
    print(f"{args.odgt} ({args.box_type}): {r['images']} images, {r['positives']} valid GTs, "
          f"{100 * r['with_target']:.1f} % of them overlap another")
    print(f"RepGT at perfect boxes (sigma {args.sigma_gt:g}): {r['repgt']:.4f} per positive "
          f"({r['repgt_with_target']:.4f} per positive with a repulsion GT); IoG with the "
          f"repulsion GT: median {r['iog_median']:.3f}, 90th percentile {r['iog_p90']:.3f}")
    print(f"RepBox at perfect boxes (sigma {args.sigma_box:g}): {r['repbox']:.4f} "
          f"({r['repbox_pairs']} ordered pairs with IoU > 0)")
    if args.json:
        atomic_write(args.json, json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
