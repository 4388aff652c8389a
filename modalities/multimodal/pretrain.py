"""``mimx multimodal pretrain``: MultiMAE pretraining on aligned RGB / depth / segmentation shards."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.stream import ShardStream, first_batch
from mimx.masking import sample_dirichlet
from mimx.modalities.multimodal.data import MultiDataConfig, MultiDecoder, count_samples, multi_stream
from mimx.modalities.multimodal.figures import multimodal_panels, save_panels
from mimx.modalities.multimodal.model import MultiMAE, MultiMAEConfig, multimae_config
from mimx.train.distributed import DistInfo
from mimx.train.engine import StepContext, TrainConfig, TrainResult
from mimx.train.launch import run_pretraining

__all__ = ["MultiPretrainTask", "fixed_batch", "pretrain"]


def fixed_batch(cfg: MultiDataConfig, specs: dict, count: int) -> dict[str, torch.Tensor]:
    """``count`` centre-cropped samples from the start of the data, for figures."""
    return first_batch(multi_stream(cfg, MultiDecoder(cfg, specs, train=False), batch_size=count), "present",
                       "aligned sample")


class MultiPretrainTask:
    """Connects a :class:`MultiMAE` to the training engine; batches hold one map per modality and ``present``."""

    modality = "multimodal"

    def __init__(self, config: MultiMAEConfig, data: MultiDataConfig, figure_batch: dict | None = None,
                 figure_seed: int = 0) -> None:
        self.config = config
        self.data = data
        self.figure_batch = figure_batch
        self.figure_seed = figure_seed
        self.present: torch.Tensor | None = None  # per modality: samples (this process) that held it
        self.seen = 0
        self.names: list[str] = []
        self.world = 1

    def meta(self) -> dict[str, Any]:
        return {"architecture": self.config.architecture(), "model_config": dataclasses.asdict(self.config),
                "data": {"image_size": self.data.image_size, "depth_unit": self.data.depth_unit}}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        core: MultiMAE = getattr(model, "module", model)
        maps = {n: batch[n].to(ctx.device, non_blocking=True) for n in core.specs}
        present = batch["present"]
        b = present.shape[0]
        self._count(present, list(core.specs), ctx)
        groups = len(core.inputs)
        lengths = groups * self.config.grid[0] * self.config.grid[1]
        # global-batch draws sliced per rank: the masks do not depend on the process count
        names = list(core.specs)
        in_present = present[:, [names.index(n) for n in core.inputs]]
        weights = sample_dirichlet(ctx.world * b, self.config.alpha, groups, generator=ctx.host_shared)
        weights = weights[ctx.rank * b:(ctx.rank + 1) * b] * in_present.float()
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        # the model's generator only draws on the host (which inputs to drop); the token noise is the device's
        out = model(maps, present=present, noise=ctx.global_noise(b, lengths), weights=weights,
                    generator=ctx.host_local)
        ctx.parts.update(out.losses)  # logged per task: loss_rgb, loss_depth, loss_semseg
        return out.loss

    def _count(self, present: torch.Tensor, names: list[str], ctx: StepContext) -> None:
        first = self.present is None
        counts = present.long().sum(0)
        self.present = counts if first else self.present + counts
        self.seen += present.shape[0]
        self.names = names
        self.world = ctx.world
        absent = [n for n, c in zip(names, counts.tolist(), strict=True) if c == 0]
        if first and absent and ctx.rank == 0:
            print(f"[mimx] warning: {', '.join(absent)} missing from every sample of the first batch: its loss is "
                  f"0 and it learns nothing. Shard members must be named <modality>.png/.jpg/.npy (e.g. "
                  f"{absent[0]}.png); rename them, or leave {absent[0]} out of model.modalities", file=sys.stderr)

    def report(self) -> str:
        """Per modality, how many of the samples this process trained on held it."""
        if self.present is None:
            return ""
        pairs = zip(self.names, self.present.tolist(), strict=True)
        share = f" (this process's share; {self.world} processes)" if self.world > 1 else ""
        return f"samples holding each modality{share}: " + ", ".join(f"{n} {c}/{self.seen}" for n, c in pairs)

    def figure(self, model: MultiMAE, path: Path) -> None:
        if self.figure_batch is None:
            return
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.figure_batch.items()}
        out = model(batch, present=batch["present"].cpu(),
                    generator=torch.Generator().manual_seed(self.figure_seed))
        save_panels(multimodal_panels(model, batch, out), path)


def _sections(cfg: DictConfig) -> tuple[TrainConfig, MultiMAEConfig, MultiDataConfig]:
    train = from_mapping(TrainConfig, cfg.train, "train")
    data = from_mapping(MultiDataConfig, cfg.data, "data")
    data.validate()
    model = multimae_config(to_plain(cfg.model))
    model.specs()  # check every modality entry now
    if data.image_size != model.img_size:
        raise UserError(f"data.image_size={data.image_size} differs from model.img_size={model.img_size}")
    return train, model, data


def pretrain(cfg: DictConfig) -> TrainResult:
    """Run (or resume) MultiMAE pretraining as configured; see ``configs/multimodal/pretrain.yaml``."""
    train_cfg, model_cfg, data_cfg = _sections(cfg)

    def build(dist: DistInfo) -> tuple[MultiMAE, ShardStream, int, MultiPretrainTask]:
        model = MultiMAE(model_cfg)
        stream = multi_stream(data_cfg, MultiDecoder(data_cfg, model.specs, train=True), train_cfg.batch_size,
                              seed=train_cfg.seed, rank=dist.rank, world=dist.world)
        figures = fixed_batch(data_cfg, model.specs, 4) if dist.is_main else None
        task = MultiPretrainTask(model_cfg, data_cfg, figures, figure_seed=train_cfg.seed)
        return model, stream, count_samples(data_cfg), task

    return run_pretraining(cfg, train_cfg, build, num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch)
