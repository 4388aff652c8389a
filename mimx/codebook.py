"""Discrete visual tokens: a k-means codebook over patch vectors and the nearest-code lookup.

BEiT predicts, for each hidden patch, the id its tokenizer gives that patch.
mimx's tokenizer is a codebook of patch vectors fitted with k-means (Lloyd's
algorithm) on the training data, so nothing has to be downloaded and the
vocabulary fits the data it will be used on. The file holds the codes and
whatever describes their space (patch size, channels, input normalisation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mimx.config import UserError


@torch.no_grad()
def nearest_code(points: torch.Tensor, codes: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code (squared Euclidean) for each vector: ``[..., D] -> [...]`` ids, squared distances.

    Always in fp32 (autocast off): in bf16, distances of near codes tie and the
    ids would depend on the precision. Rows go in chunks of ``chunk`` so the
    distance matrix stays small.
    """
    shape = points.shape[:-1]
    flat = points.reshape(-1, points.shape[-1])
    with torch.autocast(flat.device.type, enabled=False):
        flat, codes = flat.float(), codes.float()
        code_sq = codes.square().sum(1)
        ids, dists = [], []
        for part in flat.split(chunk):
            # ||p - c||^2 = ||p||^2 - 2 p.c + ||c||^2; the ||p||^2 term does not change the argmin
            scores = torch.addmm(code_sq, part, codes.T, alpha=-2)
            best, idx = scores.min(1)
            ids.append(idx)
            dists.append((best + part.square().sum(1)).clamp_min_(0))
    if not ids:
        return flat.new_zeros(shape, dtype=torch.long), flat.new_zeros(shape)
    return torch.cat(ids).view(shape), torch.cat(dists).view(shape)


@dataclass
class KMeansResult:
    """Codes ``[K, D]``, the mean squared distance to the nearest code after each pass, and the
    number of empty clusters that were re-seeded along the way."""

    codes: torch.Tensor
    inertia: list[float] = field(default_factory=list)
    reseeded: int = 0

    @property
    def iterations(self) -> int:
        return len(self.inertia)


@torch.no_grad()
def fit_kmeans(points: torch.Tensor, k: int, *, iters: int = 20, tol: float = 1e-4, seed: int = 0,
               chunk: int = 8192) -> KMeansResult:
    """k-means (Lloyd) on ``points [N, D]`` with ``k`` codes, on the points' device, in fp32.

    Starts from ``k`` distinct points drawn with ``seed``. A code that loses
    all its points is moved onto the point worst served by its code (repeated
    points, e.g. blank background patches, would otherwise leave duplicate
    codes unused). Stops after ``iters`` passes, or once a pass improves the
    mean squared distance by less than ``tol`` (relative) with no empty code.
    """
    points = points.float()
    n = points.shape[0]
    if n < k:
        raise UserError(f"k-means needs at least as many patches as codes: got {n} patches for {k} codes; "
                        "use more images or a smaller vocabulary")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    codes = points[torch.randperm(n, generator=gen)[:k].to(points.device)].clone()
    result = KMeansResult(codes)
    for _ in range(iters):
        ids, dist = nearest_code(points, codes, chunk)
        result.inertia.append(float(dist.mean()))
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros_like(codes).index_add_(0, ids, points)
        filled = counts > 0
        codes = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None].float(), codes)
        empty = (~filled).nonzero().flatten()
        if len(empty):
            worst = dist.topk(len(empty)).indices
            codes[empty] = points[worst]
            result.reseeded += len(empty)
        previous = result.inertia[-2] if len(result.inertia) > 1 else None
        if previous is not None and not len(empty) and previous - result.inertia[-1] <= tol * previous:
            break
    result.codes = codes
    return result


def perplexity(ids: torch.Tensor, vocab: int) -> float:
    """exp(entropy) of how often each of ``vocab`` codes is used: how many codes the data effectively uses."""
    p = torch.bincount(ids.flatten(), minlength=vocab).float()
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def save_codebook(path: str | os.PathLike, codes: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write ``codes [K, D]`` and ``meta`` (JSON-safe values) as a safetensors file; written whole or not at all."""
    from mimx.train.checkpoint import write_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors({"codes": codes.float()}, path, {key: json.dumps(value) for key, value in meta.items()})


def codebook_header(path: str | os.PathLike) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Shape of the codes and metadata of a file written by :func:`save_codebook`, without reading the codes."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"codebook {path} does not exist; fit one with `mimx image codebook` "
                        "(see the README: BEiT-style pretraining)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
            shape = tuple(f.get_slice("codes").get_shape())
    except Exception as exc:  # a safetensors error names neither the file nor the fix
        raise UserError(f"{path} is not a mimx codebook ({type(exc).__name__}: {exc}); refit it with "
                        "`mimx image codebook`") from exc
    if len(shape) != 2:
        raise UserError(f"codebook {path} holds codes of shape {shape}, expected [codes, values]")
    return shape, meta


def read_codebook(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Codes ``[K, D]`` and metadata of a file written by :func:`save_codebook`."""
    from safetensors import safe_open

    _, meta = codebook_header(path)
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes"), meta
