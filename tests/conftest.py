"""Shared fixtures: real sample shards built once per test session from pip-installed data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    """The embedded sample shards (photos, MNIST train/test), built from the installed wheels."""
    from mimx.datasets.samples import build_samples

    out = tmp_path_factory.mktemp("samples")
    build_samples(out)
    return out


def tiny_overrides(run_dir: Path, samples: Path, *extra: str) -> list[str]:
    """Hydra overrides for a very small, fast image MAE run on the MNIST sample shards."""
    return [
        "model=vit_tiny", "model.img_size=16", "model.patch_size=4", "model.embed_dim=48", "model.depth=2",
        "model.num_heads=3", "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2",
        f"data.shards={samples}/mnist", "data.num_workers=2", "data.shuffle=64",
        "train.batch_size=16", "train.log_every=2", "train.ckpt_every=4", "train.figure_every=0",
        "train.warmup_steps=2", "train.base_lr=2e-3", "train.progress=false",
        f"run.dir={run_dir}", *extra,
    ]
