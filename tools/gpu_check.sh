#!/usr/bin/env bash
# The prepared GPU check for a session lent a device machine (docs/benchmarks.md, "GPU figures"):
#   here, once:  tools/gpu_wheels.sh                       (hydra, omegaconf, webdataset, decord wheels into .whl/)
#   there:       run(command="bash tools/gpu_check.sh", timeout_s=580, carry=[".whl", "data/samples/mnist",
#                    "data/samples/mnist_test", "data/samples/photos", "data/samples/video_clips",
#                    "data/samples/point_clouds", "data/samples/scenes"])
# Installs mimx and the carried wheels into /tmp/site (the machine's image holds torch, timm, transformers),
# then runs, each under its own time limit, skipping what would end past DEADLINE seconds (default 540), and
# logs to two files in $OUT (e2e.txt, benchmarks.txt; a lent machine returns few files): the CLI end to end on
# the sample shards (tools/gpu_e2e.sh), the CUDA tests (no host sync in a training step), the matmul peak, the
# train steps of mimx against transformers (ViT-B, VideoMAE-B, ViT-L) in bf16 with throughput and share of
# the measured peak, as a table and --paired, the MultiMAE step, MaskFeat's HOG target, BEiT's token lookup
# and its hidden-only head, the cost of BEiT's relative position bias, the Point-MAE ops and step. Each benchmark configuration starts its own process.
# QUICK=1 DEVICE=cpu: a dry run. COMPILED=1: instead, ViT-B MAE eager against torch.compile with CUDA graphs
# (mode reduce-overhead) for both mimx and transformers, paired in one process, then a short training run
# with train.compile=reduce-overhead through the CLI (a second call, about 250 s).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
LOGS=/tmp/gpu_check_logs
mkdir -p "$OUT" "$LOGS"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, timm, transformers; print(torch.__version__, timm.__version__, transformers.__version__)" \
    >> "$OUT/gpu.txt" 2>&1

DEADLINE=${DEADLINE:-540}
step() {  # name, limit in seconds, then the benchmark's arguments
    local name=$1 limit=$2; shift 2
    if [ $((SECONDS + limit)) -gt "$DEADLINE" ]; then echo "== $name: skipped (deadline)"; return; fi
    echo "== $name"
    local log="$LOGS/$name.txt"
    timeout "$limit" python3 tools/benchmark.py "$@" --device "$DEVICE" > "$log" 2>&1
    echo "rc $?" >> "$log"
    { echo "== $name: $*"; cat "$log"; } >> "$OUT/benchmarks.txt"  # one file: a lent machine returns few
    grep -v "^  round" "$log" | tail -12
}
if [ "${COMPILED:-0}" = 1 ]; then
    step image_b_compiled 240 paired --model base --batch 64 --steps 10 --warmup 3 --compile-mode reduce-overhead \
        --pair mimx:bf16,transformers-sdpa:bf16,mimx:bf16:compiled,transformers-sdpa:bf16:compiled
    echo "== train.compile=reduce-overhead through the CLI"
    timeout 200 python3 -P -m mimx image pretrain experiment=demo train.device="$DEVICE" train.precision=bf16 \
        train.compile=reduce-overhead train.steps=60 train.log_every=10 train.progress=false train.tensorboard=false \
        run.dir=/tmp/mimx_compiled_run > "$OUT/train_compiled.txt" 2>&1
    echo "rc $?" >> "$OUT/train_compiled.txt"
    tail -6 "$OUT/train_compiled.txt"
    exit 0
fi
echo "== end to end"
timeout 300 bash tools/gpu_e2e.sh
if [ "${QUICK:-0}" = 1 ]; then
    step image 120 step --model tiny --image 32 --patch 8 --batch 4 --steps 2 --warmup 1 --repeats 1 --precisions bf16 \
        --paired 2
    step video 120 step --modality video --model tiny --image 32 --frames 4 --batch 2 --steps 2 --warmup 1 \
        --repeats 1 --precisions bf16
    exit 0
fi
# from outside the checkout, so that the installed mimx (with mimx.modalities) is imported, not the source folder
(cd /tmp && timeout 60 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib "$OLDPWD/tests/test_point_ops.py" \
    "$OLDPWD/tests/test_device_steps.py" -k cuda) > "$LOGS/tests.txt" 2>&1
{ echo "== CUDA tests"; cat "$LOGS/tests.txt"; } >> "$OUT/benchmarks.txt"
tail -2 "$LOGS/tests.txt"
step peak 30 peak
# mimx against transformers: a table, then --paired (both in one process, alternating steps: robust to the
# drift of a launch-bound host)
step image_b 130 step --model base --batch 64 --steps 10 --warmup 3 --repeats 1 --precisions bf16 \
    --peers transformers-sdpa --paired 20
step video_b 160 step --modality video --model base --batch 8 --steps 10 --warmup 3 --repeats 1 --precisions bf16 \
    --peers transformers-sdpa --paired 20
step image_l 120 step --model large --batch 32 --steps 10 --warmup 3 --repeats 1 --precisions bf16 \
    --peers transformers-sdpa --paired 20
step multimodal 40 multimodal-step --model base --image 224 --patch 16 --batch 64 --precisions bf16 --repeats 10
step hog 30 hog --batch 64
step tokens 30 tokens --batch 64
step beit_head 45 head --model base --batch 64 --steps 8 --warmup 2
step rel_pos 45 rel-pos --method beit --model base --batch 64 --steps 8 --warmup 2
step rel_pos_mae 45 rel-pos --method mae --model base --batch 64 --steps 8 --warmup 2
step point_ops 40 point-ops
step point_step 40 point-step --precisions bf16
