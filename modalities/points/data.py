"""Point-cloud samples from shards or a file list: read, clean, resample, normalise, augment.

A raw sample holds a cloud under its extension (``npy`` as ``mimx points shards`` writes, or
``npz``, ``ply``, ``pcd``, ``xyz``, ``pts``, ``off``, ``obj``, ``stl``) and a label (``cls``, or a
field of ``json``). Non-finite points are dropped, a cloud larger than ``max_points`` is randomly
subsampled first (so the cost stays bounded), one with fewer than ``num_points`` is resampled with
replacement; the data report counts each case. A sample that cannot be used raises with the reason;
the stream counts and reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mimx.config import UserError
from mimx.data.labels import read_label
from mimx.data.shards import dataset_size, expand_shards, find_member
from mimx.data.stream import Decoder, FileListStream, ShardStream, read_file_list
from mimx.modalities.points.clouds import augment, prepare_cloud
from mimx.modalities.points.io import SHARD_KEYS, decode_points

SAMPLES = ("random", "fps")
Floats = list[float]  # (the config has a field named `list`, which hides the builtin in its annotations)


@dataclass
class PointDataConfig:
    """``data`` section of point-cloud configs."""

    shards: Any = "data/samples/point_clouds/train"  # path, brace pattern, glob, folder, pipe: URL, or a list
    list: str | None = None  # instead of shards: a .csv/.txt of local files, "path label" per line
    num_samples: int | None = None  # clouds per epoch; counted when null
    num_points: int = 1024  # points per cloud fed to the model
    max_points: int = 65536  # larger clouds are randomly subsampled to this first (0: no cap)
    mesh_points: int = 8192  # surface samples drawn from a mesh file
    sample: str = "random"  # random subset | fps (farthest points: even cover, slower)
    normalize: bool = True  # centre and scale into the unit sphere
    scale: Floats = field(default_factory=lambda: [2 / 3, 3 / 2])  # train: per-axis scale range
    translate: float = 0.2  # train: per-axis shift range
    rotate_up: bool = False  # train: random spin about the up axis
    up_axis: int = 1
    jitter: float = 0.0  # train: Gaussian point noise (std)
    test_votes: int = 1  # eval: views per cloud (1: the plain cloud; more: + scaled views, averaged)
    label_key: str = "cls"
    shuffle: int = 1000
    resampled: bool = False
    num_workers: int = 2
    prefetch: int = 2

    def validate(self) -> None:
        """Raise UserError naming the first bad key."""
        checks = [
            (self.num_points >= 1, "num_points", "at least 1"),
            (self.max_points == 0 or self.max_points >= self.num_points, "max_points", "0 or >= num_points"),
            (self.mesh_points >= 1, "mesh_points", "at least 1"),
            (self.sample in SAMPLES, "sample", f"one of {', '.join(SAMPLES)}"),
            (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], "scale", "[lo, hi] with 0 < lo <= hi"),
            (self.translate >= 0, "translate", ">= 0"),
            (self.up_axis in (0, 1, 2), "up_axis", "0, 1 or 2"),
            (self.jitter >= 0, "jitter", ">= 0"),
            (self.test_votes >= 1, "test_votes", "at least 1"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise UserError(f"data.{key} must be {want}, got {getattr(self, key)!r}")


def find_cloud(sample: dict[str, Any]) -> tuple[str, bytes]:
    return find_member(sample, SHARD_KEYS, "point cloud")


class PointDecoder:
    """``(sample, rng) -> {"points": float32 [V, N, 3], "label": int, "notes": [dropped, padded, capped]}``.

    V is 1 for training (one augmented view) and ``test_votes`` for evaluation (view 0 plain, the
    others scaled as in training, Point-MAE's voting). Picklable for DataLoader workers.
    """

    def __init__(self, cfg: PointDataConfig, train: bool = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.train = train

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        key, data = find_cloud(sample)
        label = read_label(sample, cfg.label_key)
        raw = decode_points(data, key, mesh_points=cfg.mesh_points, seed=int(rng.integers(2**31)))
        ready = prepare_cloud(raw, cfg.num_points, rng, max_points=cfg.max_points, sample=cfg.sample,
                              normalize=cfg.normalize)
        if self.train:
            views = [augment(ready.points, rng, scale=tuple(cfg.scale), translate=cfg.translate,
                             rotate_up=cfg.rotate_up, up_axis=cfg.up_axis, jitter=cfg.jitter)]
        else:
            views = [ready.points] + [augment(ready.points, rng, scale=tuple(cfg.scale), translate=0.0)
                                      for _ in range(cfg.test_votes - 1)]
        notes = torch.tensor([ready.dropped, int(ready.padded), int(ready.capped)])
        return {"points": torch.from_numpy(np.stack(views)), "label": label, "notes": notes}


def points_stream(cfg: PointDataConfig, decoder: Decoder, batch_size: int, seed: int = 0, rank: int = 0,
                  world: int = 1, epochs: int | None = None) -> ShardStream:
    """A :class:`ShardStream` over ``cfg.shards``, or a :class:`FileListStream` when ``cfg.list`` is set.

    Batches hold ``points`` float32 ``[B, V, N, 3]``, ``label`` ``[B]`` and ``notes`` ``[B, 3]``.
    """
    kwargs = dict(batch_size=batch_size, shuffle=cfg.shuffle, resampled=cfg.resampled, seed=seed, rank=rank,
                  world=world, epochs=epochs)
    if cfg.list:
        return FileListStream(cfg.list, decoder, **kwargs)
    return ShardStream(expand_shards(cfg.shards), decoder, **kwargs)


def count_clouds(cfg: PointDataConfig) -> int:
    """Clouds per epoch: ``num_samples``, else the list's lines or the shards' sample count."""
    if cfg.num_samples:
        return int(cfg.num_samples)
    if cfg.list:
        return len(read_file_list(cfg.list))
    return dataset_size(expand_shards(cfg.shards))


def describe_notes(notes: torch.Tensor) -> str:
    """One line on what the preparation did to a set of clouds (``notes [N, 3]`` from the decoder)."""
    notes = notes.long()
    return (f"{int(notes[:, 0].sum())} NaN/inf point(s) dropped, {int(notes[:, 1].sum())} cloud(s) with too few "
            f"points resampled with replacement, {int(notes[:, 2].sum())} oversized cloud(s) subsampled")
