"""Evaluation protocols on frozen features: weighted kNN, the MAE linear probe and an attentive probe.

The probes make their choices (lr, epoch) on a validation split; the test
split is scored once, with the chosen model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
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
        return self.head(self.norm(x.float()))


class AttentiveProbe(nn.Module):
    """Attentive probe on frozen token features (V-JEPA's protocol for masked-modelling encoders).

    One learned query cross-attends (``heads`` heads) to the normalised tokens,
    a residual MLP follows, then LayerNorm and a linear classifier. Input
    ``[B, L, D]``, or ``[B, V, L, D]`` for ``V`` views per sample (the views'
    logits are averaged). Mean pooling weighs every token alike; this head can
    attend to the few tokens that carry the object (a small digit in a mostly
    empty clip).

    With a single query the key and value projections fold into the query:
    scores are ``(W_k^T q) . x_i`` and the output is ``W_v (sum_i a_i x_i) + b_v``,
    so the cost is ``O(L D)`` per head and sample, not ``O(L D^2)``: the probe
    trains on cached tokens of long clips in seconds per epoch.
    """

    def __init__(self, dim: int, num_classes: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attentive probe: feature width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)  # a key bias adds the same score to every token: no effect
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-head attention weights of the query over ``tokens`` ``[B, L, D]``: ``[B, heads, L]``."""
        dim = tokens.shape[-1]
        q = self.q(self.query).view(self.heads, dim // self.heads)  # [H, d]
        key_of_query = torch.einsum("hd,hdc->hc", q, self.k.weight.view(self.heads, -1, dim))  # [H, D]
        scores = torch.einsum("blc,hc->bhl", tokens, key_of_query) * (dim // self.heads) ** -0.5
        return scores.softmax(dim=-1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The query after its residual cross-attention to normalised ``tokens`` ``[B, L, D]``: ``[B, D]``."""
        dim = tokens.shape[-1]
        mixed = torch.einsum("bhl,blc->bhc", self.attention(tokens), tokens)  # [B, H, D]
        values = torch.einsum("bhc,hdc->bhd", mixed, self.v.weight.view(self.heads, -1, dim)).flatten(1)
        return self.query + self.proj(values + self.v.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = x.shape[1] if x.dim() == 4 else 0
        pooled = self.pool(self.norm(x.flatten(0, 1).float() if views else x.float()))
        pooled = pooled + self.mlp(self.mlp_norm(pooled))
        logits = self.head(self.out_norm(pooled))
        return logits.view(-1, views, logits.shape[-1]).mean(1) if views else logits


@dataclass
class ProbeResult:
    """The chosen probe (best validation score over learning rates and epochs), its scores and history."""

    model: nn.Module
    lr: float
    epoch: int
    val: dict[str, float]
    history: list[dict] = field(default_factory=list)

    @property
    def val_top1(self) -> float:
        """Validation top-1 accuracy (%) of a classification probe."""
        return self.val["val_top1"]


@torch.no_grad()
def probe_logits(probe: nn.Module, x: torch.Tensor, batch_size: int = 256,
                 device: torch.device | None = None) -> torch.Tensor:
    """The outputs of ``probe`` on ``x`` in evaluation mode, computed in batches (each moved to
    ``device`` when given); returned on ``x``'s device."""
    probe.eval()

    def run(part: torch.Tensor) -> torch.Tensor:
        return probe(part if device is None else part.to(device)).to(x.device)

    if not len(x):
        return run(x)
    return torch.cat([run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def probe_predict(probe: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes of ``x`` in evaluation mode, in batches."""
    return probe_logits(probe, x, batch_size).argmax(1)


def top1_score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """:func:`fit_probe`'s default validation score: ``{"val_top1": accuracy}``."""
    return {"val_top1": accuracy(logits.argmax(1), labels)}


def fit_probe(build: Callable[[], nn.Module], optimizer: Callable[[nn.Module, float], torch.optim.Optimizer],
              train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
              lrs: tuple[float, ...], epochs: int, batch_size: int, seed: int = 0,
              loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
              score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] = top1_score,
              metric: str = "val_top1", cosine: bool = True, min_batch: int = 2) -> ProbeResult:
    """Train ``build()`` with ``optimizer(probe, lr)`` for each lr on cached features; keep the (lr, epoch)
    whose validation ``score(logits, val_y)[metric]`` is highest.

    ``loss(logits, targets)`` is the training loss; the lr follows a cosine decay to 0 over all steps
    (``cosine=False``: constant). Batches smaller than ``min_batch`` are skipped (BatchNorm needs two rows).
    """
    best: ProbeResult | None = None
    history = []
    steps_per_epoch = max(1, math.ceil(len(train_x) / batch_size))
    for lr in lrs:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        probe = build()
        opt = optimizer(probe, lr)
        total = epochs * steps_per_epoch
        step = 0
        for epoch in range(1, epochs + 1):
            probe.train()
            order = torch.randperm(len(train_x), generator=gen)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if len(idx) < min_batch:
                    continue
                if cosine:
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                batch_loss = loss(probe(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                batch_loss.backward()
                opt.step()
                step += 1
            val = score(probe_logits(probe, val_x, batch_size), val_y)
            history.append({"lr": lr, "epoch": epoch, **val})
            if best is None or val[metric] > best.val[metric]:
                best = ProbeResult(copy.deepcopy(probe), lr, epoch, val)
    assert best is not None
    best.history = history
    return best


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       num_classes: int, *, lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0), epochs: int = 50,
                       batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> ProbeResult:
    """MAE's linear probe (:class:`LinearProbe`, SGD with momentum 0.9) on cached ``[N, D]`` features."""
    train_x, val_x = train_x.float(), val_x.float()
    return fit_probe(
        lambda: LinearProbe(train_x.shape[1], num_classes),
        lambda probe, lr: torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay),
        train_x, train_y, val_x, val_y, lrs=lrs, epochs=epochs, batch_size=batch_size, seed=seed)


def train_attentive_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                          num_classes: int, *, lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3), epochs: int = 20,
                          batch_size: int = 64, weight_decay: float = 0.05, heads: int = 4,
                          seed: int = 0) -> ProbeResult:
    """An :class:`AttentiveProbe` (AdamW) on cached token features ``[N, L, D]`` or ``[N, V, L, D]``."""
    return fit_probe(
        lambda: AttentiveProbe(train_x.shape[-1], num_classes, heads),
        lambda probe, lr: torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay),
        train_x, train_y, val_x, val_y, lrs=lrs, epochs=epochs, batch_size=batch_size, seed=seed)
