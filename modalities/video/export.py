"""Load trained VideoMAEs and export their encoders (``mimx video export``)."""

from __future__ import annotations

from pathlib import Path

from mimx.modalities.video.interop import encoder_state_dict
from mimx.modalities.video.model import VideoMAE, video_mae_config
from mimx.train.checkpoint import export_command, load_trained, save_encoder


def load_video_mae(path: str | Path) -> VideoMAE:
    """A :class:`VideoMAE` with the weights of a run folder, checkpoint or ``model.safetensors``.

    The input normalisation it was trained with is attached as ``model.normalization``.
    """
    return load_trained(path, "video", lambda config: VideoMAE(video_mae_config(config)), "a VideoMAE")


def export_encoder(path: str | Path, out: str | Path) -> dict:
    """Write the encoder as ``encoder.safetensors`` + ``config.json`` (architecture and normalisation) in ``out``."""
    model = load_video_mae(path)
    c = model.config
    info = {"format": "mimx-video-encoder/1", "img_size": list(c.image_hw), "num_frames": c.num_frames,
            "tubelet_size": c.tubelet_size, "patch_size": c.patch_size, "in_chans": c.in_chans,
            "embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads, "mlp_ratio": c.mlp_ratio,
            "qkv_bias": c.qkv_bias, "norm_eps": c.norm_eps, "final_norm": c.encoder_norm,
            "pos_embed": c.pos_embed, "normalization": model.normalization}
    save_encoder(out, encoder_state_dict(model), info)
    return info


def main(argv: list[str]) -> int:
    return export_command(argv, "mimx video export", "Export a VideoMAE's encoder (timm ViT names, Conv3d patch "
                          "embedding, fixed pos_embed) for fine-tuning.", export_encoder)
