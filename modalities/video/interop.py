"""Interop: load transformers' VideoMAE into mimx; export the encoder as a plain state dict."""

from __future__ import annotations

from typing import Any

import torch

from mimx.config import UserError
from mimx.interop import check_hf_blocks, normalise_hf_keys, pop_hf_blocks
from mimx.modalities.video.model import IMAGENET_MEAN, IMAGENET_STD, VideoMAE, VideoMAEConfig


def _qv_bias(hf: Any) -> bool:
    """Whether the layers have query and value biases (``qv_bias`` in transformers 5, ``qkv_bias`` in 4.x)."""
    return bool(getattr(hf, "qv_bias", getattr(hf, "qkv_bias", True)))


def _config_from_hf(hf: Any) -> VideoMAEConfig:
    check_hf_blocks(hf, "VideoMAE")
    if hf.num_channels != 3:
        raise UserError("transformers' VideoMAE un-normalises its targets with ImageNet statistics, which needs "
                        f"3 channels; this config has {hf.num_channels}")
    size = hf.image_size if isinstance(hf.image_size, int) else list(hf.image_size)
    return VideoMAEConfig(
        img_size=size, num_frames=hf.num_frames, tubelet_size=hf.tubelet_size, patch_size=hf.patch_size,
        in_chans=hf.num_channels, embed_dim=hf.hidden_size, depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads, mlp_ratio=hf.intermediate_size / hf.hidden_size,
        qkv_bias=_qv_bias(hf), norm_eps=hf.layer_norm_eps, encoder_norm=not hf.use_mean_pooling,
        pos_embed="index", decoder_dim=hf.decoder_hidden_size, decoder_depth=hf.decoder_num_hidden_layers,
        decoder_heads=hf.decoder_num_attention_heads,
        decoder_mlp_ratio=hf.decoder_intermediate_size / hf.decoder_hidden_size,
        decoder_embed_bias=False, decoder_norm_eps=1e-5, norm_pix=hf.norm_pix_loss, norm_pix_per_channel=True,
        pixel_mean=list(IMAGENET_MEAN), pixel_std=list(IMAGENET_STD), loss="mse",
        masking={"kind": "tube", "ratio": 0.9}, name="from_transformers",
    )


def from_transformers(model: Any) -> VideoMAE:
    """A mimx :class:`VideoMAE` with the config and weights of a transformers ``VideoMAEForPreTraining``.

    ``model`` is the model object or a local folder saved with ``save_pretrained``.
    transformers takes ``[B, T, C, H, W]`` clips, mimx ``[B, C, T, H, W]``; with
    the same ``bool_masked_pos`` as ``mask``, both give the same loss.
    """
    if isinstance(model, str):
        from transformers import VideoMAEForPreTraining

        model = VideoMAEForPreTraining.from_pretrained(model, local_files_only=True)
    config = _config_from_hf(model.config)
    mae = VideoMAE(config)
    hf = normalise_hf_keys({k: v.detach() for k, v in model.state_dict().items()})
    state: dict[str, torch.Tensor] = {
        "tokenizer.proj.weight": hf.pop("videomae.embeddings.patch_embeddings.projection.weight"),
        "tokenizer.proj.bias": hf.pop("videomae.embeddings.patch_embeddings.projection.bias"),
        "decoder.mask_token": hf.pop("mask_token"),
        "decoder.embed.weight": hf.pop("encoder_to_decoder.weight"),
        "decoder.norm.weight": hf.pop("decoder.norm.weight"),
        "decoder.norm.bias": hf.pop("decoder.norm.bias"),
        "decoder.head.weight": hf.pop("decoder.head.weight"),
        "decoder.head.bias": hf.pop("decoder.head.bias"),
    }
    if config.encoder_norm:
        state["encoder.norm.weight"] = hf.pop("videomae.layernorm.weight")
        state["encoder.norm.bias"] = hf.pop("videomae.layernorm.bias")
    state.update(pop_hf_blocks(hf, "videomae.layers", "encoder.blocks", config.depth))
    state.update(pop_hf_blocks(hf, "decoder.decoder_layers", "decoder.blocks", config.decoder_depth))
    if hf:
        raise UserError(f"transformers model has weights mimx does not know: {', '.join(sorted(hf)[:8])}")
    mae.load_state_dict(state, strict=True)
    return mae


def encoder_state_dict(mae: VideoMAE) -> dict[str, torch.Tensor]:
    """The encoder alone for fine-tuning: ``patch_embed.*``, ``blocks.*``, ``norm.*`` and the fixed ``pos_embed``.

    The names follow timm's ViT (and VideoMAE's fine-tuning models), so the
    weights drop into a video ViT with a Conv3d patch embedding.
    """
    c = mae.config
    pos = mae.encoder_pos(c.grid, None)
    state = {"pos_embed": pos, "patch_embed.proj.weight": mae.tokenizer.proj.weight,
             "patch_embed.proj.bias": mae.tokenizer.proj.bias}
    for name, value in mae.encoder.named_parameters():
        if name.startswith(("blocks.", "norm.")):
            state[name] = value
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
