"""VideoMAE: tube-masked autoencoder on tubelet tokens (optional VideoMAE v2 dual masking); MaskFeat on clips."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mimx.autoencoder import MaskedAutoencoder
from mimx.config import UserError, from_mapping
from mimx.masking import RunningCellDecoding, build_masking
from mimx.patches import PatchTokenizer, unpatchify
from mimx.pos_embed import build_position
from mimx.targets import HOGTarget, PixelTarget, hog_target
from mimx.transformer import VIT_PRESETS, MaskedDecoder, MaskedEncoder, apply_preset, init_mae_weights

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# VideoMAE's decoders per encoder size: width, heads (depth 4)
DECODERS: dict[str, dict[str, int]] = {
    "tiny": dict(decoder_dim=192, decoder_heads=3),
    "small": dict(decoder_dim=192, decoder_heads=3),
    "base": dict(decoder_dim=384, decoder_heads=6),
    "large": dict(decoder_dim=512, decoder_heads=8),
    "huge": dict(decoder_dim=640, decoder_heads=8),
}
PRESETS = {name: {**VIT_PRESETS[name], **DECODERS[name]} for name in VIT_PRESETS}

VIDEO_MASKINGS = ("tube", "random", "block")  # block on a (t, h, w) grid: MaskFeat cube masking


@dataclass
class VideoMAEConfig:
    """Architecture of a VideoMAE (what a checkpoint must match to be loaded)."""

    img_size: list[int] | int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    encoder_norm: bool = True  # final LayerNorm on encoder features (transformers' use_mean_pooling drops it)
    pos_embed: str = "index"  # index: VideoMAE's table over the flat token index; grid: separable 3-D sin-cos
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    decoder_mlp_ratio: float = 4.0
    decoder_embed_bias: bool = False  # VideoMAE's encoder-to-decoder projection has no bias
    decoder_norm_eps: float | None = None  # eps of the decoder's last norm (transformers: 1e-5); None: norm_eps
    norm_pix: bool = True  # per tubelet, (x - mean) / (std + 1e-6), as VideoMAE
    norm_pix_per_channel: bool = True  # VideoMAE normalises each channel of a tubelet on its own
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # input normalisation, undone
    pixel_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))  # for the pixel targets
    loss: str = "mse"
    encoder_mode: str = "drop"  # drop: visible tubelets only (VideoMAE) | mask_token: all, hidden ones replaced
    target: str = "pixels"  # pixels (VideoMAE) | hog (MaskFeat: each frame's HOG per tubelet)
    hog_cell: int = 8
    hog_bins: int = 9
    masking: dict[str, Any] = field(default_factory=lambda: {"kind": "tube", "ratio": 0.9})
    decoder_mask_ratio: float = 0.0  # > 0: VideoMAE v2 dual masking, decoder rebuilds 1 - ratio of hidden tokens
    decoder_mask_cell: int = 2
    name: str = "custom"

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def patch(self) -> tuple[int, int, int]:
        return (self.tubelet_size, self.patch_size, self.patch_size)

    @property
    def grid(self) -> tuple[int, int, int]:
        h, w = self.image_hw
        return (self.num_frames // self.tubelet_size, h // self.patch_size, w // self.patch_size)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix parameter shapes and token meaning (compared when a checkpoint is loaded)."""
        keys = ("tubelet_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                "qkv_bias", "encoder_norm", "pos_embed", "decoder_dim", "decoder_depth", "decoder_heads",
                "decoder_mlp_ratio", "decoder_embed_bias")
        if self.encoder_mode != "drop":  # runs from before MaskFeat record neither
            keys += ("encoder_mode",)
        if self.target != "pixels":
            keys += ("target", "hog_cell", "hog_bins")
        return {k: getattr(self, k) for k in keys}

    def build_target(self) -> PixelTarget | HOGTarget:
        """The per-tubelet target this config trains on (checked for consistency)."""
        if self.target == "pixels":
            return PixelTarget(self.patch, norm_pix=self.norm_pix,
                               per_channel=self.in_chans if self.norm_pix_per_channel else None, eps=1e-6,
                               eps_outside=True, mean=self.pixel_mean, std=self.pixel_std)
        if self.target != "hog":
            raise UserError(f"model.target must be 'pixels' or 'hog', got {self.target!r}")
        if self.norm_pix:
            raise UserError("model.norm_pix normalises pixel targets; with model.target=hog set model.norm_pix=false "
                            "(or use method=maskfeat)")
        return hog_target(self.patch, self.hog_cell, self.hog_bins)


