"""Training losses: LightGlue's assignment NLL at every layer, and the confidence regressor's BCE.

Ground truth per point: partner index, -1 = unmatched (dustbin), -2 = ignored (see
``homography.gt_matches_from_homography``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .homography import gt_assignment


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 values in float32 (a mixed-precision forward), any other dtype as it is (a float64 model)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def nll_loss(log_assignment: torch.Tensor, gt_matches0: torch.Tensor, gt_matches1: torch.Tensor,
             balance: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the ground-truth assignment (LightGlue, glue-factory's ``NLLLoss``).

    log_assignment (B, M+1, N+1). Per pair: ``balance`` * mean over GT matches of -log P[i, j]
    + (1 - balance) * mean over unmatched points of -log P[i, dustbin] (both images). Returns the mean over
    pairs, and per-pair parts for logging.
    """
    m, n = gt_matches0.shape[1], gt_matches1.shape[1]
    log_assignment = at_least_fp32(log_assignment)  # the NLL of a bf16 forward is summed in fp32
    positive = gt_assignment(gt_matches0, n).to(log_assignment.dtype)
    neg0 = (gt_matches0 == -1).to(log_assignment.dtype)
    neg1 = (gt_matches1 == -1).to(log_assignment.dtype)
    nll_pos = -(log_assignment[:, :m, :n] * positive).sum((-2, -1))
    num_pos = positive.sum((-2, -1)).clamp(min=1.0)
    nll_neg0 = -(log_assignment[:, :m, -1] * neg0).sum(-1)
    nll_neg1 = -(log_assignment[:, -1, :n] * neg1).sum(-1)
    num_neg = (neg0.sum(-1) + neg1.sum(-1)).clamp(min=1.0)
    per_pair = balance * nll_pos / num_pos + (1.0 - balance) * (nll_neg0 + nll_neg1) / num_neg
    return per_pair.mean(), {"nll_pos": (nll_pos / num_pos).detach(), "nll_neg": ((nll_neg0 + nll_neg1) / num_neg).detach(),
                             "num_pos": positive.sum((-2, -1)).detach()}


def layer_weights(n_layers: int, gamma: float = 1.0) -> list[float]:
    """Weight of each layer's NLL: gamma ** (L - 1 - l) (LightGlue; gamma 1 = plain mean), normalised."""
    w = [gamma ** (n_layers - 1 - i) for i in range(n_layers)]
    total = sum(w)
    return [x / total for x in w]


def matcher_loss(log_assignments: list[torch.Tensor], gt_matches0: torch.Tensor, gt_matches1: torch.Tensor,
                 gamma: float = 1.0, balance: float = 0.5) -> tuple[torch.Tensor, list[float]]:
    """Weighted mean of the NLL over layers (every layer is trained to match, so any layer can exit).

    Returns (loss, per-layer NLL values for logging).
    """
    weights = layer_weights(len(log_assignments), gamma)
    total = at_least_fp32(log_assignments[0].new_zeros(()))
    per_layer = []
    for w, la in zip(weights, log_assignments):
        nll, _ = nll_loss(la, gt_matches0, gt_matches1, balance)
        total = total + w * nll
        per_layer.append(float(nll.detach()))
    return total, per_layer


def confidence_targets(log_assignment: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 where a layer's prediction equals the final layer's, per point of image 0 / image 1.

    The prediction of point i of image 0 is the argmax of its row over the N+1 columns (dustbin
    included), of point j of image 1 the argmax of its column over the M+1 rows (LightGlue).
    """
    la, fin = log_assignment.detach(), final.detach()
    t0 = la[:, :-1, :].argmax(-1) == fin[:, :-1, :].argmax(-1)
    t1 = la[:, :, :-1].argmax(-2) == fin[:, :, :-1].argmax(-2)
    return t0.float(), t1.float()


def confidence_loss(confidence0: list[torch.Tensor], confidence1: list[torch.Tensor],
                    log_assignments: list[torch.Tensor], mask0: torch.Tensor | None = None,
                    mask1: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """BCE of the per-layer regressors (layers 0..L-2) against ``confidence_targets``; mean over layers.

    confidence0/1: per-layer (B, M)/(B, N) probabilities in (0, 1). Padding (mask False) is left out.
    Returns (loss, per-layer accuracy at 0.5 for logging).
    """
    final = log_assignments[-1]
    total = at_least_fp32(confidence0[0].new_zeros(()))
    accs = []
    for c0, c1, la in zip(confidence0, confidence1, log_assignments[:-1]):
        c0, c1 = at_least_fp32(c0), at_least_fp32(c1)  # BCE's logarithms in fp32 after a bf16 forward
        t0, t1 = (t.to(c.dtype) for t, c in zip(confidence_targets(la, final), (c0, c1)))
        w0 = mask0.float() if mask0 is not None else torch.ones_like(t0)
        w1 = mask1.float() if mask1 is not None else torch.ones_like(t1)
        eps = 1e-6
        b0 = F.binary_cross_entropy(c0.clamp(eps, 1 - eps), t0, reduction="none")
        b1 = F.binary_cross_entropy(c1.clamp(eps, 1 - eps), t1, reduction="none")
        per_pair = ((b0 * w0).sum(-1) / w0.sum(-1).clamp(min=1) + (b1 * w1).sum(-1) / w1.sum(-1).clamp(min=1)) / 2
        total = total + per_pair.mean() / len(confidence0)
        correct = (((c0 > 0.5).float() == t0).float() * w0).sum() + (((c1 > 0.5).float() == t1).float() * w1).sum()
        accs.append(float(correct / (w0.sum() + w1.sum()).clamp(min=1)))
    return total, accs
