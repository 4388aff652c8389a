"""Per-cloud preparation in the data workers: clean, bound, resample, normalise, augment (numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Prepared:
    """A cloud ready for the model plus what was done to it (for the data report)."""

    points: np.ndarray  # [N, 3] float32
    dropped: int  # non-finite points removed
    padded: bool  # fewer points than N: resampled with replacement
    capped: bool  # more than the cap: subsampled before the rest


def drop_nonfinite(points: np.ndarray) -> tuple[np.ndarray, int]:
    """``points`` without rows holding NaN or inf, and how many rows went."""
    keep = np.isfinite(points).all(axis=1)
    return points[keep], int((~keep).sum())


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centred on the centroid and scaled so the farthest point lies on the unit sphere (Point-MAE)."""
    centred = points - points.mean(axis=0, keepdims=True)
    radius = float(np.sqrt((centred**2).sum(axis=1)).max())
    return centred / radius if radius > 0 else centred


def resample(points: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``count`` points: a random subset without replacement, or all plus random repeats when too few."""
    n = len(points)
    if n >= count:
        return points[rng.choice(n, count, replace=False)], False
    extra = rng.choice(n, count - n, replace=True)
    return np.concatenate([points, points[extra]])[rng.permutation(count)], True


def farthest_subset(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` farthest-point-sampled points (random start), in numpy: uniform coverage of the shape."""
    n = len(points)
    if n <= count:
        return points
    picked = np.empty(count, dtype=np.int64)
    picked[0] = rng.integers(n)
    nearest = np.full(n, np.inf, dtype=np.float64)
    for i in range(1, count):
        diff = points - points[picked[i - 1]]
        np.minimum(nearest, np.einsum("ij,ij->i", diff, diff), out=nearest)
        picked[i] = int(nearest.argmax())
    return points[picked]


def prepare_cloud(points: np.ndarray, count: int, rng: np.random.Generator, *, max_points: int = 0,
                  sample: str = "random", normalize: bool = True) -> Prepared:
    """Clean, bound, resample to ``count`` and normalise one cloud.

    ``max_points`` > 0: a larger cloud is first randomly subsampled to that size, so the cost of the
    rest stays bounded. ``sample``: ``random`` subset or ``fps`` (farthest points, slower, even cover).
    Raises ``ValueError`` when no finite point is left.
    """
    points, dropped = drop_nonfinite(np.asarray(points, dtype=np.float32))
    if len(points) == 0:
        raise ValueError(f"no finite point ({dropped} NaN/inf rows dropped)")
    capped = bool(max_points) and len(points) > max_points
    if capped:
        points = points[rng.choice(len(points), max_points, replace=False)]
    if sample == "fps" and len(points) > count:
        points, padded = farthest_subset(points, count, rng), False
    else:
        points, padded = resample(points, count, rng)
    if normalize:
        points = normalize_unit_sphere(points)
    return Prepared(points.astype(np.float32), dropped, padded, capped)


def rotation_matrix(axis_angles: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles (radians) about x, y, z."""
    ax, ay, az = axis_angles
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def augment(points: np.ndarray, rng: np.random.Generator, *, scale: tuple[float, float] = (2 / 3, 3 / 2),
            translate: float = 0.2, rotate_up: bool = False, up_axis: int = 1, jitter: float = 0.0) -> np.ndarray:
    """Point-MAE's training augmentation: per-axis scale and translation; optional spin about the up axis."""
    out = points * rng.uniform(scale[0], scale[1], size=(1, 3)) + rng.uniform(-translate, translate, size=(1, 3))
    if rotate_up:
        angles = np.zeros(3)
        angles[up_axis] = rng.uniform(0, 2 * np.pi)
        out = out @ rotation_matrix(angles).T
    if jitter:
        out = out + np.clip(rng.normal(0, jitter, size=out.shape), -5 * jitter, 5 * jitter)
    return out.astype(np.float32)
