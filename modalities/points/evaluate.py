"""``mimx points eval svm|linear|knn|attentive|finetune``: protocols on labelled point-cloud shards.

Frozen protocols use the encoder's max + mean pooled group features of the plain cloud (no
augmentation; the attentive probe reads the group tokens); ``svm`` is a linear SVM with C chosen on
validation (as Point-M2AE). Fine-tuning scores validation and test clouds with ``data.test_votes``
views (the plain cloud plus scaled ones, probabilities averaged; Point-MAE's voting). Choices are
made on validation (``data.val`` shards, else a split carved from ``data.train``); the test shards
are scored once. See :mod:`mimx.protocols`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.modalities.points.classifier import PointClassifier
from mimx.modalities.points.data import PointDataConfig, PointDecoder
from mimx.modalities.points.export import load_point_mae
from mimx.modalities.points.model import PointMAE
from mimx.protocols import (
    EvalData,
    EvalSplitConfig,
    check_choice,
    checkpoint_step,
    eval_processes,
    finetune_protocol,
    finetune_state_path,
    frozen_precision,
    frozen_protocol,
    write_result,
)
from mimx.train.distributed import shutdown
from mimx.train.finetune import FinetuneConfig

PROTOCOLS = ("svm", "linear", "knn", "attentive", "finetune")
ENCODERS = ("pretrained", "random")


@dataclass
class PointEvalDataConfig(EvalSplitConfig):
    """``data`` section of ``configs/points/eval.yaml`` (the cloud size comes from the checkpoint)."""

    max_points: int = 65536
    mesh_points: int = 8192
    sample: str = "random"
    scale: list[float] = field(default_factory=lambda: [2 / 3, 3 / 2])  # fine-tune and voting scales
    translate: float = 0.2
    rotate_up: bool = False
    up_axis: int = 1
    test_votes: int = 10
    label_key: str = "cls"


def point_eval_data(cfg: PointEvalDataConfig, mae: PointMAE, votes: int) -> EvalData:
    """Train / val / test loaders of labelled cloud shards at the model's cloud size, ``votes`` views when scoring."""
    clouds = PointDataConfig(num_points=mae.config.num_points, max_points=cfg.max_points, mesh_points=cfg.mesh_points,
                             sample=cfg.sample, scale=list(cfg.scale), translate=cfg.translate,
                             rotate_up=cfg.rotate_up, up_axis=cfg.up_axis, test_votes=votes, label_key=cfg.label_key)
    clouds.validate()
    key = cfg.label_key
    return EvalData(cfg, lambda train: PointDecoder(clouds, train=train), lambda s: read_label(s, key))


def _load(cfg: DictConfig) -> PointMAE:
    mae = load_point_mae(cfg.checkpoint)
    if cfg.encoder == "random":
        torch.manual_seed(cfg.seed)
        mae = PointMAE(mae.config)
    return mae.eval()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol as configured in ``configs/points/eval.yaml``; returns the result dict."""
    protocol, encoder_kind = cfg.protocol, cfg.encoder
    check_choice(protocol, PROTOCOLS, "protocol", "mimx points eval svm ...")
    check_choice(encoder_kind, ENCODERS, "encoder")
    data_cfg = from_mapping(PointEvalDataConfig, cfg.data, "data")
    dist = eval_processes(cfg.device, protocol)
    device = dist.device
    torch.manual_seed(cfg.seed)
    mae = _load(cfg)
    frozen = protocol != "finetune"  # frozen features come from the plain cloud: one view
    data = point_eval_data(data_cfg, mae, 1 if frozen else data_cfg.test_votes)
    started = time.perf_counter()
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": checkpoint_step(cfg.checkpoint), "data": asdict(data_cfg)}

    if frozen:
        precision = frozen_precision(mae, cfg.precision, device)

        pool = "tokens" if protocol == "attentive" else cfg.pool  # the attentive probe reads group tokens

        def featurize(batch: dict) -> torch.Tensor:
            x = batch["points"][:, 0].to(device, precision.input_dtype)
            with precision.autocast():
                return mae.features(x, pool=pool)

        parts = data.frozen_features(featurize, protocol, dist)
        if parts is not None:  # several processes: the main one scores what they extracted together
            result.update(frozen_protocol(protocol, cfg, parts, data_cfg.num_classes), pool=pool)
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        if ft.cutmix or ft.mixup:
            raise UserError("finetune.mixup/cutmix are for images and clips; leave them at 0 for point clouds")

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            x = batch["points"].to(device)
            return (x[:, 0] if x.shape[1] == 1 else x), batch["label"].long().to(device)

        result.update(finetune_protocol(
            mae, ft, data, depth=mae.config.depth, num_classes=data_cfg.num_classes, prepare=prepare, device=device,
            seed=cfg.seed, dist=dist, state_path=finetune_state_path(cfg, dist),
            eval_batch_size=max(1, ft.batch_size // data_cfg.test_votes),
            build=lambda n: PointClassifier(mae, n, drop_path=ft.drop_path)), votes=data_cfg.test_votes)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skipped()
    result["model"] = mae.config.name
    if dist.is_main:
        write_result(cfg, result)
    shutdown()
    return result
