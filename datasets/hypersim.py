"""Hypersim (Apple's photorealistic indoor scenes) to aligned RGB / depth / segmentation shards.

Reads the released layout: ``ROOT/<scene>/images/scene_<camera>_final_hdf5/frame.NNNN.color.hdf5`` (linear HDR
colour) with ``scene_<camera>_final_preview/frame.NNNN.tonemap.jpg`` beside it, and
``scene_<camera>_geometry_hdf5/frame.NNNN.{depth_meters,semantic,render_entity_id}.hdf5``; frames and their
train / val / test partition come from ``metadata_images_split_scene_v1.csv`` (frames not in the public
release are left out).

- RGB: the released ``tonemap.jpg`` when it is there, else the colour HDF5 tone-mapped as Hypersim's own
  tool does (scale so the 90th-percentile brightness of the rendered pixels becomes 0.8 after gamma 1/2.2).
- Depth: Hypersim's ``depth_meters`` is the distance to the camera centre; written as planar depth (along
  the optical axis), like NYU's, through each scene's ``M_cam_from_uv`` when
  ``metadata_camera_parameters.csv`` is given (tilt-shift cameras), else the standard 60-degree camera.
- Classes: NYU's 40 (``semantic``: 1..40) as ids 0..39, unlabelled (-1, 0) at 255.

Writes ``OUT/{train,val,test}`` shards (see ``mimx.datasets.aligned``) and ``classes.json``. Only the
scenes found under ROOT are converted (download a subset and convert it); a listed frame whose files are
missing or unreadable is skipped and listed.

    python -m mimx.datasets.hypersim ROOT metadata_images_split_scene_v1.csv data/hypersim \\
        --camera-params metadata_camera_parameters.csv --short-side 240
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mimx.config import UserError
from mimx.data.shards import print_summary, write_dataset
from mimx.datasets.aligned import encode_sample, resize_aligned

NYU40_CLASSES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                 "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
                 "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain",
                 "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag",
                 "otherstructure", "otherfurniture", "otherprop"]
SPLITS = ("train", "val", "test")
STANDARD_FOV = np.pi / 3  # horizontal field of view of Hypersim's standard camera


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise UserError("reading Hypersim's .hdf5 files needs h5py: pip install 'mimx[multimodal]'") from exc
    return h5py


def _read_csv(path: Path, needed: tuple[str, ...], what: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path} does not exist; give Hypersim's {what}")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    missing = [column for column in needed if not rows or column not in rows[0]]
    if missing:
        raise UserError(f"{path} has no column(s) {', '.join(missing)}; give Hypersim's {what}")
    return rows


def read_frames(split_csv: Path) -> dict[str, list[tuple[str, str, int]]]:
    """``{split: [(scene, camera, frame), ...]}`` of the frames in the public release."""
    rows = _read_csv(split_csv, ("scene_name", "camera_name", "frame_id", "included_in_public_release",
                                 "split_partition_name"), "metadata_images_split_scene_v1.csv")
    frames: dict[str, list[tuple[str, str, int]]] = {split: [] for split in SPLITS}
    for row in rows:
        if row["included_in_public_release"].strip().lower() == "true" and row["split_partition_name"] in frames:
            frames[row["split_partition_name"]].append((row["scene_name"], row["camera_name"], int(row["frame_id"])))
    return frames


def read_cameras(path: Path) -> dict[str, np.ndarray]:
    """Each scene's ``M_cam_from_uv`` (3x3) from ``metadata_camera_parameters.csv``."""
    columns = tuple(f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3))
    rows = _read_csv(path, ("scene_name", *columns), "metadata_camera_parameters.csv")
    return {row["scene_name"]: np.array([float(row[c]) for c in columns]).reshape(3, 3) for row in rows}


def standard_camera(height: int, width: int) -> np.ndarray:
    """``M_cam_from_uv`` of the standard camera: 60 degrees across, square pixels, looking down -z."""
    tan_x = np.tan(STANDARD_FOV / 2)
    return np.diag([tan_x, tan_x * height / width, -1.0])


def planar_depth(distance: np.ndarray, m_cam_from_uv: np.ndarray) -> np.ndarray:
    """Depth along the optical axis from Hypersim's distance to the camera centre (``[H, W]`` metres).

    Pixel centres sit at u in (-1, 1) left to right and v in (-1, 1) bottom to top; the camera-space ray
    of a pixel is ``M_cam_from_uv @ (u, v, 1)`` and depth is the distance times the ray's |z| over its length.
    """
    height, width = distance.shape
    u = (np.arange(width) + 0.5) / width * 2 - 1
    v = 1 - (np.arange(height) + 0.5) / height * 2
    uu, vv = np.meshgrid(u, v)
    rays = np.stack([uu, vv, np.ones_like(uu)], -1) @ m_cam_from_uv.T
    return (distance * np.abs(rays[..., 2]) / np.linalg.norm(rays, axis=-1)).astype(np.float32)


def tonemap(color: np.ndarray, render_entity_id: np.ndarray | None) -> np.ndarray:
    """Hypersim's tone mapping of a linear HDR image to uint8 sRGB-like colours."""
    gamma, percentile, target = 1 / 2.2, 90, 0.8
    color = np.nan_to_num(color.astype(np.float32))
    valid = np.ones(color.shape[:2], bool) if render_entity_id is None else render_entity_id != -1
    scale = 1.0
    if valid.any():
        brightness = 0.3 * color[..., 0] + 0.59 * color[..., 1] + 0.11 * color[..., 2]
        current = np.percentile(brightness[valid], percentile)
        scale = 0.0 if current < 1e-4 else target ** (1 / gamma) / current
    mapped = np.clip(np.power(np.maximum(scale * color, 0), gamma), 0, 1)
    return np.round(mapped * 255).astype(np.uint8)


