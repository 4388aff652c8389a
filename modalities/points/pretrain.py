"""``mimx points pretrain``: Point-MAE pretraining on clouds streamed from shards or a file list."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.stream import ShardStream, first_batch
from mimx.modalities.points.data import PointDataConfig, PointDecoder, count_clouds, describe_notes, points_stream
from mimx.modalities.points.figures import point_panels, save_panels
from mimx.modalities.points.model import PointMAE, PointMAEConfig, point_mae_config
from mimx.train.distributed import DistInfo
from mimx.train.engine import StepContext, TrainConfig, TrainResult
from mimx.train.launch import run_pretraining

__all__ = ["PointPretrainTask", "fixed_clouds", "pretrain"]


def fixed_clouds(cfg: PointDataConfig, count: int) -> torch.Tensor:
    """``count`` plain clouds ``[count, N, 3]`` from the start of the data, for figures."""
    single = dataclasses.replace(cfg, test_votes=1)
    stream = points_stream(single, PointDecoder(single, train=False), batch_size=count)
    return first_batch(stream, "points", "point cloud")["points"][:, 0]


class PointPretrainTask:
    """Connects a :class:`PointMAE` to the training engine; batches hold ``points`` ``[B, 1, N, 3]``."""

    modality = "points"

    def __init__(self, config: PointMAEConfig, data: PointDataConfig, figure_clouds: torch.Tensor | None = None,
                 figure_seed: int = 0) -> None:
        self.config = config
        self.data = data
        self.figure_clouds = figure_clouds
        self.figure_seed = figure_seed
        self.notes = torch.zeros(3, dtype=torch.long)

    def meta(self) -> dict[str, Any]:
        return {"architecture": self.config.architecture(), "model_config": dataclasses.asdict(self.config),
                "data": {"num_points": self.data.num_points, "normalize": self.data.normalize}}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        self.notes += batch["notes"].long().sum(0)
        x = batch["points"].to(ctx.device, non_blocking=True).flatten(0, 1).to(ctx.dtype)
        return model(x, noise=ctx.global_noise(x.shape[0], self.config.num_groups)).loss

    def report(self) -> str:
        return describe_notes(self.notes.view(1, 3))

    def figure(self, model: PointMAE, path: Path) -> None:
        if self.figure_clouds is None:
            return
        weight = next(model.parameters())
        x = self.figure_clouds.to(weight.device, weight.dtype)
        mask = model.make_mask(x, generator=torch.Generator(device=weight.device).manual_seed(self.figure_seed))
        save_panels(point_panels(model, x, mask), path, up_axis=self.data.up_axis)


def _sections(cfg: DictConfig) -> tuple[TrainConfig, PointMAEConfig, PointDataConfig]:
    train = from_mapping(TrainConfig, cfg.train, "train")
    data = from_mapping(PointDataConfig, cfg.data, "data")
    data.validate()
    model_values = to_plain(cfg.model)
    model_values["masking"] = to_plain(cfg.masking)
    model = point_mae_config(model_values)
    if model.num_points != data.num_points:
        raise UserError(f"data.num_points={data.num_points} differs from model.num_points={model.num_points}")
    return train, model, data


def pretrain(cfg: DictConfig) -> TrainResult:
    """Run (or resume) Point-MAE pretraining as configured; see ``configs/points/pretrain.yaml``."""
    train_cfg, model_cfg, data_cfg = _sections(cfg)

    def build(dist: DistInfo) -> tuple[PointMAE, ShardStream, int, PointPretrainTask]:
        model = PointMAE(model_cfg)
        stream = points_stream(data_cfg, PointDecoder(data_cfg, train=True), train_cfg.batch_size,
                               seed=train_cfg.seed, rank=dist.rank, world=dist.world)
        figures = fixed_clouds(data_cfg, 4) if dist.is_main else None
        task = PointPretrainTask(model_cfg, data_cfg, figures, figure_seed=train_cfg.seed)
        return model, stream, count_clouds(data_cfg), task

    return run_pretraining(cfg, train_cfg, build, num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch)
