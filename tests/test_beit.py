"""BEiT-style pretraining: the k-means codebook, the token target, parity with transformers' BEiT objective,
and the recipe end to end (codebook -> pretrain -> viewer -> probe -> export)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import logged_losses, tiny_overrides

from mimx.codebook import fit_kmeans, nearest_code, perplexity, read_codebook, save_codebook
from mimx.config import UserError, compose
from mimx.losses import masked_loss
from mimx.modalities.image import mae_vit
from mimx.modalities.image.data import Normalizer
from mimx.modalities.image.export import load_image_mae
from mimx.modalities.image.figures import reconstruction_panels
from mimx.modalities.image.pretrain import pretrain, sections
from mimx.patches import patchify, unpatchify
from mimx.pos_embed import sincos_grid

MIMX = [sys.executable, "-m", "mimx"]


def test_nearest_code_matches_brute_force_in_chunks_and_under_autocast():
    gen = torch.Generator().manual_seed(0)
    points, codes = torch.randn(1000, 12, generator=gen), torch.randn(37, 12, generator=gen)
    expected = torch.cdist(points.double(), codes.double()).argmin(1)
    ids, dist = nearest_code(points, codes, chunk=128)
    assert torch.equal(ids, expected)
    torch.testing.assert_close(dist, (points - codes[ids]).square().sum(1), rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 distances would flip near ties: lookups stay fp32
        assert torch.equal(nearest_code(points.bfloat16().float(), codes)[0],
                           torch.cdist(points.bfloat16().double(), codes.double()).argmin(1))
    assert nearest_code(points.view(10, 100, 12), codes)[0].shape == (10, 100)


def test_kmeans_recovers_separated_clusters_and_reseeds_codes_left_empty():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (centres.repeat_interleave(250, 0) + 0.1 * torch.randn(1000, 2, generator=gen))
    result = fit_kmeans(points, 4, iters=50, seed=3)
    found = result.codes[torch.cdist(centres, result.codes).argmin(1)]
    torch.testing.assert_close(found, centres, atol=0.05, rtol=0)
    assert all(b <= a + 1e-6 for a, b in zip(result.inertia, result.inertia[1:], strict=False))
    # 90 % of the points are one repeated value (blank background): the random start draws it several
    # times; the duplicate codes are left empty and are moved onto the worst-served points
    blank = torch.cat([torch.zeros(900, 2), torch.arange(100.0).view(-1, 2).repeat(2, 1)])
    result = fit_kmeans(blank, 8, iters=30, seed=0)
    assert result.reseeded > 0
    assert len(torch.unique(result.codes, dim=0)) == 8
    assert torch.bincount(nearest_code(blank, result.codes)[0], minlength=8).gt(0).all()
    with pytest.raises(UserError, match="at least as many patches as codes"):
        fit_kmeans(torch.randn(5, 2), 8)
    # perplexity counts the codes in effective use
    assert perplexity(torch.arange(8).repeat(3), 8) == pytest.approx(8)
    assert perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1)


def test_codebook_file_round_trip_and_clear_errors(tmp_path):
    codes = torch.randn(16, 48)
    path = save_codebook(tmp_path / "cb.safetensors", codes, {"patch": [4, 4], "channels": 3})
    loaded, meta = read_codebook(path)
    assert torch.equal(loaded, codes) and meta == {"patch": [4, 4], "channels": 3}
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UserError, match="does not exist; fit one with `mimx image codebook`"):
        read_codebook(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a codebook")
    with pytest.raises(UserError, match="junk.safetensors is not a mimx codebook"):
        read_codebook(tmp_path / "junk.safetensors")


def beit(vocab: int = 32, **overrides):
    values = dict(img_size=16, patch_size=4, depth=1, encoder_mode="mask_token", decoder_depth=0,
                  target="tokens", norm_pix=False, loss="cross_entropy", vocab_size=vocab,
                  masking={"kind": "block", "ratio": 0.5, "min_block": 2})
    return mae_vit("tiny", **{**values, **overrides})


def test_token_target_scores_codebook_ids_of_hidden_patches_and_keeps_fp32_codes():
    model = beit()
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(RuntimeError, match="no codebook"):
        model(x)
    codes = torch.randn(32, 48)
    model.target.load_codes(codes)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.mask.mask.sum(1).tolist() == [8, 8, 8]
    # logits for the hidden patches only; their targets are the ids of the nearest codes
    assert out.pred.shape == (3, 8, 32) and out.target.shape == (3, 8) and out.target.dtype == torch.long
    ids = torch.cdist(patchify(x, (4, 4)), codes).argmin(-1)
    assert torch.equal(out.target, ids.gather(1, out.decoded)) and out.mask.mask.gather(1, out.decoded).all()
    full = model(x, mask=out.mask, decode_all=True)
    assert full.pred.shape == (3, 16, 32) and torch.equal(full.target, ids)
    torch.testing.assert_close(out.loss, masked_loss(full.pred, full.target, out.mask.mask, "cross_entropy"))
    # the codes are weights of the model: saved, loaded, and not rounded by a cast to bf16
    model.to(torch.bfloat16)
    assert model.target.codebook.dtype == torch.float32 and torch.equal(model.target.codebook, codes)
    fresh = beit()
    fresh.load_state_dict(model.float().state_dict())
    assert fresh.target.loaded and torch.equal(fresh.target.codebook, codes)


def test_token_settings_that_cannot_work_are_refused_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="token targets are class ids"):
        beit(loss="mse")
    with pytest.raises(UserError, match="pass model.codebook=PATH"):
        beit(vocab=None)
    path = save_codebook(tmp_path / "cb.safetensors", torch.randn(32, 48),
                         {"patch": [8, 8], "channels": 3, "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}})
    with pytest.raises(UserError, match=r"fitted on \[8, 8\] patches of 3 channel\(s\), the model cuts \[4, 4\]"):
        beit(codebook=str(path))
    path = save_codebook(tmp_path / "cb.safetensors", torch.randn(32, 48),
                         {"patch": [4, 4], "channels": 3, "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}})
    with pytest.raises(UserError, match="holds 32 codes but model.vocab_size=16; set model.vocab_size=32"):
        beit(vocab=16, codebook=str(path))
    assert torch.equal(beit(vocab=None, codebook=str(path)).target.codebook, read_codebook(path)[0])
    overrides = ["model=vit_tiny", "model.img_size=16", "model.patch_size=4", "method=beit"]
    with pytest.raises(UserError, match="fit a codebook with `mimx image codebook"):
        sections(compose("mimx.configs.image", "pretrain", overrides))
    with pytest.raises(UserError, match="was fitted on inputs normalised with"):  # ImageNet statistics here
        sections(compose("mimx.configs.image", "pretrain", [*overrides, f"model.codebook={path}"]))


def test_token_viewer_shows_the_codes_and_the_predicted_codes():
    model = beit(vocab=4)
    normalizer = Normalizer([0.5] * 3, [0.5] * 3)
    model.target.load_codes(torch.stack([torch.full((48,), v) for v in (-1.0, -0.5, 0.5, 1.0)]))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    x = normalizer(images)
    mask = model.make_mask(x, generator=torch.Generator().manual_seed(1))
    out = model(x, mask=mask, decode_all=True)
    original, masked, coded, predicted = reconstruction_panels(model, x, mask, normalizer, out)
    # a training output (hidden patches only) draws the same figure
    torch.testing.assert_close(reconstruction_panels(model, x, mask, normalizer, model(x, mask=mask)),
                               torch.stack([original, masked, coded, predicted]))
    torch.testing.assert_close(original, images.float() / 255)
    # the codes panel paints each patch in its nearest code's (flat) colour
    expected = unpatchify(model.target.decode(out.target), (4, 4), (4, 4), 3)
    torch.testing.assert_close(coded, normalizer.invert(expected))
    hidden = mask.mask.view(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).expand(-1, 3, -1, -1)
    assert torch.equal(predicted[~hidden], original[~hidden])  # visible patches pasted
    guessed = unpatchify(model.target.decode(out.pred.argmax(-1)), (4, 4), (4, 4), 3)
    torch.testing.assert_close(predicted[hidden], normalizer.invert(guessed)[hidden])


@pytest.mark.transformers
@pytest.mark.parametrize("positions", ["absolute", "shared", "layer"])
def test_same_loss_as_transformers_beit_masked_image_modeling(positions):
    """``from_transformers`` on transformers' BeitForMaskedImageModeling, with sin-cos absolute positions, BEiT's
    shared relative position bias (its pretraining setting) or one bias per layer, all with LayerScale: the
    same mask and labels give the same logits and loss, and the encoder exports to timm's Beit unchanged."""
    transformers = pytest.importorskip("transformers")
    from packaging.version import Version

    from mimx.modalities.image.interop import from_transformers, to_timm

    if positions == "absolute" and Version(transformers.__version__) < Version("4.49"):
        pytest.skip("transformers < 4.49 adds BEiT's absolute positions before the mask token replaces a patch, so "
                    "its mask tokens carry no position (BEiT and mimx add them after)")
    torch.manual_seed(0)
    cfg = transformers.BeitConfig(
        vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        image_size=32, patch_size=8, use_mask_token=True, use_absolute_position_embeddings=positions == "absolute",
        use_relative_position_bias=positions == "layer", use_shared_relative_position_bias=positions == "shared",
        layer_scale_init_value=0.1, use_mean_pooling=True, layer_norm_eps=1e-6)
    hf = transformers.BeitForMaskedImageModeling(cfg).eval()
    with torch.no_grad():
        if positions == "absolute":
            table = torch.cat([torch.zeros(1, 64), sincos_grid((4, 4), 64)])[None]
            hf.beit.embeddings.position_embeddings.copy_(table)
        hf.beit.embeddings.mask_token.normal_()
        for name, p in hf.named_parameters():
            if p.ndim == 1 or "relative_position_bias_table" in name:  # biases, LayerScale, position tables
                p.add_(torch.randn_like(p) * 0.1)
    ours = from_transformers(hf).eval()
    assert (ours.config.rel_pos_bias, ours.config.abs_pos) == {
        "absolute": ("none", True), "shared": ("shared", False), "layer": ("layer", False)}[positions]
    ours.target.load_codes(torch.randn(32, 192))
    x = torch.randn(3, 3, 32, 32)
    hidden = torch.rand(3, 16).argsort(1) < 6
    with torch.no_grad():
        full = ours(x, mask=hidden, decode_all=True)
        out = ours(x, mask=hidden)  # what training runs: logits of the hidden patches only
        theirs = hf(pixel_values=x, bool_masked_pos=hidden, labels=full.target[hidden])
        torch.testing.assert_close(full.pred, theirs.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full.loss, theirs.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.loss, theirs.loss, rtol=1e-5, atol=1e-6)
        vit = to_timm(ours).eval()
        assert type(vit).__name__ == ("VisionTransformer" if positions == "absolute" else "Beit")
        torch.testing.assert_close(vit.forward_features(x), ours.encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.transformers
def test_pretraining_continues_from_a_transformers_beit_folder(samples, tmp_path):
    """``train.init`` with a saved BeitForMaskedImageModeling (shared relative position bias, LayerScale): the
    run starts from its weights, with the codes of the configured codebook (the BEiT has none)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from mimx.modalities.image.interop import from_transformers

    cfg = transformers.BeitConfig(vocab_size=32, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=192, image_size=16, patch_size=4, layer_norm_eps=1e-6,
                                  use_mask_token=True, use_absolute_position_embeddings=False,
                                  use_shared_relative_position_bias=True, layer_scale_init_value=0.1)
    hf = transformers.BeitForMaskedImageModeling(cfg)
    shared = getattr(hf.beit, "shared_position_bias", None) or hf.beit.encoder.relative_position_bias  # 5.x or 4.x
    with torch.no_grad():
        shared.relative_position_bias_table.normal_()
    hf.save_pretrained(tmp_path / "hf")
    codes = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    codebook = save_codebook(tmp_path / "codes.safetensors", codes, {
        "patch": [4, 4], "channels": 3,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    args = [a for a in tiny_overrides(tmp_path / "run", samples, "method=beit", "train.steps=1", "train.lr=0",
                                      f"train.init={tmp_path / 'hf'}", f"model.codebook={codebook}",
                                      "model.rel_pos_bias=shared", "model.abs_pos=false", "model.layer_scale=0.1")
            if not a.startswith("model.decoder_")]
    pretrain(compose("mimx.configs.image", "pretrain", args))
    ours = load_file(str(tmp_path / "run" / "model.safetensors"))
    theirs = from_transformers(hf).state_dict()
    assert torch.equal(ours.pop("target.codebook"), codes)
    theirs.pop("target.codebook")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(ours["encoder.rel_pos_bias.0.relative_position_bias_table"],
                       shared.relative_position_bias_table.detach())


def test_beit_resume_under_bf16_pure_gives_identical_weights_and_codes(samples, tmp_path):
    codes = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    path = save_codebook(tmp_path / "codes.safetensors", codes, {
        "patch": [4, 4], "channels": 3,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})

    def run(run_dir, *extra):
        args = [a for a in tiny_overrides(run_dir, samples, "method=beit", "masking.min_block=2", "train.steps=8",
                                          "train.precision=bf16-pure", f"model.codebook={path}", *extra)
                if not a.startswith("model.decoder_")]
        return pretrain(compose("mimx.configs.image", "pretrain", args))

    run(tmp_path / "full")
    assert run(tmp_path / "split", "train.stop_at_step=3").step == 3
    path.rename(tmp_path / "moved.safetensors")  # a started run carries its codes: it resumes without the file
    assert run(tmp_path / "split").step == 8
    with pytest.raises(UserError, match="codes.safetensors does not exist"):  # a new run needs it
        run(tmp_path / "new")
    a = load_image_mae(tmp_path / "full").state_dict()
    b = load_image_mae(tmp_path / "split").state_dict()
    assert a.keys() == b.keys() and torch.equal(a["target.codebook"], codes)  # fp32 codes, never rounded
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_beit_recipe_fits_a_codebook_then_trains_views_probes_and_exports(samples, tmp_path):
    """BEiT as it pretrains: a shared relative position bias and no absolute positions, LayerScale 0.1."""
    run_dir, codebook = tmp_path / "beit", tmp_path / "codebook.safetensors"
    args = [a for a in tiny_overrides(run_dir, samples, "method=beit", "train.steps=60", "train.log_every=6",
                                      "train.figure_every=60", "masking.min_block=2", "model.rel_pos_bias=shared",
                                      "model.abs_pos=false", "model.layer_scale=0.1")
            if not a.startswith("model.decoder_")]  # BEiT's linear head, not a decoder
    proc = subprocess.run([*MIMX, "image", "codebook", *args, f"codebook.out={codebook}", "codebook.vocab_size=64",
                           "codebook.images=400", "codebook.patches_per_image=0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = int(proc.stdout.split("/64 codes used")[0].rsplit(" ", 1)[1])
    assert used >= 60 and f"model.codebook={codebook}" in proc.stdout, proc.stdout  # empty codes are re-seeded
    codes, meta = read_codebook(codebook)
    assert codes.shape == (64, 48) and meta["patch"] == [4, 4] and meta["channels"] == 3
    assert meta["views"] == 400 and meta["patches"] == 400 * 16
    assert meta["inertia"][-1] < meta["inertia"][0]
    assert (tmp_path / "codebook.png").exists()  # the most used codes, drawn

    proc = subprocess.run([*MIMX, "image", "pretrain", *args, f"model.codebook={codebook}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = logged_losses(run_dir)
    # below a uniform guess over the 64 codes, and well below where it started
    assert len(losses) == 10 and sum(losses[-2:]) / 2 < min(math.log(64), 0.85 * losses[0]), losses
    assert (run_dir / "figures" / "step-0000060.png").exists()
    codebook.unlink()  # the run carries its codes: loading, viewing and probing never need the file again
    model = load_image_mae(run_dir)
    assert torch.equal(model.target.codebook, codes) and model.config.codebook is None
    proc = subprocess.run([*MIMX, "image", "visualize", str(run_dir), f"{samples}/mnist_test", "--num", "3",
                           "--out", str(tmp_path / "view.png")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and (tmp_path / "view.png").exists(), proc.stderr[-3000:]
    proc = subprocess.run([*MIMX, "image", "eval", "knn", f"checkpoint={run_dir}", f"data.train={samples}/mnist",
                           f"data.test={samples}/mnist_test", "data.num_workers=0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*MIMX, "image", "export", str(run_dir), str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = json.loads((tmp_path / "export" / "timm_vit.json").read_text())
    assert exported["timm_class"] == "Beit" and exported["use_shared_rel_pos_bias"] and not exported["use_abs_pos_emb"]
    assert model.encoder.rel_pos_bias[0].table.abs().sum() > 0  # the table learned
