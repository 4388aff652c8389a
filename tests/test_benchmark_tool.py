"""tools/benchmark.py: the paired step measurement (both sides build, compute the same loss, get timed), the HOG op."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


@pytest.mark.transformers
@pytest.mark.parametrize("modality, extra", [("image", []), ("video", ["--frames", "4"])])
def test_paired_steps_compute_the_same_loss(modality, extra):
    out = subprocess.run(
        [sys.executable, str(TOOL), "_paired", "--pair", "mimx:fp32,transformers-eager:fp32", "--modality", modality,
         "--model", "tiny", "--image", "32", "--patch", "8", "--batch", "2", "--steps", "3", "--warmup", "1",
         "--device", "cpu", "--threads", "1", *extra],
        capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [len(t) for t in result["times"]] == [3, 3]
    mine, peer = result["first_loss"]
    assert abs(mine - peer) < 1e-5 * abs(peer)


def test_paired_command_reports_every_mimx_configuration_against_every_peer():
    cmd = [sys.executable, str(TOOL), "paired", "--model", "tiny", "--image", "32", "--patch", "8", "--batch", "2",
           "--steps", "2", "--warmup", "1", "--device", "cpu", "--threads", "1"]
    out = subprocess.run([*cmd, "--pair", "mimx:fp32,mimx:bf16,transformers-eager:fp32"],
                         capture_output=True, text=True, check=True).stdout
    assert "mimx:fp32 / transformers-eager:fp32: " in out and "mimx:bf16 / transformers-eager:fp32: " in out
    bad = subprocess.run([*cmd, "--pair", "mimx:fp32:eager"], capture_output=True, text=True)
    assert bad.returncode != 0 and "impl:precision:compiled" in bad.stderr


def test_hog_command_matches_the_reference_formulation():
    out = subprocess.run([sys.executable, str(TOOL), "hog", "--batch", "2", "--image", "32", "--repeats", "1",
                          "--threads", "1", "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("mimx / reference formulation: "))
    assert float(line.split("differ by at most ")[1].split(" ")[0]) < 1e-5, line


def test_tokens_command_gives_the_reference_ids():
    out = subprocess.run([sys.executable, str(TOOL), "tokens", "--batch", "2", "--image", "64", "--vocab", "128",
                          "--repeats", "1", "--threads", "1", "--device", "cpu"],
                         capture_output=True, text=True, check=True).stdout
    assert "equal the float64 reference for 100.00% of the patches" in out, out


def test_head_command_compares_hidden_only_logits_at_the_same_loss():
    out = subprocess.run([sys.executable, str(TOOL), "head", "--model", "tiny", "--image", "32", "--patch", "8",
                          "--vocab", "64", "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
                          "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("hidden only / every patch: "))
    hidden_only, every = (float(v) for v in line.split("same loss: ")[1].split(" / "))
    assert abs(hidden_only - every) < 1e-5, line


def test_rel_pos_command_times_both_position_kinds():
    out = subprocess.run([sys.executable, str(TOOL), "rel-pos", "--method", "mae", "--model", "tiny", "--image", "32",
                          "--patch", "8", "--vocab", "64", "--batch", "2", "--steps", "2", "--warmup", "0",
                          "--threads", "1", "--device", "cpu"], capture_output=True, text=True, check=True).stdout
    assert "| fixed sin-cos (absolute) |" in out and "| shared relative position bias |" in out, out
    assert float(out.split("relative / sin-cos speed: ")[1].split("x")[0]) > 0


def test_step_flops_count_attention_matmuls():
    """torch's FlopCounterMode counts nothing for the CPU fused attention kernel; the benchmark's count must."""
    import argparse
    import importlib.util

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mimx.modalities.image import mae_vit

    spec = importlib.util.spec_from_file_location("benchmark_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = argparse.Namespace(modality="image", model="tiny", batch=2, image=32, patch=8, mask_ratio=0.75)
    counted = tool.step_flops(args)
    model = mae_vit("tiny", img_size=32, patch_size=8, masking={"kind": "random", "ratio": 0.75})
    without = FlopCounterMode(display=False)
    with without:  # the model's default (fused) attention: attention's matmuls go uncounted
        model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).loss.backward()
    c = model.config
    # per block, QK^T and AV: 2 matmuls of B*N*N*D multiply-adds forward, twice that backward = 12 B N^2 D FLOPs
    encoder, decoder = 16 // 4 + 1, 16 + 1  # visible tokens + cls; every token + cls
    attention = 12 * 2 * (c.depth * encoder**2 * c.embed_dim + c.decoder_depth * decoder**2 * c.decoder_dim)
    assert counted - without.get_total_flops() == attention
