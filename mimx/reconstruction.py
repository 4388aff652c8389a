"""What a masked autoencoder rebuilt, in pixels: the panels every modality's viewer draws."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mimx.autoencoder import MAEOutput, MaskedAutoencoder
from mimx.masking import Mask
from mimx.patches import patchify, unpatchify
from mimx.targets import HOGTarget, PixelTarget, TokenTarget


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

    For a HOG target (MaskFeat) the last two panels draw the HOG glyphs of the
    original and of the prediction (hidden patches predicted, visible ones true).
    For a token target (BEiT-style) they show the original as its codes (what
    the model must predict) and the most likely code of each hidden patch,
    with the visible patches pasted.

    Panels are in the target's pixel space (:meth:`PixelTarget.pixels`), mapped
    by ``display`` (e.g. undoing the input normalisation; default: clamp to
    [0, 1]). With norm-pix targets the prediction is mapped back with each
    original patch's own mean and variance (otherwise reconstructions look
    grey and patchy). Hidden patches of the masked panel are ``grey``.
    """
    target = model.target
    if out is None or out.decoded is not None:  # every token's prediction is drawn
        out = model(x, mask=mask, decode_all=True)
    grid = tuple(out.layout)
    channels = x.shape[1]
    if display is None:
        display = lambda t: t.clamp(0, 1)
    if isinstance(target, HOGTarget):
        return _feature_panels(target, x, mask, out, display, grey)
    if isinstance(target, TokenTarget):
        return _token_panels(target, x, mask, out, display, grey)
    if not isinstance(target, PixelTarget):
        raise TypeError(f"no reconstruction panels for a model whose target is {target!r}")
    original = target.pixels(x)
    patches = patchify(original, target.patch)
    pred = target.denormalize(out.full_prediction().float(), x)
    pasted = torch.where(mask.mask.unsqueeze(-1), pred, patches)
    original, recon, recon_pasted = (display(unpatchify(t, target.patch, grid, channels))
                                     for t in (patches, pred, pasted))
    masked = original.masked_fill(hidden_pixels(mask.mask, target.patch, grid, channels), grey)
    return torch.stack([original, masked, recon, recon_pasted])


def _feature_panels(target: HOGTarget, x: torch.Tensor, mask: Mask, out: MAEOutput,
                    display: Callable[[torch.Tensor], torch.Tensor], grey: float) -> torch.Tensor:
    """Original, masked input, the true HOG and the predicted HOG on hidden patches (true HOG on visible).

    Cells smaller than 8 pixels are drawn enlarged (all four panels zoomed alike) so their glyphs stay legible.
    """
    grid = tuple(out.layout)
    channels = x.shape[1]
    zoom = -(-8 // target.cell)
    original = display(x.float())
    masked = original.masked_fill(hidden_pixels(mask.mask, target.patch, grid, channels), grey)
    original, masked = (t.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1) for t in (original, masked))
    pred = torch.where(mask.mask.unsqueeze(-1), out.full_prediction().float(), out.target.float())
    glyphs = [target.render(t, grid, channels, reference=out.target, zoom=zoom) for t in (out.target, pred)]
    return torch.stack([original, masked, *(g.expand(-1, channels, *g.shape[2:]) for g in glyphs)])


def _token_panels(target: TokenTarget, x: torch.Tensor, mask: Mask, out: MAEOutput,
                  display: Callable[[torch.Tensor], torch.Tensor], grey: float) -> torch.Tensor:
    """Original, masked input, the original's codes and the predicted codes on hidden patches (visible pasted)."""
    grid = tuple(out.layout)
    channels = x.shape[1]
    patches = patchify(x.float(), target.patch)
    predicted = target.decode(out.full_prediction().argmax(-1))
    pasted = torch.where(mask.mask.unsqueeze(-1), predicted, patches)
    original, coded, recon = (display(unpatchify(t, target.patch, grid, channels))
                              for t in (patches, target.decode(out.target), pasted))
    masked = original.masked_fill(hidden_pixels(mask.mask, target.patch, grid, channels), grey)
    return torch.stack([original, masked, coded, recon])
