"""NYU Depth v2 converter on a small labelled set built in NYU's own file layout (HDF5 .mat + v5 .mat)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from mimx.config import UserError
from mimx.datasets.nyuv2 import EIGEN_CROP, convert_nyuv2, main
from mimx.modalities.multimodal.data import MultiDataConfig, MultiDecoder, multi_stream
from mimx.modalities.multimodal.model import MultiMAE, multimae_config

N, H, W = 6, 48, 64


def write_labeled(path: Path, height: int = H, width: int = W, seed: int = 0) -> dict[str, np.ndarray]:
    """A labelled .mat as NYU writes it: MATLAB's column-major arrays, seen by h5py as [N, C, W, H]."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (N, height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.5, (N, height, width)).astype(np.float32)
    raw = depth.copy()
    raw[:, :4] = 0  # the sensor saw nothing at the top
    labels = rng.integers(0, 895, (N, height, width)).astype(np.uint16)
    labels[:, :, :3] = 0  # unlabelled
    with h5py.File(path, "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
        f["rawDepths"] = raw.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
        refs = f.create_group("#refs#")
        names = []
        for k in range(894):
            refs[f"n{k}"] = np.frombuffer(f"object{k + 1}".encode(), np.uint8).astype(np.uint16)[:, None]
            names.append(refs[f"n{k}"].ref)
        f.create_dataset("names", data=np.array(names, dtype=h5py.ref_dtype)[None])
    return {"rgb": rgb, "depth": depth, "raw": raw, "labels": labels}


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
def nyu(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("nyu")
    arrays = write_labeled(root / "nyu_depth_v2_labeled.mat")
    savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [2], [4], [6]]), "testNdxs": np.array([[3], [5]])})
    mapping = (np.arange(894) % 40 + 1).astype(np.float64)
    mapping[10] = 0  # a class the 40-class map leaves out
    names = np.empty((1, 40), dtype=object)
    names[0] = [f"c{k}" for k in range(40)]
    savemat(root / "classMapping40.mat", {"mapClass": mapping[None], "className": names})
    return root, arrays


def test_rgb_depth_and_40_classes_are_written_exactly(nyu, tmp_path):
    root, arrays = nyu
    report = convert_nyuv2(root / "nyu_depth_v2_labeled.mat", root / "splits.mat", tmp_path,
                           class_map=root / "classMapping40.mat")
    assert {split: r["samples"] for split, r in report.items()} == {"train": 4, "test": 2}
    assert json.loads((tmp_path / "train" / "classes.json").read_text()) == [f"c{k}" for k in range(40)]
    test = members(tmp_path / "test")
    assert sorted(test) == ["test-0003", "test-0005"]  # keys carry NYU's 1-based image numbers
    sample = test["test-0005"]
    np.testing.assert_array_equal(png(sample["rgb.png"]), arrays["rgb"][4])  # upright, not transposed
    np.testing.assert_array_equal(png(sample["depth.png"]), np.round(arrays["depth"][4] * 1000).astype(np.uint16))
    raw = arrays["labels"][4].astype(np.int64)
    expected = np.where(raw == 0, 255, (raw - 1) % 40)
    expected[raw == 11] = 255  # mapped to 0 (no class) by the class map
    semseg = png(sample["semseg.png"])
    assert semseg.dtype == np.uint8
    np.testing.assert_array_equal(semseg, expected)
    assert json.loads(sample["json"])["index"] == 5


def test_raw_classes_raw_depth_crop_and_resize(nyu, tmp_path):
    root, arrays = nyu
    convert_nyuv2(root / "nyu_depth_v2_labeled.mat", root / "splits.mat", tmp_path, depth="raw", short_side=24)
    assert json.loads((tmp_path / "train" / "classes.json").read_text())[:2] == ["object1", "object2"]
    sample = members(tmp_path / "train")["train-0001"]
    semseg, depth = png(sample["semseg.png"]), png(sample["depth.png"])
    assert semseg.shape == depth.shape == (24, 32) and png(sample["rgb.png"]).shape == (24, 32, 3)
    assert semseg.dtype == np.uint16 and 65535 in semseg and semseg[semseg < 65535].max() < 894
    assert (depth[:2] == 0).all() and (depth[3:] > 0).all()  # the sensor's holes stay invalid (nearest resize)
    assert np.isin(semseg, (arrays["labels"][0].astype(np.int64) - 1) % 65536).all()  # no mixed ids

    full = tmp_path / "full"
    full.mkdir()
    arrays = write_labeled(full / "labeled.mat", 480, 640, seed=1)
    convert_nyuv2(full / "labeled.mat", root / "splits.mat", full / "out", crop=True)
    top, bottom, left, right = EIGEN_CROP
    sample = members(full / "out" / "test")["test-0003"]
    np.testing.assert_array_equal(png(sample["rgb.png"]), arrays["rgb"][2, top:bottom, left:right])


def test_shards_feed_the_multimodal_pipeline(nyu, tmp_path):
    root, arrays = nyu
    convert_nyuv2(root / "nyu_depth_v2_labeled.mat", root / "splits.mat", tmp_path,
                  class_map=root / "classMapping40.mat")
    config = multimae_config({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                              "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "num_visible": 8,
                              "modalities": {"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"},
                                             "semseg": {"kind": "classes", "num_classes": 40}}})
    specs = MultiMAE(config).specs
    cfg = MultiDataConfig(shards=str(tmp_path / "train"), image_size=32, shuffle=0)
    (batch,) = list(multi_stream(cfg, MultiDecoder(cfg, specs, train=False), batch_size=4, epochs=1))
    assert batch["present"].all() and batch["rgb"].shape == (4, 3, 32, 32)
    assert 0.5 <= torch.nanmean(batch["depth"]) <= 9.5  # millimetre PNG back to metres
    ids = batch["semseg"]
    assert ids.max() == 255 and ids[ids != 255].max() < 40


def test_bad_input_gets_one_clear_message(nyu, tmp_path, capsys):
    root, _ = nyu
    labeled, splits = root / "nyu_depth_v2_labeled.mat", root / "splits.mat"
    with pytest.raises(UserError, match="not an HDF5"):
        convert_nyuv2(splits, splits, tmp_path / "a")  # splits.mat is v5, not the labelled set
    savemat(tmp_path / "far.mat", {"trainNdxs": np.array([[1], [99]]), "testNdxs": np.array([[2]])})
    with pytest.raises(UserError, match="indices run 1..99 but the labelled set has 6 images"):
        convert_nyuv2(labeled, tmp_path / "far.mat", tmp_path / "b")
    (tmp_path / "short.txt").write_text("1 2 3")
    with pytest.raises(UserError, match="holds 3 ids"):
        convert_nyuv2(labeled, splits, tmp_path / "c", class_map=tmp_path / "short.txt")
    with pytest.raises(UserError, match="no mapClass"):
        convert_nyuv2(labeled, splits, tmp_path / "d", class_map=splits)
    assert main([str(labeled), str(tmp_path / "missing.mat"), str(tmp_path / "e")]) == 2
    assert "missing.mat does not exist" in capsys.readouterr().err
    assert main([str(labeled), str(splits), str(tmp_path / "f"), "--class-map", str(root / "classMapping40.mat")]) == 0
    assert "wrote 4 train images (40 classes)" in capsys.readouterr().out
