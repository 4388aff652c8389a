"""Load trained Point-MAEs and export their encoders (``mimx points export``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mimx.modalities.points.model import PointMAE, point_mae_config
from mimx.train.checkpoint import export_command, load_trained, save_encoder

ENCODER_PREFIXES = ("tokenizer.", "encoder.", "encoder_pos.")


def load_point_mae(path: str | Path) -> PointMAE:
    """A :class:`PointMAE` with the weights of a run folder, checkpoint or ``model.safetensors``."""
    return load_trained(path, "points", lambda config: PointMAE(point_mae_config(config)), "a Point-MAE")


def encoder_state_dict(model: PointMAE) -> dict[str, torch.Tensor]:
    """The encoder's weights: group embedding (``tokenizer.``), centre positions, transformer blocks, norm."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def export_encoder(path: str | Path, out: str | Path) -> dict:
    """Write ``encoder.safetensors`` + ``config.json`` (the model config) in ``out``."""
    model = load_point_mae(path)
    info = {"format": "mimx-points-encoder/1", "model_config": dataclasses.asdict(model.config),
            "features": "max+mean of the normed group features, 2 x embed_dim"}
    save_encoder(out, encoder_state_dict(model), info)
    return info


def main(argv: list[str]) -> int:
    return export_command(argv, "mimx points export", "Export a Point-MAE's encoder (group embedding, "
                          "centre-position MLP, transformer) as safetensors + config.json.", export_encoder)
