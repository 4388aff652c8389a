"""``mimx image eval knn|linear|finetune``: protocols on labelled image shards (see :mod:`mimx.protocols`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.evaluation import accuracy
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder, Normalizer
from mimx.modalities.image.export import load_image_mae
from mimx.modalities.image.interop import to_timm
from mimx.modalities.image.model import ImageMAE
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

PROTOCOLS = ("knn", "linear", "finetune")
ENCODERS = ("pretrained", "random", "pixels")


@dataclass
class EvalDataConfig(EvalSplitConfig):
    """``data`` section of ``configs/image/eval.yaml``."""

    crop_pct: float = 1.0  # evaluation crop: resize to size / crop_pct, centre crop
    scale: list[float] = field(default_factory=lambda: [0.25, 1.0])  # fine-tune RandomResizedCrop scale
    hflip: float = 0.5


def image_eval_data(cfg: EvalDataConfig, image_hw: tuple[int, int], channels: int,
                    norm: dict) -> tuple[EvalData, Normalizer]:
    """Train / val / test loaders of labelled image shards at the model's input size, and their normaliser."""
    image = ImageDataConfig(image_size=list(image_hw), channels=channels, crop_pct=cfg.crop_pct,
                            scale=list(cfg.scale), hflip=cfg.hflip, **norm)
    data = EvalData(cfg, lambda train: ImageDecoder(image, train=train), read_label)
    return data, Normalizer(image.mean, image.std)


def _featurizer(encoder: ImageMAE | None, normalizer: Normalizer, pool: str, device: torch.device,
                precision: Precision):
    def featurize(batch: dict) -> torch.Tensor:
        x = normalizer(batch["image"].to(device))
        if encoder is None:  # raw pixels
            return x.flatten(1)
        with precision.autocast():
            tokens = encoder.encode(x.to(precision.input_dtype))
        return tokens[:, 0] if pool == "cls" else tokens[:, encoder.encoder.num_prefix_tokens:].mean(1)

    return featurize


def _load_encoder(cfg: DictConfig, encoder_kind: str) -> tuple[ImageMAE, int]:
    model = load_image_mae(cfg.checkpoint)
    step = checkpoint_step(cfg.checkpoint)
    if encoder_kind == "random":
        torch.manual_seed(cfg.seed)
        norm = model.normalization
        model = ImageMAE(model.config)
        model.normalization = norm
    return model.eval(), step


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol as configured in ``configs/image/eval.yaml``; returns the result dict."""
    protocol, encoder_kind = cfg.protocol, cfg.encoder
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)} (mimx image eval knn ...)")
    if encoder_kind not in ENCODERS:
        raise UserError(f"encoder={encoder_kind!r}; choose one of {', '.join(ENCODERS)}")
    if encoder_kind == "pixels" and protocol == "finetune":
        raise UserError("encoder=pixels has nothing to fine-tune; use knn or linear")
    if cfg.pool not in ("cls", "mean"):
        raise UserError(f"pool={cfg.pool!r}; choose cls or mean")
    data_cfg = from_mapping(EvalDataConfig, cfg.data, "data")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    mae, step = _load_encoder(cfg, encoder_kind)
    data, normalizer = image_eval_data(data_cfg, mae.config.image_hw, mae.config.in_chans, mae.normalization)
    started = time.perf_counter()
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": step, "pool": cfg.pool, "data": asdict(data_cfg)}

    if protocol in ("knn", "linear"):
        precision = Precision(cfg.precision, device)
        encoder = None if encoder_kind == "pixels" else mae.to(device)
        if encoder is not None:
            set_fused_attention(encoder, precision.prefers_fused_attention())
            precision.attach(encoder)
        featurize = _featurizer(encoder, normalizer, cfg.pool, device, precision)
        parts = {part: extract_features(data.batches(part), featurize) for part in ("train", "val", "test")}
        result.update(frozen_protocol(protocol, cfg, parts, data_cfg.num_classes))
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        train_labels = data.labels("train")
        num_classes = data_cfg.num_classes or int(train_labels.max()) + 1
        check_labels(train_labels, num_classes, "train")
        counts = {p: data.count(p) for p in ("train", "val", "test")}
        result.update(num_classes=num_classes, train_samples=counts["train"], val_samples=counts["val"],
                      test_samples=counts["test"])
        if counts["train"] == 0 or counts["val"] == 0:
            raise UserError(f"fine-tuning needs training and validation samples, got {counts}")
        pool = "avg" if ft.pool == "avg" else "token"
        vit = to_timm(mae, num_classes=num_classes, drop_path_rate=ft.drop_path, global_pool=pool)

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return normalizer(batch["image"].to(device)), batch["label"].long().to(device)

        def train_epoch(epoch: int):
            return data.batches("train", train_transform=True, batch_size=ft.batch_size, seed=cfg.seed + epoch)

        steps = max(1, counts["train"] // ft.batch_size)
        best = finetune(vit, ft, depth=mae.config.depth, num_classes=num_classes, train_epoch=train_epoch,
                        val_batches=lambda: data.batches("val"), prepare=prepare, steps_per_epoch=steps,
                        device=device, seed=cfg.seed)
        # finetune() hands back an fp32 model: score it under autocast (bf16-pure trained models included)
        test_precision = Precision("bf16" if ft.precision == "bf16-pure" else ft.precision, device)
        pred, labels = predict(vit, data.batches("test"), prepare, test_precision)
        result.update(val_top1=best.best_val_top1, test_top1=accuracy(pred, labels),
                      chosen={"epoch": best.best_epoch}, finetune=asdict(ft), history=best.history)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skips.state_dict()
    write_result(cfg, result)
    return result
