"""Image samples from shards: decode, RandomResizedCrop + flip (train) or resize + centre crop (eval)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimx.config import UserError
from mimx.data.labels import read_label
from mimx.data.shards import find_member
from mimx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, centre_crop_box, open_image, random_resized_crop_box
from mimx.data.transforms import Normalizer as Normalizer  # re-exported: image code imports it from here

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")


@dataclass
class ImageDataConfig:
    """``data`` section of image configs."""

    shards: Any = "data/samples/images"  # spec: path, brace pattern, glob, folder, pipe: URL, or a list
    num_samples: int | None = None  # samples per epoch; counted from local shards when null
    image_size: Any = 224  # int or [h, w]
    channels: int = 3
    scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    crop_pct: float = 0.875  # eval: resize to size / crop_pct, then centre crop
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    shuffle: int = 1000
    resampled: bool = False
    num_workers: int = 2
    prefetch: int = 4

    @property
    def hw(self) -> tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))


def find_image(sample: dict[str, Any]) -> tuple[str, bytes]:
    return find_member(sample, IMAGE_EXTS, "image")


class ImageDecoder:
    """``sample -> {"image": uint8 [C, H, W], "label": int}``; picklable for DataLoader workers.

    JPEGs are decoded at the smallest DCT scale that still covers the crop at
    the output size (PIL ``draft``), which cuts decode cost for small outputs.
    """

    def __init__(self, cfg: ImageDataConfig, train: bool = True) -> None:
        self.hw = cfg.hw
        self.mode = {1: "L", 3: "RGB"}.get(cfg.channels)
        if self.mode is None:
            raise UserError(f"data.channels must be 1 or 3, got {cfg.channels}")
        self.scale = tuple(cfg.scale)
        self.ratio = tuple(cfg.ratio)
        self.hflip = cfg.hflip
        self.crop_pct = cfg.crop_pct
        self.train = train

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        ext, data = find_image(sample)
        img = open_image(data, f".{ext}")
        width, height = img.size
        if self.train:
            top, left, h, w = random_resized_crop_box(height, width, self.scale, self.ratio, rng)
            flip = rng.random() < self.hflip
        else:
            top, left, h, w = centre_crop_box(height, width, self.hw, self.crop_pct)
            flip = False
        oh, ow = self.hw
        if img.format == "JPEG":
            img.draft(self.mode, (math.ceil(width * ow / w), math.ceil(height * oh / h)))
        sx, sy = img.size[0] / width, img.size[1] / height
        img = img.convert(self.mode)
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        img = img.resize((ow, oh), Image.Resampling.BICUBIC, box=box)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return {"image": torch.from_numpy(arr.copy()).permute(2, 0, 1), "label": read_label(sample)}
