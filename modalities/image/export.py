"""Load trained image MAEs and export their encoders (``mimx image export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mimx.modalities.image.interop import timm_kwargs, timm_state_dict, to_timm
from mimx.modalities.image.model import ImageMAE, image_mae_config
from mimx.train.checkpoint import load_trained, save_encoder


def load_image_mae(path: str | Path) -> ImageMAE:
    """An :class:`ImageMAE` with the weights of a run folder, checkpoint or ``model.safetensors``.

    The pixel normalisation it was trained with is attached as ``model.normalization``
    (``{"mean": [...], "std": [...]}``; ImageNet statistics for files that do not record it).
    """
    return load_trained(path, "image", lambda config: ImageMAE(image_mae_config(config)), "an image MAE")


def export_timm(path: str | Path, out: str | Path) -> dict:
    """Write ``out/encoder.safetensors`` (timm ViT names) and ``out/timm_vit.json`` (its arguments).

    The export is checked: the timm model must give the encoder's features.
    """
    model = load_image_mae(path)
    kwargs = timm_kwargs(model)
    vit = to_timm(model).eval()
    x = torch.randn(2, model.config.in_chans, *model.config.image_hw)
    with torch.no_grad():
        err = (vit.forward_features(x) - model.encode(x)).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"exported timm ViT differs from the encoder by {err:.2e}")
    save_encoder(out, timm_state_dict(model), kwargs, info_name="timm_vit.json")
    return {"kwargs": kwargs, "max_abs_diff": err}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mimx image export",
                                     description="Export the encoder of a mimx image MAE as a plain timm ViT.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("out", help="output folder for encoder.safetensors and timm_vit.json")
    args = parser.parse_args(argv)
    out = str(args.out).rstrip("/") or "/"
    info = export_timm(args.checkpoint, args.out)
    print(f"wrote {out}/encoder.safetensors and timm_vit.json (features match to {info['max_abs_diff']:.1e}).\n"
          "Load it with:\n"
          "  from mimx.modalities.image.interop import build_timm_vit\n"
          f"  vit = build_timm_vit(json.load(open('{out}/timm_vit.json')), num_classes=10)\n"
          f"  vit.load_state_dict(safetensors.torch.load_file('{out}/encoder.safetensors'), strict=False)"
          "  # only head.* is new")
    return 0
