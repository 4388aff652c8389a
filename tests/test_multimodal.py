"""MultiMAE: Dirichlet budget masking, adapters, losses, a fourth modality from config, data, shards, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_model, logged_losses
from PIL import Image

from mimx.cli import main
from mimx.config import UserError, compose
from mimx.masking import group_budget_mask, sample_dirichlet, split_budget
from mimx.modalities.multimodal.data import MultiDataConfig, MultiDecoder, multi_stream
from mimx.modalities.multimodal.model import MultiMAE, multimae_config, standardize_depth
from mimx.modalities.multimodal.pretrain import pretrain
from mimx.train.checkpoint import load

SIZES = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1,
             decoder_heads=2, num_visible=12)


def tiny(**overrides) -> MultiMAE:
    torch.manual_seed(0)
    return MultiMAE(multimae_config({**SIZES, **overrides}))


def batch(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(b, 1, 32, 32, generator=g) * 4 + 0.5
    depth[0, 0, :8] = float("nan")
    depth[1, 0, :, :4] = 0
    depth[2, 0, 5, 5] = float("inf")
    return {"rgb": torch.randint(0, 256, (b, 3, 32, 32), generator=g, dtype=torch.uint8), "depth": depth,
            "semseg": torch.randint(0, 8, (b, 32, 32), generator=g)}


# ----------------------------------------------------------------------------- masking


def test_budget_split_is_exact_capped_and_follows_the_weights():
    weights = sample_dirichlet(500, 1.0, 3, generator=torch.Generator().manual_seed(0))
    counts = split_budget(weights, [16, 16, 16], 20)
    assert (counts.sum(1) == 20).all() and (counts <= 16).all() and (counts >= 0).all()
    assert (counts - weights * 20).abs().max() <= 4 + 1e-6  # only capping moves a count by more than 1
    uncapped = (weights * 20 < 15).all(1)
    assert (counts[uncapped] - weights[uncapped] * 20).abs().max() < 1 + 1e-6
    # Dirichlet(1) over 3 groups: each group averages a third of the budget
    assert (counts.float().mean(0) - 20 / 3).abs().max() < 0.6
    # a group with weight 0 gets nothing while the weighted ones have room, and never past its cap
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    assert split_budget(weights, [16, 16, 16], 20).tolist() == [[10, 10, 0], [2, 16, 2]]
    caps = torch.tensor([[16, 16, 16], [16, 16, 0]])  # sample 1 lacks group 2
    assert split_budget(weights, caps, 20).tolist() == [[10, 10, 0], [4, 16, 0]]
    with pytest.raises(UserError, match="visible"):
        split_budget(weights, [4, 4, 4], 20)


def test_dirichlet_weights_respect_presence_and_are_seeded():
    present = torch.tensor([[True, False, True], [False, True, False]])
    a = sample_dirichlet(2, 0.5, 3, present=present, generator=torch.Generator().manual_seed(3))
    b = sample_dirichlet(2, 0.5, 3, present=present, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert (a[~present] == 0).all() and torch.allclose(a.sum(1), torch.ones(2))
    state = torch.random.get_rng_state()
    sample_dirichlet(4, 1.0, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())  # the global stream is untouched


def test_group_mask_keeps_the_counted_tokens_per_group():
    counts = torch.tensor([[5, 0, 7], [1, 10, 1]])
    noise = torch.rand(2, 48, generator=torch.Generator().manual_seed(1))
    mask = group_budget_mask([16, 16, 16], counts, noise=noise)
    visible = ~mask.mask
    for g in range(3):
        assert visible[:, 16 * g:16 * (g + 1)].sum(1).tolist() == counts[:, g].tolist()
    assert mask.ids_keep.shape == (2, 12)
    assert torch.equal(mask.mask.gather(1, mask.ids_keep), torch.zeros(2, 12, dtype=torch.bool))
    # within a group, the lowest-noise tokens are the visible ones
    for b in range(2):
        chosen = noise[b, :16][visible[b, :16]]
        others = noise[b, :16][~visible[b, :16]]
        assert chosen.max() < others.min()


# ----------------------------------------------------------------------------- model


def test_forward_counts_losses_and_invalid_depth():
    model = tiny()
    out = model(batch(), generator=torch.Generator().manual_seed(0))
    assert (~out.mask.mask).sum(1).tolist() == [12, 12, 12] and out.counts.sum(1).tolist() == [12, 12, 12]
    assert set(out.losses) == {"rgb", "depth", "semseg"} and torch.isfinite(out.loss)
    assert out.preds["semseg"].shape == (3, 16, 64 * 8) and out.preds["depth"].shape == (3, 16, 64)
    out.loss.backward()
    std, valid = standardize_depth(batch()["depth"])
    assert not valid[0, 0, :8].any() and not valid[1, 0, :, :4].any() and not valid[2, 0, 5, 5]
    assert torch.isfinite(std).all() and (std[~valid] == 0).all()


def test_depth_loss_ignores_invalid_pixels_and_visible_patches():
    model = tiny()
    data = batch()
    pred = torch.zeros(3, 16, 64)
    hidden = torch.zeros(3, 16, dtype=torch.bool)
    hidden[:, :2] = True  # the first two patches: rows 0-7, columns 0-15
    target, valid = model.target("depth", data["depth"])
    expected = (target.abs() * (valid & hidden[..., None])).sum() / (valid & hidden[..., None]).sum()
    torch.testing.assert_close(model.task_loss("depth", pred, data["depth"], hidden), expected)
    # sample 0 has no valid pixel in those patches (NaN rows): changing its prediction there changes nothing
    pred2 = pred.clone()
    pred2[0, :2] = 100.0
    torch.testing.assert_close(model.task_loss("depth", pred2, data["depth"], hidden), expected)


def test_segmentation_loss_ignores_out_of_range_ids():
    model = tiny(modalities={"rgb": {"kind": "pixels"}, "semseg": {"kind": "classes", "num_classes": 4}})
    ids = torch.full((1, 32, 32), 255)
    ids[0, :8, :8] = 2
    ids[0, :8, 8:16] = 9  # beyond the class count: ignored
    logits = torch.zeros(1, 16, 64, 4)
    logits[..., 2] = 5.0
    hidden = torch.ones(1, 16, dtype=torch.bool)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 0, 5, 0]]), torch.tensor([2]))
    torch.testing.assert_close(model.task_loss("semseg", logits.flatten(2), ids, hidden), expected)


@pytest.mark.parametrize("batch", [1, 6], ids=["embedded-map-matmul", "class-table"])
def test_class_map_tokens_equal_the_embedding_then_patch_convolution(batch):
    """The class-map adapter skips the embedded map (a per-pixel table, or one matmul): the convolution's result."""
    from torch.nn import functional as F

    from mimx.modalities.multimodal.adapters import InputAdapter

    torch.manual_seed(0)
    adapter = InputAdapter("classes", 1, 4, 24, num_classes=5, class_dim=8)
    with torch.no_grad():
        adapter.proj.bias.normal_()
    ids = torch.randint(-1, 7, (batch, 8, 12))  # out-of-range ids and 255-style ignores share the extra entry
    ids[0, 0, 0] = 255
    tokens = adapter(ids)
    known = torch.where((ids < 0) | (ids >= 5), 5, ids)
    conv = F.conv2d(adapter.class_embed(known).permute(0, 3, 1, 2), adapter.proj.weight, adapter.proj.bias, stride=4)
    reference = conv.flatten(2).transpose(1, 2) + adapter.pos((2, 3), ids.device) + adapter.modality_embed
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-5)
    mine = torch.autograd.grad(tokens.square().sum(), [adapter.class_embed.weight, adapter.proj.weight,
                                                       adapter.proj.bias])
    theirs = torch.autograd.grad(reference.square().sum(), [adapter.class_embed.weight, adapter.proj.weight,
                                                            adapter.proj.bias])
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_fourth_modality_and_a_target_only_task_are_config_entries():
    modalities = {"rgb": {"kind": "pixels", "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
                  "depth": {"kind": "depth"},
                  "normals": {"kind": "pixels", "channels": 3, "loss": "l1", "weight": 0.5},
                  "grey": {"kind": "pixels", "channels": 1, "input": False, "loss": "l1"}}
    model = tiny(modalities=modalities)
    data = batch()
    data["normals"] = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data["grey"] = data["rgb"].float().mean(1, keepdim=True).round().to(torch.uint8)
    out = model(data, generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == {"rgb", "depth", "normals", "grey"}
    assert model.inputs == ["rgb", "depth", "normals"] and out.mask.mask.shape == (3, 48)
    expected = sum(model.specs[n].weight * out.losses[n] for n in out.losses)
    torch.testing.assert_close(out.loss, expected)


def test_absent_modalities_get_no_tokens_and_no_loss():
    model = tiny()
    present = torch.tensor([[True, False, True], [True, True, False], [True, True, True]])
    out = model(batch(), present=present, generator=torch.Generator().manual_seed(0))
    assert out.counts[0, 1] == 0 and out.counts[1].sum() == 12
    data = batch()
    data["depth"][0] = 123.0  # an absent map's values cannot change the loss
    again = model(data, present=present, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.losses["depth"], again.losses["depth"])


def test_dropped_inputs_get_no_tokens_but_are_still_reconstructed():
    model = tiny(drop_inputs=0.6, num_visible=12)
    out = model(batch(8), generator=torch.Generator().manual_seed(5))
    zero = out.counts == 0
    assert zero.any() and (out.counts.sum(1) == 12).all()  # some inputs withheld, budget still exact
    assert set(out.losses) == {"rgb", "depth", "semseg"}  # every target still scored
    big = tiny(drop_inputs=0.9, num_visible=40)  # one modality (16 tokens) cannot hold 40 visible tokens
    out = big(batch(8), generator=torch.Generator().manual_seed(5))
    assert ((out.counts > 0).sum(1) >= 3).all() and (out.counts.sum(1) == 40).all()


def test_compiled_model_keeps_its_graph_across_steps_and_matches_eager():
    """The budget sampling (fresh seeds, integer loops) stays out of the graph: no recompile per step."""
    model, twin = tiny(), tiny()
    torch._dynamo.reset()
    fwd = torch.compile(model, backend="aot_eager")  # dynamo and autograd tracing, no kernel building
    fwd(batch(), generator=torch.Generator().manual_seed(0)).loss.backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = fwd(batch(), generator=torch.Generator().manual_seed(1))
    eager = twin(batch(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(compiled.counts, eager.counts)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-4, atol=1e-5)


def test_encode_any_subset_of_inputs():
    model = tiny().eval()
    data = batch()
    assert model.encode({"rgb": data["rgb"]}).shape == (3, 17, 32)
    assert model.encode(data).shape == (3, 49, 32)
    assert model.patch_features({"depth": data["depth"]}).shape == (3, 16, 32)
    with pytest.raises(UserError, match="not input"):
        model.encode(data, ["normals"])


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from mimx.datasets.scenes import build_real, build_scenes

    out = tmp_path_factory.mktemp("scenes")
    build_scenes(out / "scenes", {"train": 48, "val": 8, "test": 8}, size=48)
    build_real(out / "real")
    return out


def test_real_rgbd_samples_decode_with_holes_and_missing_maps(scenes):
    specs = tiny(modalities={"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"},
                             "semseg": {"kind": "classes", "num_classes": 41}}).specs
    cfg = MultiDataConfig(shards=f"{scenes}/real/arc2017::{scenes}/real/voc::{scenes}/real/motorcycle", image_size=32,
                          shuffle=0)
    items = [b for b in multi_stream(cfg, MultiDecoder(cfg, specs, train=False), batch_size=1, epochs=1)
             if "present" in b]
    assert len(items) == 3
    present = {tuple(item["present"][0].tolist()) for item in items}
    assert present == {(True, True, True), (True, False, True), (True, True, False)}
    arc = next(i for i in items if i["present"][0].all())
    assert torch.isnan(arc["depth"]).any() and torch.nanmean(arc["depth"]) > 0.3  # metres, with holes
    assert arc["semseg"].max() < 41
    skip = MultiDataConfig(shards=cfg.shards, image_size=32, shuffle=0, missing="skip")
    batches = list(multi_stream(skip, MultiDecoder(skip, specs, train=False), batch_size=4, epochs=1))
    assert sum(len(b.get("present", [])) for b in batches) == 1
    assert sum(len(b["_skips"]) for b in batches) == 2


def test_the_kinect_frame_of_mrpt_common_reads_as_aligned_rgb_and_sensor_depth(scenes, tmp_path):
    import gzip

    from mimx.config import UserError
    from mimx.datasets.mrpt_rgbd import RAWLOG, read_rgbd_rawlog

    if not RAWLOG.exists():
        pytest.skip(f"{RAWLOG} is missing (apt-get install mrpt-common; .ci/run installs it)")
    frame = read_rgbd_rawlog()
    assert frame.rgb.shape == (480, 640, 3) and frame.depth_mm.shape == (480, 640) and frame.sensor == "OPENNI2"
    valid = frame.depth_mm > 0
    assert 0.85 < valid.mean() < 0.95 and frame.points.shape == (int(valid.sum()), 3)  # one point per reading
    assert 1500 < np.median(frame.depth_mm[valid]) < 2600  # a bookshelf about 2 m from the sensor
    top = frame.rgb[:60, 200:440].reshape(-1, 3).mean(0)
    assert top[2] > top[0]  # the wall above the shelf is bluish-white: channels are RGB, not MRPT's BGR
    data = bytearray(gzip.decompress(RAWLOG.read_bytes()))
    for offset, value, message in ((35, 8, "CObservation3DRangeScan version 9, found 8"),
                                   (len(data) - 1, 0, "end marker"),
                                   (4_600_000, 0xFF, "matches the point cloud")):  # a byte of the depth image
        broken = data.copy()
        broken[offset] = value
        (tmp_path / "x.rawlog").write_bytes(gzip.compress(bytes(broken)))
        with pytest.raises(UserError, match=message):
            read_rgbd_rawlog(tmp_path / "x.rawlog")
    specs = tiny(modalities={"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"}}).specs
    cfg = MultiDataConfig(shards=f"{scenes}/real/kinect", image_size=32, shuffle=0)
    (batch,) = list(multi_stream(cfg, MultiDecoder(cfg, specs, train=False), batch_size=1, epochs=1))
    depth = batch["depth"][0]
    assert batch["present"][0].tolist() == [True, True] and torch.isnan(depth).any()
    assert 1.5 < torch.nanmedian(depth) < 2.6  # metres, with the sensor's holes kept as NaN


def test_maps_of_different_sizes_are_skipped_with_a_message(tmp_path):
    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    with tarfile.open(tmp_path / "x-000000.tar", "w") as tar:
        for key, rgb_hw, depth_hw in (("good", (40, 40), (40, 40)), ("bad", (40, 40), (20, 20))):
            for name, data in ((f"{key}.rgb.png", png(np.zeros((*rgb_hw, 3), np.uint8))),
                               (f"{key}.depth.png", png(np.full(depth_hw, 1500, np.uint16)))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    specs = tiny(modalities={"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"}}).specs
    cfg = MultiDataConfig(shards=str(tmp_path), image_size=32, shuffle=0)
    batches = list(multi_stream(cfg, MultiDecoder(cfg, specs, train=True), batch_size=4, epochs=1))
    assert sum(len(b.get("present", [])) for b in batches) == 1
    skips = [s for b in batches for s in b["_skips"]]
    assert len(skips) == 1 and "different sizes" in skips[0]
    good = next(b for b in batches if "present" in b)
    torch.testing.assert_close(good["depth"], torch.full((1, 1, 32, 32), 1.5))  # mm PNG -> metres


def test_train_crops_and_flips_keep_the_maps_aligned(scenes):
    specs = tiny(modalities={"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"},
                             "semseg": {"kind": "classes", "num_classes": 6}}).specs
    cfg = MultiDataConfig(shards=f"{scenes}/scenes/train", image_size=32, hflip=1.0, shuffle=0)
    batch_ = next(iter(multi_stream(cfg, MultiDecoder(cfg, specs, train=True), batch_size=8, epochs=1)))
    # floor (class 0) lies below the wall (class 1) in every generated scene, and is nearer the camera
    for ids, depth in zip(batch_["semseg"], batch_["depth"][:, 0], strict=True):
        floor, wall = ids == 0, ids == 1
        if floor.any() and wall.any():
            assert depth[floor].median() < depth[wall].median()