def _dataset(path: Path) -> np.ndarray:
    with _h5py().File(path, "r") as f:
        return np.asarray(f["dataset"])


def frame_maps(root: Path, scene: str, camera: str, frame: int, m_cam_from_uv: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (uint8), planar depth (metres, NaN invalid) and NYU40 ids (0..39, 255 unlabelled) of one frame."""
    images = root / scene / "images"
    stem = f"frame.{frame:04d}"
    final, geometry = images / f"scene_{camera}_final_hdf5", images / f"scene_{camera}_geometry_hdf5"
    preview = images / f"scene_{camera}_final_preview" / f"{stem}.tonemap.jpg"
    if preview.is_file():
        with Image.open(io.BytesIO(preview.read_bytes())) as image:
            rgb = np.asarray(image.convert("RGB"))
    else:
        entity = geometry / f"{stem}.render_entity_id.hdf5"
        rgb = tonemap(_dataset(final / f"{stem}.color.hdf5"), _dataset(entity) if entity.is_file() else None)
    distance = _dataset(geometry / f"{stem}.depth_meters.hdf5").astype(np.float32)
    semantic = _dataset(geometry / f"{stem}.semantic.hdf5").astype(np.int64)
    if not (rgb.shape[:2] == distance.shape == semantic.shape):
        raise ValueError(f"maps of different sizes: rgb {rgb.shape[:2]}, depth {distance.shape}, "
                         f"semantic {semantic.shape}")
    camera_matrix = standard_camera(*distance.shape) if m_cam_from_uv is None else m_cam_from_uv
    depth = planar_depth(distance, camera_matrix)
    labels = np.where((semantic >= 1) & (semantic <= 40), semantic - 1, 255)
    return rgb, depth, labels


def hypersim_samples(root: Path, frames: list[tuple[str, str, int]], split: str, cameras: dict[str, np.ndarray],
                     short_side: int | None, skipped: list[str]) -> Iterator[dict[str, Any]]:
    for scene, camera, frame in frames:
        name = f"{scene}/{camera}/frame.{frame:04d}"
        if cameras and scene not in cameras:
            skipped.append(f"{name}: scene not in the camera parameters")
            continue
        try:
            rgb, depth, labels = frame_maps(root, scene, camera, frame, cameras.get(scene))
        except (OSError, KeyError, ValueError) as exc:
            skipped.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
            continue
        rgb, depth, labels = resize_aligned(rgb, depth, labels, short_side)
        yield encode_sample(f"{scene}-{camera}-{frame:04d}", rgb, depth, labels,
                            {"source": name, "split": split, "scene": scene})


def convert_hypersim(root: str | Path, split_csv: str | Path, out: str | Path, *,
                     camera_params: str | Path | None = None, short_side: int | None = None,
                     prefix: str = "hypersim", overwrite: bool = False, max_size: str = "64MB") -> dict[str, dict]:
    """The Hypersim scenes under ``root`` -> ``out/{train,val,test}`` shards (see the module doc)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder holding the downloaded Hypersim scenes (ai_*)")
    frames = read_frames(Path(split_csv))
    cameras = read_cameras(Path(camera_params)) if camera_params else {}
    present = {p.name for p in root.iterdir() if (p / "images").is_dir()}
    listed = {scene for split in frames.values() for scene, _, _ in split}
    if not present & listed:
        raise UserError(f"none of the {len(listed)} scenes of {split_csv} is under {root} (looked for "
                        f"{root}/<scene>/images); give the folder the scenes were unzipped into")
    absent = len(listed - present)
    if absent:
        print(f"hypersim: {len(present & listed)} of {len(listed)} scenes are under {root}; converting those",
              file=sys.stderr)
    report = {}
    for split, split_frames in frames.items():
        here = [f for f in split_frames if f[0] in present]
        if not here:
            continue
        skipped: list[str] = []
        report[split] = write_dataset(out / split, prefix, hypersim_samples(root, here, split, cameras, short_side,
                                                                           skipped),
                                      NYU40_CLASSES, max_size=max_size, max_count=100_000, overwrite=overwrite,
                                      skipped=skipped, what=f"{len(here)} {split} frames under {root}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.hypersim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder with the unzipped scenes (ai_001_001/, ...)")
    parser.add_argument("split_csv", help="metadata_images_split_scene_v1.csv")
    parser.add_argument("out")
    parser.add_argument("--camera-params", help="metadata_camera_parameters.csv (per-scene M_cam_from_uv)")
    parser.add_argument("--short-side", type=int, help="resize so the short side has this many pixels")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--max-size", default="64MB",
                        help="target shard size (default 64MB: several shards, so several data workers, even for "
                             "small sets)")
    args = parser.parse_args(argv)
    try:
        report = convert_hypersim(args.root, args.split_csv, args.out, camera_params=args.camera_params,
                                  short_side=args.short_side, overwrite=args.overwrite,
                                  max_size=args.max_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, summary in report.items():
        print_summary(summary, Path(args.out) / split, f"{split} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
