"""Aligned multi-modal samples from shards: decode every map, crop and flip them together.

A raw sample holds one member per modality, named ``<modality>.<ext>``:

- pixel maps: ``rgb.png|jpg|jpeg|webp`` (any channels the spec asks for), or ``<name>.npy`` (``[H, W, C]``
  uint8 or float in [0, 1]);
- depth: ``depth.png`` (uint16 millimetres, 0 = invalid) or ``depth.npy`` (float metres, NaN / inf / 0
  invalid);
- classes: ``semseg.png`` (uint8 / uint16 ids) or ``semseg.npy``.

All maps of a sample must have the same size (else the sample is skipped with a message naming the
sizes). A missing modality is handled by ``data.missing``: ``skip`` the sample, or ``allow`` it (the
map is filled with invalid values and ``present`` marks it absent, so it gets no visible token and no
loss). Class ids outside ``0..num_classes-1`` become the ignore index; depth NaN / inf / 0 are invalid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mimx.config import UserError
from mimx.data.shards import dataset_size, expand_shards
from mimx.data.stream import Decoder, ShardStream
from mimx.data.transforms import open_image, random_resized_crop_box
from mimx.modalities.multimodal.model import ModalitySpec

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
MISSING = ("skip", "allow")
Floats = list[float]


@dataclass
class MultiDataConfig:
    """``data`` section of multimodal configs (the modalities come from the model config)."""

    shards: Any = "data/samples/scenes/train"
    num_samples: int | None = None
    image_size: int = 64
    scale: Floats = field(default_factory=lambda: [0.5, 1.0])  # train: RandomResizedCrop area range
    ratio: Floats = field(default_factory=lambda: [0.75, 1.333])
    hflip: float = 0.5
    depth_unit: float = 0.001  # metres per unit of a uint16 depth PNG (millimetres)
    missing: str = "allow"  # a sample without some modality: allow (marked absent) | skip
    shuffle: int = 500
    resampled: bool = False
    num_workers: int = 2
    prefetch: int = 2

    def validate(self) -> None:
        if self.missing not in MISSING:
            raise UserError(f"data.missing={self.missing!r}; choose one of {', '.join(MISSING)}")
        if self.image_size < 1:
            raise UserError(f"data.image_size must be positive, got {self.image_size}")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise UserError(f"data.scale must be [lo, hi] in (0, 1], got {self.scale}")


def _member(sample: dict[str, Any], name: str) -> tuple[str, bytes] | None:
    for ext in (*IMAGE_EXTS, "npy"):
        key = f"{name}.{ext}"
        if key in sample:
            return ext, sample[key]
    return None


def decode_map(name: str, spec: ModalitySpec, ext: str, data: bytes, depth_unit: float) -> np.ndarray:
    """One modality's map as ``[H, W, C]`` uint8 (pixels), ``[H, W]`` float32 metres (depth) or int64 ids."""
    if ext == "npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise ValueError(f"{name}.npy is not a numeric .npy array (an object array or not numpy at all); "
                             "write it with numpy.save of a float or integer array") from None
    else:
        with open_image(data, f"{name}.{ext}") as image:
            if spec.kind == "pixels":
                image = image.convert({1: "L", 3: "RGB", 4: "RGBA"}.get(spec.channels, "RGB"))
            array = np.asarray(image)
            if spec.kind != "pixels" and image.mode in ("LA", "PA", "RGBA") and array.ndim == 3:
                array = array[..., :-1]  # a map's alpha channel carries no value
    if spec.kind == "pixels":
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
        array = array[..., None] if array.ndim == 2 else array
        if array.shape[-1] != spec.channels:
            raise ValueError(f"{name} has {array.shape[-1]} channels, the model expects {spec.channels}")
        return array
    if array.ndim == 3:
        if array.shape[-1] > 1 and not (array == array[..., :1]).all():
            what = "class ids" if spec.kind == "classes" else "depths"
            raise ValueError(f"{name}.{ext} has {array.shape[-1]} different channels; a {spec.kind} map holds one "
                             f"value per pixel ({what}): save it as a grey, 16-bit or palette image (colour-coded "
                             "labels must be mapped to ids first)")
        array = array[..., 0]
    if spec.kind == "depth":
        depth = array.astype(np.float32)
        if ext != "npy":
            depth = np.where(depth > 0, depth * depth_unit, np.nan).astype(np.float32)
        return depth
    return array.astype(np.int64)


