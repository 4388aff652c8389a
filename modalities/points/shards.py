"""``mimx points shards SRC OUT``: a folder of clouds/meshes (class subfolders give labels) or a list to shards.

Each source is read (``io.read_points``: numpy readers for .ply/.pcd/.obj/.stl/.off/.npy/.npz/.xyz/.pts/.txt;
meshes are sampled on their surface), cleaned of NaN/inf points, optionally
capped to ``--max-points`` (random subset), and stored as float32 ``npy`` with ``cls`` and ``json``.
A source that cannot be read or holds no finite point is skipped and listed at the end.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimx.config import UserError
from mimx.data.shards import add_shard_arguments, list_sources, print_summary, write_dataset
from mimx.modalities.points.clouds import drop_nonfinite
from mimx.modalities.points.io import SUFFIXES, encode_npy, read_points


def point_samples(items: list[tuple[Path, int]], root: Path, skipped: list[str], *, max_points: int,
                  mesh_points: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for index, (path, label) in enumerate(items):
        try:
            points = read_points(path, mesh_points=mesh_points, seed=seed + index)
        except (ValueError, OSError) as exc:
            skipped.append(str(exc)[:300])  # the reader's message starts with the path
            continue
        points, dropped = drop_nonfinite(points)
        if len(points) == 0:
            skipped.append(f"{path}: no finite point ({dropped} NaN/inf rows)")
            continue
        if max_points and len(points) > max_points:
            points = points[rng.choice(len(points), max_points, replace=False)]
        try:
            source = str(path.relative_to(root))
        except ValueError:
            source = str(path)
        sample: dict[str, Any] = {"__key__": f"{index:08d}", "npy": encode_npy(points),
                                  "json": {"label": label, "points": len(points), "dropped": dropped,
                                           "source": source}}
        if label >= 0:
            sample["cls"] = str(label)
        yield sample


def write_point_shards(src: str | Path, out: str | Path, *, prefix: str = "clouds", max_size: str | int = "256MB",
                       max_count: int = 100_000, max_points: int = 16384, mesh_points: int = 8192,
                       shuffle: bool = True, seed: int = 0, overwrite: bool = False,
                       classes_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``OUT/<prefix>-NNNNNN.tar``; returns ``{"shards", "samples", "classes", "skipped"}``."""
    src, out = Path(src), Path(out)
    if max_points < 0 or mesh_points < 1:
        raise UserError("--max-points must be >= 0 and --mesh-points >= 1")
    items, classes, root = list_sources(src, set(SUFFIXES), "point clouds", classes_file)
    if shuffle:
        random.Random(seed).shuffle(items)
    skipped: list[str] = []
    samples = point_samples(items, root, skipped, max_points=max_points, mesh_points=mesh_points, seed=seed)
    return write_dataset(out, prefix, samples, classes, max_size=max_size, max_count=max_count, overwrite=overwrite,
                         skipped=skipped, what=f"{len(items)} point clouds in {src}")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mimx points shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser, "folder of clouds/meshes or of class subfolders, or a .csv/.txt list 'path label'",
                        "clouds")
    parser.add_argument("--max-points", type=int, default=16384,
                        help="store at most this many points per cloud (random subset; 0: all)")
    parser.add_argument("--mesh-points", type=int, default=8192, help="surface samples drawn from each mesh")
    args = parser.parse_args(argv)
    summary = write_point_shards(args.src, args.out, prefix=args.prefix, max_size=args.max_size,
                                 max_count=args.max_count, max_points=args.max_points, mesh_points=args.mesh_points,
                                 shuffle=not args.no_shuffle, seed=args.seed, overwrite=args.overwrite,
                                 classes_file=args.classes)
    print_summary(summary, args.out, "point clouds")
    return 0
