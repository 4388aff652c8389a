"""Load trained Point-MAEs and export their encoders (``mimx points export``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mimx.modalities.points.model import PointMAE, point_mae_config
from mimx.train.checkpoint import load_trained

ENCODER_PREFIXES = ("tokenizer.", "encoder.", "encoder_pos.")


def load_point_mae(path: str | Path) -> PointMAE:
    """A :class:`PointMAE` with the weights of a run folder, checkpoint or ``model.safetensors``."""
    return load_trained(path, "points", lambda config: PointMAE(point_mae_config(config)), "a Point-MAE")


def encoder_state_dict(model: PointMAE) -> dict[str, torch.Tensor]:
    """The encoder's weights: group embedding (``tokenizer.``), centre positions, transformer blocks, norm."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def export_encoder(path: str | Path, out: str | Path) -> dict:
    """Write ``encoder.safetensors`` + ``config.json`` (the model config) in ``out``."""
    from safetensors.torch import save_file

    model = load_point_mae(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(encoder_state_dict(model), str(out / "encoder.safetensors"))
    info = {"format": "mimx-points-encoder/1", "model_config": dataclasses.asdict(model.config),
            "features": "max+mean of the normed group features, 2 x embed_dim"}
    (out / "config.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mimx points export",
                                     description="Export a Point-MAE's encoder (group embedding, centre-position "
                                                 "MLP, transformer) as safetensors + config.json.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("out", help="output folder (encoder.safetensors + config.json)")
    args = parser.parse_args(argv)
    export_encoder(args.checkpoint, args.out)
    print(f"wrote {args.out}/encoder.safetensors and config.json")
    return 0
