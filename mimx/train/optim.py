"""Optimiser and learning-rate schedule as MAE trains: AdamW, linear warm-up, cosine decay per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    skip: Iterable[str] = (),
    layer_scale: Callable[[str], float] | None = None,
) -> list[dict]:
    """Two groups (or more with ``layer_scale``): decayed weights, and norms/biases/tokens without decay.

    ``skip`` adds names exempt from weight decay (position tables, cls and mask
    tokens); ``layer_scale(name)`` returns an lr multiplier (layer-wise decay).
    """
    skip = set(skip)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim <= 1 or name in skip else weight_decay
        scale = layer_scale(name) if layer_scale else 1.0
        group = groups.setdefault((decay, scale), {"params": [], "names": [], "weight_decay": decay,
                                                   "lr_scale": scale})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device supports it (CPU and CUDA in recent torch)."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    try:
        return torch.optim.AdamW(clean, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(clean, lr=lr, betas=betas, foreach=True)


class WarmupCosine:
    """lr(step): linear from 0 to ``peak`` over ``warmup`` steps, then cosine to ``floor`` at ``total``."""

    def __init__(self, peak: float, total: int, warmup: int = 0, floor: float = 0.0) -> None:
        self.peak = peak
        self.total = max(1, total)
        self.warmup = max(0, min(warmup, self.total))
        self.floor = floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * step / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(1.0, progress)
        return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "floor": self.floor}
