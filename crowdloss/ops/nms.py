"""Non-maximum suppression in pure PyTorch, vectorised by blocks.

Shape vocabulary: N boxes, B boxes per block, C candidates still alive after a block.

Greedy NMS semantics (the reference every path must match): visit boxes by score descending,
ties broken by the original index (lower first); keep a box unless its IoU with an already
kept box is strictly greater than ``iou_threshold``.

The pure path walks the score-sorted boxes in blocks of B. Inside a block, the greedy decision
is the unique fixed point of ``keep_j = alive_j and not any(keep_i and iou_ij > thr, i < j)``
(the dependency graph is acyclic because i < j), found by a few vectorised Jacobi sweeps.
The kept boxes of the block then remove every later box they overlap with one (B, C) IoU
matrix. Work is O(N^2 / 2) IoU entries in big tensor ops, memory O(B * N).
"""
import torch
from torch import Tensor

from .boxes import box_iou

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


def _resolve_block(iou_block: Tensor, alive: Tensor, iou_threshold: float) -> Tensor:
    """Greedy decisions inside one block.

    Args:
        iou_block: (B, B) IoU among the block's boxes, in score order.
        alive: bool (B,) boxes not yet suppressed by earlier blocks.

    Returns:
        bool (B,) kept boxes.
    """
    # S[i, j]: an earlier box i would suppress a later box j if i is kept.
    sup = (iou_block > iou_threshold).triu_(diagonal=1)
    sup &= alive[:, None]
    keep = alive.clone()
    # Jacobi sweeps; after t sweeps every box at dependency depth < t is final, so this ends in
    # at most B + 1 sweeps and usually in 2-4.
    while True:
        suppressed = (sup & keep[:, None]).any(dim=0)
        new_keep = alive & ~suppressed
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


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
        keep = _resolve_block(box_iou(block, block), torch.ones_like(cand, dtype=torch.bool), iou_threshold)
        alive[cand[~keep]] = False
        if end == n:
            break
        # Later boxes overlapped by any kept box of this block are gone for good.
        rest = torch.nonzero(alive[end:]).squeeze(1) + end
        if rest.numel() == 0:
            break
        hit = (box_iou(block[keep], boxes[rest]) > iou_threshold).any(dim=0)
        alive[rest[hit]] = False
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
