"""Reading and writing point clouds: .ply/.pcd/.off/.obj/.stl (``formats.py``), .npy/.npz and text.

All readers are numpy: no open3d (seen hanging in a forked DataLoader worker, and silent on truncated
files). Every reader returns float32 ``[N, 3]`` xyz (extra columns such as normals or colours are dropped).
Meshes (.off/.obj/.stl, and .ply files with faces) are sampled uniformly on their surface, with a
seeded numpy generator, so the same file and seed give the same cloud.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mimx.modalities.points.formats import read_obj, read_off, read_pcd, read_ply, read_stl

MESH_SUFFIXES = (".off", ".obj", ".stl")
CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".txt", ".npy", ".npz")
SUFFIXES = CLOUD_SUFFIXES + MESH_SUFFIXES
# shard keys holding a cloud, in the order a decoder looks for them
SHARD_KEYS = tuple(s[1:] for s in SUFFIXES)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points uniform on a triangle mesh's surface (area-weighted faces, uniform barycentrics)."""
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    area = np.where(np.isfinite(area), area, 0.0)
    if area.sum() <= 0:
        raise ValueError("the mesh has no triangle with a positive area")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(t), size=count, p=area / area.sum())
    u, w = rng.random(count), rng.random(count)
    flip = u + w > 1  # fold the unit square onto the triangle
    u, w = np.where(flip, 1 - u, u), np.where(flip, 1 - w, w)
    points = a[face] + u[:, None] * (b[face] - a[face]) + w[:, None] * (c[face] - a[face])
    return points.astype(np.float32)


MESH_READERS = {".off": read_off, ".obj": read_obj, ".stl": read_stl}


def _read_mesh(vertices: np.ndarray, triangles: np.ndarray, mesh_points: int, seed: int) -> np.ndarray:
    if len(triangles) == 0:
        if len(vertices):
            return vertices.astype(np.float32)
        raise ValueError("no vertices or faces could be read")
    return sample_surface(vertices, triangles, mesh_points, seed)


def _read_text(data: bytes) -> np.ndarray:
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) < 3:
            continue  # header lines such as a point count
        try:
            rows.append([float(v) for v in parts[:3]])
        except ValueError:
            continue
    return np.asarray(rows, dtype=np.float32).reshape(-1, 3)


def _read_array(data: bytes, suffix: str) -> np.ndarray:
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if suffix == ".npz":
        names = list(loaded.keys())
        if not names:
            raise ValueError("the .npz holds no array")
        loaded = loaded["points"] if "points" in names else loaded[names[0]]
    array = np.asarray(loaded)
    if array.ndim != 2 or array.shape[1] < 3:
        raise ValueError(f"expected an [N, >=3] array, got shape {array.shape}")
    return array[:, :3].astype(np.float32)


def _decode(data: bytes, suffix: str, mesh_points: int, seed: int) -> np.ndarray:
    if suffix in (".npy", ".npz"):
        return _read_array(data, suffix)
    if suffix == ".ply":
        return _read_mesh(*read_ply(data), mesh_points, seed)  # a cloud when the file has no faces
    if suffix == ".pcd":
        return read_pcd(data)
    if suffix in MESH_READERS:
        return _read_mesh(*MESH_READERS[suffix](data), mesh_points, seed)
    return _read_text(data)


def decode_points(data: bytes, key: str, *, mesh_points: int = 8192, seed: int = 0,
                  name: str | None = None) -> np.ndarray:
    """A cloud ``[N, 3]`` float32 from the bytes of a file or shard member whose extension is ``key``.

    Meshes are sampled with ``mesh_points`` surface points. Raises ``ValueError`` naming ``name`` (or
    the format) when the bytes cannot be read, are truncated, or hold no point.
    """
    suffix = "." + key.lower().lstrip(".")
    what = name or f"the {suffix} data"
    if suffix not in SUFFIXES:
        raise ValueError(f"{what}: unsupported point-cloud format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        points = _decode(data, suffix, mesh_points, seed)
    except Exception as exc:
        raise ValueError(f"{what}: cannot read a point cloud ({type(exc).__name__}: {exc})") from exc
    if len(points) == 0:
        raise ValueError(f"{what}: no point could be read (empty or unreadable file)")
    return points


def read_points(path: str | os.PathLike, *, mesh_points: int = 8192, seed: int = 0) -> np.ndarray:
    """A point cloud ``[N, 3]`` float32 from a file; meshes are sampled with ``mesh_points`` surface points.

    Raises ``ValueError`` naming the file when it cannot be read or holds no point.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported point-cloud format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_points(data, suffix, mesh_points=mesh_points, seed=seed, name=str(path))


def encode_npy(points: np.ndarray) -> bytes:
    """``.npy`` bytes of a float32 cloud (what ``mimx points shards`` stores)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(points, dtype=np.float32))
    return buffer.getvalue()


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """A binary little-endian .ply of ``points [N, 3]`` with optional uint8 ``colors [N, 3]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    rows = np.empty(len(points), dtype=fields)
    rows["x"], rows["y"], rows["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        rows["red"], rows["green"], rows["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rows.tobytes())
    tmp.replace(path)
    return path
