"""tools/benchmark.py's paired step measurement: both sides build, compute the same loss, and get timed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


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
