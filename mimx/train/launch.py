"""The part of every ``pretrain`` action that does not depend on the modality."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mimx.config import to_plain
from mimx.data.stream import ShardStream, StreamLoader
from mimx.train.checkpoint import seed_everything
from mimx.train.distributed import DistInfo, init_distributed, shutdown
from mimx.train.engine import Task, TrainConfig, Trainer, TrainResult

# (dist) -> (model, stream, samples per epoch, task); called after the seeds are set
Build = Callable[[DistInfo], tuple[nn.Module, ShardStream, int, Task]]


def run_pretraining(cfg: DictConfig, train: TrainConfig, build: Build, *, num_workers: int,
                    prefetch: int) -> TrainResult:
    """Start the processes' group, build the modality's parts, write the run folder and train (or resume)."""
    dist = init_distributed(train.device)
    try:
        run_dir = Path(cfg.run.dir)
        seed_everything(train.seed)
        model, stream, samples, task = build(dist)
        loader = StreamLoader(stream, num_workers=num_workers, pin_memory=dist.device.type == "cuda",
                              prefetch_factor=prefetch, timeout=train.data_timeout)
        plain: dict[str, Any] = to_plain(cfg)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(plain))
            name = getattr(getattr(model, "config", None), "name", type(model).__name__)
            print(f"[mimx] {len(getattr(stream, 'urls', []))} source(s), {samples} samples per epoch, model {name}: "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", file=sys.stderr)
        return Trainer(train, model, loader, task, run_dir, samples, dist, config=plain).fit()
    finally:
        shutdown()
