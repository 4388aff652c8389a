"""``mimx image visualize``: reconstruction figures from a checkpoint and images (files, folders or shards)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mimx.data.sources import first_decoded
from mimx.masking import build_masking
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder, Normalizer
from mimx.modalities.image.export import load_image_mae
from mimx.modalities.image.figures import reconstruction_panels, save_reconstruction_grid
from mimx.modalities.image.model import IMAGE_MASKINGS
from mimx.modalities.image.shards import SUFFIXES


def load_images(sources: list[str], decoder: ImageDecoder, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` images (uint8, centre-cropped by ``decoder``) and their names, in the order given.

    A source is an image file, a folder of images, or shards (a ``.tar``, a
    brace pattern, a folder of ``.tar`` files, a ``pipe:`` URL).
    """
    items, names = first_decoded(sources, lambda s, rng: decoder(s, rng)["image"], count, SUFFIXES, "image")
    return torch.stack(items), names


def visualize(checkpoint: str | Path, sources: list[str], out: str | Path, *, count: int = 8, seed: int = 0,
              mask_ratio: float | None = None, crop_pct: float = 1.0) -> Path:
    """Write original | masked | reconstruction | reconstruction + visible for ``count`` images.

    The mask comes from a generator seeded with ``seed``: the same seed gives
    the same figure. ``mask_ratio`` overrides the ratio the model was trained with.
    """
    model = load_image_mae(checkpoint)
    if mask_ratio is not None:
        model.masking = build_masking(**{**model.config.masking, "ratio": mask_ratio}, kinds=IMAGE_MASKINGS)
    data = ImageDataConfig(image_size=list(model.config.image_hw), channels=model.config.in_chans,
                           crop_pct=crop_pct, **model.normalization)
    images, _ = load_images(sources, ImageDecoder(data, train=False), count)
    normalizer = Normalizer(data.mean, data.std)
    x = normalizer(images)
    with torch.no_grad():
        mask = model.make_mask(x, generator=torch.Generator().manual_seed(seed))
        panels = reconstruction_panels(model, x, mask, normalizer)
    return save_reconstruction_grid(panels, out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mimx image visualize",
        description="Reconstruction figure: original | masked input | reconstruction | reconstruction with the "
                    "visible patches pasted back. Norm-pix predictions are mapped back with each original patch's "
                    "mean and variance.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("sources", nargs="+", help="image files, folders of images, or shards")
    parser.add_argument("--out", default="image_reconstruction.png",
                        help="output PNG (default image_reconstruction.png)")
    parser.add_argument("--num", type=int, default=8, help="images to show (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed: the same seed gives the same figure")
    parser.add_argument("--mask-ratio", type=float, default=None, help="override the trained mask ratio")
    parser.add_argument("--crop-pct", type=float, default=1.0,
                        help="centre crop keeps this fraction before resizing (default 1.0: whole image)")
    args = parser.parse_args(argv)
    path = visualize(args.checkpoint, args.sources, args.out, count=args.num, seed=args.seed,
                     mask_ratio=args.mask_ratio, crop_pct=args.crop_pct)
    print(f"wrote {path}")
    return 0

