"""What a masked autoencoder rebuilt, in pixels: the panels every modality's viewer draws."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mimx.autoencoder import MAEOutput, MaskedAutoencoder, PixelTarget
from mimx.masking import Mask
from mimx.patches import patchify, unpatchify


def hidden_pixels(mask: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...], channels: int) -> torch.Tensor:
    """Token mask ``[B, L]`` -> pixel mask ``[B, C, *S]`` (True inside hidden patches)."""
    width = channels
    for p in patch:
        width *= p
    tokens = mask.float().unsqueeze(-1).expand(-1, -1, width)
    return unpatchify(tokens, patch, grid, channels) > 0.5


@torch.no_grad()
def reconstruction_panels(model: MaskedAutoencoder, x: torch.Tensor, mask: Mask, out: MAEOutput | None = None,
                          display: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          grey: float = 0.5) -> torch.Tensor:
    """``[4, B, C, *S]``: original, masked input, reconstruction, reconstruction with the visible patches pasted.

    Panels are in the target's pixel space (:meth:`PixelTarget.pixels`), mapped
    by ``display`` (e.g. undoing the input normalisation; default: clamp to
    [0, 1]). With norm-pix targets the prediction is mapped back with each
    original patch's own mean and variance (otherwise reconstructions look
    grey and patchy). Hidden patches of the masked panel are ``grey``.
    """
    target = model.target
    if not isinstance(target, PixelTarget):
        raise TypeError("reconstruction panels need a model with a PixelTarget")
    if out is None:
        out = model(x, mask=mask, decode_all=True)
    grid = tuple(out.layout)
    channels = x.shape[1]
    original = target.pixels(x)
    patches = patchify(original, target.patch)
    pred = target.denormalize(out.full_prediction().float(), x)
    pasted = torch.where(mask.mask.unsqueeze(-1), pred, patches)
    if display is None:
        display = lambda t: t.clamp(0, 1)
    original, recon, recon_pasted = (display(unpatchify(t, target.patch, grid, channels))
                                     for t in (patches, pred, pasted))
    masked = original.masked_fill(hidden_pixels(mask.mask, target.patch, grid, channels), grey)
    return torch.stack([original, masked, recon, recon_pasted])
