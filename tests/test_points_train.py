"""The points commands end to end on clouds from real meshes: pretrain + resume, viewer, eval, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_same_model, logged_losses

from mimx.cli import main
from mimx.config import compose
from mimx.modalities.points.pretrain import pretrain
from mimx.train.checkpoint import load

pytest.importorskip("open3d")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from mimx.datasets.shapes import build_shapes

    out = tmp_path_factory.mktemp("shapes")
    build_shapes(out, counts={"train": 8, "val": 4, "test": 4})
    return out


def _overrides(run_dir: Path, shapes: Path, *extra: str) -> list[str]:
    return [
        "model=vit_tiny", "data.num_points=256", "model.num_groups=16", "model.group_size=16", "model.embed_dim=48",
        "model.depth=2", "model.num_heads=3", "model.decoder_dim=48", "model.decoder_depth=1",
        "model.decoder_heads=3", "model.drop_path=0.0", "model.pointnet_dims=[16,32,64]", "model.pos_hidden=16",
        f"data.shards={shapes}/train", "data.num_workers=2", "data.shuffle=16",
        "train.batch_size=8", "train.log_every=2", "train.ckpt_every=3", "train.figure_every=3",
        "train.warmup_steps=1", "train.lr=2e-3", "train.progress=false", "train.precision=fp32",
        f"run.dir={run_dir}", *extra,
    ]


def test_pretrain_resume_matches_an_uninterrupted_run(shapes, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(compose("mimx.configs.points", "pretrain", _overrides(straight, shapes, "train.steps=6")))
    pretrain(compose("mimx.configs.points", "pretrain", _overrides(resumed, shapes, "train.steps=6",
                                                                    "train.stop_at_step=3")))
    assert load(resumed / "checkpoints" / "last.pt")["step"] == 3
    result = pretrain(compose("mimx.configs.points", "pretrain", _overrides(resumed, shapes, "train.steps=6")))
    assert result.step == 6
    assert_same_model(straight, resumed)
    assert (resumed / "figures" / "step-0000006.png").exists() and (resumed / "model.safetensors").exists()


def test_loss_falls_on_real_shapes(shapes, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.points", "pretrain", _overrides(run_dir, shapes, "train.steps=40",
                                                                    "train.figure_every=0", "train.ckpt_every=0")))
    losses = logged_losses(run_dir)
    assert losses[-1] < 0.5 * losses[0], losses


def test_viewer_eval_and_export_from_the_cli(shapes, tmp_path, capsys):
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.points", "pretrain", _overrides(run_dir, shapes, "train.steps=4")))

    png = tmp_path / "view" / "rec.png"
    figures = []
    for _ in range(2):
        assert main(["points", "visualize", str(run_dir), f"{shapes}/test", "--out", str(png), "--num", "2",
                     "--seed", "5"]) == 0
        figures.append(png.read_bytes())
    assert figures[0] == figures[1]  # same seed, same figure
    import open3d as o3d

    rec = o3d.io.read_point_cloud(str(tmp_path / "view" / "rec-0-reconstruction.ply"))
    assert len(rec.points) == 16 * 16 and rec.has_colors()  # visible + predicted groups, all of them

    common = [f"checkpoint={run_dir}", f"data.train={shapes}/train", f"data.val={shapes}/val",
              f"data.test={shapes}/test", "data.num_workers=1", "data.batch_size=16"]
    for protocol in ("svm", "knn"):
        for encoder in ("pretrained", "random"):
            assert main(["points", "eval", protocol, f"encoder={encoder}", *common]) == 0
    result = json.loads((run_dir / "eval-svm-pretrained.json").read_text())
    assert result["train_samples"] == 40 and result["val_samples"] == 20 and result["test_samples"] == 20
    assert result["feature_dim"] == 96 and "C" in result["chosen"]
    assert main(["points", "eval", "attentive", *common, "attentive.epochs=2", "attentive.lrs=[1e-3]"]) == 0
    result = json.loads((run_dir / "eval-attentive-pretrained.json").read_text())
    assert result["feature_dim"] == 48 and result["tokens"] == 16 and 0 <= result["test_top1"] <= 100
    assert main(["points", "eval", "finetune", *common, "finetune.epochs=1", "finetune.batch_size=8",
                 "data.test_votes=2"]) == 0
    result = json.loads((run_dir / "eval-finetune-pretrained.json").read_text())
    assert result["votes"] == 2 and 0 <= result["test_top1"] <= 100

    assert main(["points", "export", str(run_dir), str(tmp_path / "export")]) == 0
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "export" / "encoder.safetensors"))
    assert any(k.startswith("encoder.blocks.") for k in weights) and not any(k.startswith("decoder") for k in weights)


def test_mismatched_cloud_size_is_one_clear_error(shapes, tmp_path):
    from mimx.config import UserError

    with pytest.raises(UserError, match="num_groups"):
        pretrain(compose("mimx.configs.points", "pretrain", _overrides(tmp_path, shapes, "model.num_groups=512")))