def invalid_map(spec: ModalitySpec, hw: tuple[int, int]) -> np.ndarray:
    """The placeholder of a missing modality: black pixels, all-invalid depth, all-ignored classes."""
    if spec.kind == "pixels":
        return np.zeros((*hw, spec.channels), dtype=np.uint8)
    if spec.kind == "depth":
        return np.full(hw, np.nan, dtype=np.float32)
    return np.full(hw, spec.ignore_index, dtype=np.int64)


def _resize(x: torch.Tensor, hw: tuple[int, int], kind: str) -> torch.Tensor:
    """``[C, H, W]`` resized: bilinear (antialiased) for pixels, nearest for depth and classes."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if kind == "pixels":
        out = F.interpolate(x[None].float(), size=hw, mode="bilinear", antialias=True, align_corners=False)[0]
        return out.round().clamp(0, 255).to(torch.uint8)
    return F.interpolate(x[None].double(), size=hw, mode="nearest-exact")[0].to(x.dtype)


class MultiDecoder:
    """``(sample, rng) -> {name: map, "present": bool [M]}``; picklable for DataLoader workers.

    Maps: pixels uint8 ``[C, S, S]``, depth float32 ``[1, S, S]`` metres (NaN invalid), classes int64
    ``[S, S]``. Train: one RandomResizedCrop box and flip for all maps; eval: resize the short side,
    centre crop.
    """

    def __init__(self, cfg: MultiDataConfig, specs: dict[str, ModalitySpec], train: bool = True) -> None:
        cfg.validate()
        self.cfg = cfg
        self.specs = specs
        self.train = train

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        maps: dict[str, np.ndarray] = {}
        for name, spec in self.specs.items():
            found = _member(sample, name)
            if found is not None:
                maps[name] = decode_map(name, spec, *found, cfg.depth_unit)
        missing = [n for n in self.specs if n not in maps]
        if not maps:
            keys = sorted(k for k in sample if not k.startswith("__"))
            raise KeyError(f"no modality of {list(self.specs)} in sample (has {keys})")
        if missing and cfg.missing == "skip":
            keys = sorted(k for k in sample if not k.startswith("__"))
            raise KeyError(f"sample lacks {missing} (has {keys}); data.missing=skip drops such samples")
        sizes = {n: m.shape[:2] for n, m in maps.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"modalities have different sizes {sizes}; align them before writing shards")
        hw = next(iter(sizes.values()))
        for name in missing:
            maps[name] = invalid_map(self.specs[name], hw)
        tensors = {n: torch.from_numpy(np.array(m)) for n, m in maps.items()}  # a copy: decoded arrays may be read-only
        tensors = {n: (t.permute(2, 0, 1) if t.dim() == 3 else t[None]) for n, t in tensors.items()}
        top, left, h, w = self._box(*hw, rng)
        flip = self.train and rng.random() < cfg.hflip
        out: dict[str, Any] = {}
        size = (cfg.image_size, cfg.image_size)
        for name, t in tensors.items():
            spec = self.specs[name]
            crop = _resize(t[:, top:top + h, left:left + w], size, spec.kind)
            if flip:
                crop = crop.flip(-1)
            out[name] = crop[0] if spec.kind == "classes" else crop
        out["present"] = torch.tensor([n not in missing for n in self.specs])
        return out

    def _box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        cfg = self.cfg
        if self.train:
            return random_resized_crop_box(height, width, tuple(cfg.scale), tuple(cfg.ratio), rng)
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side


def multi_stream(cfg: MultiDataConfig, decoder: Decoder, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, epochs: int | None = None) -> ShardStream:
    """A :class:`ShardStream` of aligned samples; batches hold one tensor per modality and ``present``."""
    return ShardStream(expand_shards(cfg.shards), decoder, batch_size=batch_size, shuffle=cfg.shuffle,
                       resampled=cfg.resampled, seed=seed, rank=rank, world=world, epochs=epochs)


def count_samples(cfg: MultiDataConfig) -> int:
    return int(cfg.num_samples) if cfg.num_samples else dataset_size(expand_shards(cfg.shards))
