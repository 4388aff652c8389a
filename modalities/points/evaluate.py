"""``mimx points eval svm|linear|knn|finetune``: protocols on labelled point-cloud shards.

Frozen protocols use the encoder's max + mean pooled group features of the plain cloud (no
augmentation); ``svm`` is a linear SVM with C chosen on validation (as Point-M2AE). Fine-tuning
scores validation and test clouds with ``data.test_votes`` views (the plain cloud plus scaled ones,
probabilities averaged; Point-MAE's voting). Choices are made on validation (``data.val`` shards,
else a split carved from ``data.train``); the test shards are scored once. See :mod:`mimx.protocols`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.evaluation import accuracy
from mimx.modalities.points.classifier import PointClassifier
from mimx.modalities.points.data import PointDataConfig, PointDecoder
from mimx.modalities.points.export import load_point_mae
from mimx.modalities.points.model import PointMAE
from mimx.protocols import (
    EvalData,
    EvalSplitConfig,
    check_labels,
    checkpoint_step,
    extract_features,
    frozen_protocol,
    write_result,
)
from mimx.train.distributed import pick_device
from mimx.train.finetune import FinetuneConfig, finetune, predict
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention

PROTOCOLS = ("svm", "linear", "knn", "finetune")
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
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)} (mimx points eval svm ...)")
    if encoder_kind not in ENCODERS:
        raise UserError(f"encoder={encoder_kind!r}; choose one of {', '.join(ENCODERS)}")
    data_cfg = from_mapping(PointEvalDataConfig, cfg.data, "data")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    mae = _load(cfg)
    frozen = protocol in ("svm", "linear", "knn")  # frozen features come from the plain cloud: one view
    data = point_eval_data(data_cfg, mae, 1 if frozen else data_cfg.test_votes)
    started = time.perf_counter()
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": checkpoint_step(cfg.checkpoint), "data": asdict(data_cfg)}

    if frozen:
        precision = Precision(cfg.precision, device)
        encoder = mae.to(device)
        set_fused_attention(encoder, precision.prefers_fused_attention())
        precision.attach(encoder)

        def featurize(batch: dict) -> torch.Tensor:
            x = batch["points"][:, 0].to(device, precision.input_dtype)
            with precision.autocast():
                return encoder.features(x, pool=cfg.pool).float()

        parts = {part: extract_features(data.batches(part), featurize) for part in ("train", "val", "test")}
        result.update(frozen_protocol(protocol, cfg, parts, data_cfg.num_classes), pool=cfg.pool)
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        if ft.cutmix or ft.mixup:
            raise UserError("finetune.mixup/cutmix are for images and clips; leave them at 0 for point clouds")
        train_labels = data.labels("train")
        num_classes = data_cfg.num_classes or int(train_labels.max()) + 1
        check_labels(train_labels, num_classes, "train")
        counts = {p: data.count(p) for p in ("train", "val", "test")}
        result.update(num_classes=num_classes, train_samples=counts["train"], val_samples=counts["val"],
                      test_samples=counts["test"], votes=data_cfg.test_votes)
        if counts["train"] == 0 or counts["val"] == 0:
            raise UserError(f"fine-tuning needs training and validation samples, got {counts}")
        model = PointClassifier(mae, num_classes, drop_path=ft.drop_path)

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            x = batch["points"].to(device)
            return (x[:, 0] if x.shape[1] == 1 else x), batch["label"].long().to(device)

        def train_epoch(epoch: int):
            return data.batches("train", train_transform=True, batch_size=ft.batch_size, seed=cfg.seed + epoch)

        def eval_batches(part: str):
            return data.batches(part, batch_size=max(1, ft.batch_size // data_cfg.test_votes))

        steps = max(1, counts["train"] // ft.batch_size)
        best = finetune(model, ft, depth=mae.config.depth, num_classes=num_classes, train_epoch=train_epoch,
                        val_batches=lambda: eval_batches("val"), prepare=prepare, steps_per_epoch=steps,
                        device=device, seed=cfg.seed)
        test_precision = Precision("bf16" if ft.precision == "bf16-pure" else ft.precision, device)
        pred, labels = predict(model, eval_batches("test"), prepare, test_precision)
        result.update(val_top1=best.best_val_top1, test_top1=accuracy(pred, labels),
                      chosen={"epoch": best.best_epoch}, finetune=asdict(ft), history=best.history)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skips.state_dict()
    result["model"] = mae.config.name
    write_result(cfg, result)
    return result
