"""Evaluation protocols on frozen features: weighted kNN and the MAE linear probe.

Both pick their choices on a validation split; the test split is scored once,
with the chosen model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((pred == labels).float().mean()) if len(labels) else float("nan")


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on cosine similarity: each of the ``k`` nearest training samples votes
    ``exp(similarity / temperature)`` for its class; returns the predicted class per query."""
    train = F.normalize(train_feats.float(), dim=1)
    k = min(k, len(train))
    preds = []
    for start in range(0, len(query_feats), chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sims, idx = (q @ train.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


class LinearProbe(nn.Module):
    """MAE's linear probe head: BatchNorm without affine parameters, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


@dataclass
class ProbeResult:
    """The chosen probe (best validation accuracy over learning rates and epochs) and its history."""

    model: LinearProbe
    lr: float
    epoch: int
    val_top1: float
    history: list[dict] = field(default_factory=list)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       num_classes: int, *, lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0), epochs: int = 50,
                       batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """Train a :class:`LinearProbe` on cached features for each lr (SGD, momentum 0.9, cosine schedule);
    keep the (lr, epoch) with the best validation accuracy."""
    train_x, val_x = train_x.float(), val_x.float()
    best: ProbeResult | None = None
    history = []
    steps_per_epoch = max(1, math.ceil(len(train_x) / batch_size))
    for lr in lrs:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        probe = LinearProbe(train_x.shape[1], num_classes)
        opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        total = epochs * steps_per_epoch
        step = 0
        for epoch in range(1, epochs + 1):
            probe.train()
            order = torch.randperm(len(train_x), generator=gen)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < 2:
                    continue
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            probe.eval()
            with torch.no_grad():
                val = accuracy(probe(val_x).argmax(1), val_y)
            history.append({"lr": lr, "epoch": epoch, "val_top1": val})
            if best is None or val > best.val_top1:
                best = ProbeResult(copy.deepcopy(probe), lr, epoch, val)
    assert best is not None
    best.history = history
    return best
