"""``mimx multimodal visualize``: per-modality input / masked / prediction figure from a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mimx.config import UserError, name_list
from mimx.data.sources import first_decoded
from mimx.modalities.multimodal.data import MultiDataConfig, MultiDecoder
from mimx.modalities.multimodal.evaluate import load_multimae
from mimx.modalities.multimodal.figures import multimodal_panels, save_panels


def visualize(checkpoint: str | Path, sources: list[str], out: str | Path, *, count: int = 4, seed: int = 0,
              inputs: list[str] | None = None) -> Path:
    """Write the figure for ``count`` samples of ``sources`` (shards); the same ``seed`` gives the same figure.

    ``inputs``: show what the model predicts from only these modalities (the others are withheld).
    """
    model = load_multimae(checkpoint)
    unknown = [n for n in inputs or [] if n not in model.inputs]
    if unknown:
        raise UserError(f"--inputs {unknown} are not input modalities of this model; choose among {model.inputs}")
    cfg = MultiDataConfig(image_size=model.config.img_size, missing="allow")
    decoder = MultiDecoder(cfg, model.specs, train=False)
    items, _ = first_decoded(sources, decoder, count, (".tar",), "aligned sample")
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    present = batch["present"].clone()
    if inputs:
        names = list(model.specs)
        for name in model.inputs:
            if name not in inputs:
                present[:, names.index(name)] = False
    with torch.no_grad():
        out_ = model(batch, present=present, generator=torch.Generator().manual_seed(seed))
    return save_panels(multimodal_panels(model, batch, out_), out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mimx multimodal visualize",
        description="Per modality: the map, the masked input (hidden patches grey) and the prediction; depth on a "
                    "colour ramp (standardised per image), classes in a palette.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("sources", nargs="+", help="aligned shards (.tar, brace patterns, folders of .tar)")
    parser.add_argument("--out", default="multimodal_reconstruction.png",
                        help="output PNG (default multimodal_reconstruction.png)")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="mask seed: the same seed gives the same figure")
    parser.add_argument("--inputs", default=None, help="comma-separated input modalities to keep (e.g. rgb)")
    args = parser.parse_args(argv)
    inputs = name_list(args.inputs) or None
    print(f"wrote {visualize(args.checkpoint, args.sources, args.out, count=args.num, seed=args.seed, inputs=inputs)}")
    return 0
