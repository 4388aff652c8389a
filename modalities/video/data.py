"""Video samples from shards or a file list: clip sampling, decode, crops, flips.

A raw sample holds the video bytes under its extension (``mp4``, ``webm``, ...)
and a label (``cls``, or a field of ``json``). The decoder picks the frame
indices of every clip it needs (:mod:`.sampling`), decodes them with ONE call
on the in-memory bytes (no temporary file), then crops and resizes each clip:

- train: ``clips_per_video`` clips, each with its own RandomResizedCrop box
  (drawn once, used for all frames of the clip) and horizontal flip;
- eval: ``test_clips`` temporal views x ``test_crops`` spatial views: the short
  side is resized to the output size, then crops are spread along the long side.

Frames are addressed by index, so variable-frame-rate videos are sampled in
frame steps, not in seconds. A sample that cannot be used raises an exception
with the reason; the stream counts and reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mimx.config import UserError
from mimx.data.labels import read_label
from mimx.data.shards import dataset_size, expand_shards, find_member
from mimx.data.stream import Decoder, FileListStream, ShardStream, read_file_list
from mimx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalizer, random_resized_crop_box
from mimx.modalities.video.io import BACKENDS, VIDEO_EXTS, check_backend, open_video
from mimx.modalities.video.sampling import SAMPLINGS, SHORT_MODES, sample_clips

Floats = list[float]  # (the config has a field named `list`, which hides the builtin in its annotations)
VideoNormalizer = Normalizer  # uint8 [B, C, T, H, W] (or [B, V, C, T, H, W] flattened to it) -> float, and back


@dataclass
class VideoDataConfig:
    """``data`` section of video configs."""

    shards: Any = "data/samples/video_clips"  # spec: path, brace pattern, glob, folder, pipe: URL, or a list
    list: str | None = None  # instead of shards: a .csv/.txt of local files, "path label" per line
    num_samples: int | None = None  # videos per epoch; counted from the shards / list when null
    backend: str = "auto"  # auto (torchcodec, else decord, else pyav) | torchcodec | decord | pyav
    decode_threads: int = 1
    clip_len: int = 16  # frames per clip
    sampling: str = "dense"  # dense (every `rate` frames) | segment (one frame per equal segment, TSN)
    rate: int = 4  # dense: frame stride
    clips_per_video: int = 1  # train: clips cut from each decoded video (repeated sampling)
    test_clips: int = 2  # eval: temporal views
    test_crops: int = 3  # eval: spatial views along the long side
    image_size: Any = 224  # int or [h, w]
    scale: Floats = field(default_factory=lambda: [0.5, 1.0])
    ratio: Floats = field(default_factory=lambda: [0.75, 1.333])
    hflip: float = 0.5
    short_video: str = "loop"  # dense clips longer than the video: loop | clamp | skip
    min_side: int = 0  # skip videos whose short side is below this (0: keep all)
    mean: Floats = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Floats = field(default_factory=lambda: list(IMAGENET_STD))
    label_key: str = "cls"  # "cls" (cls file, else json "label"), or a json field name such as "direction"
    shuffle: int = 200
    resampled: bool = False
    num_workers: int = 2
    prefetch: int = 2

    @property
    def hw(self) -> tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one decoded clip."""
        return (3, self.clip_len, *self.hw)

    def views(self, train: bool) -> int:
        """Clips per video the decoder returns: ``clips_per_video`` (train) or ``test_clips x test_crops``."""
        return self.clips_per_video if train else self.test_clips * self.test_crops

    def validate(self) -> None:
        """Raise UserError naming the first bad key."""
        checks = [
            (self.backend in BACKENDS, "backend", f"one of {', '.join(BACKENDS)}"),
            (self.sampling in SAMPLINGS, "sampling", f"one of {', '.join(SAMPLINGS)}"),
            (self.short_video in SHORT_MODES, "short_video", f"one of {', '.join(SHORT_MODES)}"),
            (self.clip_len >= 1, "clip_len", "at least 1"),
            (self.rate >= 1, "rate", "at least 1"),
            (self.clips_per_video >= 1, "clips_per_video", "at least 1"),
            (self.test_clips >= 1, "test_clips", "at least 1"),
            (self.test_crops >= 1, "test_crops", "at least 1"),
            (self.decode_threads >= 0, "decode_threads", "0 (auto) or more"),
            (min(self.hw) >= 1, "image_size", "positive"),
            (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, "scale", "[lo, hi] in (0, 1]"),
            (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1], "ratio", "[lo, hi] with 0 < lo <= hi"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean/std", "3 values each (RGB)"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise UserError(f"data.{key} must be {want}, got {getattr(self, key.split('/')[0])!r}")
        check_backend(self.backend)


def find_video(sample: dict[str, Any]) -> tuple[str, bytes]:
    return find_member(sample, VIDEO_EXTS, "video")


def resize_frames(frames: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[3, T, h, w]`` (bilinear, antialiased).

    Resized in uint8 with the channels-last layout the frames already have (torch's fast CPU
    path, ~10x faster than float; within 1 grey level of the float result).
    """
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(1, 0, 2, 3)


def spread_crops(height: int, width: int, hw: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """(top, left) of ``count`` crops of size ``hw`` spread evenly along the longer slack (1: centred)."""
    slack_h, slack_w = height - hw[0], width - hw[1]
    if count == 1:
        return [(slack_h // 2, slack_w // 2)]
    steps = [round(k * max(slack_h, slack_w) / (count - 1)) for k in range(count)]
    if slack_w >= slack_h:
        return [(slack_h // 2, s) for s in steps]
    return [(s, slack_w // 2) for s in steps]


class VideoDecoder:
    """``(sample, rng) -> {"video": uint8 [V, 3, T, H, W], "label": int}``; picklable for DataLoader workers.

    V is ``clips_per_video`` (train) or ``test_clips * test_crops`` (eval, clip-major: views
    ``k * test_crops + j`` are temporal clip k, spatial crop j).
    """

    def __init__(self, cfg: VideoDataConfig, train: bool = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.hw = cfg.hw
        self.train = train

    def clip_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """``[clips, clip_len]`` frame indices for a video of ``num_frames`` frames."""
        cfg = self.cfg
        count = cfg.clips_per_video if self.train else cfg.test_clips
        return sample_clips(num_frames, cfg.clip_len, sampling=cfg.sampling, rate=cfg.rate, short=cfg.short_video,
                            count=count, rng=rng, train=self.train)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        _, data = find_video(sample)
        label = read_label(sample, cfg.label_key)
        with open_video(data, cfg.backend, cfg.decode_threads) as video:
            index = self.clip_indices(video.num_frames, rng)
            unique, inverse = np.unique(index, return_inverse=True)
            frames = torch.from_numpy(video.frames(unique))
        height, width = frames.shape[1:3]
        if min(height, width) < cfg.min_side:
            raise ValueError(f"video is {width}x{height}, smaller than data.min_side={cfg.min_side}")
        clips = frames[torch.from_numpy(inverse.reshape(index.shape))]  # [clips, T, H, W, 3]
        views = [self._train_view(c, rng) for c in clips] if self.train else self._eval_views(clips)
        return {"video": torch.stack(views), "label": label}

    def _train_view(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.cfg
        top, left, h, w = random_resized_crop_box(clip.shape[1], clip.shape[2], tuple(cfg.scale), tuple(cfg.ratio),
                                                  rng)
        out = resize_frames(clip[:, top:top + h, left:left + w], self.hw)
        return out.flip(-1) if rng.random() < cfg.hflip else out

    def _eval_views(self, clips: torch.Tensor) -> list[torch.Tensor]:
        height, width = clips.shape[2:4]
        scale = max(self.hw[0] / height, self.hw[1] / width)
        size = (max(self.hw[0], math.floor(height * scale + 0.5)), max(self.hw[1], math.floor(width * scale + 0.5)))
        views = []
        for clip in clips:
            full = resize_frames(clip, size)
            for top, left in spread_crops(*size, self.hw, self.cfg.test_crops):
                views.append(full[..., top:top + self.hw[0], left:left + self.hw[1]])
        return views


def video_stream(cfg: VideoDataConfig, decoder: Decoder, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, epochs: int | None = None) -> ShardStream:
    """A :class:`ShardStream` over ``cfg.shards``, or a :class:`FileListStream` when ``cfg.list`` is set.

    Batches hold ``video`` uint8 ``[B, V, 3, T, H, W]`` and ``label`` ``[B]``.
    """
    kwargs = dict(batch_size=batch_size, shuffle=cfg.shuffle, resampled=cfg.resampled, seed=seed, rank=rank,
                  world=world, epochs=epochs)
    if cfg.list:
        return FileListStream(cfg.list, decoder, **kwargs)
    return ShardStream(expand_shards(cfg.shards), decoder, **kwargs)


def count_videos(cfg: VideoDataConfig) -> int:
    """Videos per epoch: ``num_samples``, else the list's lines or the shards' sample count."""
    if cfg.num_samples:
        return int(cfg.num_samples)
    if cfg.list:
        return len(read_file_list(cfg.list))
    return dataset_size(expand_shards(cfg.shards))

