"""Headless point-cloud figures: input | visible groups | reconstruction, rendered with numpy + PIL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mimx.masking import Mask
from mimx.modalities.points.clouds import rotation_matrix

VISIBLE = (40, 110, 200)
HIDDEN = (200, 200, 200)
PREDICTED = (220, 70, 40)


@dataclass
class PointPanels:
    """Per cloud: the input, the visible groups, the predicted hidden groups (absolute coordinates)."""

    inputs: list[np.ndarray]
    visible: list[np.ndarray]
    hidden_true: list[np.ndarray]
    predicted: list[np.ndarray]


@torch.no_grad()
def point_panels(model, clouds: torch.Tensor, mask: Mask) -> PointPanels:
    """Run ``model`` (a :class:`PointMAE`) on ``clouds [B, N, 3]`` with ``mask`` and collect the panels."""
    out = model(clouds, mask=mask)
    layout = out.layout
    k = model.config.group_size
    groups = (layout.neighbourhood + layout.centres.unsqueeze(2)).float().cpu()
    pred = out.pred.float().view(*out.pred.shape[:2], k, 3).cpu() + layout.centres.unsqueeze(2).float().cpu()
    hidden = mask.mask.cpu()
    panels = PointPanels([], [], [], [])
    for b in range(clouds.shape[0]):
        panels.inputs.append(clouds[b].float().cpu().numpy())
        panels.visible.append(groups[b][~hidden[b]].reshape(-1, 3).numpy())
        panels.hidden_true.append(groups[b][hidden[b]].reshape(-1, 3).numpy())
        panels.predicted.append(pred[b][hidden[b]].reshape(-1, 3).numpy())
    return panels


def render(layers: list[tuple[np.ndarray, tuple[int, int, int]]], size: int = 256, up_axis: int = 1,
           elevation: float = 0.35, azimuth: float = 0.6, radius: int = 2) -> Image.Image:
    """Orthographic splat render of coloured point sets (back to front, shaded by depth) on white."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p, _ in layers]
    if not any(len(p) for p in points):
        return image
    # put the up axis on screen y, then turn the view
    order = {0: [1, 0, 2], 1: [0, 1, 2], 2: [0, 2, 1]}[up_axis]
    view = rotation_matrix(np.array([elevation, azimuth, 0.0]))
    every = np.concatenate([p for p in points if len(p)])[:, order] @ view.T
    centre = (every.max(0) + every.min(0)) / 2
    extent = max(float((every - centre)[:, :2].__abs__().max()), 1e-6)
    rows = []
    for p, (_, colour) in zip(points, layers, strict=True):
        if len(p):
            q = (p[:, order] @ view.T - centre) / extent
            rows.append(np.column_stack([q, np.tile(colour, (len(q), 1))]))
    q = np.concatenate(rows)
    q = q[np.argsort(q[:, 2])]  # far (small z) first
    half = (size - 2 * radius - 2) / 2
    shade = 0.55 + 0.45 * (q[:, 2] - q[:, 2].min()) / max(np.ptp(q[:, 2]), 1e-6)
    for x, y, s, r, g, b in zip(q[:, 0] * half + size / 2, size / 2 - q[:, 1] * half, shade, q[:, 3], q[:, 4],
                                q[:, 5], strict=True):
        colour = tuple(int(255 - (255 - c) * s) for c in (r, g, b))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return image


def save_panels(panels: PointPanels, path: str | Path, size: int = 256, up_axis: int = 1) -> Path:
    """A PNG grid, one row per cloud: input | visible groups | visible + reconstructed hidden groups."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = len(panels.inputs)
    sheet = Image.new("RGB", (3 * size, rows * size), (255, 255, 255))
    titles = ("input", "visible groups", "reconstruction")
    for i in range(rows):
        tiles = [
            render([(panels.inputs[i], VISIBLE)], size, up_axis),
            render([(panels.hidden_true[i], HIDDEN), (panels.visible[i], VISIBLE)], size, up_axis),
            render([(panels.visible[i], VISIBLE), (panels.predicted[i], PREDICTED)], size, up_axis),
        ]
        for j, tile in enumerate(tiles):
            if i == 0:
                ImageDraw.Draw(tile).text((6, 4), titles[j], fill=(0, 0, 0))
            sheet.paste(tile, (j * size, i * size))
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