def test_shards_command_from_aligned_folders(tmp_path, capsys):
    src = tmp_path / "train"
    for modality in ("rgb", "depth", "semseg"):
        for cls in ("kitchen", "office"):
            (src / modality / cls).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for cls in ("kitchen", "office"):
        for stem in ("a", "b"):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / "rgb" / cls / f"{stem}.jpg")
            np.save(src / "depth" / cls / f"{stem}.npy", rng.random((24, 24)).astype(np.float32))
            if stem == "a":
                Image.fromarray(rng.integers(0, 5, (24, 24), dtype=np.uint8)).save(src / "semseg" / cls / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "semseg" / "office" / "b.png")  # wrong size
    out = tmp_path / "shards"
    assert main(["multimodal", "shards", str(src), str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 aligned samples (2 classes)" in captured.out and "differ in size" in captured.err
    assert json.loads((out / "classes.json").read_text()) == ["kitchen", "office"]
    order = tmp_path / "classes.json"  # another split's numbering: office is 0 there
    order.write_text(json.dumps(["office", "bath", "kitchen"]))
    assert main(["multimodal", "shards", str(src), str(tmp_path / "renumbered"), "--classes", str(order)]) == 0
    capsys.readouterr()
    labels = []
    for shard in sorted((tmp_path / "renumbered").glob("*.tar")):
        with tarfile.open(shard) as tar:
            labels += [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
    assert sorted(labels) == [0, 2, 2]  # the office sample with a map of another size is skipped
    specs = tiny(modalities={"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"},
                             "semseg": {"kind": "classes", "num_classes": 5}}).specs
    cfg = MultiDataConfig(shards=str(out), image_size=16, shuffle=0)
    got = next(iter(multi_stream(cfg, MultiDecoder(cfg, specs, train=False), batch_size=3, epochs=1)))
    assert got["present"].sum(0).tolist() == [3, 3, 2]  # one sample has no segmentation map


# ----------------------------------------------------------------------------- end to end


def _overrides(run_dir: Path, scenes: Path, *extra: str) -> list[str]:
    return ["data.image_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
            "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.num_visible=12",
            f"data.shards={scenes}/scenes/train", "data.num_workers=2", "data.shuffle=16", "train.batch_size=8",
            "train.log_every=2", "train.ckpt_every=3", "train.figure_every=3", "train.warmup_steps=1",
            "train.lr=2e-3", "train.progress=false", "train.precision=fp32", f"run.dir={run_dir}", *extra]


def test_pretrain_resume_viewer_and_probes(scenes, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(straight, scenes, "train.steps=6")))
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(resumed, scenes, "train.steps=6",
                                                                        "train.stop_at_step=3")))
    assert load(resumed / "checkpoints" / "last.pt")["step"] == 3
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(resumed, scenes, "train.steps=6")))
    assert_same_model(straight, resumed)
    assert (resumed / "figures" / "step-0000006.png").exists()

    png = tmp_path / "view.png"
    figures = []
    for _ in range(2):
        assert main(["multimodal", "visualize", str(resumed), f"{scenes}/scenes/test", "--out", str(png),
                     "--num", "2", "--inputs", "rgb"]) == 0
        figures.append(png.read_bytes())
    assert figures[0] == figures[1]

    common = [f"checkpoint={resumed}", f"data.train={scenes}/scenes/train", f"data.val={scenes}/scenes/val",
              f"data.test={scenes}/scenes/test", "data.num_workers=1", "head.epochs=2", "head.lrs=[0.01]"]
    assert main(["multimodal", "eval", "semseg", *common]) == 0
    result = json.loads((resumed / "eval-semseg-rgb-pretrained.json").read_text())
    assert result["train_samples"] == 48 and result["val_samples"] == 8 and 0 <= result["test"]["miou"] <= 100
    ious = result["test"]["iou"]  # per class, None where a class is in neither prediction nor labels
    assert len(ious) == 6 and result["test"]["miou"] == pytest.approx(
        sum(v for v in ious if v is not None) / sum(v is not None for v in ious))
    # two torchrun processes extract their shares of the patch features, the main one trains the head: the same
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mimx"]
    two = subprocess.run([*torchrun, "multimodal", "eval", "semseg", *common, f"run.dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    both = json.loads((tmp_path / "two" / "eval-semseg-rgb-pretrained.json").read_text())
    fields = ("train_samples", "val_samples", "test_samples", "val", "test", "chosen")
    assert {f: both[f] for f in fields} == {f: result[f] for f in fields}
    finetune_two = subprocess.run([*torchrun, "multimodal", "eval", "semseg", *common, "head.finetune=true"],
                                  capture_output=True, text=True, timeout=600)
    assert finetune_two.returncode != 0 and "semseg-finetune runs as one process" in finetune_two.stderr
    assert main(["multimodal", "eval", "depth", "inputs=[rgb,depth]", "encoder=random", *common]) == 0
    result = json.loads((resumed / "eval-depth-rgb+depth-random.json").read_text())
    assert 0 <= result["test"]["delta1"] <= 100 and result["test"]["abs_rel"] >= 0
    assert main(["multimodal", "eval", "semseg", "inputs=depth", *common, "head.finetune=true", "head.epochs=1",
                 "head.batch_size=16"]) == 0
    result = json.loads((resumed / "eval-semseg-finetune-depth-pretrained.json").read_text())
    assert result["chosen"]["epoch"] == 1 and 0 <= result["test"]["miou"] <= 100
    for probe in ("semseg", "depth"):  # the model's own output adapters, from RGB alone: nothing trained
        assert main(["multimodal", "eval", probe, "head.kind=adapter", *common]) == 0
        result = json.loads((resumed / f"eval-{probe}-adapter-rgb-pretrained.json").read_text())
        assert result["train_samples"] == 0 and result["test_samples"] == 8 and result["chosen"] == {}
        assert 0 <= result["test_top1"] <= 100
    assert main(["multimodal", "eval", "semseg", "head.kind=adapter", "inputs=depth", *common]) == 0
    assert (resumed / "eval-semseg-adapter-depth-pretrained.json").exists()  # a bare name is a one-item list
    with pytest.raises(UserError, match="head.kind"):
        from mimx.modalities.multimodal.evaluate import evaluate

        evaluate(compose("mimx.configs.multimodal", "eval", ["probe=semseg", "head.kind=mlp", *common]))
    with pytest.raises(UserError, match="data.target=semseg is a classes modality .* the depth probe predicts depth"):
        evaluate(compose("mimx.configs.multimodal", "eval", ["probe=depth", "data.target=semseg", *common]))


def test_a_modality_missing_from_the_shards_is_named_not_scored(scenes, tmp_path, capsys):
    """Shards whose segmentation maps are named otherwise: pretraining warns and counts; a probe of the missing
    target refuses to score placeholders."""
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for shard in sorted((scenes / "scenes" / "train").glob("*.tar")):
        with tarfile.open(shard) as src, tarfile.open(renamed / shard.name, "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                member.name = member.name.replace(".semseg.", ".seg.")
                dst.addfile(member, io.BytesIO(data))
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(run_dir, scenes, "train.steps=2",
                                                                        f"data.shards={renamed}")))
    err = capsys.readouterr().err
    assert "semseg missing from every sample of the first batch" in err
    assert "samples holding each modality: rgb 16/16, depth 16/16, semseg 0/16" in err
    code = main(["multimodal", "eval", "semseg", f"checkpoint={run_dir}", f"data.train={renamed}",
                 f"data.test={scenes}/scenes/test", "data.num_workers=1", "head.epochs=1", "head.lrs=[0.01]"])
    err = capsys.readouterr().err
    assert code == 2 and "no sample to evaluate in the train split" in err and "lacks ['semseg']" in err


def test_export_one_input_as_a_timm_vit(scenes, tmp_path, capsys):
    from safetensors.torch import load_file

    from mimx.modalities.multimodal.evaluate import load_multimae
    from mimx.timm_vit import build_timm_vit

    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(run_dir, scenes, "train.steps=2",
                                                                        "train.figure_every=0")))
    model = load_multimae(str(run_dir))
    cfg = MultiDataConfig(shards=f"{scenes}/scenes/test", image_size=32, shuffle=0)
    batch = next(iter(multi_stream(cfg, MultiDecoder(cfg, model.specs, train=False), batch_size=2, epochs=1)))
    for name in ("rgb", "depth"):
        out = tmp_path / name
        assert main(["multimodal", "export", str(run_dir), str(out), "--input", name]) == 0
        info = json.loads((out / "input.json").read_text())
        assert info["modality"] == name and info["channels"] == (3 if name == "rgb" else 1)
        vit = build_timm_vit(json.loads((out / "timm_vit.json").read_text()), num_classes=5).eval()
        missing, unexpected = vit.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=False)
        assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
        raw = batch[name]  # real maps of the test split, prepared as input.json says
        ready = model.prepare({name: raw})[name]
        with torch.no_grad():
            torch.testing.assert_close(vit.forward_features(ready), model.encode({name: raw}, [name]),
                                       rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(["multimodal", "export", str(run_dir), str(tmp_path / "semseg"), "--input", "semseg"]) == 2
    assert "class ids through an embedding" in capsys.readouterr().err
    assert main(["multimodal", "export", str(run_dir), str(tmp_path / "normals"), "--input", "normals"]) == 2
    assert "not an input modality" in capsys.readouterr().err


def test_loss_falls_on_generated_scenes(scenes, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(compose("mimx.configs.multimodal", "pretrain", _overrides(run_dir, scenes, "train.steps=30",
                                                                        "train.figure_every=0", "train.ckpt_every=0")))
    losses = logged_losses(run_dir)
    assert losses[-1] < 0.7 * losses[0], losses
    import csv

    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("loss")]
    for row in rows:  # each task's loss is logged; with unit weights they add up to the total
        parts = [float(row[f"loss_{name}"]) for name in ("rgb", "depth", "semseg")]
        assert sum(parts) == pytest.approx(float(row["loss"]), rel=1e-4, abs=1e-5)


def test_class_iou_on_a_constructed_case():
    from mimx.modalities.multimodal.evaluate import class_iou, miou

    target = torch.tensor([0, 0, 0, 1, 1, 2, -1, -1])
    pred = torch.tensor([0, 0, 1, 1, 1, 1, 3, 0])  # the ignored pixels (-1) count for nothing
    # class 0: 2 / 3; class 1: 2 / 4; class 2: 0 / 1; class 3: in neither (its only prediction is ignored)
    assert class_iou(pred, target, 4) == pytest.approx([200 / 3, 50.0, 0.0, None])
    assert miou(pred, target, 4) == pytest.approx((200 / 3 + 50.0 + 0.0) / 3)


def test_predict_gives_every_patch_of_a_hidden_target_from_any_inputs():
    model = tiny().eval()
    maps = batch()
    with torch.no_grad():
        out = model.predict(maps, ["rgb"])
        again = model.predict({"rgb": maps["rgb"]}, ["rgb"], ["semseg"])
    assert set(out) == {"depth", "semseg"}  # the tasks that are not inputs
    assert out["semseg"].shape == (3, 16, 64 * 8) and out["depth"].shape == (3, 16, 64)
    assert torch.equal(out["semseg"], again["semseg"])  # other maps in the batch change nothing
    with pytest.raises(UserError, match="not output tasks"):
        model.predict(maps, ["rgb"], ["normals"])


def test_adapter_depth_is_put_back_with_the_ground_truth_scale_and_shift():
    from mimx.modalities.multimodal.evaluate import _unstandardize, depth_metrics

    depth = torch.tensor([[[2.0, 4.0, float("nan"), 6.0]], [[1.0, 1.0, 3.0, 0.0]]])  # [B, L=1, p*p=4]
    standard = standardize_depth(depth.view(2, 1, 2, 2))[0].view(2, 1, 4)
    back = _unstandardize(standard, depth)
    valid = torch.isfinite(depth) & (depth > 0)
    assert torch.allclose(back[valid], depth[valid], atol=1e-5)
    assert depth_metrics(back, depth)["delta1"] == 100.0


@pytest.mark.parametrize("objects", ["painted", "textured"])
def test_generated_scene_objects_are_painted_or_photo_textured(objects):
    from mimx.datasets.scenes import load_textures, render_scene

    textures = load_textures(64)
    rgb, depth, label, info = render_scene(np.random.default_rng(3), textures, 64, objects)
    assert info["style"] == objects and 2 <= len(info["objects"]) <= 5
    assert set(np.unique(label)) <= set(range(6)) and np.isfinite(depth[label < 255]).all()
    assert (label >= 2).mean() > 0.02  # objects are in view
    # a painted object is one hue (shading, grain and its highlight change brightness); a photo crop has many
    from scipy import ndimage

    chroma = rgb.astype(float) / (rgb.astype(float).sum(-1, keepdims=True) + 1e-6)
    spreads = []
    for c in range(2, 6):
        regions, count = ndimage.label(label == c)
        for region in range(1, count + 1):
            pixels = chroma[regions == region]
            if len(pixels) > 20:  # median absolute deviation of the chromaticity over one object
                spreads.append(np.median(np.abs(pixels - np.median(pixels, 0)), 0).max())
    assert spreads and ((max(spreads) < 0.01) if objects == "painted" else (max(spreads) > 0.02)), spreads
    with pytest.raises(UserError, match="objects="):
        render_scene(np.random.default_rng(3), textures, 64, "plastic")
