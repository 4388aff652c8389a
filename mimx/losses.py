"""Losses averaged over hidden tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "l1", "smooth_l1", "cross_entropy")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean per-token loss over tokens where ``mask`` is True.

    ``pred``/``target`` are ``[B, L, P]`` for regression; for ``cross_entropy``
    ``pred`` holds logits ``[B, L, V]`` and ``target`` class ids ``[B, L]``.
    """
    weight = mask.to(torch.float32)
    if kind == "cross_entropy":
        per_token = F.cross_entropy(pred.float().flatten(0, 1), target.flatten(), reduction="none")
        per_token = per_token.view_as(weight)
    else:
        diff = pred.float() - target.float()
        if kind == "mse":
            per_token = diff.square().mean(dim=-1)
        elif kind == "l1":
            per_token = diff.abs().mean(dim=-1)
        elif kind == "smooth_l1":
            per_token = F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none").mean(dim=-1)
        else:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)
