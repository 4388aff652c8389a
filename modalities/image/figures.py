"""Reconstruction figures: original | masked input | reconstruction | reconstruction with visible patches pasted."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from mimx.autoencoder import MAEOutput
from mimx.masking import Mask
from mimx.modalities.image.data import Normalizer
from mimx.modalities.image.model import ImageMAE
from mimx.patches import denormalize_patches, patchify


def reconstruction_panels(model: ImageMAE, x: torch.Tensor, mask: Mask, normalizer: Normalizer,
                          out: MAEOutput | None = None) -> torch.Tensor:
    """Four ``[B, C, H, W]`` panels in [0, 1], stacked as ``[4, B, C, H, W]``.

    With norm-pix targets the prediction is mapped back to pixels with each
    original patch's own mean and variance, so reconstructions are not the
    grey, patchy pictures a raw norm-pix output gives.
    """
    p = model.patch_size
    if out is None:
        out = model(x, mask=mask)
    grid = out.layout
    original_patches = patchify(x.float(), (p, p))
    pred = out.pred.float()
    if model.config.norm_pix:
        pred = denormalize_patches(pred, original_patches, eps=model.target.eps)
    pasted = torch.where(mask.mask.unsqueeze(-1), pred, original_patches)
    original, recon, recon_pasted = (normalizer.invert(model.unpatchify(t, grid))
                                     for t in (original_patches, pred, pasted))
    masked = original.masked_fill(_pixel_mask(mask.mask, grid, p), 0.5)  # hidden patches in grey
    panels = [original, masked, recon, recon_pasted]
    return torch.stack(panels)


def _pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    m = mask.view(-1, 1, *grid).float()
    return m.repeat_interleave(patch, 2).repeat_interleave(patch, 3).bool()


def save_reconstruction_grid(panels: torch.Tensor, path: str | Path, min_size: int = 96) -> Path:
    """One row per image: original, masked, reconstruction, reconstruction + visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns, batch = panels.shape[:2]
    rows = panels.transpose(0, 1).reshape(columns * batch, *panels.shape[2:]).float().cpu()
    zoom = max(1, min_size // min(rows.shape[-2:]))
    if zoom > 1:  # small images are enlarged (nearest) so patches stay visible
        rows = rows.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
    save_image(rows, str(path), nrow=columns, padding=2, pad_value=1.0)
    return path
