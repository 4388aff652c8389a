"""ImageNet list writer on a small tree in ImageNet's layout, with a devkit whose synset order is not sorted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from mimx.cli import main as mimx_main
from mimx.config import UserError
from mimx.data.stream import read_file_list
from mimx.datasets.imagenet_lists import main, write_imagenet_lists

# the devkit numbers its synsets its own way: ILSVRC2012_ID 1 is the last of the sorted WordNet ids
SYNSETS = [(1, "n03000003", "third", 0), (2, "n01000001", "first", 0), (3, "n02000002", "second", 0),
           (4, "n09999999", "a parent synset", 2)]
SORTED = ["n01000001", "n02000002", "n03000003"]
GROUND_TRUTH = [1, 3, 2, 1]  # ILSVRC2012_IDs of val images 1..4 -> sorted labels 2, 1, 0, 2


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, value, value)).save(path, format="JPEG")


@pytest.fixture()
def imagenet(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    for wnid in ("n01000001", "n02000002", "n03000003"):
        for k in range(2):
            _jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", 40 * k)
    for k in range(1, 5):
        _jpeg(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", 10 * k)
    synsets = np.zeros((1, len(SYNSETS)), dtype=[(n, "O") for n in ("ILSVRC2012_ID", "WNID", "words", "gloss",
                                                                      "num_children")])
    for i, (sid, wnid, words, children) in enumerate(SYNSETS):
        synsets[0, i] = (sid, wnid, words, "", children)
    data = tmp_path / "devkit" / "data"
    data.mkdir(parents=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, GROUND_TRUTH)) + "\n")
    by_id = {sid: wnid for sid, wnid, _, _ in SYNSETS}
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{k:08d},{by_id[sid]} 1 2 3 4 {by_id[sid]} 5 6 7 8\n"
        for k, sid in reversed(list(enumerate(GROUND_TRUTH, 1)))))
    return root


def test_devkit_ground_truth_is_mapped_to_the_sorted_train_order(imagenet, tmp_path):
    counts = write_imagenet_lists(imagenet, tmp_path / "lists", devkit=tmp_path / "devkit")
    assert counts == {"classes": 3, "train": 6, "val": 4}
    assert json.loads((tmp_path / "lists" / "classes.json").read_text()) == ["n01000001", "n02000002", "n03000003"]
    assert json.loads((tmp_path / "lists" / "class_names.json").read_text()) == ["first", "second", "third"]
    val = read_file_list(tmp_path / "lists" / "val.csv")
    assert [(p.name, label) for p, label in val] == [(f"ILSVRC2012_val_{k:08d}.JPEG", label)
                                                     for k, label in zip(range(1, 5), (2, 1, 0, 2), strict=True)]
    train = read_file_list(tmp_path / "lists" / "train.csv")
    assert [(p.parent.name, label) for p, label in train][::2] == [("n01000001", 0), ("n02000002", 1),
                                                                   ("n03000003", 2)]
    write_imagenet_lists(imagenet, tmp_path / "kaggle", loc_csv=tmp_path / "LOC_val_solution.csv")
    assert read_file_list(tmp_path / "kaggle" / "val.csv") == val  # the same labels from Kaggle's csv
    for file, label in val:  # valprep.sh's layout: val/<wnid>/ folders need no label source
        (file.parent / SORTED[label]).mkdir(exist_ok=True)
        file.rename(file.parent / SORTED[label] / file.name)
    write_imagenet_lists(imagenet, tmp_path / "folders")
    assert sorted((p.name, label) for p, label in read_file_list(tmp_path / "folders" / "val.csv")) == \
        sorted((p.name, label) for p, label in val)


def test_val_list_becomes_labelled_shards(imagenet, tmp_path, capsys):
    assert main([str(imagenet), str(tmp_path / "lists"), "--devkit", str(tmp_path / "devkit")]) == 0
    assert "wrote 6 train and 4 val images of 3 classes" in capsys.readouterr().out
    assert mimx_main(["image", "shards", str(tmp_path / "lists" / "val.csv"), str(tmp_path / "val"),
                      "--no-shuffle"]) == 0
    (shard,) = sorted((tmp_path / "val").glob("*.tar"))
    with tarfile.open(shard) as tar:
        labels = [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]
        meta = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
        first = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        pixel = np.asarray(Image.open(io.BytesIO(tar.extractfile(first).read())))[0, 0, 0]
    assert labels == [2, 1, 0, 2] and [m["class"] for m in meta][:2] == ["n03000003", "n02000002"]
    assert abs(int(pixel) - 10) <= 2  # val image 1 (JPEG kept as is)
    assert json.loads((tmp_path / "val" / "classes.json").read_text())[0] == "n01000001"


def test_wrong_sources_name_the_file(imagenet, tmp_path, capsys):
    (imagenet / "val" / "ILSVRC2012_val_00000005.JPEG").write_bytes(b"")
    with pytest.raises(UserError, match="4 ground-truth lines for 5 images"):
        write_imagenet_lists(imagenet, tmp_path / "a", devkit=tmp_path / "devkit")
    (imagenet / "val" / "ILSVRC2012_val_00000005.JPEG").unlink()
    with pytest.raises(UserError, match="flat folder: give --devkit or --loc-csv"):
        write_imagenet_lists(imagenet, tmp_path / "b")
    (tmp_path / "loc.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n05555555 1 2 3 4\n")
    with pytest.raises(UserError, match="ILSVRC2012_val_00000001.JPEG: class n05555555 is not among the 3"):
        write_imagenet_lists(imagenet, tmp_path / "c", loc_csv=tmp_path / "loc.csv")
    write_imagenet_lists(imagenet, tmp_path / "d", loc_csv=tmp_path / "LOC_val_solution.csv")
    assert main([str(imagenet), str(tmp_path / "d"), "--loc-csv", str(tmp_path / "LOC_val_solution.csv")]) == 2
    assert "already exists" in capsys.readouterr().err
