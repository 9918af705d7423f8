"""Zhang et al. ECCV16 targets and losses: soft-encoding, class rebalancing, temporal consistency."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SOFT_NEIGHBOURS = 5
SOFT_SIGMA = 5.0
REBALANCE_LAMBDA = 0.5


def ab_prior(ab_samples: np.ndarray, bins: np.ndarray, sigma: float = SOFT_SIGMA) -> np.ndarray:
    """Empirical distribution of ab over the bins (N×2 samples), smoothed by a Gaussian in ab."""
    d = ((ab_samples[:, None, :] - bins[None]) ** 2).sum(-1)
    counts = np.bincount(d.argmin(1), minlength=len(bins)).astype(np.float64)
    p = counts / counts.sum()
    k = np.exp(-((bins[:, None] - bins[None]) ** 2).sum(-1) / (2 * sigma ** 2))
    p = k @ p
    return p / p.sum()


def rebalance_weights(prior: np.ndarray, lam: float = REBALANCE_LAMBDA) -> np.ndarray:
    """w ∝ ((1-λ)p + λ/Q)^-1, normalised so that E_p[w] = 1."""
    w = 1.0 / ((1 - lam) * prior + lam / len(prior))
    return (w / (prior * w).sum()).astype(np.float32)


def soft_encode(ab: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets (B×Q×h×w) over the 5 nearest bins with σ=5, and each pixel's nearest bin."""
    b, _, h, w = ab.shape
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(flat, bins) ** 2
    near_d2, near = d2.topk(SOFT_NEIGHBOURS, dim=1, largest=False)
    wts = torch.softmax(-near_d2 / (2 * SOFT_SIGMA ** 2), dim=1)
    target = torch.zeros(flat.shape[0], len(bins), device=ab.device).scatter_(1, near, wts)
    target = target.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return target, near[:, 0].reshape(b, h, w)


def rebalanced_ce(logits: torch.Tensor, target: torch.Tensor, nearest: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    ce = -(target * F.log_softmax(logits, dim=1)).sum(1)
    return (weights[nearest] * ce).mean()


def temporal_loss(ab_now: torch.Tensor, ab_prev: torch.Tensor, grid: torch.Tensor,
                  trust: torch.Tensor) -> torch.Tensor:
    """Mean |ab_t - ab_{t-1} sampled where frame t's pixels were|, in units of 10 Lab.

    grid (B×S×S×2) and trust (B×S×S) are at input resolution; the ab maps may be smaller
    (the head's stride): the grid is averaged and the trust min-pooled down to them."""
    k = grid.shape[1] // ab_now.shape[-2]
    if k > 1:
        grid = F.avg_pool2d(grid.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
        trust = -F.max_pool2d(-trust[:, None], k)[:, 0]
    prev = F.grid_sample(ab_prev, grid, mode="bilinear", padding_mode="border", align_corners=False)
    w = trust[:, None]
    return ((ab_now - prev).abs().mean(1, keepdim=True) * w).sum() / w.sum().clamp(min=1) / 10.0
