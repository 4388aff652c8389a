"""Image bytes, crop boxes and pixel normalisation shared by the image-like modalities (images, frames, maps)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mimx.devices import DeviceConstant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_image(data: bytes, member: str) -> Image.Image:
    """A PIL image of a file's or shard member's bytes; ``ValueError`` naming ``member`` when they are no image."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"the {member} member is not an image PIL can read ({len(data)} bytes)") from None


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop, drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def centre_crop_box(height: int, width: int, out_hw: tuple[int, int], crop_pct: float) -> tuple[int, int, int, int]:
    """The region that resize-to-(size / crop_pct) followed by a centre crop would keep."""
    oh, ow = out_hw
    scale = max(oh / (height * crop_pct), ow / (width * crop_pct))
    h, w = min(height, round(oh / scale)), min(width, round(ow / scale))
    return (height - h) // 2, (width - w) // 2, h, w


class Normalizer:
    """uint8 ``[B, C, ...]`` (images ``[B, C, H, W]``, clips ``[B, C, T, H, W]``) on any device -> float,
    ``(x / 255 - mean) / std`` per channel (dim 1), and back."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = DeviceConstant(mean, torch.float32)
        self.std = DeviceConstant(std, torch.float32)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.mean.on(x.device).view(shape), self.std.on(x.device).view(shape)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(images)
        return (images.float() / 255.0 - mean) / std

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x.float() * std + mean).clamp(0, 1)
