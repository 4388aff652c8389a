"""The video commands end to end on real (MNIST-digit) clips: pretrain + resume, viewer, eval, shards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import logged_losses

from mimx.cli import main
from mimx.config import compose
from mimx.modalities.video.data import VideoDataConfig
from mimx.modalities.video.model import VideoMAEConfig
from mimx.modalities.video.pretrain import pretrain
from mimx.train.checkpoint import load

pytest.importorskip("av")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from mimx.datasets.video_samples import build_moving_digits

    out = tmp_path_factory.mktemp("video")
    build_moving_digits(out, train=96, val=8, test=32, frames=8, size=48)
    return out / "moving_digits"


def _overrides(run_dir: Path, digits: Path, *extra: str) -> list[str]:
    return [
        "model=vit_small", "model.img_size=48", "model.num_frames=8", "model.patch_size=8", "model.embed_dim=48",
        "model.depth=2", "model.num_heads=3", "model.decoder_dim=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "model.pos_embed=grid", f"data.shards={digits}/train", "data.rate=1",
        "data.num_workers=2", "data.shuffle=16", "data.clips_per_video=2", "data.hflip=0",
        "train.batch_size=4", "train.log_every=2", "train.ckpt_every=3", "train.figure_every=3",
        "train.warmup_steps=1", "train.lr=1e-3", "train.progress=false", f"run.dir={run_dir}", *extra,
    ]


def test_pretrain_resumes_and_writes_figures(digits, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.video", "pretrain", _overrides(run_dir, digits, "train.steps=6",
                                                                   "train.stop_at_step=3")))
    assert load(run_dir / "checkpoints" / "last.pt")["step"] == 3
    result = pretrain(compose("mimx.configs.video", "pretrain", _overrides(run_dir, digits, "train.steps=6",
                                                                            "model.decoder_mask_ratio=0.5")))
    assert result.step == 6 and result.last_loss is not None
    assert (run_dir / "figures" / "step-0000006.png").exists()
    assert (run_dir / "model.safetensors").exists()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) > 2


def test_maskfeat_on_clips_trains_draws_hog_and_evaluates(digits, tmp_path):
    run_dir = tmp_path / "maskfeat"
    result = pretrain(compose("mimx.configs.video", "pretrain", _overrides(
        run_dir, digits, "method=maskfeat", "train.steps=24", "train.log_every=4", "train.figure_every=0",
        "train.ckpt_every=0", "train.lr=2e-3")))
    assert result.step == 24
    losses = logged_losses(run_dir)
    assert losses[-1] < 0.85 * losses[0], losses  # HOG of hidden tubelets is learnable from the visible ones
    meta = load(run_dir / "checkpoints" / "last.pt")["meta"]["architecture"]
    assert (meta["encoder_mode"], meta["target"]) == ("mask_token", "hog")
    out = tmp_path / "view.png"
    assert main(["video", "visualize", str(run_dir), f"{digits}/test", "--num", "1", "--out", str(out),
                 "--rate", "1"]) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".gif").stat().st_size > 0
    args = ["video", "eval", "linear", f"checkpoint={run_dir}", f"data.train={digits}/train",
            f"data.test={digits}/test", "data.rate=1", "data.test_clips=1", "data.test_crops=1",
            "data.label_key=direction", "data.batch_size=16", "data.val_fraction=0.25", "linear.epochs=2",
            f"run.dir={tmp_path}"]
    assert main(args) == 0


def test_pretrain_refuses_mismatched_clip_length(digits, tmp_path):
    from mimx.config import UserError

    with pytest.raises(UserError, match="clip_len"):
        pretrain(compose("mimx.configs.video", "pretrain", _overrides(tmp_path, digits, "data.clip_len=4")))


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    pretrain(compose("mimx.configs.video", "pretrain", _overrides(run_dir, digits, "train.steps=4",
                                                                   "train.figure_every=0")))
    return run_dir


def test_visualize_is_seeded_and_writes_strip_and_animation(trained, digits, tmp_path):
    outs = []
    for name in ("a", "b"):
        assert main(["video", "visualize", str(trained), f"{digits}/test", "--num", "2",
                     "--out", str(tmp_path / f"{name}.png"), "--rate", "1"]) == 0
        outs.append((tmp_path / f"{name}.png").read_bytes())
    assert outs[0] == outs[1]
    assert (tmp_path / "a.gif").stat().st_size > 0


@pytest.mark.parametrize("protocol", ["linear", "attentive", "finetune"])
def test_eval_end_to_end(trained, digits, tmp_path, protocol):
    args = ["video", "eval", protocol, f"checkpoint={trained}", f"data.train={digits}/train",
            f"data.test={digits}/test", "data.rate=1", "data.test_clips=2", "data.test_crops=1",
            "data.label_key=direction", "data.batch_size=16", "data.val_fraction=0.25", "linear.epochs=3",
            "attentive.epochs=2", "attentive.lrs=[1e-3]",
            "finetune.epochs=1", "finetune.batch_size=8", f"run.dir={tmp_path}"]
    assert main(args) == 0
    result = json.loads((tmp_path / f"eval-{protocol}-pretrained.json").read_text())
    assert result["num_classes"] == 4 and result["views"] == 2
    assert result["test_samples"] == 32 and 0 <= result["test_top1"] <= 100
    assert result["train_samples"] + result["val_samples"] == 96


def test_shards_command_writes_labelled_reencoded_shards(digits, tmp_path):
    from webdataset.tariterators import tarfile_samples

    src = tmp_path / "src"
    for label in ("left", "right"):
        (src / label).mkdir(parents=True)
    samples = list(tarfile_samples([{"url": str(p)} for p in sorted((digits / "test").glob("*.tar"))]))[:4]
    for i, sample in enumerate(samples):
        (src / ("left" if i % 2 else "right") / f"clip{i}.mp4").write_bytes(sample["mp4"])
    (src / "left" / "broken.mp4").write_bytes(b"\x00" * 100)
    assert main(["video", "shards", str(src), str(tmp_path / "out"), "--short-side", "16", "--keyint", "4"]) == 0
    written = list(tarfile_samples([{"url": str(p)} for p in sorted((tmp_path / "out").glob("*.tar"))]))
    assert len(written) == 4
    meta = [json.loads(s["json"]) for s in written]
    assert {m["height"] for m in meta} == {16} and sorted(int(s["cls"]) for s in written) == [0, 0, 1, 1]


def test_yaml_presets_list_every_key_of_their_section():
    cfg = compose("mimx.configs.video", "pretrain", [])
    # pixel_mean/std are copied from data.mean/std (the targets undo the input normalisation)
    model_keys = {f.name for f in dataclasses.fields(VideoMAEConfig)} - {"masking", "pixel_mean", "pixel_std"}
    assert set(cfg.model.keys()) == model_keys
    assert set(cfg.data.keys()) == {f.name for f in dataclasses.fields(VideoDataConfig)}


def test_help_lists_the_video_actions(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "video" in out and "VideoMAE" in out
    assert main(["video", "pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "vit_small" in out and "tube" in out and "digits" in out
