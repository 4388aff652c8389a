"""Reconstruction figures: original | masked input | reconstruction | reconstruction with visible patches pasted."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from mimx.autoencoder import MAEOutput
from mimx.masking import Mask
from mimx.modalities.image.data import Normalizer
from mimx.modalities.image.model import ImageMAE
from mimx.reconstruction import reconstruction_panels as core_panels


def reconstruction_panels(model: ImageMAE, x: torch.Tensor, mask: Mask, normalizer: Normalizer,
                          out: MAEOutput | None = None) -> torch.Tensor:
    """Four ``[B, C, H, W]`` panels in [0, 1], stacked as ``[4, B, C, H, W]`` (see :mod:`mimx.reconstruction`)."""
    return core_panels(model, x, mask, out, display=normalizer.invert)


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
