"""Reading and writing point clouds: open3d for .ply/.pcd and meshes, numpy for arrays and text.

Every reader returns float32 ``[N, 3]`` xyz (extra columns such as normals or colours are dropped).
Meshes (.off/.obj/.stl, and .ply files with faces) are sampled uniformly on their surface, with a
seeded numpy generator, so the same file and seed give the same cloud.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from mimx.config import UserError

MESH_SUFFIXES = (".off", ".obj", ".stl")
CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".txt", ".npy", ".npz")
SUFFIXES = CLOUD_SUFFIXES + MESH_SUFFIXES
# shard keys holding a cloud, in the order a decoder looks for them
SHARD_KEYS = tuple(s[1:] for s in SUFFIXES)

OPEN3D_HINT = "reading .ply/.pcd/.off/.obj/.stl needs open3d: pip install 'mimx[points]' (open3d-cpu==0.19.0)"


def _open3d():
    try:
        import open3d
    except ImportError as exc:  # pragma: no cover - open3d is in the points extra
        raise UserError(OPEN3D_HINT) from exc
    return open3d


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


def read_off(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` and fan-triangulated faces ``[F, 3]`` of an OFF file.

    Reads OFF/COFF/NOFF/CNOFF with comments, counts on the header line or the next, the ``OFF490 518 0``
    header some ModelNet files have, and faces with or without a colour (integer or float) after their ids.
    """
    lines = [line.split("#", 1)[0].strip() for line in data.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    header = re.match(r"([A-Za-z]*OFF)(.*)", lines[0]) if lines else None
    if header is None:
        raise ValueError("not an OFF file (no OFF header)")
    kind, rest = header.group(1).upper(), header.group(2).split()
    prefix = kind[:-3]
    per_vertex = 3 + (3 if "N" in prefix else 0) + (4 if "C" in prefix else 0)
    at = 1
    if len(rest) < 2 and len(lines) > 1:  # the counts are on the next line
        rest, at = lines[1].split(), 2
    if len(rest) < 2:
        raise ValueError("the OFF header has no vertex and face counts")
    num_vertices, num_faces = int(rest[0]), int(rest[1])
    values: list[str] = []
    while len(values) < num_vertices * per_vertex:  # a vertex per line, but tolerate wrapped lines
        if at == len(lines):
            raise ValueError(f"the header announces {num_vertices} vertices, the file ends before them")
        values += lines[at].split()
        at += 1
    vertices = np.asarray(values[:num_vertices * per_vertex], dtype=np.float64).reshape(num_vertices, per_vertex)
    triangles = []
    for line in lines[at:at + num_faces]:
        words = line.split()
        n = int(words[0])
        if len(words) < n + 1:
            raise ValueError(f"a face of {n} vertices lists {len(words) - 1} ids")
        ids = [int(v) for v in words[1:n + 1]]  # anything after the ids is the face's colour
        triangles += [(ids[0], ids[i], ids[i + 1]) for i in range(1, n - 1)]
    if len(lines) - at < num_faces:
        raise ValueError(f"the header announces {num_faces} faces, the file holds {len(lines) - at}")
    return vertices[:, :3], np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def _read_mesh(path: Path, mesh_points: int, seed: int) -> np.ndarray:
    if path.suffix.lower() == ".off":
        vertices, triangles = read_off(path.read_bytes())
    else:
        mesh = _open3d().io.read_triangle_mesh(str(path))
        vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(triangles) == 0:
        if len(vertices):
            return vertices.astype(np.float32)
        raise ValueError("no vertices or faces could be read")
    return sample_surface(vertices, triangles, mesh_points, seed)


def _ply_has_faces(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.read(4096).split(b"end_header")[0]
    for line in header.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"element" and parts[1] == b"face":
            return int(parts[2]) > 0
    return False


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


def read_points(path: str | os.PathLike, *, mesh_points: int = 8192, seed: int = 0) -> np.ndarray:
    """A point cloud ``[N, 3]`` float32 from a file; meshes are sampled with ``mesh_points`` surface points.

    Raises ``ValueError`` naming the file when it cannot be read or holds no point.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported point-cloud format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        if suffix in MESH_SUFFIXES or (suffix == ".ply" and _ply_has_faces(path)):
            points = _read_mesh(path, mesh_points, seed)
        elif suffix in (".ply", ".pcd"):
            cloud = _open3d().io.read_point_cloud(str(path))
            points = np.asarray(cloud.points, dtype=np.float32)
        elif suffix in (".npy", ".npz"):
            points = _read_array(path.read_bytes(), suffix)
        else:
            points = _read_text(path.read_bytes())
    except UserError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot read a point cloud ({type(exc).__name__}: {exc})") from exc
    if len(points) == 0:
        raise ValueError(f"{path}: no point could be read (empty or unreadable file)")
    return points


def decode_points(data: bytes, key: str, *, mesh_points: int = 8192, seed: int = 0) -> np.ndarray:
    """A cloud from the bytes of a shard member named by its extension ``key`` (``npy``, ``ply``, ...)."""
    suffix = "." + key.lower()
    if suffix in (".npy", ".npz"):
        return _read_array(data, suffix)
    if suffix in (".xyz", ".xyzn", ".xyzrgb", ".pts", ".txt"):
        return _read_text(data)
    with tempfile.TemporaryDirectory() as tmp:  # open3d reads from paths only
        path = Path(tmp) / f"cloud{suffix}"
        path.write_bytes(data)
        return read_points(path, mesh_points=mesh_points, seed=seed)


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
