"""Image masked autoencoders on 2-D patch tokens: MAE, SimMIM and MaskFeat with ViT presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mimx.autoencoder import MaskedAutoencoder
from mimx.config import UserError, from_mapping
from mimx.masking import build_masking
from mimx.patches import PatchTokenizer, unpatchify
from mimx.pos_embed import SinCosGridPosition
from mimx.targets import HOGTarget, PixelTarget
from mimx.transformer import VIT_PRESETS, MaskedDecoder, MaskedEncoder, apply_preset, init_mae_weights

PRESETS = VIT_PRESETS


@dataclass
class ImageMAEConfig:
    """Architecture of an image MAE (what a checkpoint must match to be loaded)."""

    img_size: list[int] | int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    norm_pix: bool = True
    loss: str = "mse"
    encoder_mode: str = "drop"  # "drop" (MAE) or "mask_token" (SimMIM, MaskFeat)
    target: str = "pixels"  # "pixels" (MAE, SimMIM) or "hog" (MaskFeat)
    hog_cell: int = 8
    hog_bins: int = 9
    masking: dict[str, Any] = field(default_factory=lambda: {"kind": "random", "ratio": 0.75})
    name: str = "custom"

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def architecture(self) -> dict[str, Any]:
        """The fields that fix parameter shapes (compared when a checkpoint is loaded)."""
        keys = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "decoder_dim", "decoder_depth", "decoder_heads", "decoder_mlp_ratio", "encoder_mode")
        if self.target != "pixels":  # runs from before HOG targets existed record no target
            keys += ("target", "hog_cell", "hog_bins")
        return {k: getattr(self, k) for k in keys}

    def build_target(self) -> PixelTarget | HOGTarget:
        """The per-token target this config trains on (checked for consistency)."""
        p = self.patch_size
        if self.target == "pixels":
            return PixelTarget((p, p), norm_pix=self.norm_pix)
        if self.target != "hog":
            raise UserError(f"model.target must be 'pixels' or 'hog', got {self.target!r}")
        if self.norm_pix:
            raise UserError("model.norm_pix normalises pixel targets; with model.target=hog set "
                            "model.norm_pix=false (or use method=maskfeat)")
        if p % self.hog_cell:
            raise UserError(f"model.hog_cell={self.hog_cell} must divide model.patch_size={p} "
                            f"(e.g. model.hog_cell={p // 2 if p % 2 == 0 else p})")
        return HOGTarget((p, p), cell=self.hog_cell, bins=self.hog_bins)


class ImageMAE(MaskedAutoencoder):
    """Masked autoencoder on image patches; works for any image size divisible by the patch.

    The config picks the method: MAE (encoder on visible patches, transformer
    decoder, norm-pix pixels), SimMIM (mask tokens in the encoder, linear head,
    L1 on pixels) or MaskFeat (mask tokens, linear head, HOG target).
    """

    def __init__(self, config: ImageMAEConfig) -> None:
        c = config
        p = c.patch_size
        for axis in c.image_hw:
            if axis % p:
                raise UserError(f"model.img_size {c.image_hw} is not divisible by model.patch_size={p}; "
                                 f"use a multiple of {p} (e.g. {max(p, axis // p * p)})")
        if c.encoder_mode not in ("drop", "mask_token"):
            raise UserError(f"model.encoder_mode must be 'drop' or 'mask_token', got {c.encoder_mode!r}")
        masking = build_masking(**c.masking)
        target = c.build_target()
        encoder = MaskedEncoder(c.embed_dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, drop_path=c.drop_path,
                                mask_token=c.encoder_mode == "mask_token")
        decoder = MaskedDecoder(c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads,
                                target.width(c.in_chans), mlp_ratio=c.decoder_mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, fill_hidden=c.encoder_mode == "drop")
        dec_pos = SinCosGridPosition(c.decoder_dim) if c.decoder_depth else None
        super().__init__(
            tokenizer=PatchTokenizer(c.in_chans, c.embed_dim, (p, p)),
            encoder=encoder,
            decoder=decoder,
            encoder_pos=SinCosGridPosition(c.embed_dim),
            decoder_pos=dec_pos,
            masking=masking,
            target=target,
            loss=c.loss,
        )
        self.config = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mae_weights(self)
        self.tokenizer.reset_parameters()
        for token in (self.encoder.cls_token, self.encoder.mask_token, self.decoder.mask_token):
            if token is not None:
                torch.nn.init.normal_(token, std=0.02)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        p = self.config.patch_size
        return unpatchify(tokens, (p, p), grid, self.config.in_chans)


def image_mae_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> ImageMAEConfig:
    """Config from a mapping (a hydra ``model`` node) plus keyword overrides.

    ``preset`` (tiny/small/base/large/huge) fills width, depth and heads first.
    Unknown keys raise one error listing the valid ones.
    """
    values = apply_preset({**(cfg or {}), **overrides}, PRESETS)
    return from_mapping(ImageMAEConfig, values, "model")


def mae_vit(preset: str = "base", **overrides: Any) -> ImageMAE:
    """An image MAE from a ViT preset, e.g. ``mae_vit("small", patch_size=8, img_size=64)``."""
    return ImageMAE(image_mae_config(preset=preset, **overrides))


def config_dict(config: ImageMAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