class VideoMAE(MaskedAutoencoder):
    """Masked autoencoder on ``[B, C, T, H, W]`` clips cut into ``t x p x p`` tubelets (no class token)."""

    def __init__(self, config: VideoMAEConfig) -> None:
        c = config
        for axis, size, name in ((c.num_frames, c.tubelet_size, "num_frames / tubelet_size"),
                                 (c.image_hw[0], c.patch_size, "img_size / patch_size"),
                                 (c.image_hw[1], c.patch_size, "img_size / patch_size")):
            if size < 1 or axis % size:
                raise UserError(f"model {name}: {axis} is not divisible by {size}; choose sizes that divide")
        if c.encoder_mode not in ("drop", "mask_token"):
            raise UserError(f"model.encoder_mode must be 'drop' or 'mask_token', got {c.encoder_mode!r}")
        mask_token = c.encoder_mode == "mask_token"
        if c.decoder_depth < 1 and not mask_token:
            raise UserError("model.decoder_depth must be at least 1 when the encoder drops hidden tubelets "
                            "(a linear head needs model.encoder_mode=mask_token, as method=maskfeat)")
        if mask_token and c.decoder_mask_ratio:
            raise UserError("model.decoder_mask_ratio (VideoMAE v2 dual masking) thins a transformer decoder's "
                            "work; with model.encoder_mode=mask_token leave it at 0")
        if len(c.pixel_mean) != c.in_chans or len(c.pixel_std) != c.in_chans:
            raise UserError(f"model.pixel_mean/pixel_std need {c.in_chans} values (one per channel)")
        masking = build_masking(**c.masking, kinds=VIDEO_MASKINGS)
        decode = None
        if c.decoder_mask_ratio:
            decode = RunningCellDecoding(c.decoder_mask_ratio, c.decoder_mask_cell)
        target = c.build_target()
        encoder = MaskedEncoder(c.embed_dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, drop_path=c.drop_path, class_token=False,
                                final_norm=c.encoder_norm, mask_token=mask_token)
        decoder = MaskedDecoder(c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads,
                                target.width(c.in_chans), mlp_ratio=c.decoder_mlp_ratio, qkv_bias=c.qkv_bias,
                                norm_eps=c.norm_eps, embed_bias=c.decoder_embed_bias,
                                head_norm_eps=c.decoder_norm_eps, fill_hidden=not mask_token)
        super().__init__(
            tokenizer=PatchTokenizer(c.in_chans, c.embed_dim, c.patch),
            encoder=encoder,
            decoder=decoder,
            encoder_pos=build_position(c.pos_embed, c.embed_dim),
            decoder_pos=build_position(c.pos_embed, c.decoder_dim) if c.decoder_depth else None,
            masking=masking,
            target=target,
            loss=c.loss,
            decode_subset=decode,
        )
        self.config = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_mae_weights(self)
        self.tokenizer.reset_parameters()
        for token in (self.encoder.mask_token, self.decoder.mask_token):
            if token is not None:
                torch.nn.init.normal_(token, std=0.02)

    def features(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """Clip features ``[B, D]`` with no masking: mean of the token features (``pool=mean``) or all tokens."""
        tokens = self.encode(x)
        if pool == "mean":
            return tokens.mean(dim=1)
        if pool == "tokens":
            return tokens
        raise UserError(f"unknown pooling {pool!r}; choose mean or tokens")

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, L, t*p*p*C] -> [B, C, T, H, W]``."""
        return unpatchify(tokens, self.config.patch, grid, self.config.in_chans)


def video_mae_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> VideoMAEConfig:
    """Config from a mapping (a hydra ``model`` node) plus keyword overrides; ``preset`` fills sizes first."""
    values = apply_preset({**(cfg or {}), **overrides}, PRESETS)
    return from_mapping(VideoMAEConfig, values, "model")


def videomae_vit(preset: str = "base", **overrides: Any) -> VideoMAE:
    """A VideoMAE from a ViT preset, e.g. ``videomae_vit("small", num_frames=8, img_size=112)``."""
    return VideoMAE(video_mae_config(preset=preset, **overrides))


def config_dict(config: VideoMAEConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
