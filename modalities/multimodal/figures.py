"""Per-modality reconstruction figures: input | masked input | prediction, depth and classes in colour maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mimx.modalities.multimodal.model import standardize_depth
from mimx.patches import denormalize_patches, patchify, unpatchify

# a perceptually ordered ramp (dark blue -> green -> yellow), interpolated
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
HIDDEN = np.array([128, 128, 128], dtype=np.uint8)


def colour_depth(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[H, W]`` values -> uint8 RGB on the ramp over [lo, hi]; NaN (invalid) black."""
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1) * (len(RAMP) - 1)
    i = np.clip(np.floor(np.nan_to_num(t)).astype(int), 0, len(RAMP) - 2)
    f = (np.nan_to_num(t) - i)[..., None]
    rgb = RAMP[i] * (1 - f) + RAMP[i + 1] * f
    rgb[~np.isfinite(depth)] = 0
    return rgb.round().astype(np.uint8)


def palette(count: int) -> np.ndarray:
    """Distinct colours for class ids (a fixed golden-ratio hue walk); ignored ids are black."""
    hues = (np.arange(count) * 0.618034) % 1.0
    rgb = np.stack([np.abs(hues * 6 - 3) - 1, 2 - np.abs(hues * 6 - 2), 2 - np.abs(hues * 6 - 4)], -1)
    return (np.clip(rgb, 0, 1) * 0.8 * 255 + 40).astype(np.uint8)


def colour_classes(ids: np.ndarray, count: int) -> np.ndarray:
    colours = palette(count)
    valid = (ids >= 0) & (ids < count)
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    out[valid] = colours[ids[valid]]
    return out


@torch.no_grad()
def multimodal_panels(model, batch: dict[str, torch.Tensor], out) -> list[list[tuple[str, np.ndarray]]]:
    """Per sample, ``(title, RGB tile)`` for each modality: input, masked input (inputs only), prediction."""
    c = model.config
    p, grid = c.patch_size, c.grid
    rows: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(next(iter(out.preds.values())).shape[0])]
    length = grid[0] * grid[1]
    for name, spec in model.specs.items():
        raw = batch[name]
        hidden = None
        if name in model.inputs:
            start = model.inputs.index(name) * length
            hidden = out.mask.mask[:, start:start + length].cpu()
        pred = out.preds.get(name)
        if spec.kind == "pixels":
            pixels = model.pixels(name, raw).float().cpu()  # what the model sees (standardised when configured)
            normalizer = model.normalizers.get(name)
            shown = pixels if normalizer is None else normalizer.invert(pixels)
            images = [(shown[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                      for i in range(len(rows))]
            preds = None
            if pred is not None:
                patches = pred.float().cpu()
                if spec.norm_pix:
                    patches = denormalize_patches(patches, patchify(pixels, (p, p)))
                full = unpatchify(patches, (p, p), grid, spec.channels)
                if normalizer is not None:
                    full = normalizer.invert(full)
                preds = [(full[i].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                         for i in range(len(rows))]
            images = [im if im.shape[-1] == 3 else np.repeat(im, 3, -1) for im in images]
            preds = None if preds is None else [im if im.shape[-1] == 3 else np.repeat(im, 3, -1) for im in preds]
        elif spec.kind == "depth":
            depth = raw.float().cpu()
            depth = depth[:, 0] if depth.dim() == 4 else depth
            std, valid = standardize_depth(depth.unsqueeze(1))
            std = torch.where(valid, std, torch.full_like(std, float("nan")))[:, 0].numpy()
            images = [colour_depth(std[i], -2, 2) for i in range(len(rows))]
            preds = None
            if pred is not None:
                full = unpatchify(pred.float().cpu(), (p, p), grid, 1)[:, 0].numpy()
                preds = [colour_depth(full[i], -2, 2) for i in range(len(rows))]
        else:
            ids = raw.long().cpu().numpy()
            images = [colour_classes(ids[i], spec.num_classes) for i in range(len(rows))]
            preds = None
            if pred is not None:
                logits = pred.float().cpu().unflatten(-1, (p * p, spec.num_classes)).argmax(-1)
                full = unpatchify(logits.float(), (p, p), grid, 1)[:, 0].long().numpy()
                preds = [colour_classes(full[i], spec.num_classes) for i in range(len(rows))]
        for i, row in enumerate(rows):
            row.append((f"{name}", images[i]))
            if hidden is not None:
                masked = images[i].copy()
                cells = hidden[i].view(grid).repeat_interleave(p, 0).repeat_interleave(p, 1).numpy()
                masked[cells] = HIDDEN
                row.append((f"{name} masked", masked))
            if preds is not None:
                row.append((f"{name} predicted", preds[i]))
    return rows


def save_panels(rows: list[list[tuple[str, np.ndarray]]], path: str | Path, scale: int = 3) -> Path:
    """A PNG grid: one row per sample, one column per (modality, view), titles on top."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile = rows[0][0][1].shape[0] * scale
    title_h = 14
    sheet = Image.new("RGB", (tile * len(rows[0]), title_h + tile * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, (title, _) in enumerate(rows[0]):
        draw.text((j * tile + 3, 1), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        for j, (_, image) in enumerate(row):
            big = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
            sheet.paste(big, (j * tile, title_h + i * tile))
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
