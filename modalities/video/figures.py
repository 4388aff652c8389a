"""Video reconstruction figures: a PNG strip per clip and an animated GIF or mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from mimx.masking import Mask
from mimx.modalities.video.model import VideoMAE
from mimx.reconstruction import reconstruction_panels
from mimx.targets import PixelTarget

ROWS = ("original", "masked", "reconstruction", "reconstruction + visible")


def video_panels(model: VideoMAE, x: torch.Tensor, mask: Mask) -> torch.Tensor:
    """``[4, B, C, T, H, W]`` in [0, 1]: original, masked, reconstruction, reconstruction with visible tubelets.

    The decoder rebuilds every hidden tubelet here (dual masking is a training
    shortcut); norm-pix predictions are mapped back with each original
    tubelet's own statistics. For MaskFeat the last two rows are the true HOG of
    every frame and the predicted HOG of the hidden tubelets (true on visible ones).
    """
    if isinstance(model.target, PixelTarget):  # panels come back in pixel space already
        return reconstruction_panels(model, x, mask)
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(model.config.pixel_mean, device=x.device).view(shape)
    std = torch.tensor(model.config.pixel_std, device=x.device).view(shape)
    return reconstruction_panels(model, x, mask, display=lambda t: (t * std + mean).clamp(0, 1))


def _frames(panels: torch.Tensor, max_frames: int) -> torch.Tensor:
    frames = panels.shape[3]
    keep = np.unique(np.linspace(0, frames - 1, min(frames, max_frames)).round().astype(int))
    return panels[:, :, :, keep]


def _zoom(x: torch.Tensor, min_size: int) -> torch.Tensor:
    zoom = max(1, min_size // min(x.shape[-2:]))
    return x.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1) if zoom > 1 else x


def save_strip(panels: torch.Tensor, path: str | Path, max_frames: int = 8, min_size: int = 64) -> Path:
    """PNG: per clip, four rows (original / masked / reconstruction / + visible), one column per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = _frames(panels.float().cpu(), max_frames)  # [4, B, C, T', H, W]
    rows, batch, channels, frames = panels.shape[:4]
    tiles = panels.permute(1, 0, 3, 2, 4, 5).reshape(batch * rows * frames, channels, *panels.shape[-2:])
    save_image(_zoom(tiles, min_size), str(path), nrow=frames, padding=2, pad_value=1.0)
    return path


def animation_frames(panels: torch.Tensor, min_size: int = 64) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: each frame shows the four panels side by side, one clip per row."""
    panels = panels.float().cpu()
    rows, batch, channels, frames = panels.shape[:4]
    out = []
    for t in range(frames):
        tiles = panels[:, :, :, t].transpose(0, 1).reshape(batch * rows, channels, *panels.shape[-2:])
        grid = make_grid(_zoom(tiles, min_size), nrow=rows, padding=2, pad_value=1.0)
        out.append((grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return np.stack(out)


def save_animation(panels: torch.Tensor, path: str | Path, fps: float = 4.0, min_size: int = 64) -> Path:
    """An animated ``.gif`` (PIL) or ``.mp4`` (PyAV) of :func:`animation_frames`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = animation_frames(panels, min_size)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    else:
        from mimx.modalities.video.io import encode_clip

        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)  # even for yuv420p
        path.write_bytes(encode_clip(frames, fps))
    return path
