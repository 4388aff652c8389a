"""Hypersim converter on a small scene folder written in Hypersim's released layout."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mimx.config import UserError
from mimx.datasets.hypersim import convert_hypersim, main, planar_depth, standard_camera, tonemap

H, W = 24, 32
SPLIT_COLUMNS = ["scene_name", "camera_name", "frame_id", "included_in_public_release", "exclude_reason",
                 "split_partition_name"]


def _h5(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["dataset"] = array


def write_frame(root: Path, scene: str, camera: str, frame: int, rng: np.random.Generator, *,
                preview: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
    images = root / scene / "images"
    stem = f"frame.{frame:04d}"
    color = rng.uniform(0, 3, (H, W, 3)).astype(np.float16)
    distance = rng.uniform(1, 8, (H, W)).astype(np.float16)
    distance[0, 0] = np.nan  # a pixel that sees no geometry
    semantic = rng.integers(-1, 41, (H, W)).astype(np.int16)
    _h5(images / f"scene_{camera}_final_hdf5" / f"{stem}.color.hdf5", color)
    geometry = images / f"scene_{camera}_geometry_hdf5"
    _h5(geometry / f"{stem}.depth_meters.hdf5", distance)
    _h5(geometry / f"{stem}.semantic.hdf5", semantic)
    _h5(geometry / f"{stem}.render_entity_id.hdf5", np.ones((H, W), np.int32))
    if preview is not None:
        folder = images / f"scene_{camera}_final_preview"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), preview).save(folder / f"{stem}.tonemap.jpg", quality=95)
    return {"color": color, "distance": distance, "semantic": semantic}


def members(folder: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, member = info.name.split(".", 1)
                samples.setdefault(key, {})[member] = tar.extractfile(info).read()
    return samples


def png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def hypersim(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hypersim")
    rng = np.random.default_rng(0)
    frames = {
        ("ai_001_001", "cam_00", 0): write_frame(root, "ai_001_001", "cam_00", 0, rng, preview=(200, 40, 40)),
        ("ai_001_001", "cam_00", 1): write_frame(root, "ai_001_001", "cam_00", 1, rng),
        ("ai_001_001", "cam_01", 0): write_frame(root, "ai_001_001", "cam_01", 0, rng),
        ("ai_001_002", "cam_00", 0): write_frame(root, "ai_001_002", "cam_00", 0, rng),
        ("ai_001_002", "cam_00", 1): write_frame(root, "ai_001_002", "cam_00", 1, rng),
    }
    (root / "ai_001_002" / "images" / "scene_cam_00_geometry_hdf5" / "frame.0000.semantic.hdf5").unlink()
    rows = [["ai_001_001", "cam_00", 0, "True", "", "train"], ["ai_001_001", "cam_00", 1, "True", "", "train"],
            ["ai_001_001", "cam_00", 2, "False", "bad frame", "train"],  # not released: left out
            ["ai_001_001", "cam_01", 0, "True", "", "val"], ["ai_001_002", "cam_00", 0, "True", "", "test"],
            ["ai_001_002", "cam_00", 1, "True", "", "test"],
            ["ai_055_010", "cam_00", 0, "True", "", "test"]]  # a scene that was not downloaded
    with (root / "split.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(SPLIT_COLUMNS)
        writer.writerows(rows)
    return root, frames


def test_planar_depth_matches_the_focal_length_formula_and_flattens_a_plane():
    height, width = 768, 1024
    focal = 0.5 * width / np.tan(np.pi / 6)  # 886.81 px: the standard camera at Hypersim's size
    x, y = np.meshgrid(np.arange(width) - (width - 1) / 2, np.arange(height) - (height - 1) / 2)
    scale = np.sqrt(1 + (x / focal) ** 2 + (y / focal) ** 2)
    distance = 2.0 * scale  # a wall 2 m in front of the camera
    np.testing.assert_allclose(planar_depth(distance, standard_camera(height, width)), 2.0, rtol=1e-6)
    # a tilt-shift camera: the principal point moves, so the flat wall's distances change with it
    shifted = standard_camera(height, width)
    shifted[0, 2] = 0.2
    u = (np.arange(width) + 0.5) / width * 2 - 1
    v = 1 - (np.arange(height)[:, None] + 0.5) / height * 2
    rays = np.stack(np.broadcast_arrays(u[None] * shifted[0, 0] + 0.2, v * shifted[1, 1], -1.0), -1)
    distance = 2.0 * np.linalg.norm(rays, axis=-1)
    np.testing.assert_allclose(planar_depth(distance, shifted), 2.0, rtol=1e-6)


def test_tonemap_puts_the_90th_percentile_at_0_8():
    gray = np.random.default_rng(1).uniform(0, 5, (40, 40, 1)).repeat(3, -1)
    mapped = tonemap(gray, np.ones((40, 40), np.int32)) / 255
    assert abs(np.percentile(mapped[..., 0], 90) - 0.8) < 1 / 255
    assert tonemap(np.zeros((4, 4, 3)), None).max() == 0  # a black frame stays black, no division by zero


def test_frames_become_aligned_samples_with_planar_depth_and_nyu40_ids(hypersim, tmp_path, capsys):
    root, frames = hypersim
    report = convert_hypersim(root, root / "split.csv", tmp_path)
    assert {split: r["samples"] for split, r in report.items()} == {"train": 2, "val": 1, "test": 1}
    assert len(report["test"]["skipped"]) == 1 and "frame.0000.semantic.hdf5" in report["test"]["skipped"][0]
    assert "2 of 3 scenes are under" in capsys.readouterr().err  # ai_055_010 was not downloaded
    assert json.loads((tmp_path / "train" / "classes.json").read_text())[:3] == ["wall", "floor", "cabinet"]
    train = members(tmp_path / "train")
    assert sorted(train) == ["ai_001_001-cam_00-0000", "ai_001_001-cam_00-0001"]
    with_preview, without = train["ai_001_001-cam_00-0000"], train["ai_001_001-cam_00-0001"]
    assert np.abs(png(with_preview["rgb.png"]).reshape(-1, 3).mean(0) - (200, 40, 40)).max() < 3  # the jpg
    source = frames[("ai_001_001", "cam_00", 1)]
    np.testing.assert_array_equal(png(without["rgb.png"]), tonemap(source["color"], np.ones((H, W), np.int32)))
    expected = planar_depth(source["distance"].astype(np.float32), standard_camera(H, W))
    depth = png(without["depth.png"])
    assert depth[0, 0] == 0  # NaN distance: invalid
    np.testing.assert_array_equal(depth[1:], np.round(expected[1:] * 1000).astype(np.uint16))
    semantic = source["semantic"].astype(np.int64)
    np.testing.assert_array_equal(png(without["semseg.png"]),
                                  np.where(semantic >= 1, semantic - 1, 255).astype(np.uint8))


def test_camera_parameters_short_side_and_bad_input(hypersim, tmp_path, capsys):
    root, frames = hypersim
    columns = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    shifted = standard_camera(H, W)
    shifted[1, 2] = -0.1
    with (tmp_path / "cameras.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["scene_name", *columns])
        writer.writerow(["ai_001_001", *shifted.ravel()])
        writer.writerow(["ai_001_002", *standard_camera(H, W).ravel()])
    convert_hypersim(root, root / "split.csv", tmp_path / "a", camera_params=tmp_path / "cameras.csv")
    val = members(tmp_path / "a" / "val")["ai_001_001-cam_01-0000"]
    distance = frames[("ai_001_001", "cam_01", 0)]["distance"].astype(np.float32)
    np.testing.assert_array_equal(png(val["depth.png"])[1:],
                                  np.round(planar_depth(distance, shifted)[1:] * 1000).astype(np.uint16))
    assert main([str(root), str(root / "split.csv"), str(tmp_path / "b"), "--short-side", "12"]) == 0
    sample = members(tmp_path / "b" / "train")["ai_001_001-cam_00-0001"]
    assert png(sample["rgb.png"]).shape == (12, 16, 3) and png(sample["semseg.png"]).shape == (12, 16)
    (tmp_path / "bad.csv").write_text("scene_name,frame_id\nai_001_001,0\n")
    with pytest.raises(UserError, match="no column.*camera_name.*metadata_images_split_scene_v1.csv"):
        convert_hypersim(root, tmp_path / "bad.csv", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of the 3 scenes"):
        convert_hypersim(tmp_path / "empty", root / "split.csv", tmp_path / "d")
    assert main([str(root / "nowhere"), str(root / "split.csv"), str(tmp_path / "e")]) == 2
    assert "is not a folder" in capsys.readouterr().err
