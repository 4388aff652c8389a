import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimx.config import UserError
from mimx.data.shards import ShardWriter, dataset_size, expand_shards
from mimx.data.stream import MemoryStream, ShardStream, StreamLoader, read_raw
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder
from mimx.modalities.image.shards import write_image_shards


def _index_decoder(sample, rng):
    return {"idx": int(sample["txt"].decode()), "draw": float(rng.random())}


def _write_numbered(folder: Path, shards: int, per_shard: int) -> list[str]:
    with ShardWriter(folder / "n", max_count=per_shard) as w:
        for i in range(shards * per_shard):
            w.write({"__key__": f"s{i:05d}", "txt": str(i)})
    return w.shards


def test_expand_shards_forms(tmp_path):
    shards = _write_numbered(tmp_path, 3, 2)
    assert expand_shards(str(tmp_path / "n-{000000..000002}.tar")) == shards
    assert expand_shards(str(tmp_path / "n-*.tar")) == shards
    assert expand_shards(str(tmp_path)) == shards
    assert expand_shards(f"{shards[0]}::{shards[2]}") == [shards[0], shards[2]]
    assert expand_shards("pipe:cat /x/a.tar") == ["pipe:cat /x/a.tar"]
    with pytest.raises(UserError, match=r"2 of 5 shards not found: .*n-000003.tar"):
        expand_shards(str(tmp_path / "n-{000000..000004}.tar"))
    assert dataset_size(shards) == 6


def test_shard_writer_is_atomic_and_never_overwrites(tmp_path):
    shards = _write_numbered(tmp_path, 2, 3)
    assert [json.loads(Path(s).with_suffix(".json").read_text())["count"] for s in shards] == [3, 3]
    before = Path(shards[0]).read_bytes()
    with pytest.raises(UserError, match="already exists"):
        ShardWriter(tmp_path / "n")
    # a crash mid-write leaves finished shards and no partial file under a final name
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "m", max_count=2) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "txt": "x"})
        raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.glob("m-*")) == ["m-000000.json", "m-000000.tar"]
    assert Path(shards[0]).read_bytes() == before


