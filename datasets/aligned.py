"""Shared pieces of the aligned RGB / depth / segmentation recipes: resizing maps together, shard members.

Members per sample: ``rgb.png``, ``depth.png`` (uint16 millimetres, 0 invalid), ``semseg.png`` (uint8 ids
with 255 ignored, or uint16 ids), and ``json``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 / uint16 map."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sample(key: str, rgb: np.ndarray | None, depth_m: np.ndarray | None, semseg: np.ndarray | None,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """Shard members of one aligned sample (any modality may be None: left out; uint16 class ids stay uint16).

    Depth is in metres; NaN, inf and values <= 0 are written as 0 (invalid).
    """
    sample: dict[str, Any] = {"__key__": key, "json": meta}
    if rgb is not None:
        sample["rgb.png"] = png(np.asarray(rgb, dtype=np.uint8))
    if depth_m is not None:
        valid = np.isfinite(depth_m) & (depth_m > 0)
        mm = np.where(valid, np.clip(np.round(np.nan_to_num(depth_m) * 1000), 1, 65535), 0).astype(np.uint16)
        sample["depth.png"] = png(mm)
    if semseg is not None:
        sample["semseg.png"] = png(np.asarray(semseg, dtype=np.uint16 if semseg.dtype == np.uint16 else np.uint8))
    return sample


def resize_aligned(rgb: np.ndarray, depth: np.ndarray | None, labels: np.ndarray | None, short_side: int | None
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resize the maps of one sample so the short side is ``short_side`` (None or equal: unchanged).

    RGB is filtered (bicubic); depth and class ids take the nearest pixel, so no depth is invented across
    an edge, no hole filled and no class mixed.
    """
    height, width = rgb.shape[:2]
    if not short_side or min(height, width) == short_side:
        return rgb, depth, labels
    scale = short_side / min(height, width)
    size = (round(width * scale), round(height * scale))
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))
    if depth is not None:
        depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize(size, Image.Resampling.NEAREST))
    if labels is not None:
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    return rgb, depth, labels
