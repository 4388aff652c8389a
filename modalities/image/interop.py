"""Interop: load transformers' ViTMAE (MAE), ViTForMaskedImageModeling (SimMIM) and BeitForMaskedImageModeling
(BEiT) into mimx; export the mimx encoder to a plain timm ViT (or Beit)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from mimx.config import UserError
from mimx.interop import check_hf_blocks, normalise_hf_keys, pop_hf_blocks
from mimx.modalities.image.model import ImageMAE, ImageMAEConfig
from mimx.pos_embed import sincos_grid
from mimx.timm_vit import build_timm_vit, load_timm_vit, timm_vit_kwargs, timm_vit_state


def _mlp_ratio(name: str, width: int, inner: int) -> float:
    if int(width * (inner / width)) != inner:
        raise UserError(f"{name} MLP size {inner} cannot be expressed as width {width} x mlp_ratio")
    return inner / width


def _encoder_fields(hf: Any, name: str) -> dict[str, Any]:
    """ImageMAEConfig fields of a transformers ViT-family encoder config."""
    check_hf_blocks(hf, name)
    image = hf.image_size if isinstance(hf.image_size, int) else list(hf.image_size)
    patch = hf.patch_size if isinstance(hf.patch_size, int) else hf.patch_size[0]
    return dict(img_size=image, patch_size=patch, in_chans=hf.num_channels, embed_dim=hf.hidden_size,
                depth=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
                mlp_ratio=_mlp_ratio(f"{name} encoder", hf.hidden_size, hf.intermediate_size),
                qkv_bias=getattr(hf, "qkv_bias", True),  # BEiT has no such key: always query and value biases
                norm_eps=hf.layer_norm_eps, name="from_transformers")


def _mae_config(hf: Any) -> ImageMAEConfig:
    return ImageMAEConfig(
        **_encoder_fields(hf, "ViTMAE"),
        decoder_dim=hf.decoder_hidden_size, decoder_depth=hf.decoder_num_hidden_layers,
        decoder_heads=hf.decoder_num_attention_heads,
        decoder_mlp_ratio=_mlp_ratio("ViTMAE decoder", hf.decoder_hidden_size, hf.decoder_intermediate_size),
        norm_pix=hf.norm_pix_loss, loss="mse", masking={"kind": "random", "ratio": hf.mask_ratio},
    )


def _simmim_config(hf: Any) -> ImageMAEConfig:
    fields = _encoder_fields(hf, "ViTForMaskedImageModeling")
    if hf.encoder_stride != fields["patch_size"]:
        raise UserError(f"ViTForMaskedImageModeling has encoder_stride={hf.encoder_stride} but patch_size="
                        f"{fields['patch_size']}; mimx predicts one patch per token (they must be equal)")
    grid = fields["img_size"] // fields["patch_size"] if isinstance(fields["img_size"], int) else 0
    cell = max(1, 32 // fields["patch_size"])  # SimMIM's 32-px mask cells, where the grid allows
    return ImageMAEConfig(
        **fields, decoder_depth=0, encoder_mode="mask_token", target="pixels", norm_pix=False, loss="l1",
        masking={"kind": "coarse", "ratio": 0.6, "cell": cell if grid % cell == 0 else 1},
    )


def _beit_config(hf: Any) -> ImageMAEConfig:
    if hf.use_relative_position_bias and hf.use_shared_relative_position_bias:
        raise UserError("this BEiT config asks for both shared and per-layer relative position biases; mimx "
                        "holds one kind")
    rel_pos = "shared" if hf.use_shared_relative_position_bias else "layer" if hf.use_relative_position_bias else "none"
    return ImageMAEConfig(
        **_encoder_fields(hf, "BeitForMaskedImageModeling"), layer_scale=hf.layer_scale_init_value or None,
        rel_pos_bias=rel_pos, abs_pos=hf.use_absolute_position_embeddings, encoder_mode="mask_token",
        decoder_depth=0, target="tokens", norm_pix=False, loss="cross_entropy", vocab_size=hf.vocab_size,
        masking={"kind": "block", "ratio": 0.4},
    )


def _beit_state(hf: dict[str, torch.Tensor], config: ImageMAEConfig, mae: ImageMAE) -> dict[str, torch.Tensor]:
    """BEiT weights (popped from ``hf``) under mimx names: fused qkv with a zero key bias, LayerScale from the
    ``lambda_*`` vectors, the relative position tables, the vocabulary head."""
    e = "beit.embeddings."
    if e + "mask_token" not in hf:
        warnings.warn("this BEiT was built with use_mask_token=false: its encoder features load, its mask token "
                      "is a new one", stacklevel=3)
    state = {"encoder.cls_token": hf.pop(e + "cls_token"),
             "encoder.mask_token": hf.pop(e + "mask_token", mae.encoder.mask_token.detach()),
             "tokenizer.proj.weight": hf.pop(e + "patch_embeddings.projection.weight"),
             "tokenizer.proj.bias": hf.pop(e + "patch_embeddings.projection.bias"),
             "encoder.norm.weight": hf.pop("layernorm.weight"), "encoder.norm.bias": hf.pop("layernorm.bias"),
             "decoder.head.weight": hf.pop("lm_head.weight"), "decoder.head.bias": hf.pop("lm_head.bias"),
             **pop_hf_blocks(hf, "beit.layers", "encoder.blocks", config.depth)}
    for i in range(config.depth):
        if config.layer_scale:
            for n in (1, 2):
                state[f"encoder.blocks.{i}.ls{n}.gamma"] = hf.pop(f"beit.layers.{i}.lambda_{n}")
        if config.rel_pos_bias == "layer":
            table = hf.pop(f"beit.layers.{i}.relative_position_bias.relative_position_bias_table")
            state[f"encoder.rel_pos_bias.{i}.relative_position_bias_table"] = table
    if config.rel_pos_bias == "shared":
        state["encoder.rel_pos_bias.0.relative_position_bias_table"] = hf.pop(
            "beit.shared_position_bias.relative_position_bias_table")
    return state


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


def _load_hf(path: str) -> Any:
    import transformers

    architectures = transformers.AutoConfig.from_pretrained(path, local_files_only=True).architectures or []
    name = next((n for n in ("ViTForMaskedImageModeling", "BeitForMaskedImageModeling") if n in architectures),
                "ViTMAEForPreTraining")
    return getattr(transformers, name).from_pretrained(path, local_files_only=True)


def from_transformers(model: Any) -> ImageMAE:
    """A mimx :class:`ImageMAE` with the config and weights of a transformers model.

    ``model`` is a ``ViTMAEForPreTraining`` (MAE; with the same ``noise`` both
    give the same loss and predictions) or a ``ViTForMaskedImageModeling``
    (SimMIM: mask tokens in the encoder, a 1x1 convolution + pixel shuffle as
    the head, L1 on hidden pixels; with the same mask, the same loss and
    reconstruction) or a ``BeitForMaskedImageModeling`` (BEiT: mask tokens, shared
    or per-layer relative position bias, LayerScale, a head over the visual-token
    vocabulary; with the same mask, the same logits and loss), as an object or a
    local folder saved with ``save_pretrained``. Absolute positions, where the
    model has them, must be the fixed sin-cos table: mimx computes them. A BEiT
    comes without the tokenizer its head predicts (a DALL-E dVAE): its token
    target has no codes until a codebook is given (``model.codebook``).
    """
    if isinstance(model, str):
        model = _load_hf(model)
    kind = type(model).__name__
    make = {"ViTForMaskedImageModeling": _simmim_config, "BeitForMaskedImageModeling": _beit_config}
    config = make.get(kind, _mae_config)(model.config)
    mae = ImageMAE(config)
    hf = normalise_hf_keys({k: v.detach() for k, v in model.state_dict().items()})
    h, w = config.image_hw
    grid = (h // config.patch_size, w // config.patch_size)
    prefix = "beit" if kind == "BeitForMaskedImageModeling" else "vit"
    if config.abs_pos:
        _check_table(f"{prefix}.embeddings.position_embeddings", hf.pop(f"{prefix}.embeddings.position_embeddings"),
                     grid)
    if prefix == "beit":
        state = _beit_state(hf, config, mae)
        state["target.codebook"] = mae.target.codebook
        if hf:
            raise UserError(f"transformers model has weights mimx does not know: {', '.join(sorted(hf)[:8])}")
        mae.load_state_dict(state, strict=True)
        return mae
    simmim = kind == "ViTForMaskedImageModeling"
    state: dict[str, torch.Tensor] = {
        "encoder.cls_token": hf.pop("vit.embeddings.cls_token"),
        "tokenizer.proj.weight": hf.pop("vit.embeddings.patch_embeddings.projection.weight"),
        "tokenizer.proj.bias": hf.pop("vit.embeddings.patch_embeddings.projection.bias"),
        "encoder.norm.weight": hf.pop("vit.layernorm.weight"),
        "encoder.norm.bias": hf.pop("vit.layernorm.bias"),
        **pop_hf_blocks(hf, "vit.layers", "encoder.blocks", config.depth),
    }
    if simmim:
        state["encoder.mask_token"] = hf.pop("vit.embeddings.mask_token")
        # pixel shuffle reads output channel c * p^2 + i * p + j; a mimx token's values are ordered (i, j, c)
        p, c = config.patch_size, config.in_chans
        weight = hf.pop("decoder.0.weight").view(c, p, p, -1).permute(1, 2, 0, 3).reshape(p * p * c, -1)
        state["decoder.head.weight"] = weight
        state["decoder.head.bias"] = hf.pop("decoder.0.bias").view(c, p, p).permute(1, 2, 0).reshape(-1)
    else:
        _check_table("decoder.decoder_pos_embed", hf.pop("decoder.decoder_pos_embed"), grid)
        state.update({
            "decoder.mask_token": hf.pop("decoder.mask_token"),
            "decoder.embed.weight": hf.pop("decoder.decoder_embed.weight"),
            "decoder.embed.bias": hf.pop("decoder.decoder_embed.bias"),
            "decoder.norm.weight": hf.pop("decoder.decoder_norm.weight"),
            "decoder.norm.bias": hf.pop("decoder.decoder_norm.bias"),
            "decoder.head.weight": hf.pop("decoder.decoder_pred.weight"),
            "decoder.head.bias": hf.pop("decoder.decoder_pred.bias"),
            **pop_hf_blocks(hf, "decoder.decoder_layers", "decoder.blocks", config.decoder_depth),
        })
    if hf:
        raise UserError(f"transformers model has weights mimx does not know: {', '.join(sorted(hf)[:8])}")
    mae.load_state_dict(state, strict=True)
    return mae


# ---------------------------------------------------------------- timm export


def timm_kwargs(mae: ImageMAE, rel_pos: str | None = None) -> dict[str, Any]:
    """timm ``VisionTransformer`` (or ``Beit``) arguments matching the encoder (JSON-safe); ``rel_pos="layer"``
    turns a shared relative position table into one per block."""
    c = mae.config
    return timm_vit_kwargs(mae.encoder, c.image_hw, c.patch_size, c.in_chans, abs_pos=c.abs_pos, rel_pos=rel_pos)


def timm_state_dict(mae: ImageMAE, rel_pos: str | None = None) -> dict[str, torch.Tensor]:
    """Encoder weights under timm names; the fixed sin-cos table becomes ``pos_embed``."""
    c = mae.config
    h, w = c.image_hw
    pos = sincos_grid((h // c.patch_size, w // c.patch_size), c.embed_dim) if c.abs_pos else None
    return timm_vit_state(mae.encoder, mae.tokenizer.proj, pos, rel_pos)


def to_timm(mae: ImageMAE, rel_pos: str | None = None, **overrides: Any) -> nn.Module:
    """A timm ``VisionTransformer`` (``Beit`` with a relative position bias) holding the mimx encoder; loads
    with no missing or unexpected keys. ``rel_pos="layer"``: a shared relative position table becomes one per
    block (BEiT's fine-tuning); ``overrides`` go to the timm class (``num_classes``, ``drop_path_rate``, ...)."""
    return load_timm_vit(build_timm_vit(timm_kwargs(mae, rel_pos), **overrides), timm_state_dict(mae, rel_pos))
