"""Interop: load transformers' ViTMAE into mimx; export the mimx encoder to a plain timm ViT."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from mimx.config import UserError
from mimx.interop import check_hf_blocks, normalise_hf_keys, pop_hf_blocks
from mimx.modalities.image.model import ImageMAE, ImageMAEConfig
from mimx.pos_embed import sincos_grid


def _config_from_hf(hf: Any) -> ImageMAEConfig:
    check_hf_blocks(hf, "ViTMAE")
    for name, width, inner in (("encoder", hf.hidden_size, hf.intermediate_size),
                               ("decoder", hf.decoder_hidden_size, hf.decoder_intermediate_size)):
        if int(width * (inner / width)) != inner:
            raise UserError(f"ViTMAE {name} MLP size {inner} cannot be expressed as width {width} x mlp_ratio")
    image = hf.image_size if isinstance(hf.image_size, int) else list(hf.image_size)
    patch = hf.patch_size if isinstance(hf.patch_size, int) else hf.patch_size[0]
    return ImageMAEConfig(
        img_size=image, patch_size=patch, in_chans=hf.num_channels,
        embed_dim=hf.hidden_size, depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
        mlp_ratio=hf.intermediate_size / hf.hidden_size, qkv_bias=hf.qkv_bias, norm_eps=hf.layer_norm_eps,
        decoder_dim=hf.decoder_hidden_size, decoder_depth=hf.decoder_num_hidden_layers,
        decoder_heads=hf.decoder_num_attention_heads,
        decoder_mlp_ratio=hf.decoder_intermediate_size / hf.decoder_hidden_size,
        norm_pix=hf.norm_pix_loss, loss="mse", masking={"kind": "random", "ratio": hf.mask_ratio},
        name="from_transformers",
    )


def _check_table(name: str, table: torch.Tensor, grid: tuple[int, int]) -> None:
    expected = sincos_grid(grid, table.shape[-1])
    got = table.reshape(-1, table.shape[-1])
    if not got.abs().any():
        raise UserError(f"{name} is all zeros: this ViTMAE was never given its sin-cos table (transformers 5 "
                        "leaves it unset on a randomly initialised model; pretrained checkpoints hold it). "
                        "Load a pretrained checkpoint, or fill the table before converting")
    if not torch.allclose(got[0], torch.zeros_like(got[0])) or not torch.allclose(got[1:].float(), expected,
                                                                                   atol=1e-5):
        raise UserError(f"{name} is not the fixed MAE sin-cos table for a {grid[0]}x{grid[1]} grid; "
                        "mimx computes positions and cannot hold learned ones for this model")


def from_transformers(model: Any) -> ImageMAE:
    """A mimx :class:`ImageMAE` with the config and weights of a transformers ``ViTMAEForPreTraining``.

    ``model`` is the model object or a local folder saved with ``save_pretrained``.
    With the same ``noise`` both give the same loss and predictions.
    """
    if isinstance(model, str):
        from transformers import ViTMAEForPreTraining

        model = ViTMAEForPreTraining.from_pretrained(model, local_files_only=True)
    config = _config_from_hf(model.config)
    mae = ImageMAE(config)
    hf = normalise_hf_keys({k: v.detach() for k, v in model.state_dict().items()})
    h, w = config.image_hw
    grid = (h // config.patch_size, w // config.patch_size)
    _check_table("vit.embeddings.position_embeddings", hf.pop("vit.embeddings.position_embeddings"), grid)
    _check_table("decoder.decoder_pos_embed", hf.pop("decoder.decoder_pos_embed"), grid)

    state: dict[str, torch.Tensor] = {
        "encoder.cls_token": hf.pop("vit.embeddings.cls_token"),
        "tokenizer.proj.weight": hf.pop("vit.embeddings.patch_embeddings.projection.weight"),
        "tokenizer.proj.bias": hf.pop("vit.embeddings.patch_embeddings.projection.bias"),
        "encoder.norm.weight": hf.pop("vit.layernorm.weight"),
        "encoder.norm.bias": hf.pop("vit.layernorm.bias"),
        "decoder.mask_token": hf.pop("decoder.mask_token"),
        "decoder.embed.weight": hf.pop("decoder.decoder_embed.weight"),
        "decoder.embed.bias": hf.pop("decoder.decoder_embed.bias"),
        "decoder.norm.weight": hf.pop("decoder.decoder_norm.weight"),
        "decoder.norm.bias": hf.pop("decoder.decoder_norm.bias"),
        "decoder.head.weight": hf.pop("decoder.decoder_pred.weight"),
        "decoder.head.bias": hf.pop("decoder.decoder_pred.bias"),
    }
    for src, dst, depth in (("vit.layers", "encoder.blocks", config.depth),
                            ("decoder.decoder_layers", "decoder.blocks", config.decoder_depth)):
        state.update(pop_hf_blocks(hf, src, dst, depth))
    if hf:
        raise UserError(f"transformers model has weights mimx does not know: {', '.join(sorted(hf)[:8])}")
    mae.load_state_dict(state, strict=True)
    return mae


# ---------------------------------------------------------------- timm export


def timm_kwargs(config: ImageMAEConfig) -> dict[str, Any]:
    """``timm.models.vision_transformer.VisionTransformer`` arguments matching the encoder (JSON-safe)."""
    return dict(
        img_size=list(config.image_hw), patch_size=config.patch_size, in_chans=config.in_chans,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, num_classes=0, global_pool="token",
        class_token=True, norm_eps=config.norm_eps,
    )


def build_timm_vit(kwargs: dict[str, Any], **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformer`` from :func:`timm_kwargs` (plus e.g. ``num_classes``, ``drop_path_rate``)."""
    from timm.models.vision_transformer import VisionTransformer

    kw = {**kwargs, **overrides}
    eps = kw.pop("norm_eps", 1e-6)
    kw["img_size"] = tuple(kw["img_size"])
    return VisionTransformer(norm_layer=functools.partial(nn.LayerNorm, eps=eps), **kw)


def timm_state_dict(mae: ImageMAE) -> dict[str, torch.Tensor]:
    """Encoder weights under timm ViT names; the fixed sin-cos table becomes ``pos_embed``."""
    c = mae.config
    h, w = c.image_hw
    grid = (h // c.patch_size, w // c.patch_size)
    pos = torch.cat([torch.zeros(1, c.embed_dim), sincos_grid(grid, c.embed_dim)], dim=0).unsqueeze(0)
    state = {"cls_token": mae.encoder.cls_token, "pos_embed": pos,
             "patch_embed.proj.weight": mae.tokenizer.proj.weight,
             "patch_embed.proj.bias": mae.tokenizer.proj.bias}
    for name, value in mae.encoder.named_parameters():
        if name.startswith(("blocks.", "norm.")):
            state[name] = value
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def to_timm(mae: ImageMAE, **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformer`` holding the mimx encoder; loads with no missing or unexpected keys."""
    vit = build_timm_vit(timm_kwargs(mae.config), **overrides)
    state = timm_state_dict(mae)
    target = vit.state_dict()
    if "norm.weight" not in target and "fc_norm.weight" in target:  # avg pooling: the final norm follows the pool
        state = {("fc_norm." + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
    missing, unexpected = vit.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]  # a new classifier head is expected
    if missing or unexpected:
        raise RuntimeError(f"timm export mismatch: missing {missing}, unexpected {unexpected}")
    return vit
