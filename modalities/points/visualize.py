"""``mimx points visualize``: reconstruction PNG and .ply files from a checkpoint and clouds."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mimx.data.sources import first_decoded
from mimx.modalities.points.data import PointDataConfig, PointDecoder
from mimx.modalities.points.export import load_point_mae
from mimx.modalities.points.figures import PREDICTED, VISIBLE, PointPanels, point_panels, save_panels
from mimx.modalities.points.io import SUFFIXES, write_ply
from mimx.modalities.points.model import build_group_masking


def load_clouds(sources: list[str], decoder: PointDecoder, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` prepared clouds ``[N, num_points, 3]`` and their names, in the order given.

    A source is a cloud or mesh file, a folder of them, or shards (a ``.tar``, a brace pattern, a
    folder of ``.tar`` files, a ``pipe:`` URL). An unreadable file is reported and skipped.
    """
    items, names = first_decoded(sources, lambda s, rng: decoder(s, rng)["points"][0], count, set(SUFFIXES),
                                 "point cloud")
    return torch.stack(items), names


def write_plys(panels: PointPanels, out: Path) -> list[Path]:
    """Per cloud ``<out>-<i>-input.ply`` and ``<out>-<i>-reconstruction.ply`` (visible blue, predicted red)."""
    written = []
    for i, (inputs, visible, predicted) in enumerate(zip(panels.inputs, panels.visible, panels.predicted,
                                                         strict=True)):
        written.append(write_ply(out.with_name(f"{out.stem}-{i}-input.ply"), inputs))
        points = np.concatenate([visible, predicted])
        colours = np.concatenate([np.tile(VISIBLE, (len(visible), 1)), np.tile(PREDICTED, (len(predicted), 1))])
        written.append(write_ply(out.with_name(f"{out.stem}-{i}-reconstruction.ply"), points, colours))
    return written


def visualize(checkpoint: str | Path, sources: list[str], out: str | Path, *, count: int = 4, seed: int = 0,
              mask_ratio: float | None = None, mask_kind: str | None = None, ply: bool = True,
              up_axis: int = 1) -> list[Path]:
    """Write ``out`` (PNG: input | visible groups | reconstruction per cloud) and, with ``ply``, .ply files.

    The mask comes from a generator seeded with ``seed``: the same seed gives the same figure.
    ``mask_ratio`` / ``mask_kind`` (random, block) override the trained masking.
    """
    model = load_point_mae(checkpoint)
    c = model.config
    if mask_ratio is not None or mask_kind is not None:
        masking = {**c.masking, **({"ratio": mask_ratio} if mask_ratio is not None else {}),
                   **({"kind": mask_kind} if mask_kind is not None else {})}
        model.masking = build_group_masking(**masking)
    decoder = PointDecoder(PointDataConfig(num_points=c.num_points, test_votes=1), train=False)
    clouds, _ = load_clouds(sources, decoder, count)
    with torch.no_grad():
        mask = model.make_mask(clouds, generator=torch.Generator().manual_seed(seed))
        panels = point_panels(model, clouds, mask)
    out = Path(out)
    written = [save_panels(panels, out, up_axis=up_axis)]
    if ply:
        written += write_plys(panels, out)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mimx points visualize",
        description="Point-MAE reconstructions: a PNG (per cloud: input | visible groups, hidden in grey | visible "
                    "groups + predicted hidden groups in red), rendered headless, and .ply files of the input and "
                    "the reconstruction.")
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("sources", nargs="+", help="cloud or mesh files, folders of them, or shards")
    parser.add_argument("--out", default="points_reconstruction.png",
                        help="output PNG (default points_reconstruction.png)")
    parser.add_argument("--num", type=int, default=4, help="clouds to show (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="mask seed: the same seed gives the same figure")
    parser.add_argument("--mask-ratio", type=float, default=None, help="override the trained mask ratio")
    parser.add_argument("--mask-kind", choices=["random", "block"], default=None, help="override the masking")
    parser.add_argument("--up-axis", type=int, choices=[0, 1, 2], default=1, help="axis drawn upwards (default y)")
    parser.add_argument("--no-ply", action="store_true", help="write only the PNG")
    args = parser.parse_args(argv)
    paths = visualize(args.checkpoint, args.sources, args.out, count=args.num, seed=args.seed,
                      mask_ratio=args.mask_ratio, mask_kind=args.mask_kind, ply=not args.no_ply,
                      up_axis=args.up_axis)
    for path in paths:
        print(f"wrote {path}")
    return 0
