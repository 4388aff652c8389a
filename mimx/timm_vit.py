"""Encoders as plain timm models: no masking left in, loadable with timm alone.

An encoder with absolute positions becomes a ``VisionTransformer``; one with BEiT's relative position bias a
``timm.models.beit.Beit`` (``"timm_class": "Beit"`` in the exported arguments). Beit has query and value
biases but no key bias: a key bias adds the same amount to every score of a query, which softmax ignores, so
it is left out and the features stay the same.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from mimx.config import UserError
from mimx.transformer import MaskedEncoder


def _rel_pos_mode(encoder: MaskedEncoder, rel_pos: str | None) -> str:
    """The exported bias layout: the encoder's, or ``layer`` from a shared table (BEiT fine-tunes that way)."""
    if rel_pos in (None, encoder.rel_pos):
        return encoder.rel_pos
    if rel_pos == "layer" and encoder.rel_pos == "shared":
        return rel_pos
    raise UserError(f"an encoder with relative position bias {encoder.rel_pos!r} cannot export as {rel_pos!r}; "
                    "only a shared table can become one per block")


def timm_vit_kwargs(encoder: MaskedEncoder, image_hw: tuple[int, int], patch_size: int, in_chans: int,
                    abs_pos: bool = True, rel_pos: str | None = None) -> dict[str, Any]:
    """timm arguments (JSON-safe) for ``encoder`` on ``in_chans``-channel ``image_hw`` inputs (``abs_pos``:
    the encoder adds fixed positions to its tokens; ``rel_pos="layer"``: a shared relative position table
    becomes one per block, each starting as a copy, as BEiT fine-tunes)."""
    mode = _rel_pos_mode(encoder, rel_pos)
    common = dict(img_size=list(image_hw), patch_size=patch_size, in_chans=in_chans, embed_dim=encoder.dim,
                  depth=encoder.depth, num_heads=encoder.num_heads, mlp_ratio=encoder.mlp_ratio,
                  qkv_bias=encoder.qkv_bias, num_classes=0, global_pool="token", norm_eps=encoder.norm_eps,
                  init_values=encoder.init_values or None)
    if mode == "none":
        return dict(**common, class_token=encoder.cls_token is not None)
    if encoder.cls_token is None:
        raise ValueError("timm's Beit needs a class token; this encoder has a relative position bias and none")
    return dict(timm_class="Beit", **common, use_abs_pos_emb=abs_pos, use_rel_pos_bias=mode == "layer",
                use_shared_rel_pos_bias=mode == "shared")


def build_timm_vit(kwargs: dict[str, Any], **overrides: Any) -> nn.Module:
    """The timm model (``VisionTransformer``, or ``Beit`` when ``kwargs["timm_class"]`` says so) from exported
    arguments, plus e.g. ``num_classes``, ``drop_path_rate``, ``global_pool``."""
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    kw = {**kwargs, **overrides}
    cls = {"VisionTransformer": VisionTransformer, "Beit": Beit}[kw.pop("timm_class", "VisionTransformer")]
    eps = kw.pop("norm_eps", 1e-6)
    kw["img_size"] = tuple(kw["img_size"])
    return cls(norm_layer=functools.partial(nn.LayerNorm, eps=eps), **kw)


def timm_vit_state(encoder: MaskedEncoder, proj: nn.Conv2d, pos: torch.Tensor | None,
                   rel_pos: str | None = None) -> dict[str, torch.Tensor]:
    """Encoder weights under timm names: ``proj`` becomes the patch embedding and the fixed per-patch
    table ``pos [N, D]`` (anything added to every token: sin-cos, a modality embedding; None: nothing)
    ``pos_embed``; ``rel_pos`` as for :func:`timm_vit_kwargs`."""
    state = {"patch_embed.proj.weight": proj.weight}
    if pos is not None:
        if encoder.cls_token is not None:
            pos = torch.cat([pos.new_zeros(1, pos.shape[-1]), pos], dim=0)
        state["pos_embed"] = pos.unsqueeze(0)
    if proj.bias is not None:
        state["patch_embed.proj.bias"] = proj.bias
    if encoder.cls_token is not None:
        state["cls_token"] = encoder.cls_token
    for name, value in encoder.named_parameters():
        if name.startswith(("blocks.", "norm.")):
            state[name] = value
    if encoder.rel_pos != "none":
        state = _beit_names(state, encoder, _rel_pos_mode(encoder, rel_pos))
    return {k: v.detach().clone().float().contiguous() for k, v in state.items()}


def _beit_names(state: dict[str, torch.Tensor], encoder: MaskedEncoder, mode: str) -> dict[str, torch.Tensor]:
    """timm ViT block names to Beit's: separate query and value biases, LayerScale as ``gamma_*``, and the
    relative position tables (shared, or one per block)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            out[name.replace("qkv.bias", "q_bias")], out[name.replace("qkv.bias", "v_bias")] = q, v
        elif name.endswith((".ls1.gamma", ".ls2.gamma")):
            out[name.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")] = value
        else:
            out[name] = value
    tables = [bias.table for bias in encoder.rel_pos_bias]
    if mode == "shared":
        out["rel_pos_bias.relative_position_bias_table"] = tables[0]
    else:
        tables = tables * (encoder.depth // len(tables))  # a shared table: a copy for every block
        out.update({f"blocks.{i}.attn.relative_position_bias_table": t for i, t in enumerate(tables)})
    return out


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
