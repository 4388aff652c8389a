"""The generic masked autoencoder every modality specialises.

tokenizer -> masking -> encoder -> decoder (+ head) -> prediction per token;
target(input) -> target per token; loss over hidden tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mimx.losses import masked_loss
from mimx.masking import Mask, RandomMasking
from mimx.patches import normalize_patches, patchify
from mimx.transformer import MaskedDecoder, MaskedEncoder


@dataclass
class MAEOutput:
    """Result of one masked-autoencoder forward pass.

    ``pred`` and ``target`` cover every token (``[B, L, P]``); only tokens where
    ``mask.mask`` is True enter the loss.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    mask: Mask
    layout: Any = None


class PixelTarget:
    """Patchified pixels, optionally normalised per token (MAE's norm-pix target)."""

    def __init__(self, patch: tuple[int, ...], norm_pix: bool = True, per_channel: int | None = None,
                 eps: float = 1e-6) -> None:
        self.patch = tuple(patch)
        self.norm_pix = norm_pix
        self.per_channel = per_channel
        self.eps = eps

    def __call__(self, x: torch.Tensor, layout: Any) -> torch.Tensor:
        target = patchify(x.float(), self.patch)
        if self.norm_pix:
            target = normalize_patches(target, self.per_channel, self.eps)
        return target

    def __repr__(self) -> str:
        return f"PixelTarget(patch={self.patch}, norm_pix={self.norm_pix})"


class MaskedAutoencoder(nn.Module):
    """Tokenizer, masking, encoder, decoder and target wired into one model.

    Args:
        tokenizer: module ``x -> (tokens [B, L, D], layout)``; ``layout`` is what
            positions, masking and target read (a grid tuple for patches).
        encoder: :class:`MaskedEncoder`.
        decoder: :class:`MaskedDecoder` (or any module with the same call).
        encoder_pos / decoder_pos: modules ``(layout, device) -> [1 or B, L, width]``.
        masking: callable ``(B, L, layout, noise=, generator=, device=) -> Mask``.
        target: callable ``(x, layout) -> [B, L, P]``.
        loss: ``mse``, ``l1``, ``smooth_l1`` or ``cross_entropy``.
    """

    def __init__(
        self,
        tokenizer: nn.Module,
        encoder: MaskedEncoder,
        decoder: MaskedDecoder,
        encoder_pos: nn.Module,
        decoder_pos: nn.Module | None,
        masking: Callable[..., Mask] | None = None,
        target: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        loss: str = "mse",
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_pos = encoder_pos
        self.decoder_pos = decoder_pos
        self.masking = masking if masking is not None else RandomMasking(0.75)
        self.target = target
        self.loss_kind = loss

    def make_mask(self, x: torch.Tensor, *, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> Mask:
        """The mask the model would draw for ``x`` (tokenizes ``x`` to learn the layout)."""
        tokens, layout = self.tokenizer(x)
        return self.masking(tokens.shape[0], tokens.shape[1], layout, noise=noise, generator=generator,
                            device=tokens.device)

    def forward(
        self,
        x: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        mask: Mask | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """Mask, encode, decode and score ``x``.

        The mask is ``mask`` if given (a :class:`Mask` or a bool ``[B, L]``
        tensor), else drawn by the masking generator from ``noise`` or
        ``generator``; the same ``noise`` always gives the same output.
        """
        tokens, layout = self.tokenizer(x)
        batch, length = tokens.shape[:2]
        if mask is None:
            mask = self.masking(batch, length, layout, noise=noise, generator=generator, device=tokens.device)
        elif not isinstance(mask, Mask):
            mask = Mask.from_bool(mask.to(tokens.device))
        if mask.mask.shape != (batch, length):
            raise ValueError(f"mask has shape {tuple(mask.mask.shape)} but the input has {batch}x{length} tokens")
        latent = self.encoder(tokens, self.encoder_pos(layout, tokens.device), mask)
        dec_pos = None if self.decoder_pos is None else self.decoder_pos(layout, tokens.device)
        pred = self.decoder(latent, dec_pos, mask, self.encoder.num_prefix_tokens)
        if self.target is None:
            raise RuntimeError("this model has no target: it can encode but not be trained")
        target = self.target(x, layout)
        loss = masked_loss(pred, target, mask.mask, self.loss_kind)
        return MAEOutput(loss=loss, pred=pred, target=target, mask=mask, layout=layout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features for all tokens, no masking: ``[B, prefix + L, D]`` (class token first)."""
        tokens, layout = self.tokenizer(x)
        return self.encoder(tokens, self.encoder_pos(layout, tokens.device), None)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (tokens, positions)."""
        return {name for name, _ in self.named_parameters()
                if name.endswith(("cls_token", "mask_token", "pos_embed"))}
