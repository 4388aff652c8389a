"""``mimx image codebook``: fit the k-means codebook whose ids a BEiT-style run (``method=beit``) predicts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.codebook import fit_kmeans, nearest_code, perplexity, save_codebook
from mimx.config import UserError, from_mapping
from mimx.data.shards import expand_shards
from mimx.data.stream import ShardStream, StreamLoader
from mimx.modalities.image.data import ImageDecoder, Normalizer
from mimx.modalities.image.pretrain import sections
from mimx.patches import patchify, unpatchify
from mimx.train.distributed import pick_device


@dataclass
class CodebookConfig:
    """``codebook`` section of ``configs/image/codebook.yaml``."""

    out: str = "runs/codebook.safetensors"
    vocab_size: int = 8192
    images: int = 20000  # augmented training views the patches are cut from
    patches_per_image: int = 16  # patches drawn from each view (0: all of them)
    iters: int = 20
    tol: float = 1e-4  # stop once a pass improves the mean squared distance by less than this (relative)
    seed: int = 0
    device: str = "auto"


def collect_patches(loader: StreamLoader, normalizer: Normalizer, patch: int, images: int, per_image: int,
                    seed: int) -> tuple[torch.Tensor, int, str]:
    """``[N, patch^2 * C]`` patch vectors of normalised training views, the views used, and the skip report."""
    gen = torch.Generator().manual_seed(seed)
    parts, seen = [], 0
    for batch in loader:
        x = normalizer(batch["image"][: images - seen])
        tokens = patchify(x.float(), (patch, patch))
        if per_image and per_image < tokens.shape[1]:
            pick = torch.rand(tokens.shape[:2], generator=gen).argsort(1)[:, :per_image]
            tokens = tokens.gather(1, pick[..., None].expand(-1, -1, tokens.shape[2]))
        parts.append(tokens.flatten(0, 1))
        seen += x.shape[0]
        if seen >= images:
            break
    return torch.cat(parts), seen, loader.skips.report() if loader.skips.count else ""


def save_code_sheet(codes: torch.Tensor, usage: torch.Tensor, patch: int, channels: int, normalizer: Normalizer,
                    path: Path, count: int = 256) -> Path:
    """The ``count`` most used codes as patches (most used first, 16 per row) in a PNG, to see the vocabulary."""
    from torchvision.utils import save_image

    order = usage.argsort(descending=True)[:count]
    tiles = unpatchify(codes[order].float().cpu()[:, None], (patch, patch), (1, 1), channels)
    tiles = normalizer.invert(tiles)
    zoom = max(1, 16 // patch)
    tiles = tiles.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
    save_image(tiles, str(path), nrow=16, padding=1, pad_value=1.0)
    return path


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Fit and write the codebook as configured; the model and data sections are pretraining's."""
    _, model, data = sections(cfg, check_tokens=False)
    c = from_mapping(CodebookConfig, cfg.codebook, "codebook")
    if c.vocab_size < 2 or c.images < 1 or c.iters < 1:
        raise UserError(f"codebook.vocab_size ({c.vocab_size}), codebook.images ({c.images}) and codebook.iters "
                        f"({c.iters}) must be positive (vocab_size at least 2)")
    urls = expand_shards(data.shards)
    stream = ShardStream(urls, ImageDecoder(data, train=True), batch_size=256, shuffle=data.shuffle,
                         resampled=data.resampled, seed=c.seed)
    loader = StreamLoader(stream, num_workers=data.num_workers if data.resampled else min(data.num_workers, len(urls)))
    start = time.perf_counter()
    normalizer = Normalizer(data.mean, data.std)
    points, views, skips = collect_patches(loader, normalizer, model.patch_size, c.images,
                                           c.patches_per_image, c.seed)
    device = pick_device(c.device)
    points = points.to(device)
    print(f"codebook: {points.shape[0]:,} patches of {views:,} views ({time.perf_counter() - start:.0f} s); "
          f"k-means with {c.vocab_size} codes on {device}")
    result = fit_kmeans(points, c.vocab_size, iters=c.iters, tol=c.tol, seed=c.seed)
    ids, dist = nearest_code(points, result.codes)
    usage = torch.bincount(ids, minlength=c.vocab_size)
    used = int(usage.gt(0).sum())
    info = {
        "patch": [model.patch_size, model.patch_size], "channels": model.in_chans,
        "normalization": {"mean": list(data.mean), "std": list(data.std)},
        "vocab_size": c.vocab_size, "views": views, "patches": int(points.shape[0]),
        "mean_sq_distance": float(dist.mean()), "patch_variance": float(points.var(0).sum()),
        "inertia": [round(v, 6) for v in result.inertia], "reseeded": result.reseeded,
        "codes_used": used, "perplexity": perplexity(ids, c.vocab_size), "seed": c.seed,
    }
    path = save_codebook(c.out, result.codes, info)
    sheet = save_code_sheet(result.codes, usage, model.patch_size, model.in_chans, normalizer, path.with_suffix(".png"))
    explained = 1 - info["mean_sq_distance"] / max(info["patch_variance"], 1e-12)
    print(f"codebook: {result.iterations} passes, mean squared distance {result.inertia[0]:.4g} -> "
          f"{info['mean_sq_distance']:.4g} ({explained:.1%} of the patch variance explained), {used}/{c.vocab_size} "
          f"codes used, perplexity {info['perplexity']:.0f} ({math.log2(max(info['perplexity'], 1)):.1f} bits), "
          f"{time.perf_counter() - start:.0f} s")
    if skips:
        print(f"codebook: {skips}")
    print(f"wrote {path} and {sheet.name} (the {min(256, c.vocab_size)} most used codes)")
    print(f"next: mimx image pretrain method=beit model.codebook={path} <the same overrides>")
    return info
