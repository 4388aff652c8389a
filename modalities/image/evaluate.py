"""``mimx image eval knn|linear|attentive|finetune``: protocols on labelled image shards (see :mod:`mimx.protocols`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder, Normalizer
from mimx.modalities.image.export import load_image_mae
from mimx.modalities.image.interop import to_timm
from mimx.modalities.image.model import ImageMAE
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
from mimx.train.precision import Precision

PROTOCOLS = ("knn", "linear", "attentive", "finetune")
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
        if pool == "tokens":  # the attentive probe: patch tokens [B, L, D]
            return tokens[:, encoder.encoder.num_prefix_tokens:]
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
    check_choice(protocol, PROTOCOLS, "protocol", "mimx image eval knn ...")
    check_choice(encoder_kind, ENCODERS, "encoder")
    if encoder_kind == "pixels" and protocol in ("finetune", "attentive"):
        raise UserError(f"encoder=pixels has no tokens for {protocol}; use knn or linear")
    if cfg.pool not in ("cls", "mean"):
        raise UserError(f"pool={cfg.pool!r}; choose cls or mean")
    check_choice(cfg.rel_pos_bias, ("as_pretrained", "layer"), "rel_pos_bias")
    data_cfg = from_mapping(EvalDataConfig, cfg.data, "data")
    dist = eval_processes(cfg.device, protocol)
    device = dist.device
    torch.manual_seed(cfg.seed)
    mae, step = _load_encoder(cfg, encoder_kind)
    data, normalizer = image_eval_data(data_cfg, mae.config.image_hw, mae.config.in_chans, mae.normalization)
    started = time.perf_counter()
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": step, "pool": cfg.pool, "data": asdict(data_cfg)}

    if protocol != "finetune":
        encoder = None if encoder_kind == "pixels" else mae
        precision = Precision(cfg.precision, device) if encoder is None else frozen_precision(mae, cfg.precision,
                                                                                              device)
        pool = "tokens" if protocol == "attentive" else cfg.pool
        featurize = _featurizer(encoder, normalizer, pool, device, precision)
        parts = data.frozen_features(featurize, protocol, dist)
        if parts is not None:  # several processes: the main one scores what they extracted together
            result.update(frozen_protocol(protocol, cfg, parts, data_cfg.num_classes))
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        pool = "avg" if ft.pool == "avg" else "token"
        rel_pos = None if cfg.rel_pos_bias == "as_pretrained" else cfg.rel_pos_bias
        result["rel_pos_bias"] = rel_pos or mae.config.rel_pos_bias

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return normalizer(batch["image"].to(device)), batch["label"].long().to(device)

        result.update(finetune_protocol(
            mae, ft, data, depth=mae.config.depth, num_classes=data_cfg.num_classes, prepare=prepare, device=device,
            seed=cfg.seed, dist=dist, state_path=finetune_state_path(cfg, dist),
            build=lambda n: to_timm(mae, rel_pos, num_classes=n, drop_path_rate=ft.drop_path, global_pool=pool)))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skipped()
    if dist.is_main:
        write_result(cfg, result)
    shutdown()
    return result
