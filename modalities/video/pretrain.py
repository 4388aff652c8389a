"""``mimx video pretrain``: VideoMAE pretraining on clips streamed from shards or a file list."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.stream import ShardStream, first_batch
from mimx.data.transforms import Normalizer
from mimx.masking import MASKINGS
from mimx.modalities.video.data import VideoDataConfig, VideoDecoder, count_videos, video_stream
from mimx.modalities.video.figures import save_strip, video_panels
from mimx.modalities.video.model import VideoMAE, VideoMAEConfig, video_mae_config
from mimx.train.distributed import DistInfo
from mimx.train.engine import StepContext, TrainConfig, TrainResult
from mimx.train.launch import run_pretraining

__all__ = ["VideoPretrainTask", "fixed_clips", "pretrain"]


def fixed_clips(cfg: VideoDataConfig, count: int) -> torch.Tensor:
    """``count`` centre clips (uint8 ``[N, C, T, H, W]``) from the start of the data, for figures."""
    single = dataclasses.replace(cfg, test_clips=1, test_crops=1)
    stream = video_stream(single, VideoDecoder(single, train=False), batch_size=count)
    return first_batch(stream, "video", "video")["video"][:, 0]


class VideoPretrainTask:
    """Connects a :class:`VideoMAE` to the training engine; batches hold ``video`` uint8 ``[B, V, C, T, H, W]``."""

    modality = "video"

    def __init__(self, config: VideoMAEConfig, data: VideoDataConfig, figure_clips: torch.Tensor | None = None,
                 figure_seed: int = 0) -> None:
        self.config = config
        self.data = data
        self.normalizer = Normalizer(data.mean, data.std)
        self.mask_kind = config.masking.get("kind", "tube")
        # block (cube) masks are drawn with numpy on the host: a host generator, never a device one read back
        self.host_masking = getattr(MASKINGS.get(self.mask_kind), "on_host", False)
        self.figure_clips = figure_clips
        self.figure_seed = figure_seed

    def meta(self) -> dict[str, Any]:
        return {"architecture": self.config.architecture(), "model_config": dataclasses.asdict(self.config),
                "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)}}

    def convert_weights(self, path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A transformers folder (``save_pretrained``) as mimx weights, for ``train.init``."""
        from mimx.modalities.video.interop import from_transformers

        model = from_transformers(path)
        return model.state_dict(), {"modality": self.modality, "architecture": model.config.architecture()}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        video = batch["video"].to(ctx.device, non_blocking=True)
        x = self.normalizer(video.flatten(0, 1)).to(ctx.dtype)  # repeated clips of a video join the batch
        c = self.config
        t, h, w = x.shape[2] // c.tubelet_size, x.shape[3] // c.patch_size, x.shape[4] // c.patch_size
        decode_noise = ctx.global_noise(x.shape[0], t * h * w) if c.decoder_mask_ratio else None
        if self.mask_kind == "tube":
            return model(x, noise=ctx.global_noise(x.shape[0], h * w), decode_noise=decode_noise).loss
        if self.mask_kind == "random":
            return model(x, noise=ctx.global_noise(x.shape[0], t * h * w), decode_noise=decode_noise).loss
        return model(x, generator=ctx.host_local if self.host_masking else ctx.local, decode_noise=decode_noise).loss

    def figure(self, model: VideoMAE, path: Path) -> None:
        if self.figure_clips is None:
            return
        weight = next(model.parameters())
        x = self.normalizer(self.figure_clips.to(weight.device)).to(weight.dtype)
        mask = model.make_mask(x, generator=torch.Generator(device=weight.device).manual_seed(self.figure_seed))
        save_strip(video_panels(model, x, mask), path)


def _sections(cfg: DictConfig) -> tuple[TrainConfig, VideoMAEConfig, VideoDataConfig]:
    train = from_mapping(TrainConfig, cfg.train, "train")
    data = from_mapping(VideoDataConfig, cfg.data, "data")
    data.validate()
    model_values = to_plain(cfg.model)
    model_values["masking"] = to_plain(cfg.masking)
    model_values.setdefault("pixel_mean", list(data.mean))
    model_values.setdefault("pixel_std", list(data.std))
    model = video_mae_config(model_values)
    if tuple(model.image_hw) != data.hw:
        raise UserError(f"data.image_size {data.hw} differs from model.img_size {model.image_hw}; set one to "
                        "match the other")
    if model.num_frames != data.clip_len:
        raise UserError(f"data.clip_len={data.clip_len} differs from model.num_frames={model.num_frames}")
    if list(model.pixel_mean) != list(data.mean) or list(model.pixel_std) != list(data.std):
        raise UserError("model.pixel_mean/pixel_std must equal data.mean/std (targets undo the input "
                        "normalisation); leave the model's unset to copy the data's")
    return train, model, data


def pretrain(cfg: DictConfig) -> TrainResult:
    """Run (or resume) VideoMAE pretraining as configured; see ``configs/video/pretrain.yaml``."""
    train_cfg, model_cfg, data_cfg = _sections(cfg)

    def build(dist: DistInfo) -> tuple[VideoMAE, ShardStream, int, VideoPretrainTask]:
        model = VideoMAE(model_cfg)
        stream = video_stream(data_cfg, VideoDecoder(data_cfg, train=True), train_cfg.batch_size,
                              seed=train_cfg.seed, rank=dist.rank, world=dist.world)
        figures = fixed_clips(data_cfg, 4) if dist.is_main else None
        task = VideoPretrainTask(model_cfg, data_cfg, figures, figure_seed=train_cfg.seed)
        return model, stream, count_videos(data_cfg), task

    return run_pretraining(cfg, train_cfg, build, num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch)
