"""Image masked autoencoders on 2-D patch tokens: MAE, SimMIM, MaskFeat and BEiT-style with ViT presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mimx.autoencoder import MaskedAutoencoder
from mimx.codebook import codebook_header, read_codebook
from mimx.config import UserError, from_mapping
from mimx.masking import build_masking
from mimx.patches import PatchTokenizer, unpatchify
from mimx.pos_embed import SinCosGridPosition
from mimx.targets import HOGTarget, PixelTarget, TokenTarget, hog_target
from mimx.transformer import VIT_PRESETS, MaskedDecoder, MaskedEncoder, apply_preset, init_mae_weights

PRESETS = VIT_PRESETS

IMAGE_MASKINGS = ("random", "block", "coarse")  # tube masking needs a time axis


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
    layer_scale: float | None = None  # LayerScale init of the encoder blocks (BEiT: 0.1); None: none
    rel_pos_bias: str = "none"  # BEiT's relative position bias: "none", "shared" (one table) or "layer" (per block)
    abs_pos: bool = True  # add the fixed sin-cos positions to the encoder's tokens (BEiT with rel_pos_bias: false)
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    norm_pix: bool = True
    loss: str = "mse"
    encoder_mode: str = "drop"  # "drop" (MAE) or "mask_token" (SimMIM, MaskFeat, BEiT-style)
    target: str = "pixels"  # "pixels" (MAE, SimMIM), "hog" (MaskFeat) or "tokens" (BEiT-style)
    hog_cell: int = 8
    hog_bins: int = 9
    vocab_size: int | None = None  # codes of the token target (taken from the codebook when unset)
    codebook: str | None = None  # a `mimx image codebook` file: the token target's codes for a new run
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
        if self.layer_scale:  # runs from before LayerScale existed record none
            keys += ("layer_scale",)
        if self.rel_pos_bias != "none" or not self.abs_pos:  # nor do runs from before relative positions
            keys += ("rel_pos_bias", "abs_pos")
        if self.target == "hog":  # runs from before other targets existed record no target
            keys += ("target", "hog_cell", "hog_bins")
        elif self.target == "tokens":
            keys += ("target", "vocab_size")
        return {k: getattr(self, k) for k in keys}

    def build_target(self) -> PixelTarget | HOGTarget | TokenTarget:
        """The per-token target this config trains on (checked for consistency)."""
        p = self.patch_size
        if self.target not in ("pixels", "hog", "tokens"):
            raise UserError(f"model.target must be 'pixels', 'hog' or 'tokens', got {self.target!r}")
        if (self.target == "tokens") != (self.loss == "cross_entropy"):
            raise UserError(f"model.target={self.target} cannot train with model.loss={self.loss}: token targets "
                            "are class ids (loss cross_entropy), pixels and HOG are regressed (mse, l1, "
                            "smooth_l1); use method=beit for tokens")
        if self.target == "pixels":
            return PixelTarget((p, p), norm_pix=self.norm_pix)
        if self.norm_pix:
            raise UserError(f"model.norm_pix normalises pixel targets; with model.target={self.target} set "
                            "model.norm_pix=false (or use method=maskfeat / method=beit)")
        if self.target == "tokens":
            if not self.vocab_size or self.vocab_size < 2:
                raise UserError(f"model.vocab_size={self.vocab_size}: token targets need the codebook's size; "
                                "pass model.codebook=PATH (a `mimx image codebook` file)")
            return TokenTarget((p, p), self.vocab_size, self.in_chans)
        return hog_target((p, p), self.hog_cell, self.hog_bins)


class ImageMAE(MaskedAutoencoder):
    """Masked autoencoder on image patches; works for any image size divisible by the patch.

    The config picks the method: MAE (encoder on visible patches, transformer
    decoder, norm-pix pixels), SimMIM (mask tokens in the encoder, linear head,
    L1 on pixels), MaskFeat (mask tokens, linear head, HOG target) or
    BEiT-style (mask tokens, linear head, cross-entropy on codebook ids; the
    codes come from ``config.codebook`` or a checkpoint).
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
        if not c.abs_pos and c.rel_pos_bias == "none":
            raise UserError("model.abs_pos=false leaves the encoder without positions; set "
                            "model.rel_pos_bias=shared or layer (BEiT), or keep model.abs_pos=true")
        masking = build_masking(**c.masking, kinds=IMAGE_MASKINGS)
        target = c.build_target()
        encoder = MaskedEncoder(c.embed_dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, drop_path=c.drop_path, init_values=c.layer_scale or None,
                                mask_token=c.encoder_mode == "mask_token", rel_pos=c.rel_pos_bias,
                                grid=(c.image_hw[0] // p, c.image_hw[1] // p))
        decoder = MaskedDecoder(c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads,
                                target.width(c.in_chans), mlp_ratio=c.decoder_mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, fill_hidden=c.encoder_mode == "drop")
        dec_pos = SinCosGridPosition(c.decoder_dim) if c.decoder_depth else None
        super().__init__(
            tokenizer=PatchTokenizer(c.in_chans, c.embed_dim, (p, p)),
            encoder=encoder,
            decoder=decoder,
            encoder_pos=SinCosGridPosition(c.embed_dim) if c.abs_pos else None,
            decoder_pos=dec_pos,
            masking=masking,
            target=target,
            loss=c.loss,
        )
        self.config = c
        self.reset_parameters()
        if isinstance(target, TokenTarget) and c.codebook:
            check_image_codebook(c.codebook, c)
            target.load_codes(read_codebook(c.codebook)[0])

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


def check_image_codebook(path: str, config: ImageMAEConfig) -> tuple[int, dict[str, Any]]:
    """Code count and metadata of a `mimx image codebook` file (codes not read), checked against the model."""
    shape, meta = codebook_header(path)
    p = config.patch_size
    if meta.get("patch") != [p, p] or meta.get("channels") != config.in_chans:
        raise UserError(f"codebook {path} was fitted on {meta.get('patch')} patches of {meta.get('channels')} "
                        f"channel(s), the model cuts {[p, p]} patches of {config.in_chans}; refit it with the "
                        "model's settings (`mimx image codebook` takes the same overrides as pretrain)")
    if config.vocab_size is not None and shape[0] != config.vocab_size:
        raise UserError(f"codebook {path} holds {shape[0]} codes but model.vocab_size={config.vocab_size}; "
                        f"set model.vocab_size={shape[0]} (or leave it unset)")
    return shape[0], meta


def image_mae_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> ImageMAEConfig:
    """Config from a mapping (a hydra ``model`` node) plus keyword overrides.

    ``preset`` (tiny/small/base/large/huge) fills width, depth and heads first.
    Unknown keys raise one error listing the valid ones. A token target with a
    ``codebook`` and no ``vocab_size`` takes the codebook's size.
    """
    values = apply_preset({**(cfg or {}), **overrides}, PRESETS)
    config = from_mapping(ImageMAEConfig, values, "model")
    if config.target == "tokens" and config.codebook and config.vocab_size is None:
        config.vocab_size = check_image_codebook(config.codebook, config)[0]
    return config


def mae_vit(preset: str = "base", **overrides: Any) -> ImageMAE:
    """An image MAE from a ViT preset, e.g. ``mae_vit("small", patch_size=8, img_size=64)``."""
    return ImageMAE(image_mae_config(preset=preset, **overrides))


def config_dict(config: ImageMAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
