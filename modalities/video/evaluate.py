"""``mimx video eval knn|linear|attentive|finetune``: protocols on labelled video shards with multi-view testing.

Validation and test clips are scored with ``data.test_clips x data.test_crops``
views per video (temporal clips x spatial crops): features are averaged over
views for kNN and the linear probe, logits for the attentive probe (on the
tokens of each view), class probabilities for fine-tuning. See
:mod:`mimx.protocols` for the splits and where results go.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.data.transforms import Normalizer
from mimx.modalities.video.classifier import VideoClassifier
from mimx.modalities.video.data import VideoDataConfig, VideoDecoder
from mimx.modalities.video.export import load_video_mae
from mimx.modalities.video.model import VideoMAE
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

PROTOCOLS = ("knn", "linear", "attentive", "finetune")
ENCODERS = ("pretrained", "random")


@dataclass
class VideoEvalDataConfig(EvalSplitConfig):
    """``data`` section of ``configs/video/eval.yaml`` (clip length and size come from the checkpoint)."""

    backend: str = "auto"
    sampling: str = "dense"
    rate: int = 4
    test_clips: int = 2
    test_crops: int = 3
    scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # fine-tune crops
    hflip: float = 0.5
    short_video: str = "loop"
    label_key: str = "cls"


def video_eval_data(cfg: VideoEvalDataConfig, mae: VideoMAE) -> tuple[EvalData, Normalizer]:
    """Train / val / test loaders of labelled video shards at the model's clip size, and their normaliser."""
    c = mae.config
    clips = VideoDataConfig(image_size=list(c.image_hw), clip_len=c.num_frames, backend=cfg.backend,
                            sampling=cfg.sampling, rate=cfg.rate, clips_per_video=1, test_clips=cfg.test_clips,
                            test_crops=cfg.test_crops, scale=list(cfg.scale), hflip=cfg.hflip,
                            short_video=cfg.short_video, label_key=cfg.label_key, **mae.normalization)
    clips.validate()
    key = cfg.label_key
    data = EvalData(cfg, lambda train: VideoDecoder(clips, train=train), lambda s: read_label(s, key))
    return data, Normalizer(clips.mean, clips.std)


def _load(cfg: DictConfig) -> VideoMAE:
    mae = load_video_mae(cfg.checkpoint)
    if cfg.encoder == "random":
        torch.manual_seed(cfg.seed)
        fresh = VideoMAE(mae.config)
        fresh.normalization = mae.normalization
        mae = fresh
    return mae.eval()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol as configured in ``configs/video/eval.yaml``; returns the result dict."""
    protocol, encoder_kind = cfg.protocol, cfg.encoder
    check_choice(protocol, PROTOCOLS, "protocol", "mimx video eval linear ...")
    check_choice(encoder_kind, ENCODERS, "encoder")
    data_cfg = from_mapping(VideoEvalDataConfig, cfg.data, "data")
    dist = eval_processes(cfg.device, protocol)
    device = dist.device
    torch.manual_seed(cfg.seed)
    mae = _load(cfg)
    data, normalizer = video_eval_data(data_cfg, mae)
    started = time.perf_counter()
    views = data_cfg.test_clips * data_cfg.test_crops
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": checkpoint_step(cfg.checkpoint), "data": asdict(data_cfg),
                              "views": views}

    if protocol != "finetune":
        precision = frozen_precision(mae, cfg.precision, device)
        tokens = protocol == "attentive"

        def featurize(batch: dict) -> torch.Tensor:
            video = batch["video"].to(device)  # [B, V, C, T, H, W]
            x = normalizer(video.flatten(0, 1)).to(precision.input_dtype)
            with precision.autocast():
                feats = mae.features(x, pool="tokens" if tokens else "mean")
            feats = feats.view(*video.shape[:2], *feats.shape[1:])
            return feats if tokens else feats.float().mean(1)  # tokens: [B, V, L, D], the probe averages views

        parts = data.frozen_features(featurize, protocol, dist)
        if parts is not None:  # several processes: the main one scores what they extracted together
            result.update(frozen_protocol(protocol, cfg, parts, data_cfg.num_classes))
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        if ft.cutmix:
            raise UserError("finetune.cutmix is for images; use finetune.mixup for clips")

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            video = batch["video"].to(device)
            x = normalizer(video.flatten(0, 1)).view(*video.shape[:2], *video.shape[2:])
            return (x[:, 0] if x.shape[1] == 1 else x), batch["label"].long().to(device)

        result.update(finetune_protocol(
            mae, ft, data, depth=mae.config.depth, num_classes=data_cfg.num_classes, prepare=prepare, device=device,
            seed=cfg.seed, dist=dist, state_path=finetune_state_path(cfg, dist),
            eval_batch_size=max(1, ft.batch_size // views),
            build=lambda n: VideoClassifier(mae, n, drop_path=ft.drop_path)))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skipped()
    result["model"] = mae.config.name
    if dist.is_main:
        write_result(cfg, result)
    shutdown()
    return result
