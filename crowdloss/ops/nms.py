"""Non-maximum suppression in pure PyTorch, vectorised by blocks.

Shape vocabulary: N boxes, B boxes per block (S <= B of them still alive), C later boxes still
alive, P kept boxes of a block.

Greedy NMS semantics (the reference every path must match): visit boxes by score descending,
ties broken by the original index (lower first); keep a box unless its IoU with an already
kept box is strictly greater than ``iou_threshold``.

The pure path walks the score-sorted boxes in blocks of B. Only the S boxes of a block that
earlier blocks left alive take part; among them the greedy decision is the unique fixed point of
``keep_j = not any(keep_i and iou_ij > thr, i < j)`` (the dependency graph is acyclic because
i < j), found by a few vectorised Jacobi sweeps over an (S, S) matrix. The P kept boxes then
remove every later box they overlap with one (P, C) IoU matrix. The IoU entries computed are
about those of the textbook loop (each kept box against the survivors after it), but in N / B
big tensor ops instead of one small op per kept box; memory O(B * N).
"""
import torch
from torch import Tensor

from .boxes import aligned_iou, box_iou

try:  # torchvision's compiled kernel is much faster on CUDA; optional and absent here.
    from torchvision.ops import nms as _tv_nms  # guarded
except Exception:  # pragma: no cover - depends on the environment
    _tv_nms = None

__all__ = ["nms", "batched_nms"]

_BLOCK = 256


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: expected boxes of shape (N, 4) in xyxy, got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"nms: expected scores of shape ({boxes.shape[0]},), got {tuple(scores.shape)}"
        )


def _resolve_block(iou_block: Tensor, iou_threshold: float) -> Tensor:
    """Greedy decisions among the S surviving boxes of one block.

    Args:
        iou_block: (S, S) IoU among them, in score order.

    Returns:
        bool (S,) kept boxes.
    """
    # sup[i, j]: an earlier box i would suppress a later box j if i is kept.
    sup = (iou_block > iou_threshold).triu_(diagonal=1)
    keep = torch.ones(sup.shape[0], dtype=torch.bool, device=sup.device)
    # Jacobi sweeps; after t sweeps every box at dependency depth < t is final, so this ends in
    # at most S + 1 sweeps and usually in a handful.
    while True:
        new_keep = ~(sup & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def _suppressed_by(kept: Tensor, later: Tensor, iou_threshold: float) -> Tensor:
    """bool (C,): later boxes whose IoU with any of the P kept boxes is > the threshold."""
    if iou_threshold < 0:  # IoU >= 0 > threshold: everything goes
        return torch.ones(later.shape[0], dtype=torch.bool, device=later.device)
    # A cheap (P, C) overlap test first: with a threshold >= 0 only pairs whose interiors
    # intersect can suppress, and in a crowd each kept box touches few of the later boxes.
    # The exact IoU is then computed on those pairs only, with the same arithmetic as box_iou.
    touch = (kept[:, None, 0] < later[None, :, 2]) & (later[None, :, 0] < kept[:, None, 2])
    touch &= (kept[:, None, 1] < later[None, :, 3]) & (later[None, :, 1] < kept[:, None, 3])
    i, j = torch.nonzero(touch, as_tuple=True)
    hit = torch.zeros(later.shape[0], dtype=torch.bool, device=later.device)
    hit[j[aligned_iou(kept[i], later[j]) > iou_threshold]] = True
    return hit


def _nms_pure(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    n = boxes.shape[0]
    # Stable ascending sort of -score: ties keep the original index order.
    order = torch.sort(-scores, stable=True).indices
    boxes = boxes[order]
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        # Only boxes that survived earlier blocks take part (in crowds most are already gone).
        cand = torch.nonzero(alive[start:end]).squeeze(1) + start
        if cand.numel() == 0:
            continue
        block = boxes[cand]
        keep = _resolve_block(box_iou(block, block), iou_threshold)
        alive[cand[~keep]] = False
        if end == n:
            break
        # Later boxes overlapped by any kept box of this block are gone for good.
        rest = torch.nonzero(alive[end:]).squeeze(1) + end
        if rest.numel() == 0:
            break
        alive[rest[_suppressed_by(block[keep], boxes[rest], iou_threshold)]] = False
    return order[alive]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        iou_threshold: a box is dropped when its IoU with a kept higher-scored box is > this.

    Returns:
        LongTensor of kept indices into ``boxes``, score-descending (ties: lower index first).
    """
    _check(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # Dispatch: torchvision's compiled kernel when it imports (same greedy rule; it may order
    # exactly tied scores differently), else the pure path, which is what runs in this project.
    if _tv_nms is not None:
        return _tv_nms(boxes.float(), scores.float(), float(iou_threshold))
    with torch.no_grad():
        return _nms_pure(boxes.detach().float(), scores.detach().float(), float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    Each category is shifted by an offset larger than the whole coordinate span so boxes of
    different categories cannot overlap, then one NMS runs over everything.

    Returns:
        LongTensor of kept indices, score-descending.
    """
    _check(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: expected idxs of shape {tuple(scores.shape)}, got {tuple(idxs.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.detach().float()
    span = boxes.max() - boxes.min() + 1.0
    offset_boxes = boxes - boxes.min() + (idxs.to(boxes) * span)[:, None]
    return nms(offset_boxes, scores, iou_threshold)
