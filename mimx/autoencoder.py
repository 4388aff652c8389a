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
from mimx.masking import Mask, RandomMasking, gather_tokens
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
    decoded: torch.Tensor | None = None  # [B, K_d] token ids when the decoder reconstructed only a subset

    def full_prediction(self) -> torch.Tensor:
        """``pred`` as ``[B, L, P]``: with subset decoding, tokens not decoded are zero."""
        if self.decoded is None:
            return self.pred
        full = self.pred.new_zeros(*self.mask.mask.shape, self.pred.shape[-1])
        index = self.decoded.unsqueeze(-1).expand(-1, -1, self.pred.shape[-1])
        return full.scatter(1, index, self.pred)


class MaskedAutoencoder(nn.Module):
    """Tokenizer, masking, encoder, decoder and target wired into one model.

    Args:
        tokenizer: module ``x -> (tokens [B, L, D], layout)``; ``layout`` is what
            positions, masking and target read (a grid tuple for patches).
        encoder: :class:`MaskedEncoder`.
        decoder: :class:`MaskedDecoder` (or any module with the same call).
        encoder_pos / decoder_pos: modules ``(layout, device) -> [1 or B, L, width]`` (None: no absolute
            positions, e.g. an encoder with a relative position bias).
        masking: callable ``(B, L, layout, noise=, generator=, device=) -> Mask``.
        target: callable ``(x, layout) -> [B, L, P]``.
        loss: ``mse``, ``l1``, ``smooth_l1`` or ``cross_entropy``, or a callable
            ``(pred [B, K, P], target [B, K, P], hidden [B, K] bool) -> scalar`` (e.g. Chamfer).
        decode_subset: optional callable ``(mask, layout, noise=, generator=) -> [B, K_d]``
            choosing the hidden tokens the decoder reconstructs (VideoMAE v2 dual masking).
    """

    def __init__(
        self,
        tokenizer: nn.Module,
        encoder: MaskedEncoder,
        decoder: MaskedDecoder,
        encoder_pos: nn.Module | None,
        decoder_pos: nn.Module | None,
        masking: Callable[..., Mask] | None = None,
        target: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        loss: str | Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
        decode_subset: Callable[..., torch.Tensor] | None = None,
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
        self.decode_subset = decode_subset

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
        decode_noise: torch.Tensor | None = None,
        decode_all: bool = False,
    ) -> MAEOutput:
        """Mask, encode, decode and score ``x``.

        The mask is ``mask`` if given (a :class:`Mask` or a bool ``[B, L]``
        tensor), else drawn by the masking generator from ``noise`` or
        ``generator``; the same ``noise`` always gives the same output. With a
        ``decode_subset`` the decoder reconstructs only the chosen hidden tokens
        (from ``decode_noise`` or ``generator``) unless ``decode_all``; a
        per-token head on a mask-token encoder likewise predicts only the hidden
        tokens. ``out.decoded`` then holds the ids predicted; the loss is the same.
        """
        tokens, layout = self.tokenizer(x)
        batch, length = tokens.shape[:2]
        if mask is None:
            mask = self.masking(batch, length, layout, noise=noise, generator=generator, device=tokens.device)
        elif not isinstance(mask, Mask):
            mask = Mask.from_bool(mask.to(tokens.device))
        if mask.mask.shape != (batch, length):
            raise ValueError(f"mask has shape {tuple(mask.mask.shape)} but the input has {batch}x{length} tokens")
        latent = self.encoder(tokens, self.position(layout, tokens.device), mask, layout=layout)
        dec_pos = None if self.decoder_pos is None else self.decoder_pos(layout, tokens.device)
        if self.target is None:
            raise RuntimeError("this model has no target: it can encode but not be trained")
        target = self.target(x, layout)
        ids = None if decode_all else self.scored_ids(mask, layout, decode_noise, generator)
        if ids is not None:
            pred = self.decoder(latent, dec_pos, mask, self.encoder.num_prefix_tokens, decode_ids=ids)
            target = gather_tokens(target, ids)
            loss = self.score(pred, target, torch.ones(ids.shape, dtype=torch.bool, device=ids.device))
            return MAEOutput(loss=loss, pred=pred, target=target, mask=mask, layout=layout, decoded=ids)
        pred = self.decoder(latent, dec_pos, mask, self.encoder.num_prefix_tokens)
        loss = self.score(pred, target, mask.mask)
        return MAEOutput(loss=loss, pred=pred, target=target, mask=mask, layout=layout)

    def scored_ids(self, mask: Mask, layout: Any, decode_noise: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor | None:
        """``[B, K]`` ids of the tokens to predict, or None to predict every token.

        The ``decode_subset`` choice when there is one; for a per-token head on
        an encoder that keeps every token (SimMIM, MaskFeat, BEiT), the hidden
        tokens: visible ones would be predicted only to be left out of the loss
        (with a BEiT vocabulary of 8,192 codes, a sizeable share of the step).
        """
        if self.decode_subset is not None:
            return self.decode_subset(mask, layout, noise=decode_noise, generator=generator)
        if getattr(self.decoder, "per_token", False) and getattr(self.encoder, "mask_token", None) is not None:
            return mask.hidden_ids()
        return None

    def score(self, pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The loss over tokens where ``hidden`` is True."""
        if callable(self.loss_kind):
            return self.loss_kind(pred, target, hidden)
        return masked_loss(pred, target, hidden, self.loss_kind)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features for all tokens, no masking: ``[B, prefix + L, D]`` (class token first)."""
        tokens, layout = self.tokenizer(x)
        return self.encoder(tokens, self.position(layout, tokens.device), None, layout=layout)

    def position(self, layout: Any, device: torch.device) -> torch.Tensor | None:
        """The encoder's absolute positions for ``layout`` (None when it has none)."""
        return None if self.encoder_pos is None else self.encoder_pos(layout, device)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (tokens, positions)."""
        return {name for name, _ in self.named_parameters()
                if name.endswith(("cls_token", "mask_token", "pos_embed", "relative_position_bias_table"))}
