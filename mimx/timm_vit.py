"""Encoders as plain timm ``VisionTransformer`` models: no masking left in, loadable with timm alone."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from mimx.transformer import MaskedEncoder


def timm_vit_kwargs(encoder: MaskedEncoder, image_hw: tuple[int, int], patch_size: int, in_chans: int
                    ) -> dict[str, Any]:
    """``VisionTransformer`` arguments (JSON-safe) for ``encoder`` on ``in_chans``-channel ``image_hw`` inputs."""
    return dict(
        img_size=list(image_hw), patch_size=patch_size, in_chans=in_chans, embed_dim=encoder.dim,
        depth=encoder.depth, num_heads=encoder.num_heads, mlp_ratio=encoder.mlp_ratio, qkv_bias=encoder.qkv_bias,
        num_classes=0, global_pool="token", class_token=encoder.cls_token is not None, norm_eps=encoder.norm_eps,
        init_values=encoder.init_values or None,
    )


def build_timm_vit(kwargs: dict[str, Any], **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformer`` from exported arguments (plus e.g. ``num_classes``, ``drop_path_rate``)."""
    from timm.models.vision_transformer import VisionTransformer

    kw = {**kwargs, **overrides}
    eps = kw.pop("norm_eps", 1e-6)
    kw["img_size"] = tuple(kw["img_size"])
    return VisionTransformer(norm_layer=functools.partial(nn.LayerNorm, eps=eps), **kw)


def timm_vit_state(encoder: MaskedEncoder, proj: nn.Conv2d, pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder weights under timm ViT names: ``proj`` becomes the patch embedding and the fixed per-patch
    table ``pos [N, D]`` (anything added to every token: sin-cos, a modality embedding) ``pos_embed``."""
    if encoder.cls_token is not None:
        pos = torch.cat([pos.new_zeros(1, pos.shape[-1]), pos], dim=0)
    state = {"pos_embed": pos.unsqueeze(0), "patch_embed.proj.weight": proj.weight}
    if proj.bias is not None:
        state["patch_embed.proj.bias"] = proj.bias
    if encoder.cls_token is not None:
        state["cls_token"] = encoder.cls_token
    for name, value in encoder.named_parameters():
        if name.startswith(("blocks.", "norm.")):
            state[name] = value
    return {k: v.detach().clone().float().contiguous() for k, v in state.items()}


def load_timm_vit(vit: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load :func:`timm_vit_state` into ``vit``: only a new classifier head may be missing."""
    if "norm.weight" not in vit.state_dict() and "fc_norm.weight" in vit.state_dict():
        # average pooling: timm's final norm follows the pool
        state = {("fc_norm." + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise RuntimeError(f"timm export mismatch: missing {missing}, unexpected {unexpected}")
    return vit