def _drain(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_each_sample_once_per_epoch_across_workers(tmp_path):
    shards = _write_numbered(tmp_path, 6, 10)
    stream = ShardStream(shards, _index_decoder, batch_size=5, shuffle=8, seed=3)
    batches = _drain(StreamLoader(stream, num_workers=2, prefetch_factor=2), 24)
    first = sorted(i for b in batches[:12] for i in b["idx"].tolist())
    second = sorted(i for b in batches[12:] for i in b["idx"].tolist())
    assert first == list(range(60)) and second == list(range(60))
    order1 = [i for b in batches[:12] for i in b["idx"].tolist()]
    order2 = [i for b in batches[12:] for i in b["idx"].tolist()]
    assert order1 != order2  # reshuffled each epoch


def test_resume_replays_the_exact_next_batches(samples):
    cfg = ImageDataConfig(image_size=16)
    urls = expand_shards(str(samples / "mnist"))

    def loader():
        stream = ShardStream(urls, ImageDecoder(cfg), batch_size=16, shuffle=50, seed=1)
        return StreamLoader(stream, num_workers=2, prefetch_factor=2)

    a = loader()
    it = iter(a)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))  # survives a round trip through plain data
    expected = [next(it) for _ in range(5)]
    b = loader()
    b.load_state_dict(state)
    got = _drain(b, 5)
    for x, y in zip(expected, got, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_samples_are_skipped_counted_and_named(tmp_path):
    good = _png(100)
    with ShardWriter(tmp_path / "c", max_count=100) as w:
        for i in range(10):
            w.write({"__key__": f"ok{i}", "png": good, "cls": "1"})
        w.write({"__key__": "garbage", "jpg": b"this is not a jpeg"})
        w.write({"__key__": "truncated", "png": good[: len(good) // 2], "cls": "1"})
        w.write({"__key__": "noimage", "cls": "1"})
    cfg = ImageDataConfig(image_size=8, num_workers=0)
    stream = ShardStream(w.shards, ImageDecoder(cfg, train=False), batch_size=5, shuffle=0)
    loader = StreamLoader(stream, num_workers=0)
    batches = _drain(loader, 4)
    assert all(b["image"].shape == (5, 3, 8, 8) for b in batches)
    assert loader.skips.count == 3
    report = loader.skips.report()
    assert "skipped 3" in report and "garbage" in report and "truncated" in report and "noimage" in report


def test_truncated_shard_is_reported_and_reading_goes_on(tmp_path):
    with ShardWriter(tmp_path / "t", max_count=20) as w:
        for i in range(40):
            w.write({"__key__": f"s{i:03d}", "txt": str(i)})
    data = Path(w.shards[0]).read_bytes()
    Path(w.shards[0]).write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    stream = ShardStream(w.shards, _index_decoder, batch_size=1, shuffle=0)
    loader = StreamLoader(stream, num_workers=0)
    seen = [int(b["idx"]) for b in _drain(loader, 40)]
    first_epoch = seen[:35]  # 15 samples survive the cut, the second shard has 20
    assert sorted(first_epoch) == list(range(15)) + list(range(20, 40))
    report = loader.skips.report()
    assert loader.skips.count == 1 and "t-000000.tar: truncated" in report and "object at" not in report
    Path(w.shards[0]).with_suffix(".json").unlink()  # no sidecar: the count reads the tar headers up to the cut
    assert dataset_size(w.shards) == 35  # the 15 the stream reads, and the 20 of the whole shard


def test_a_cut_inside_member_data_keeps_every_whole_sample_and_the_count_agrees(tmp_path):
    with ShardWriter(tmp_path / "t", max_count=20) as w:
        for i in range(20):
            w.write({"__key__": f"s{i:03d}", "txt": f"{i:<2000}"})  # 2 kB members: most cuts fall in data
    data = Path(w.shards[0]).read_bytes()
    Path(w.shards[0]).with_suffix(".json").unlink()
    for cut in (2560 * 5 + 700, 2560 * 12 + 1500, 2560 * 19 + 100):  # inside the data of samples 5, 12, 19
        Path(w.shards[0]).write_bytes(data[:cut])
        stream = ShardStream(w.shards, _index_decoder, batch_size=1, shuffle=0, epochs=1)
        loader = StreamLoader(stream, num_workers=0)
        seen = sorted(int(b["idx"]) for b in loader)
        assert seen == list(range(len(seen))) and dataset_size(w.shards) == len(seen), cut
        assert loader.skips.count == 1 and "truncated" in loader.skips.report(), loader.skips.report()


def _hangs_on_seven(sample, rng):
    if int(sample["txt"].decode()) == 7:  # a decoder stuck in native code never returns (decord on some videos)
        import time

        time.sleep(3600)
    return _index_decoder(sample, rng)


def test_a_stuck_decoder_stops_the_loader_with_one_clear_message(tmp_path):
    shards = _write_numbered(tmp_path, 2, 5)
    stream = ShardStream(shards, _hangs_on_seven, batch_size=1, shuffle=0)
    loader = StreamLoader(stream, num_workers=2, prefetch_factor=1, timeout=5)
    seen = []
    with pytest.raises(UserError, match=r"no batch from the 2 data worker\(s\) in 5 s.*data.backend=pyav"):
        for batch in loader:
            seen.append(int(batch["idx"]))
    assert 7 not in seen and {0, 1} <= set(seen)  # what came before the stuck sample was delivered


def test_memory_stream_reads_a_kept_subset_once_per_epoch(tmp_path):
    shards = _write_numbered(tmp_path, 3, 10)
    samples = read_raw(shards, lambda key: int(key[1:]) % 3 == 0)
    assert [int(s["txt"]) for s in samples] == list(range(0, 30, 3))
    assert read_raw(shards, lambda key: True, max_bytes=10) is None  # too large to hold: stream instead
    stream = MemoryStream(samples, _index_decoder, batch_size=4, shuffle=16, epochs=2)
    batches = list(StreamLoader(stream, num_workers=2, prefetch_factor=2))
    seen = sorted(i for b in batches for i in b["idx"].tolist())
    assert seen == sorted(list(range(0, 30, 3)) * 2)


def test_pipe_urls_are_read(tmp_path):
    shards = _write_numbered(tmp_path, 2, 3)
    urls = expand_shards([f"pipe:cat {s}" for s in shards])
    stream = ShardStream(urls, _index_decoder, batch_size=6, shuffle=0)
    batch = _drain(StreamLoader(stream, num_workers=0), 1)[0]
    assert sorted(batch["idx"].tolist()) == list(range(6))
    with pytest.raises(UserError, match="set data.num_samples"):
        dataset_size(urls)


def test_too_few_shards_for_the_readers(tmp_path):
    shards = _write_numbered(tmp_path, 2, 2)
    stream = ShardStream(shards[:1], _index_decoder, batch_size=1, rank=0, world=2)
    with pytest.raises(UserError, match="2 rank.s. each need at least one"):
        StreamLoader(stream, num_workers=2)
    # fewer shards than workers: the workers are fitted to the shards, with a note, and every sample comes once
    single = ShardStream(shards[:1], _index_decoder, batch_size=1, shuffle=0, epochs=1)
    loader = StreamLoader(single, num_workers=2)
    assert loader.num_workers == 1 and sorted(int(b["idx"]) for b in loader) == [0, 1]
    resampled = ShardStream(shards, _index_decoder, batch_size=1, rank=1, world=2, resampled=True)
    assert len(_drain(StreamLoader(resampled, num_workers=2, prefetch_factor=2), 6)) == 6


def test_image_folder_to_shards(tmp_path):
    from mimx.datasets.samples import photo_files

    src = tmp_path / "src"
    photos = photo_files()[:6]
    for i, f in enumerate(photos):
        d = src / ("cats" if i % 2 else "dogs")
        d.mkdir(parents=True, exist_ok=True)
        (d / f.name).write_bytes(f.read_bytes())
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    summary = write_image_shards(src, tmp_path / "out", max_size="20k", resize=64)
    assert summary["samples"] == 6 and summary["classes"] == 2
    assert len(summary["skipped"]) == 1 and "broken.jpg" in summary["skipped"][0]
    assert len(summary["shards"]) >= 2  # a 20 kB target size splits the set
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["cats", "dogs"]
    labels = []
    for shard in summary["shards"]:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".cls"):
                    labels.append(int(tar.extractfile(m).read()))
                if m.name.endswith((".jpg", ".png")):
                    img = Image.open(io.BytesIO(tar.extractfile(m).read()))
                    assert min(img.size) <= 64
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]


def test_splits_written_apart_keep_class_ids_with_classes_and_mismatches_are_refused(tmp_path, capsys):
    from mimx.datasets.samples import photo_files
    from mimx.protocols import check_same_classes

    photos = photo_files()[:5]
    for split, names in (("train", ["bird", "cat", "dog"]), ("test", ["bird", "dog"])):
        for i, name in enumerate(names):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / photos[i].name).write_bytes(photos[i].read_bytes())
    write_image_shards(tmp_path / "train", tmp_path / "train_shards")
    write_image_shards(tmp_path / "test", tmp_path / "own_ids")  # dog is 1 here, 2 in train
    train = expand_shards(str(tmp_path / "train_shards"))
    with pytest.raises(UserError, match="disagree on class id 1 .'dog' vs 'cat'.*--classes .*train_shards/classes.j"):
        check_same_classes({"data.train": train, "data.test": expand_shards(str(tmp_path / "own_ids"))})
    from mimx.cli import main

    assert main(["image", "shards", str(tmp_path / "test"), str(tmp_path / "same_ids"), "--classes",
                 str(tmp_path / "train_shards" / "classes.json")]) == 0
    assert "wrote 2 images (3 classes)" in capsys.readouterr().out
    check_same_classes({"data.train": train, "data.test": expand_shards(str(tmp_path / "same_ids"))})
    labels = []
    for shard in expand_shards(str(tmp_path / "same_ids")):
        with tarfile.open(shard) as tar:
            labels += [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]
    assert sorted(labels) == [0, 2]
    lists = {}
    for last in ("fox", "wolf"):  # one id, two names
        (tmp_path / last).mkdir()
        (tmp_path / last / "classes.json").write_text(json.dumps(["cat", "dog", last]))
        lists[last] = [str(tmp_path / last / "s-000000.tar")]
    with pytest.raises(UserError, match="disagree on class id 2 .'wolf' vs 'fox'"):
        check_same_classes({"data.train": lists["fox"], "data.test": lists["wolf"]})
    (tmp_path / "test" / "fish").mkdir()
    with pytest.raises(UserError, match=r"class folder\(s\) \['fish'\] .* are not in the given class list"):
        write_image_shards(tmp_path / "test", tmp_path / "x", classes_file=tmp_path / "train_shards" / "classes.json")

