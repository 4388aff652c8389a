"""Export one input modality's path through a MultiMAE encoder as a plain timm ViT (``mimx multimodal export``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from mimx.config import UserError
from mimx.modalities.multimodal.evaluate import load_multimae
from mimx.modalities.multimodal.model import MultiMAE, standardize_depth
from mimx.pos_embed import sincos_grid
from mimx.timm_vit import build_timm_vit, load_timm_vit, timm_vit_kwargs, timm_vit_state
from mimx.train.checkpoint import save_encoder


def _check_input(model: MultiMAE, name: str) -> None:
    if name not in model.inputs:
        raise UserError(f"{name!r} is not an input modality of this model (inputs: {', '.join(model.inputs)})")
    if model.specs[name].kind == "classes":
        pixel_inputs = [n for n in model.inputs if model.specs[n].kind != "classes"]
        raise UserError(f"{name!r} takes class ids through an embedding before its patch projection, which a timm "
                        f"ViT has no place for; export a pixel or depth input ({', '.join(pixel_inputs) or 'none'})")


def timm_parts(model: MultiMAE, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """timm ``VisionTransformer`` arguments and weights that compute ``model.encode({name: x}, [name])``.

    The input adapter's patch projection becomes ``patch_embed``; its sin-cos table plus the modality
    embedding become ``pos_embed``.
    """
    _check_input(model, name)
    c, spec = model.config, model.specs[name]
    adapter = model.input_adapters[name]
    pos = sincos_grid(c.grid, c.embed_dim) + adapter.modality_embed.detach().float().reshape(1, -1)
    kwargs = timm_vit_kwargs(model.encoder, (c.img_size, c.img_size), c.patch_size, spec.channels)
    return kwargs, timm_vit_state(model.encoder, adapter.proj, pos)


def input_description(model: MultiMAE, name: str) -> dict[str, Any]:
    """How a map must be prepared before the exported ViT sees it (what :meth:`MultiMAE.prepare` does)."""
    spec = model.specs[name]
    if spec.kind == "depth":
        how = ("one channel; per image, valid pixels (finite, > 0) standardised to mean 0 and std 1, "
               "invalid pixels set to 0 (mimx.modalities.multimodal.model.standardize_depth)")
    elif spec.mean is not None:
        how = "uint8 maps: (x / 255 - mean) / std per channel; float maps as they are"
    else:
        how = "uint8 maps: x / 255; float maps as they are"
    return {"format": "mimx-multimodal-input/1", "modality": name, "kind": spec.kind, "channels": spec.channels,
            "img_size": model.config.img_size, "mean": spec.mean, "std": spec.std, "prepare": how}


def export_timm(path: str | Path, out: str | Path, name: str) -> dict[str, Any]:
    """Write ``out/encoder.safetensors``, ``out/timm_vit.json`` and ``out/input.json`` for input ``name``.

    The export is checked: the timm model must give the encoder's features for that input alone.
    """
    model = load_multimae(str(path))
    kwargs, state = timm_parts(model, name)
    vit = load_timm_vit(build_timm_vit(kwargs), state).eval()
    spec, size = model.specs[name], model.config.img_size
    generator = torch.Generator().manual_seed(0)
    if spec.kind == "depth":
        raw = torch.rand(2, 1, size, size, generator=generator) * 5
        raw[:, :, :2] = 0  # invalid rows, as sensors give
        ready = standardize_depth(raw)[0]
    else:
        raw = ready = torch.randn(2, spec.channels, size, size, generator=generator)
    with torch.no_grad():
        err = (vit.forward_features(ready) - model.encode({name: raw}, [name])).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"exported timm ViT differs from the encoder by {err:.2e}")
    save_encoder(out, state, kwargs, info_name="timm_vit.json")
    (Path(out) / "input.json").write_text(json.dumps(input_description(model, name), indent=1))
    return {"kwargs": kwargs, "max_abs_diff": err}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mimx multimodal export",
        description="Export the encoder of a MultiMAE, fed by one input modality, as a plain timm ViT.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("out", help="output folder for encoder.safetensors, timm_vit.json and input.json")
    parser.add_argument("--input", default="rgb", help="the input modality the ViT takes (default rgb)")
    args = parser.parse_args(argv)
    out = str(args.out).rstrip("/") or "/"
    info = export_timm(args.checkpoint, args.out, args.input)
    print(f"wrote {out}/encoder.safetensors, timm_vit.json and input.json ({args.input} input; features "
          f"match to {info['max_abs_diff']:.1e}).\n"
          "Load it with:\n"
          "  from mimx.timm_vit import build_timm_vit\n"
          f"  vit = build_timm_vit(json.load(open('{out}/timm_vit.json')), num_classes=10)\n"
          f"  vit.load_state_dict(safetensors.torch.load_file('{out}/encoder.safetensors'), strict=False)"
          "  # only head.* is new\n"
          f"and prepare inputs as {out}/input.json says.")
    return 0
